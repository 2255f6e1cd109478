"""Build the course report report/ex2.pdf from report/ex2.typ (+ theory.typ) with Typst.

    python report/build.py                       # -> report/ex2.pdf from report/results, report/figures
    python report/build.py --out /tmp/r.pdf      # somewhere else
    python report/build.py --report-dir DIR      # read DIR/results, DIR/figures, write DIR/ex2.pdf
    python report/build.py --png                 # also render every page to PNG next to the PDF

Typst cannot test whether a file exists, so this script lists the result files and figures that are
present and passes the lists to the Typst source (sys.inputs); a missing result becomes a box in the
PDF naming the script that produces it, and is listed here. Needs the `typst` Python package.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent          # report/
REPO = HERE.parent
SOURCE = HERE / "ex2.typ"

# result name -> (the command that writes report/results/<name>.json, figures it should come with)
EXPERIMENTS = {
    "ex1": ("python ex1_autoencoder.py", ["ex1_reconstructions.png", "ex1_loss.png"]),
    "ex2": ("python ex2_classifier.py", ["ex2_curves.png", "ex2_baselines.png"]),
    "ex3": ("python ex3_classifier_decoding.py", ["ex3_digits.png", "ex3_tsne.png"]),
    "ex4": ("python ex4_few_shot.py", ["ex4_curves.png", "ex4_curves_time.png"]),
    "ex5": ("python ex5_finetune.py", ["ex45_compare.png", "ex45_compare_time.png"]),
    "ex5_selftrain": ("python ex5_finetune.py --variants selftrain", []),
    "lab_dbvae": ("python lab_dbvae.py", ["lab_dbvae_groups.png", "lab_dbvae_paired.png", "lab_dbvae_sampling.png"]),
    "lab_cam": ("python lab_cam.py", ["lab_cam_curves.png"]),
    "bench": ("python -m common.bench", []),
}

# Figures the scripts write into report/figures/ that the report deliberately does not place, with the
# reason; every other top-level figure there must be placed by a fig("<file>", ...) call in ex2.typ
# (tests/test_report.py checks both, and the build warns about a figure that is neither).
UNUSED_FIGURES: dict[str, str] = {}


def placed_figures(source: Path = SOURCE) -> set[str]:
    """The figure files that ex2.typ places (the first argument of each fig(...) call)."""
    import re
    code = "\n".join(line for line in source.read_text().splitlines() if not line.lstrip().startswith("//"))
    return set(re.findall(r'\bfig\(\s*"([^"]+)"', code))


def unplaced_figures(figures_dir: Path, source: Path = SOURCE) -> list[str]:
    """Top-level PNGs in figures_dir that ex2.typ neither places nor UNUSED_FIGURES lists."""
    placed = placed_figures(source)
    return sorted(p.name for p in figures_dir.glob("*.png")
                  if p.name not in placed and p.name not in UNUSED_FIGURES) if figures_dir.is_dir() else []


class BuildError(RuntimeError):
    pass


# The PDF's creation date, fixed so that the same sources give the same bytes (and a no-op build leaves
# the git tree clean); $SOURCE_DATE_EPOCH (the reproducible-builds convention) overrides it.
DEFAULT_EPOCH = 1704067200  # 2024-01-01 00:00 UTC


def creation_timestamp() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.strip().isdigit() else DEFAULT_EPOCH


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


def valid_results(results_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Names of the results/*.json files that parse as a JSON object (a broken one counts as missing),
    and, for files holding NaN/Infinity (which Python writes but strict JSON, and Typst, reject), a
    cleaned copy with those values as null, to be handed to Typst instead of the file."""
    names, cleaned = [], {}
    for p in sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []:
        try:
            text = p.read_text()
            obj = json.loads(text)
        except (OSError, ValueError) as e:
            print(f"warning: ignoring {p} ({e})", file=sys.stderr)
            continue
        if not isinstance(obj, dict):
            print(f"warning: ignoring {p} (not a JSON object)", file=sys.stderr)
            continue
        names.append(p.stem)
        try:
            json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        except ValueError:
            cleaned[p.stem] = json.dumps(_nan_to_none(obj))
    return names, cleaned


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


def root_relative(path: Path, root: Path) -> str:
    """Typst resolves paths that start with '/' against the project root."""
    return "/" + path.relative_to(root).as_posix() if path != root else "/"


def build(out: Path, results_dir: Path, figures_dir: Path, *, png: bool = False, quiet: bool = False) -> dict:
    import typst  # imported here so --help works without it

    out, results_dir, figures_dir = out.resolve(), results_dir.resolve(), figures_dir.resolve()
    (results, cleaned), figures = valid_results(results_dir), figure_files(figures_dir)
    scripts = {name: cmd for name, (cmd, _) in EXPERIMENTS.items()}
    try:
        root = Path(os.path.commonpath([HERE, results_dir, figures_dir]))
    except ValueError:  # e.g. different drives on Windows
        raise BuildError(f"{results_dir} and {figures_dir} must be on the same drive as {HERE}")
    inputs = {
        "results": ",".join(results), "figures": ",".join(figures),
        "results_dir": root_relative(results_dir, root), "figures_dir": root_relative(figures_dir, root),
        "scripts": json.dumps(scripts),
        **{f"json_{name}": text for name, text in cleaned.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        pdf, warnings = typst.compile_with_warnings(str(SOURCE), root=str(root), sys_inputs=inputs,
                                                    timestamp=creation_timestamp())
    except typst.TypstError as e:
        raise BuildError(f"Typst could not build {SOURCE.name}:\n{e}") from e
    changed = write_if_changed(out, pdf)  # same sources -> same bytes -> the file is left alone
    for w in warnings or []:
        print(f"typst warning: {w}", file=sys.stderr)
    pngs = []
    if png:
        pattern = out.with_name(out.stem + "-{0p}.png")
        typst.compile(str(SOURCE), output=str(pattern), format="png", ppi=110, root=str(root), sys_inputs=inputs,
                      timestamp=creation_timestamp())
        pngs = sorted(out.parent.glob(out.stem + "-*.png"))

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


README = REPO / "README.md"
MARK_START, MARK_END = "<!-- results:start (written by report/build.py) -->", "<!-- results:end -->"


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


def _pct(v) -> str:
    if isinstance(v, dict) and "mean" in v:
        return f"{100 * v['mean']:.2f} ± {100 * v.get('std', 0):.2f} %"
    return f"{100 * v:.2f} %" if isinstance(v, (int, float)) else "–"


def _ci(v, key="mean", unit=" %") -> str:
    """'66.34 [64.90, 67.78] %' from a {mean, ci95} summary (fractions shown as percentages)."""
    if not isinstance(v, dict) or key not in v or not isinstance(v.get("ci95"), list):
        return "–"
    lo, hi = v["ci95"]
    return f"{100 * v[key]:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]{unit}" if key == "mean_diff" else \
        f"{100 * v[key]:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]{unit}"


def _n(v) -> str:
    return str(len(v)) if isinstance(v, list) else "–"


def _num(v, fmt=".4f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "–"


def _str(v) -> str:
    return v if isinstance(v, str) else "–"


def _adopted_share(bench) -> float | None:
    """The AE training step's share of the matmul peak on the adopted (channels_last) path, derived from
    bench.json: FLOPs per image x images/s / peak."""
    if not isinstance(bench, dict):
        return None
    ae = bench.get("ae", {})
    img_s = _get(ae, "options", "channels_last", "img_s")
    flops, peak = ae.get("train_flops_per_img"), _get(bench, "matmul_peak", "best_gflops")
    if all(isinstance(v, (int, float)) for v in (img_s, flops, peak)) and peak > 0:
        return flops * img_s / 1e9 / peak
    return None


def readme_table(results_dir: Path) -> str:
    """The README's results table, every number read from results/*.json (nothing typed by hand)."""
    r = {}
    for p in sorted(results_dir.glob("*.json")):
        try:
            r[p.stem] = json.loads(p.read_text())
        except ValueError:
            pass
    g = lambda name, *keys: _get(r.get(name, {}), *keys)  # noqa: E731
    rows = [
        ("ex1 autoencoder, d=12", "test mean-L1 conv+FC / conv-only / PCA-12",
         f"{_num(g('ex1', 'variants', 'conv_fc', 'test_l1'))} / {_num(g('ex1', 'variants', 'conv', 'test_l1'))}"
         f" / {_num(g('ex1', 'pca_test_l1'))}", "≤ 0.030 and ≤ 0.6 × PCA"),
        ("ex2 classifier", "test accuracy", _pct(g("ex2", "test_acc")), "≥ 99.4 %"),
        ("ex2 baselines", "Lab2 CNN / MLP / skip-MLP",
         " / ".join(_pct(g("ex2", "baselines", b, "test_acc")) for b in ("lab2_cnn", "lab_mlp", "skip_mlp")), ""),
        ("ex3 classifier decoding", "test mean-L1 AE / classifier-encoder decoder",
         f"{_num(g('ex3', 'ae_test_l1'))} / {_num(g('ex3', 'cls_decoder_test_l1'))}", ""),
        ("ex4 100 labels, scratch", f"final test accuracy, mean [95 % CI] over {_n(g('ex4', 'seeds'))} seeds",
         _ci(g("ex4", "final_test_acc")), ""),
        ("ex5 100 labels, AE encoder fine-tuned", "final test accuracy; paired difference to scratch (same seeds)",
         f"{_ci(g('ex5', 'variants', 'finetune', 'final_test_acc'))}; "
         f"{_ci(g('ex5', 'variants', 'finetune', 'vs_scratch'), key='mean_diff', unit=' pts')}",
         "≥ scratch + 10 pts, CI above + 5"),
        ("ex5 semi-supervised (selftrain)", "final test accuracy, 100 labels + 59,900 unlabelled images",
         _ci(g("ex5_selftrain", "variants", "selftrain", "final_test_acc")), "≥ 96.7 % (Kingma et al. M1+M2)"),
        ("lab DB-VAE", "group variance of detection (%²), jittered test, standard → DB-VAE (paired seeds: p, verdict)",
         f"{_num(g('lab_dbvae', 'comparison', 'jittered', 'standard', 'mean'), '.2f')} → "
         f"{_num(g('lab_dbvae', 'comparison', 'jittered', 'dbvae', 'mean'), '.2f')} "
         f"(p = {_num(g('lab_dbvae', 'comparison', 'jittered', 'p_value'), '.3f')}, "
         f"{_str(g('lab_dbvae', 'comparison', 'jittered', 'verdict'))})",
         "DB-VAE lower, p < 0.05"),
        ("lab CAM (Imagenette)", "val accuracy", _pct(g("lab_cam", "val_acc")), "≥ 85 %"),
        ("speed (2 CPU cores, `python -m common.bench`)",
         "AE training img/s ours / DataLoader; share of the fp32 matmul peak (best over 512–2048, per-round "
         "spread): plain loop, with channels_last (adopted)",
         f"{_num(g('bench', 'ae', 'ours_img_s'), ',.0f')} / {_num(g('bench', 'ae', 'baseline_img_s'), ',.0f')}"
         f" ({_num(g('bench', 'ae', 'speedup'), '.2f')}×); {_pct(g('bench', 'ae', 'frac_of_matmul_peak'))}, "
         f"{_pct(_adopted_share(g('bench')))} of {_num(g('bench', 'matmul_peak', 'best_gflops'), '.1f')} GFLOP/s "
         f"({_num(g('bench', 'matmul_peak', 'spread_gflops', 0), '.1f')}–"
         f"{_num(g('bench', 'matmul_peak', 'spread_gflops', 1), '.1f')})",
         "≥ 2× and ≥ 40 % of the peak"),
    ]
    rows.append(("seed stacking for ex4 (`python -m common.bench --stacking`)",
                 "time of 10 vmap-stacked seeds / 10 plain seeds: training step, test forward pass",
                 f"{_num(g('bench_stacking', 'step_ratio_stacked_over_plain'), '.2f')}× / "
                 f"{_num(g('bench_stacking', 'eval_ratio_stacked_over_plain'), '.2f')}×", "below 1× to adopt"))
    stages = g("pipeline", "stages")
    if isinstance(stages, list) and stages:  # python -m common.pipeline: one end-to-end run, each stage timed
        peak = g("pipeline", "matmul_peak", "best_gflops")
        rows.append(("full pipeline ex1–ex5 + report (`python -m common.pipeline`)",
                     f"wall time of one end-to-end run on {_str(g('pipeline', 'machine', 'cpu'))}, "
                     f"{_num(g('pipeline', 'machine', 'cpu_count'), 'd')} cores ({_str(g('pipeline', 'machine', 'cpu_capability'))}), "
                     f"fp32 matmul peak "
                     f"{_num(peak, '.0f')} GFLOP/s: " + ", ".join(
                         f"{_str(st.get('name'))} {_num(st.get('seconds'), '.0f')} s" for st in stages),
                     f"{_num(g('pipeline', 'total_s'), '.0f')} s", f"≤ {_num(g('pipeline', 'budget_s'), '.0f')} s"))
    recipes = g("bench_recipes", "rows")
    if isinstance(recipes, list) and recipes:  # python -m common.bench --recipes: the time-vs-quality sweep
        by_model = {}
        for row in recipes:
            by_model.setdefault(row.get("model"), []).append(row)
        for model, rs in by_model.items():
            acc = rs[0].get("metric") == "test accuracy"
            rows.append((f"{_str(model)}: epochs vs quality (`python -m common.bench --recipes`)",
                         f"{_str(rs[0].get('metric'))} after N epochs (OneCycle over N), training seconds",
                         "; ".join(f"{r.get('epochs')} ep: {_pct(r.get('value')) if acc else _num(r.get('value'))} "
                                   f"in {_num(r.get('train_time_s'), '.0f')} s" for r in rs),
                         "≥ 99.4 %" if acc else "≤ 0.030"))
    rows.append(("ex4 (main job)", "wall time of the default run (data loading included, Python start-up not)", f"{_num(g('ex4', 'wall_time_s'), '.0f')} s", "≤ 60 s"))
    rows.append(("ex5", "wall time of the default run (6 variants × 10 seeds)",
                 f"{_num(g('ex5', 'wall_time_s'), '.0f')} s", "≤ 4 min"))
    for lab, goal in (("lab_dbvae", "≤ 15 min"), ("lab_cam", "≤ 20 min")):
        w = g(lab, "wall_time_s")
        rows.append((lab, "wall time of the default run", f"{w / 60:.1f} min" if isinstance(w, (int, float)) else "–", goal))
    lines = ["| experiment | metric | result | goal |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def update_readme(results_dir: Path) -> bool:
    """Replace the table between the README's result markers; False if the markers are absent or the
    table is already up to date (the file is then not touched)."""
    if not README.exists():
        return False
    text = README.read_text()
    if MARK_START not in text or MARK_END not in text:
        return False
    head, rest = text.split(MARK_START, 1)
    tail = rest.split(MARK_END, 1)[1]
    new = f"{head}{MARK_START}\n{readme_table(results_dir)}\n{MARK_END}{tail}"
    if new == text:
        return False
    README.write_text(new)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report-dir", type=Path, default=HERE,
                   help="folder holding results/ and figures/ (default: report/); also the default --out folder")
    p.add_argument("--results-dir", type=Path, default=None, help="result JSON folder (default: REPORT_DIR/results)")
    p.add_argument("--figures-dir", type=Path, default=None, help="figure folder (default: REPORT_DIR/figures)")
    p.add_argument("--out", type=Path, default=None, help="output PDF (default: REPORT_DIR/ex2.pdf)")
    p.add_argument("--png", action="store_true", help="also render each page to OUT-<page>.png")
    args = p.parse_args(argv)
    rd = args.report_dir
    results_dir = args.results_dir or rd / "results"
    try:
        build(args.out or rd / "ex2.pdf", results_dir, args.figures_dir or rd / "figures", png=args.png)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if results_dir.resolve() == (HERE / "results") and update_readme(results_dir):
        print(f"updated the results table in {_show(README)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
