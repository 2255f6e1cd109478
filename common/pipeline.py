"""Every stage from the data to the PDF in dependency order, each its script's default run in a fresh process, timed."""
import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .bench import matmul_peak
from .utils import REPO_ROOT, UserError, add_io_args, machine, run_config, run_main, write_json_atomic

STAGES = dict(ex1="ex1_autoencoder.py", ex2="ex2_classifier.py", ex3="ex3_classifier_decoding.py",
              ex4="ex4_few_shot.py", ex5="ex5_finetune.py", selftrain="ex5_finetune.py --variants scratch selftrain",
              lab_dbvae="lab_dbvae.py", lab_cam="lab_cam.py", bench="-m common.bench", report="report/build.py")


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
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    add_io_args(p)
    args = p.parse_args(argv)
    out, data = args.out_dir or REPO_ROOT / "report", ["--data-dir", str(Path(args.data_dir).expanduser().resolve())]
    cmds = [(n, [sys.executable, *STAGES[n].split(), *(data if n != "report" else []),  # absolute: cwd is REPO_ROOT
                 *(["--out-dir", str(out.resolve())] if args.out_dir else [])]) for n in STAGES if n in args.stages]
    if args.dry_run:
        return {"stages": list(run_stages(cmds, call=lambda cmd, cwd: 0))}
    peak, rows = matmul_peak(), list(run_stages(cmds))  # the peak first, on the idle machine: timings scale with it
    result = {"name": "pipeline", "config": run_config(args), "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "matmul_peak": {"best_gflops": peak}, "stages": rows, "total_s": sum(r["seconds"] for r in rows)}
    print(f"wrote {write_json_atomic(out / 'results' / 'pipeline.json', result)} ({result['total_s']:.0f} s in all)")
    if "report" in args.stages:  # once more, untimed, so that the PDF and README show these timings
        subprocess.call(dict(cmds)["report"], cwd=REPO_ROOT)
    return result


if __name__ == "__main__":
    run_main(main)
