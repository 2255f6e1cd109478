"""Build report/ex2.pdf from ex2.typ (+ theory.typ) with Typst from the results and figures present (Typst cannot
test for a file, so their names go in as inputs): a missing result stops the build with the command that writes it.
Also rewrites the README's two tables (results, speed) between their markers."""
import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent          # report/
sys.path.insert(0, str(HERE.parent))  # the repository root, for common/ when run as python report/build.py
from common.pipeline import RESULTS, STAGE_OF, STAGES, outdated, stage_files  # noqa: E402
from common.utils import atomic_write  # noqa: E402

SOURCE, README = HERE / "ex2.typ", HERE.parent / "README.md"
DEFAULT_EPOCH = 1704067200  # 2024-01-01, the PDF's date: same sources, same bytes; $SOURCE_DATE_EPOCH overrides it
EXPERIMENTS = {RESULTS.get(s, s): f"python {cmd}" for s, cmd in STAGES.items() if RESULTS.get(s, s)}  # name -> command
PROVENANCE = ("dirty", "cpu", "simd", "threads", "device", "precision")  # provenance keys in the table, and the commit
FIGURE_TYPES = (".pdf", ".svg", ".png", ".jpg")  # plots vector PDF, image grids PNG; ex2.typ names a figure by its stem
PHOTO_BYTES = 400_000  # a PNG grid this large holds photographs (the CAM overlays): the PDF embeds it as a JPEG
# figure stems in report/figures/ that ex2.typ deliberately does not place -> why; it must place every other one
UNUSED_FIGURES = {"ex2_curves": "our classifier's curves alone: ex2_baselines shows them beside the baselines'",
                  "ex4_curves_time": "the from-scratch curves against time are the grey lines of ex45_compare_time"}


def figure_files(figures_dir: Path) -> list[str]:
    return sorted(p.name for p in figures_dir.glob("*") if p.suffix in FIGURE_TYPES and "," not in p.name)


def placed_figures() -> set[str]:
    """The figure stems that ex2.typ places (the first argument of each fig(...) call outside comments)."""
    code = "\n".join(line for line in SOURCE.read_text().splitlines() if not line.lstrip().startswith("//"))
    return set(re.findall(r'\bfig\(\s*"([^"]+)"', code))


def unplaced_figures(figures_dir: Path) -> list[str]:
    return sorted({Path(f).stem for f in figure_files(figures_dir)} - placed_figures() - set(UNUSED_FIGURES))


def write_if_changed(path: Path, data: bytes) -> bool:  # True if it wrote
    if path.exists() and path.read_bytes() == data:
        return False
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
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


def provenance_table(results: dict) -> list[dict]:
    """A row per results JSON: its stage, what made it (commit, machine, device, precision), its wall time, and
    `current`: whether HEAD's code of the stage's files made it (None: no stage writes it); a warning where not."""
    rows = []
    for name, obj in results.items():
        prov, stage = get(obj, "provenance", default={}), STAGE_OF.get(name)
        why = outdated(obj, stage_files(stage)) if stage else None
        if why:
            print(f"warning: results/{name}.json was not made by HEAD's code of stage {stage} ({why})", file=sys.stderr)
        commit = get(prov, "commit")
        rows.append({"result": name, "stage": stage, "commit": commit[:7] if isinstance(commit, str) else None,
                     **{k: get(prov, k) for k in PROVENANCE}, "wall_time_s": get(obj, "wall_time_s"),
                     "current": None if stage is None else not why})
    return rows


def print_copies(figures_dir: Path, into: Path) -> Path:
    """The figures as the PDF embeds them: a large PNG (photographs) as a JPEG at quality 90, about a tenth of the
    bytes (PNG's lossless deflate compresses photos poorly); every other figure as it is."""
    from PIL import Image
    for name in figure_files(figures_dir):
        src = figures_dir / name
        if src.suffix == ".png" and src.stat().st_size > PHOTO_BYTES:
            Image.open(src).convert("RGB").save(into / (src.stem + ".jpg"), quality=90)
        else:
            shutil.copy2(src, into / name)
    return into


def build(out: Path, results_dir: Path, figures_dir: Path) -> dict:
    import typst  # imported here so --help works without it

    out, results = out.resolve(), load_results(results_dir)
    with tempfile.TemporaryDirectory(dir=HERE, prefix=".print-") as tmp:  # inside Typst's root, removed afterwards
        print_dir = print_copies(figures_dir, Path(tmp))
        figures = figure_files(print_dir)
        root = Path(os.path.commonpath([HERE, print_dir]))  # Typst reads no file outside its root
        # the results go in as JSON text (cleaned of NaN); "," separates the figure names
        inputs = {"figures": ",".join(figures), "scripts": json.dumps(EXPERIMENTS),
                  "figures_dir": "/" + print_dir.relative_to(root).as_posix(),
                  "provenance": json.dumps(provenance_table(results)),
                  **{f"json_{name}": json.dumps(obj) for name, obj in results.items()}}
        kw = dict(root=str(root), sys_inputs=inputs, timestamp=int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH)))
        missing = {name: cmd for name, cmd in EXPERIMENTS.items() if name not in results}
        for name, cmd in missing.items():
            print(f"  missing {name}: run `{cmd}` to produce {os.path.relpath(results_dir / (name + '.json'))}")
        try:
            pdf, warnings = typst.compile_with_warnings(str(SOURCE), **kw)
        except typst.TypstError as e:
            where = "".join(f"\n  {t}" for t in getattr(e, "trace", []))  # "at while calling `name`": where it failed
            raise SystemExit(f"error: Typst could not build {SOURCE.name}:\n{e}{where}") from e
    changed = write_if_changed(out, pdf)  # same sources -> same bytes -> the file is left alone
    for w in warnings:
        print(f"typst warning: {w}", file=sys.stderr)
    print(f"{'wrote' if changed else 'unchanged:'} {out}  (results: {', '.join(results) or 'none'})")
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


# A README cell's {name.key.key:spec} is the value at that path of results/<name>.json, shown as FORMATS[spec] says,
# else with the format spec (".4f"); "–" for a value that is missing or of the wrong type.
FORMATS = {"pct": lambda v: fmt(v, ".2f", 100, " %"), "ci": fmt_ci,  # fractions as percentages
           "ci4": lambda v: fmt_ci(v, "mean", ".4f", 1, ""),  # a summary in its own unit (mean-L1)
           "pts": lambda v: fmt_ci(v, "mean_diff", "+.2f", 100, " pts"),  # a paired difference of fractions
           "diff": lambda v: fmt_ci(v, "mean_diff", "+.1f", 1, ""),  # ... of values in their own unit (points)
           "diff4": lambda v: fmt_ci(v, "mean_diff", "+.4f", 1, ""),  # ... of mean-L1s
           "share": lambda v: fmt_ci(v, "pct", ".0f", 1, " %"),  # a share in per cent already
           "count": lambda v: str(len(v)) if isinstance(v, list) and v else "–",
           "str": lambda v: v if isinstance(v, str) and v else "–"}
BENCH = {"ae": "ex1 autoencoder", "classifier": "ex2 classifier", "dbvae": "DB-VAE", "cam": "CAM CNN"}  # bench.json
# the paired comparisons (common.stats.paired) the rows show
EX1, EX2, EX3 = "ex1.test_l1_conv_fc_minus_conv", "ex2.comparisons.lab2_cnn.paired_t", "ex3.test_l1_cls_minus_ae"
EX5, DB = "ex5.variants.finetune.vs_scratch", "lab_dbvae.endpoints"
# The README's tables, each between its markers "<!-- <block>:start (written by report/build.py) -->" and
# "<!-- <block>:end -->": block -> (heading row, rows); a row is (experiment, metric, result).
README_TABLES = {
    "results": (("experiment", "metric", "result"), [
        ("ex1 autoencoder, d={ex1.latent_dim:.0f}", "test mean-L1 over {ex1.seeds:count} seeds, conv+FC / conv-only; "
         "paired difference; PCA-{ex1.latent_dim:.0f}", "{ex1.variants.conv_fc.test_l1:ci4} / "
         "{ex1.variants.conv.test_l1:ci4}; {%s:diff4} ({%s.verdict:str}); {ex1.pca_test_l1:.4f}" % (EX1, EX1)),
        ("ex2 classifier", "test accuracy over {ex2.seeds:count} seeds; paired difference to the MIT Lab 2 CNN",
         "{ex2.test_acc:ci}; {%s:pts} ({%s.verdict:str})" % (EX2, EX2)),
        ("ex3 decoders", "test mean-L1 of a decoder on the frozen AE / classifier encoder; paired difference over the "
         "10 classes", "{ex3.ae_test_l1:.4f} / {ex3.cls_decoder_test_l1:.4f}; {%s:diff4} ({%s.verdict:str})"
         % (EX3, EX3)),
        ("ex4 100 labels, from scratch", "test accuracy over {ex4.seeds:count} seeds", "{ex4.final_test_acc:ci}"),
        ("ex5 100 labels, AE encoder fine-tuned", "test accuracy; paired difference to scratch (same seeds)",
         "{ex5.variants.finetune.final_test_acc:ci}; {%s:pts} ({%s.verdict:str})" % (EX5, EX5)),
        ("lab DB-VAE", "light − dark detection gap closed by the DB-VAE / by the oracle (points)",
         "{%s.gap_reduction_dbvae:diff} ({%s.gap_reduction_dbvae.verdict:str}) / "
         "{%s.gap_reduction_oracle:diff} ({%s.gap_reduction_oracle.verdict:str})" % (DB, DB, DB, DB)),
        ("lab DB-VAE, rare feature (dimmed faces)", "dim-face gap closed by the DB-VAE / by the oracle (points); the "
         "DB-VAE's share of the oracle's", "{%s.dim_gap_reduction_dbvae:diff} "
         "({%s.dim_gap_reduction_dbvae.verdict:str}) / {%s.dim_gap_reduction_oracle:diff} "
         "({%s.dim_gap_reduction_oracle.verdict:str}); "
         "{lab_dbvae.oracle_share.dim:share}" % (DB, DB, DB, DB)),
        ("lab CAM (Imagenette)", "validation accuracy", "{lab_cam.val_acc:pct}"),
    ]),
    "speed": (("speed", "metric", "result"), [
        ("full pipeline (`python -m common.pipeline`)", "wall time of all stages on {pipeline.provenance.cpu:str} "
         "(fp32 matmul peak {pipeline.matmul_peak.best_gflops:.0f} GFLOP/s)", "{pipeline.total_s:.0f} s"),
        *((f"{label} training (`python -m common.bench`)", "images/s fp32 → bf16 autocast; precision adopted",
           f"{{bench.{m}.img_s_fp32:,.0f}} → {{bench.{m}.img_s_bf16:,.0f}} ({{bench.{m}.speedup:.2f}}×); "
           f"{{bench.{m}.adopted:str}}") for m, label in BENCH.items()),
        ("seed stacking for ex4 (`python -m common.bench --stacking`)", "time of {bench_stacking.n_seeds:.0f} "
         "vmap-stacked seeds / as many plain ones: training step / test pass",
         "{bench_stacking.step_ratio_stacked_over_plain:.2f}× / {bench_stacking.eval_ratio_stacked_over_plain:.2f}×"),
    ]),
}


def readme_tables(results: dict) -> dict[str, str]:
    """block -> its Markdown table, every number read from `results` (load_results; nothing typed by hand)."""
    def fill(m: re.Match) -> str:  # m: {name.key.key:spec}
        return FORMATS.get(m[2], lambda v: fmt(v, m[2]))(get(results, *m[1].split(".")))
    return {block: re.sub(r"\{([\w.]+):([^}]+)\}", fill, "\n".join(
        [f"| {' | '.join(head)} |", "|---" * len(head) + "|"] + [f"| {' | '.join(row)} |" for row in rows]))
        for block, (head, rows) in README_TABLES.items()}


def markers(block: str) -> tuple[str, str]:
    return f"<!-- {block}:start (written by report/build.py) -->", f"<!-- {block}:end -->"


def update_readme(results: dict) -> bool:
    """Each table replaces what lies between its markers (a README without them is left alone); True if rewritten."""
    text = README.read_text()
    for block, table in readme_tables(results).items():
        start, end = markers(block)
        text = re.sub(f"(?s){re.escape(start)}.*?{re.escape(end)}", lambda _: f"{start}\n{table}\n{end}", text)
    return write_if_changed(README, text.encode())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out-dir", type=Path, default=HERE, help="where results/ and figures/ are (default: report/)")
    p.add_argument("--pdf", type=Path, help="the PDF to write (default: OUT_DIR/ex2.pdf)")
    args = p.parse_args(argv)
    info = build(args.pdf or args.out_dir / "ex2.pdf", args.out_dir / "results", args.out_dir / "figures")
    if args.out_dir.resolve() == HERE and update_readme(info["results"]):
        print("updated the results and speed tables in README.md")


if __name__ == "__main__":
    main()
