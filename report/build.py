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

# result name -> (glob patterns for the script that writes it, fallback command, figures it should come with)
EXPERIMENTS = {
    "ex1": (["ex1_*.py", "ex1*.py"], "python ex1_autoencoder.py", ["ex1_reconstructions.png", "ex1_loss.png"]),
    "ex2": (["ex2_*.py", "ex2*.py"], "python ex2_classifier.py", ["ex2_curves.png", "ex2_baselines.png"]),
    "ex3": (["ex3_*.py", "ex3*.py"], "python ex3_latent.py", ["ex3_digits.png", "ex3_tsne.png"]),
    "ex4": (["ex4_*.py", "ex4*.py", "ex45*.py"], "python ex4_few_labels.py", ["ex4_curves.png"]),
    "ex5": (["ex5_*.py", "ex5*.py", "ex45*.py"], "python ex5_pretrained.py", ["ex45_compare.png"]),
    "lab_dbvae": (["lab_dbvae*.py", "*dbvae*.py"], "python lab_dbvae.py", ["lab_dbvae_groups.png"]),
    "lab_cam": (["lab_cam*.py", "*cam*.py"], "python lab_cam.py", ["lab_cam_overview.png", "lab_cam_curves.png"]),
    "bench": (["bench*.py", "*bench*.py"], "python bench.py", []),
}
_SKIP_DIRS = {"tests", "report", "common", "runs", "data", ".git", ".ci", "__pycache__"}


class BuildError(RuntimeError):
    pass


def find_script(patterns: list[str], fallback: str) -> str:
    """The command that produces a result: the first matching script in the repo root or a sub-folder."""
    dirs = [REPO] + sorted(d for d in REPO.iterdir() if d.is_dir() and d.name not in _SKIP_DIRS
                           and not d.name.startswith("."))
    for pattern in patterns:
        for d in dirs:
            hits = sorted(p for p in d.glob(pattern) if p.is_file())
            if hits:
                return "python " + hits[0].relative_to(REPO).as_posix()
    return fallback


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
    scripts = {name: find_script(pats, fb) for name, (pats, fb, _) in EXPERIMENTS.items()}
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
        _, warnings = typst.compile_with_warnings(str(SOURCE), output=str(out), root=str(root), sys_inputs=inputs)
    except typst.TypstError as e:
        raise BuildError(f"Typst could not build {SOURCE.name}:\n{e}") from e
    for w in warnings or []:
        print(f"typst warning: {w}", file=sys.stderr)
    pngs = []
    if png:
        pattern = out.with_name(out.stem + "-{0p}.png")
        typst.compile(str(SOURCE), output=str(pattern), format="png", ppi=110, root=str(root), sys_inputs=inputs)
        pngs = sorted(out.parent.glob(out.stem + "-*.png"))

    missing = {n: scripts[n] for n in EXPERIMENTS if n not in results}
    missing_figs = {f: scripts[n] for n, (_, _, figs) in EXPERIMENTS.items() if n in results
                    for f in figs if f not in figures}
    if not quiet:
        print(f"wrote {out}  (results: {', '.join(results) or 'none'})")
        for name, cmd in missing.items():
            print(f"  missing {name}: run `{cmd}` to produce {_show(results_dir / (name + '.json'))}")
        for f, cmd in missing_figs.items():
            print(f"  missing figure {f}: run `{cmd}`")
        if pngs:
            print(f"  rendered {len(pngs)} page(s) to {pngs[0].parent}/{out.stem}-*.png")
    return {"pdf": out, "results": results, "figures": figures, "missing": missing,
            "missing_figures": missing_figs, "pngs": pngs}


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
    try:
        build(args.out or rd / "ex2.pdf", args.results_dir or rd / "results", args.figures_dir or rd / "figures",
              png=args.png)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
