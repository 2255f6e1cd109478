"""Build report/ex2.pdf from ex2.typ (+ theory.typ) with Typst, given the results and figures present (Typst cannot
test for a file): a missing result becomes a box naming its script, listed here too. Also rewrites the README tables."""
import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent          # report/
SOURCE, README = HERE / "ex2.typ", HERE.parent / "README.md"
MARK_START, MARK_END = "<!-- results:start (written by report/build.py) -->", "<!-- results:end -->"
DEFAULT_EPOCH = 1704067200  # 2024-01-01, the PDF's date: same sources, same bytes; $SOURCE_DATE_EPOCH overrides it
EXPERIMENTS = {"ex1": "python ex1_autoencoder.py", "ex2": "python ex2_classifier.py",  # -> results/<name>.json
               "ex3": "python ex3_classifier_decoding.py", "ex4": "python ex4_few_shot.py",
               "ex5": "python ex5_finetune.py", "ex5_selftrain": "python ex5_finetune.py --variants scratch selftrain",
               "lab_dbvae": "python lab_dbvae.py", "lab_cam": "python lab_cam.py", "bench": "python -m common.bench"}
# figures in report/figures/ that ex2.typ deliberately does not place -> why; it must place every other one (fig(...))
UNUSED_FIGURES: dict[str, str] = {}


def placed_figures() -> set[str]:
    """The figure files that ex2.typ places (the first argument of each fig(...) call outside comments)."""
    code = "\n".join(line for line in SOURCE.read_text().splitlines() if not line.lstrip().startswith("//"))
    return set(re.findall(r'\bfig\(\s*"([^"]+)"', code))


def unplaced_figures(figures_dir: Path) -> list[str]:
    return sorted({p.name for p in figures_dir.glob("*.png")} - placed_figures() - set(UNUSED_FIGURES))


def write_if_changed(path: Path, data: bytes) -> bool:  # True if it wrote (atomically: a temp file, then os.replace)
    if path.exists() and path.read_bytes() == data:
        return False
    path.with_name(path.name + ".tmp").write_bytes(data)
    os.replace(path.with_name(path.name + ".tmp"), path)
    return True


def load_results(results_dir: Path) -> dict[str, dict]:
    """name -> object of each results/*.json that parses as a JSON object; a broken one counts as missing."""
    out = {}
    for p in sorted(results_dir.glob("*.json")):
        try:  # NaN and Infinity, which Python writes and strict JSON (so Typst) rejects, read as null
            out[p.stem] = json.loads(p.read_text(), parse_constant=lambda _: None)
        except (OSError, ValueError) as e:
            print(f"warning: ignoring {p} ({e})", file=sys.stderr)
    return {name: obj for name, obj in out.items() if isinstance(obj, dict)}


def build(out: Path, results_dir: Path, figures_dir: Path, *, png: bool = False) -> dict:
    import typst  # imported here so --help works without it

    out, results, figures_dir = out.resolve(), load_results(results_dir), figures_dir.resolve()
    figures = sorted(p.name for p in figures_dir.glob("*.png") if "," not in p.name)
    root = Path(os.path.commonpath([HERE, figures_dir]))  # Typst reads no file outside its root
    # the results go in as JSON text (cleaned of NaN); "," separates the names of those present
    inputs = {"results": ",".join(results), "figures": ",".join(figures), "scripts": json.dumps(EXPERIMENTS),
              "figures_dir": "/" + figures_dir.relative_to(root).as_posix() if figures_dir != root else "/",
              **{f"json_{name}": json.dumps(obj) for name, obj in results.items()}}
    kw = dict(root=str(root), sys_inputs=inputs, timestamp=int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH)))
    try:
        pdf, warnings = typst.compile_with_warnings(str(SOURCE), **kw)
    except typst.TypstError as e:
        raise SystemExit(f"error: Typst could not build {SOURCE.name}:\n{e}") from e
    out.parent.mkdir(parents=True, exist_ok=True)
    changed = write_if_changed(out, pdf)  # same sources -> same bytes -> the file is left alone
    for w in warnings:
        print(f"typst warning: {w}", file=sys.stderr)
    if png:  # every page as <pdf stem>-<page>.png next to the PDF
        typst.compile(str(SOURCE), output=str(out.with_name(out.stem + "-{0p}.png")), format="png", ppi=110, **kw)
    missing = {name: cmd for name, cmd in EXPERIMENTS.items() if name not in results}
    print(f"{'wrote' if changed else 'unchanged:'} {out}  (results: {', '.join(results) or 'none'})")
    for name, cmd in missing.items():
        print(f"  missing {name}: run `{cmd}` to produce {os.path.relpath(results_dir / (name + '.json'))}")
    for f in unplaced_figures(figures_dir):
        print(f"  figure {f} is not placed in {SOURCE.name} and not listed in UNUSED_FIGURES (build.py)")
    return {"pdf": out, "changed": changed, "results": results, "figures": figures, "missing": missing}


def get(d, *path, default=None):
    """d[k0][k1]...: dict keys or list indices; `default` as soon as one is missing or of the wrong type."""
    for k in path:
        try:
            d = d[k]
        except (KeyError, IndexError, TypeError):
            return default
    return d


def is_num(*vs) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vs)


def fmt(v, spec: str = ".4f", scale: float = 1, unit: str = "") -> str:
    return f"{scale * v:{spec}}{unit}" if is_num(v) else "–"


def fmt_ci(v, key: str = "mean", spec: str = ".2f", scale: float = 100, unit: str = " %") -> str:
    """'66.34 [64.90, 67.78] %' from a {mean, ci95} summary (fractions as percentages)."""
    x, lo, hi = (fmt(n, spec, scale) for n in (get(v, key), get(v, "ci95", 0), get(v, "ci95", 1)))
    return "–" if "–" in (x, lo, hi) else f"{x} [{lo}, {hi}]{unit}"


def ae_share_of_peak(bench) -> str:
    """Training FLOPs per image x images/s / the matmul peak, of our plain loop and with channels_last."""
    flops, peak = get(bench, "ae", "train_flops_per_img"), get(bench, "matmul_peak", "best_gflops")
    img_s = get(bench, "ae", "ours_img_s"), get(bench, "ae", "options", "channels_last", "img_s")
    return " / ".join(fmt(flops * v / 1e9 / peak, ".2f", 100, " %") if is_num(flops, v, peak) and peak > 0 else "–"
                      for v in img_s)


# A README cell's {name.key.key:spec} is the value at that path of results/<name>.json, shown as FORMATS[spec] says,
# else with the format spec (".4f"); "–" for a value that is missing or of the wrong type.
FORMATS = {"pct": lambda v: fmt(v, ".2f", 100, " %"), "ci": fmt_ci,
           "pts": lambda v: fmt_ci(v, "mean_diff", "+.2f", 100, " pts"),  # a paired difference of fractions
           "diff": lambda v: fmt_ci(v, "mean_diff", "+.2f", 1, ""),  # ... of values in their own unit
           "count": lambda v: str(len(v)) if isinstance(v, list) and v else "–",
           "str": lambda v: v if isinstance(v, str) and v else "–", "ae_share_of_peak": ae_share_of_peak}
README_TABLES = [  # each table: (heading row, its rows); a row is (experiment, metric, result)
    (("experiment", "metric", "result"), [
        ("ex1 autoencoder, d={ex1.latent_dim:.0f}", "test mean-L1, conv+FC / conv-only / PCA-{ex1.latent_dim:.0f}",
         "{ex1.variants.conv_fc.test_l1:.4f} / {ex1.variants.conv.test_l1:.4f} / {ex1.pca_test_l1:.4f}"),
        ("ex2 classifier", "test accuracy", "{ex2.test_acc:pct}"),
        ("ex3 decoders", "test mean-L1, AE decoder / decoder on the frozen ex2 encoder",
         "{ex3.ae_test_l1:.4f} / {ex3.cls_decoder_test_l1:.4f}"),
        ("ex4 100 labels, from scratch", "test accuracy, mean [95 % CI] over {ex4.seeds:count} seeds",
         "{ex4.final_test_acc:ci}"),
        ("ex5 100 labels, AE encoder fine-tuned", "test accuracy; paired difference to scratch (same seeds)",
         "{ex5.variants.finetune.final_test_acc:ci}; {ex5.variants.finetune.vs_scratch:pts}"),
        ("lab DB-VAE", "primary endpoint: group variance of detection (%²), jittered test, standard → DB-VAE; "
                       "paired difference [95 % CI], p",
         "{lab_dbvae.comparison.jittered.standard.mean:.2f} → {lab_dbvae.comparison.jittered.dbvae.mean:.2f}; "
         "{lab_dbvae.comparison.jittered:diff}, p = {lab_dbvae.comparison.jittered.p_value:.3f} "
         "({lab_dbvae.comparison.jittered.verdict:str})"),
        ("lab CAM (Imagenette)", "validation accuracy", "{lab_cam.val_acc:pct}"),
        ("full pipeline (`python -m common.pipeline`)", "wall time of all stages on {pipeline.machine.cpu:str} "
         "(fp32 matmul peak {pipeline.matmul_peak.best_gflops:.0f} GFLOP/s)", "{pipeline.total_s:.0f} s"),
    ]),
    (("speed", "metric", "result"), [
        ("AE training (`python -m common.bench`)", "images/s, ours / DataLoader, on {bench.machine.cpu:str}",
         "{bench.ae.ours_img_s:,.0f} / {bench.ae.baseline_img_s:,.0f} ({bench.ae.speedup:.2f}×)"),
        ("AE training", "share of the {bench.matmul_peak.best_gflops:.1f} GFLOP/s fp32 matmul peak: plain / "
         "channels_last", "{bench:ae_share_of_peak}"),
        ("seed stacking for ex4 (`python -m common.bench --stacking`)",
         "time of 10 vmap-stacked seeds / 10 plain seeds: training step / test forward pass",
         "{bench_stacking.step_ratio_stacked_over_plain:.2f}× / {bench_stacking.eval_ratio_stacked_over_plain:.2f}×"),
    ]),
]


def readme_table(results: dict) -> str:
    """The README's results tables, every number read from `results` (load_results; nothing typed by hand)."""
    def fill(m: re.Match) -> str:  # m: {name.key.key:spec}
        return FORMATS.get(m[2], lambda v: fmt(v, m[2]))(get(results, *m[1].split(".")))
    text = "\n\n".join("\n".join([f"| {' | '.join(head)} |", "|---" * len(head) + "|"]
                                  + [f"| {' | '.join(row)} |" for row in rows]) for head, rows in README_TABLES)
    return re.sub(r"\{([\w.]+):([^}]+)\}", fill, text)


def update_readme(results: dict) -> bool:
    block = f"{MARK_START}\n{readme_table(results)}\n{MARK_END}"
    text, found = re.subn(f"(?s){re.escape(MARK_START)}.*?{re.escape(MARK_END)}", lambda _: block, README.read_text())
    return found > 0 and write_if_changed(README, text.encode())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out-dir", type=Path, default=HERE, help="where results/ and figures/ are (default: report/)")
    p.add_argument("--pdf", type=Path, help="the PDF to write (default: OUT_DIR/ex2.pdf)")
    p.add_argument("--png", action="store_true", help="also render each page to PDF-<page>.png, next to the PDF")
    args = p.parse_args(argv)
    info = build(args.pdf or args.out_dir / "ex2.pdf", args.out_dir / "results", args.out_dir / "figures", png=args.png)
    if args.out_dir.resolve() == HERE and update_readme(info["results"]):
        print("updated the results tables in README.md")


if __name__ == "__main__":
    main()
