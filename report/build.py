"""Build the course report report/ex2.pdf from report/ex2.typ (+ theory.typ) with Typst.

    python report/build.py                   # report/ex2.pdf from report/results, report/figures
    python report/build.py --out-dir DIR     # from the scripts' --out-dir DIR: DIR/results, DIR/figures -> DIR/ex2.pdf
    python report/build.py --pdf /tmp/r.pdf  # the PDF somewhere else
    python report/build.py --png             # also render every page to PNG next to the PDF

Typst cannot test whether a file exists, so this script passes the lists of result files and figures that are
present (sys.inputs); a missing result becomes a box in the PDF naming the script that produces it, and is
listed here. Built from report/results, it also rewrites the README's results tables. Needs `typst` (PyPI).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent          # report/
REPO = HERE.parent
SOURCE = HERE / "ex2.typ"
README = REPO / "README.md"
MARK_START, MARK_END = "<!-- results:start (written by report/build.py) -->", "<!-- results:end -->"
# The PDF's creation date, fixed so that the same sources give the same bytes (and a no-op build leaves the
# git tree clean); $SOURCE_DATE_EPOCH (the reproducible-builds convention) overrides it.
DEFAULT_EPOCH = 1704067200  # 2024-01-01 00:00 UTC

# result name -> (the command that writes report/results/<name>.json, figures it should come with)
EXPERIMENTS = {
    "ex1": ("python ex1_autoencoder.py", ["ex1_reconstructions.png", "ex1_loss.png"]),
    "ex2": ("python ex2_classifier.py", ["ex2_curves.png", "ex2_baselines.png"]),
    "ex3": ("python ex3_classifier_decoding.py", ["ex3_digits.png", "ex3_tsne.png"]),
    "ex4": ("python ex4_few_shot.py", ["ex4_curves.png", "ex4_curves_time.png"]),
    "ex5": ("python ex5_finetune.py", ["ex45_compare.png", "ex45_compare_time.png"]),
    "ex5_selftrain": ("python ex5_finetune.py --variants scratch selftrain", []),
    "lab_dbvae": ("python lab_dbvae.py", ["lab_dbvae_groups.png", "lab_dbvae_paired.png", "lab_dbvae_sampling.png"]),
    "lab_cam": ("python lab_cam.py", ["lab_cam_curves.png"]),
    "bench": ("python -m common.bench", []),
}

# Figures the scripts write into report/figures/ that the report deliberately does not place, with the reason;
# every other top-level figure there must be placed by a fig("<file>", ...) call in ex2.typ.
UNUSED_FIGURES: dict[str, str] = {}


class BuildError(RuntimeError):
    pass


def placed_figures(source: Path = SOURCE) -> set[str]:
    """The figure files that ex2.typ places (the first argument of each fig(...) call outside comments)."""
    code = "\n".join(line for line in source.read_text().splitlines() if not line.lstrip().startswith("//"))
    return set(re.findall(r'\bfig\(\s*"([^"]+)"', code))


def unplaced_figures(figures_dir: Path, source: Path = SOURCE) -> list[str]:
    skip = placed_figures(source) | set(UNUSED_FIGURES)
    return sorted(p.name for p in figures_dir.glob("*.png") if p.name not in skip) if figures_dir.is_dir() else []


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write `data` to `path` (atomically) only when the bytes differ; True if the file changed."""
    if path.exists() and path.read_bytes() == data:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def _nan_to_none(obj):
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def load_results(results_dir: Path, warn: bool = True) -> dict[str, dict]:
    """name -> object of each results/*.json that parses as a JSON object; a broken one counts as missing."""
    out = {}
    for p in sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []:
        try:
            obj = json.loads(p.read_text())
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            out[p.stem] = obj
        except (OSError, ValueError) as e:
            if warn:
                print(f"warning: ignoring {p} ({e})", file=sys.stderr)
    return out


def figure_files(figures_dir: Path) -> list[str]:
    exts = {".png", ".jpg", ".jpeg", ".svg", ".gif"}
    return sorted(p.name for p in figures_dir.iterdir() if p.suffix.lower() in exts and "," not in p.name) \
        if figures_dir.is_dir() else []


def _show(path: Path) -> str:
    """A path relative to the repo (as the README writes them) when it is inside it."""
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def build(out: Path, results_dir: Path, figures_dir: Path, *, png: bool = False, quiet: bool = False) -> dict:
    import typst  # imported here so --help works without it

    out, results_dir, figures_dir = out.resolve(), results_dir.resolve(), figures_dir.resolve()
    loaded, figures = load_results(results_dir), figure_files(figures_dir)
    results, scripts = list(loaded), {name: cmd for name, (cmd, _) in EXPERIMENTS.items()}
    try:
        root = Path(os.path.commonpath([HERE, results_dir, figures_dir]))
    except ValueError:  # e.g. different drives on Windows
        raise BuildError(f"{results_dir} and {figures_dir} must be on the same drive as {HERE}")
    # Python writes NaN/Infinity, which strict JSON, and so Typst, rejects: such a file goes as a cleaned copy
    cleaned = {f"json_{n}": t for n, obj in loaded.items() if (t := json.dumps(_nan_to_none(obj))) != json.dumps(obj)}
    dirs = {k: "/" + d.relative_to(root).as_posix() if d != root else "/"  # Typst: "/..." is below the root
            for k, d in (("results_dir", results_dir), ("figures_dir", figures_dir))}
    inputs = {"results": ",".join(results), "figures": ",".join(figures), "scripts": json.dumps(scripts), **dirs,
              **cleaned}
    out.parent.mkdir(parents=True, exist_ok=True)
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    kw = dict(root=str(root), sys_inputs=inputs, timestamp=int(epoch) if epoch.isdigit() else DEFAULT_EPOCH)
    try:
        pdf, warnings = typst.compile_with_warnings(str(SOURCE), **kw)
    except typst.TypstError as e:
        raise BuildError(f"Typst could not build {SOURCE.name}:\n{e}") from e
    changed = write_if_changed(out, pdf)  # same sources -> same bytes -> the file is left alone
    for w in warnings or []:
        print(f"typst warning: {w}", file=sys.stderr)
    if png:
        typst.compile(str(SOURCE), output=str(out.with_name(out.stem + "-{0p}.png")), format="png", ppi=110, **kw)
    pngs = sorted(out.parent.glob(out.stem + "-*.png")) if png else []

    missing = {n: scripts[n] for n in EXPERIMENTS if n not in results}
    missing_figs = {f: scripts[n] for n, (_, figs) in EXPERIMENTS.items() if n in results
                    for f in figs if f not in figures}
    if not quiet:
        print(f"{'wrote' if changed else 'unchanged:'} {out}  (results: {', '.join(results) or 'none'})")
        for name, cmd in missing.items():
            print(f"  missing {name}: run `{cmd}` to produce {_show(results_dir / (name + '.json'))}")
        for f, cmd in missing_figs.items():
            print(f"  missing figure {f}: run `{cmd}`")
        for f in unplaced_figures(figures_dir):
            print(f"  figure {f} is not placed in {SOURCE.name} and not listed in UNUSED_FIGURES (build.py)")
        if pngs:
            print(f"  rendered {len(pngs)} page(s) to {pngs[0].parent}/{out.stem}-*.png")
    return {"pdf": out, "changed": changed, "results": results, "figures": figures, "missing": missing,
            "missing_figures": missing_figs, "pngs": pngs}


# ----------------------------------------------------------------------------- the README tables
def _get(d, *keys):
    """d[k0][k1]...: dict keys, or int indices into lists; None as soon as one is missing."""
    for k in keys:
        if isinstance(d, dict) and k in d:
            d = d[k]
        elif isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return None
    return d


def _is_num(*vs) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vs)


def _num(v, fmt=".4f") -> str:
    return format(v, fmt) if _is_num(v) else "–"


def _pct(v) -> str:
    return f"{100 * v:.2f} %" if _is_num(v) else "–"


def _ci(v, key="mean", unit=" %", scale=100) -> str:
    """'66.34 [64.90, 67.78] %' from a {mean, ci95} summary (fractions as percentages); a difference (key
    "mean_diff") gets signs."""
    x, lo, hi = _get(v, key), _get(v, "ci95", 0), _get(v, "ci95", 1)
    f = "+.2f" if key == "mean_diff" else ".2f"
    return f"{scale * x:{f}} [{scale * lo:{f}}, {scale * hi:{f}}]{unit}" if _is_num(x, lo, hi) else "–"


def _count(v) -> str:
    return str(len(v)) if isinstance(v, list) and v else "–"


def _ae_share_of_peak(g) -> str:
    """Training FLOPs per image x images/s / peak, of our plain loop and with channels_last."""
    ae, peak = g("bench", "ae"), g("bench", "matmul_peak", "best_gflops")
    flops = _get(ae, "train_flops_per_img")
    return " / ".join(_pct(flops * v / 1e9 / peak) if _is_num(flops, v, peak) and peak > 0 else "–"
                      for v in (_get(ae, "ours_img_s"), _get(ae, "options", "channels_last", "img_s")))


# Each table: (heading row, its rows); a row is (experiment, metric, result), each cell a string or a function
# of g(name, *keys), which reads report/results/<name>.json and gives None for anything missing.
DBVAE, AE = ("lab_dbvae", "comparison", "jittered"), ("bench", "ae")
README_TABLES = [
    (("experiment", "metric", "result"), [
        (lambda g: f"ex1 autoencoder, d={_num(g('ex1', 'latent_dim'), '.0f')}",
         lambda g: f"test mean-L1, conv+FC / conv-only / PCA-{_num(g('ex1', 'latent_dim'), '.0f')}",
         lambda g: " / ".join(_num(g("ex1", *k)) for k in [("variants", "conv_fc", "test_l1"),
                                                            ("variants", "conv", "test_l1"), ("pca_test_l1",)])),
        ("ex2 classifier", "test accuracy", lambda g: _pct(g("ex2", "test_acc"))),
        ("ex3 decoders", "test mean-L1, AE decoder / decoder on the frozen ex2 encoder",
         lambda g: f"{_num(g('ex3', 'ae_test_l1'))} / {_num(g('ex3', 'cls_decoder_test_l1'))}"),
        ("ex4 100 labels, from scratch",
         lambda g: f"test accuracy, mean [95 % CI] over {_count(g('ex4', 'seeds'))} seeds",
         lambda g: _ci(g("ex4", "final_test_acc"))),
        ("ex5 100 labels, AE encoder fine-tuned", "test accuracy; paired difference to scratch (same seeds)",
         lambda g: f"{_ci(g('ex5', 'variants', 'finetune', 'final_test_acc'))}; "
                   f"{_ci(g('ex5', 'variants', 'finetune', 'vs_scratch'), key='mean_diff', unit=' pts')}"),
        ("lab DB-VAE", "primary endpoint: group variance of detection (%²), jittered test, standard → DB-VAE; "
                       "paired difference [95 % CI], p",
         lambda g: f"{_num(g(*DBVAE, 'standard', 'mean'), '.2f')} → {_num(g(*DBVAE, 'dbvae', 'mean'), '.2f')}; "
                   f"{_ci(g(*DBVAE), key='mean_diff', unit='', scale=1)}, p = {_num(g(*DBVAE, 'p_value'), '.3f')} "
                   f"({g(*DBVAE, 'verdict') or '–'})"),
        ("lab CAM (Imagenette)", "validation accuracy", lambda g: _pct(g("lab_cam", "val_acc"))),
        ("full pipeline (`python -m common.pipeline`)",
         lambda g: f"wall time of all stages on {g('pipeline', 'machine', 'cpu') or '–'} (fp32 matmul peak "
                   f"{_num(g('pipeline', 'matmul_peak', 'best_gflops'), '.0f')} GFLOP/s)",
         lambda g: f"{_num(g('pipeline', 'total_s'), '.0f')} s"),
    ]),
    (("speed", "metric", "result"), [
        ("AE training (`python -m common.bench`)",
         lambda g: f"images/s, ours / DataLoader, on {g('bench', 'machine', 'cpu') or '–'}",
         lambda g: f"{_num(g(*AE, 'ours_img_s'), ',.0f')} / {_num(g(*AE, 'baseline_img_s'), ',.0f')} "
                   f"({_num(g(*AE, 'speedup'), '.2f')}×)"),
        ("AE training", lambda g: f"share of the {_num(g('bench', 'matmul_peak', 'best_gflops'), '.1f')} GFLOP/s "
                                  "fp32 matmul peak: plain / channels_last", _ae_share_of_peak),
        ("seed stacking for ex4 (`python -m common.bench --stacking`)",
         "time of 10 vmap-stacked seeds / 10 plain seeds: training step / test forward pass",
         lambda g: " / ".join(f"{_num(g('bench_stacking', f'{k}_ratio_stacked_over_plain'), '.2f')}×"
                              for k in ("step", "eval"))),
    ]),
]


def readme_table(results_dir: Path) -> str:
    """The README's results tables, every number read from results/*.json (nothing typed by hand)."""
    r = load_results(results_dir, warn=False)
    g = lambda name, *keys: _get(r.get(name), *keys)  # noqa: E731
    return "\n\n".join("\n".join([f"| {' | '.join(head)} |", "|---" * len(head) + "|"]
                                 + [f"| {' | '.join(c(g) if callable(c) else c for c in row)} |" for row in rows])
                       for head, rows in README_TABLES)


def update_readme(results_dir: Path) -> bool:
    """Rewrite the tables between the README's result markers; False if the markers are absent or the tables
    are already up to date (the file is then not touched)."""
    text = README.read_text() if README.exists() else ""
    if MARK_START not in text or MARK_END not in text:
        return False
    head, rest = text.split(MARK_START, 1)
    table = f"{MARK_START}\n{readme_table(results_dir)}\n{MARK_END}"
    return write_if_changed(README, (head + table + rest.split(MARK_END, 1)[1]).encode())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, default=HERE,
                   help="the folder the scripts wrote results/ and figures/ into, and where ex2.pdf goes "
                        "(default: report/)")
    p.add_argument("--results-dir", type=Path, default=None, help="result JSON folder (default: OUT_DIR/results)")
    p.add_argument("--figures-dir", type=Path, default=None, help="figure folder (default: OUT_DIR/figures)")
    p.add_argument("--pdf", type=Path, default=None, help="the PDF to write (default: OUT_DIR/ex2.pdf)")
    p.add_argument("--png", action="store_true", help="also render each page to PDF-<page>.png")
    args = p.parse_args(argv)
    results_dir = args.results_dir or args.out_dir / "results"
    try:
        build(args.pdf or args.out_dir / "ex2.pdf", results_dir, args.figures_dir or args.out_dir / "figures",
              png=args.png)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if results_dir.resolve() == HERE / "results" and update_readme(results_dir):
        print(f"updated the results table in {_show(README)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
