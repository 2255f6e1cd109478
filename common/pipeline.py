"""The whole MNIST pipeline in one command, each stage timed: ex1 -> ex2 -> ex3 -> ex4 -> ex5 -> report.

    python -m common.pipeline                 # writes report/results/pipeline.json (budget: 15 min, 2 cores)
    python -m common.pipeline --dry-run       # only print the commands
    python -m common.pipeline --stages ex4 report

Every stage is the script's own default run in a fresh Python process, exactly what a student types, in
dependency order: ex3 reuses the checkpoints ex1 and ex2 write to runs/ (and ex5 ex1's), so nothing is
trained twice. Each stage's seconds include Python start-up and data loading. The JSON also records the
machine (CPU model, cores, the SIMD level torch uses, threads) and its fp32 matmul peak measured just
before the run, because the same pipeline takes twice as long on a CPU with half the peak. The README's
pipeline rows are generated from it (report/build.py), which is why the report is built once more,
untimed, after the JSON is written.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from .bench import machine_info, matmul_peak
from .utils import UserError, run_main, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 900  # issue 13: ex1-ex5 + report build in <= 15 min on the idle 2-core machine
STAGES = {  # name -> command, run from the repository root
    "ex1": ["ex1_autoencoder.py"],
    "ex2": ["ex2_classifier.py"],
    "ex3": ["ex3_classifier_decoding.py"],
    "ex4": ["ex4_few_shot.py"],
    "ex5": ["ex5_finetune.py"],
    "report": ["report/build.py"],
}
TRAINING = ("ex1", "ex2", "ex3", "ex4", "ex5")  # the stages that take --data-dir


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES),
                   help="stages to run, in this order (default: all six)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="passed on to the training scripts (default: theirs, i.e. $DATA_DIR or ./data)")
    p.add_argument("--out", type=Path, default=ROOT / "report" / "results" / "pipeline.json",
                   help="where the timings go (default report/results/pipeline.json)")
    p.add_argument("--peak-seconds", type=float, default=1.0,
                   help="seconds per matrix size of the matmul-peak measurement (default 1.0)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return p.parse_args(argv)


def commands(stages, data_dir: Path | None = None) -> list[tuple[str, list[str]]]:
    """(name, argv) of each stage, in order; the training stages get --data-dir when it is given."""
    out = []
    for name in stages:
        cmd = [sys.executable, *STAGES[name]]
        if data_dir is not None and name in TRAINING:
            cmd += ["--data-dir", str(data_dir)]
        out.append((name, cmd))
    return out


def run_stages(cmds: list[tuple[str, list[str]]], cwd: Path = ROOT, clock=time.perf_counter) -> list[dict]:
    """Run each command to completion, one after another; stop at the first that fails (its exit status
    is raised as a UserError naming the stage). One row per stage: name, command, seconds."""
    rows = []
    for name, cmd in cmds:
        print(f"\n=== pipeline stage {name}: {' '.join(cmd)}", flush=True)
        t0 = clock()
        rc = subprocess.call(cmd, cwd=cwd)
        seconds = clock() - t0
        if rc != 0:
            raise UserError(f"pipeline stage {name} failed (exit status {rc}) after {seconds:.0f} s; "
                            f"rerun it alone to see why: {' '.join(cmd)}")
        rows.append({"name": name, "command": " ".join([Path(cmd[0]).name, *cmd[1:]]), "seconds": seconds})
        print(f"=== {name}: {seconds:.0f} s", flush=True)
    return rows


def main(argv=None) -> dict:
    args = get_args(argv)
    cmds = commands(args.stages, args.data_dir)
    if args.dry_run:
        for name, cmd in cmds:
            print(f"{name}: {' '.join(cmd)}")
        return {}
    peak = matmul_peak(seconds=args.peak_seconds)  # before the stages, on the then idle machine
    t0 = time.perf_counter()
    rows = run_stages(cmds)
    total = time.perf_counter() - t0
    result = {"name": "pipeline", "config": {"stages": args.stages, "data_dir": str(args.data_dir)},
              "machine": machine_info(), "matmul_peak": peak, "stages": rows, "total_s": total,
              "budget_s": BUDGET_S, "within_budget": total <= BUDGET_S if set(args.stages) == set(STAGES) else None,
              "date": time.strftime("%Y-%m-%d")}
    path = write_json_atomic(args.out, result)
    if "report" in args.stages:  # once more, untimed, so that the PDF and README show these very timings
        run_stages([c for c in cmds if c[0] == "report"])
    print("\n stage  | seconds")
    for r in rows:
        print(f" {r['name']:6s} | {r['seconds']:7.0f}")
    print(f" total  | {total:7.0f}  (budget {BUDGET_S} s; fp32 matmul peak {peak['best_gflops']:.0f} GFLOP/s "
          f"on {result['machine']['cpu']})")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    run_main(main)
