"""Every stage from the data to the PDF in dependency order (the bench first: --precision auto reads its bench.json),
each its script's default run in a fresh process, timed;
with --resume, only the stages whose results JSON the current code did not make."""
import argparse
import ast
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .bench import matmul_peak
from .utils import REPO_ROOT, UserError, add_io_args, jsonable, pick_device, provenance, run_main, write_json_atomic

STAGES = dict(bench="-m common.bench", stacking="-m common.bench --stacking",
              ex1="ex1_autoencoder.py", ex2="ex2_classifier.py", ex3="ex3_classifier_decoding.py",
              ex4="ex4_few_shot.py", ex5="ex5_finetune.py", selftrain="ex5_finetune.py --variants scratch selftrain",
              lab_dbvae="lab_dbvae.py", lab_cam="lab_cam.py", report="report/build.py")
# the results/<name>.json of a stage, where not <stage>.json
RESULTS = {"selftrain": "ex5_selftrain", "stacking": "bench_stacking", "report": None}
STAGE_OF = {RESULTS.get(s, s): s for s in STAGES if RESULTS.get(s, s)}  # results name -> the stage that writes it


def stage_files(stage: str, root: Path = REPO_ROOT) -> list[str]:
    """The files a stage runs, relative to `root`, sorted: its script (`-m a.b`: a/b.py) and the modules under
    `root` it imports, transitively, found with ast (no list to keep up to date)."""
    args, root = STAGES[stage].split(), root.resolve()
    seen, todo = set(), [root / (args[1].replace(".", "/") + ".py" if args[0] == "-m" else args[0])]
    while todo:
        if (path := todo.pop()) in seen:
            continue
        seen.add(path)
        package = path.parent.relative_to(root).parts  # () for a script at the root
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):  # from m import n: m, and n, which may be a module too
                base = package[:len(package) + 1 - node.level] if node.level else ()  # relative: from the package
                m = ".".join([*base, *([node.module] if node.module else [])])
                names = [m, *(f"{m}.{a.name}" for a in node.names)]
            stems = [root.joinpath(*name.split(".")) for name in names]
            todo += [f for s in stems for f in (s.with_suffix(".py"), s / "__init__.py") if f.is_file()]
    return sorted(p.relative_to(root).as_posix() for p in seen)


def outdated(result, files: list[str], ref: str | None = "HEAD", root: Path = REPO_ROOT) -> str:
    """'' if `result` (a results JSON) was made by the code that `ref` (None: the working tree) has for `files`: its
    provenance names a commit of this repository and a clean tree, and none of the files differ from that commit.
    Else why not. --resume and report/build.py's warnings both ask this."""
    prov = result.get("provenance") if isinstance(result, dict) else None
    commit = prov.get("commit") if isinstance(prov, dict) else None
    if not isinstance(commit, str):
        return "no provenance commit"
    if prov.get("dirty") is not False:
        return f"made from a dirty tree at {commit[:7]}"
    diff = subprocess.run(["git", "diff", "--name-only", commit, *([ref] if ref else []), "--", *files], cwd=root,
                          capture_output=True, text=True)
    if diff.returncode:
        return f"commit {commit[:7]} is not in this repository"
    return f"{', '.join(diff.stdout.split())} changed since {commit[:7]}" if diff.stdout.strip() else ""


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # missing or unreadable: no result
        return None


def run_stages(cmds, cwd=REPO_ROOT, clock=time.perf_counter, call=subprocess.call):  # yields a row per stage
    for i, (name, cmd) in enumerate(cmds, 1):
        print(f"=== [{i}/{len(cmds)}] {name}: {shlex.join(cmd)}", flush=True)
        t0 = clock()
        if rc := call(cmd, cwd=cwd):
            raise UserError(f"stage {name} failed (exit status {rc}) after {clock() - t0:.0f} s: {shlex.join(cmd)}")
        yield {"name": name, "command": shlex.join(["python", *cmd[1:]]), "seconds": clock() - t0}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), metavar="STAGE",
                   help="run only these, in dependency order (ex3 reuses ex2, ex5 ex1): %(choices)s (default: all)")
    p.add_argument("--resume", action="store_true", help="skip each stage whose results JSON the current code made "
                   "(its provenance commit has the stage's script and local modules as they are now, clean tree)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    add_io_args(p)
    args = p.parse_args(argv)
    out, data = args.out_dir or REPO_ROOT / "report", ["--data-dir", str(Path(args.data_dir).expanduser().resolve())]
    skip = [n for n in args.stages if args.resume and RESULTS.get(n, n) and not outdated(  # the working tree's code
        read_json(out / "results" / f"{RESULTS.get(n, n)}.json"), stage_files(n), ref=None)]
    for n in skip:
        print(f"=== skip {n}: its results come from the current code", flush=True)
    cmds = [(n, [sys.executable, *STAGES[n].split(), *(data if n != "report" else []),  # absolute: cwd is REPO_ROOT
                 *(["--out-dir", str(out.resolve())] if args.out_dir else [])])
            for n in STAGES if n in args.stages and n not in skip]
    if args.dry_run:
        return {"stages": list(run_stages(cmds, call=lambda cmd, cwd: 0)), "skipped": skip}
    # --resume keeps the skipped stages' rows: the timings of the run that made their results
    before = (read_json(out / "results" / "pipeline.json") or {}) if skip else {}
    kept = [r for r in before.get("stages", []) if r.get("name") in skip]
    result = {"name": "pipeline", "config": jsonable(vars(args)), "provenance": provenance(pick_device(), None),
              "date": time.strftime("%Y-%m-%d"),  # the peak first, on the idle machine (or the kept stages' run's)
              "matmul_peak": before["matmul_peak"] if kept else {"best_gflops": matmul_peak()},
              "stages": kept, "skipped": skip, "total_s": sum(r["seconds"] for r in kept)}
    write_json_atomic(out / "results" / "pipeline.json", result)  # and after every stage: the report stage reads it
    for row in run_stages(cmds):
        result["stages"].append(row)
        result["total_s"] += row["seconds"]
        write_json_atomic(out / "results" / "pipeline.json", result)
    print(f"wrote {out / 'results' / 'pipeline.json'} ({result['total_s']:.0f} s in all)")
    if "report" in args.stages:  # once more, untimed, so that the PDF and README show these timings
        subprocess.call(dict(cmds)["report"], cwd=REPO_ROOT)
    return result


if __name__ == "__main__":
    run_main(main)
