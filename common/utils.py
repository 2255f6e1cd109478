"""Paths, seeding, device, the command-line flags every script shares, and atomic result files."""
from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNS_DIR = REPO_ROOT / "runs"  # checkpoints; git-ignored
INTERRUPTED = "\ninterrupted; resume with --resume (continues after the last finished epoch)"


class UserError(RuntimeError):
    """A problem the user can fix (missing data, a foreign checkpoint, a diverged run): one line, no traceback."""


def run_main(main) -> None:
    """The scripts' entry point: UserError -> 'error: ...' and status 1, Ctrl-C -> one line, 130 (128 + SIGINT)."""
    try:
        main()
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:  # checkpoints are written after every finished epoch: nothing more to save here
        print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(130) from None


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; a CPU generator for shuffling and augmentation, independent of model init."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn_only: a few CUDA kernels have no deterministic one
    return torch.Generator().manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit name must be available."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    name = next(n for n, ok in available.items() if ok) if name == "auto" else name
    if not available[name]:
        raise UserError(f"--device {name} requested but it is not available on this machine (try --device auto)")
    return torch.device(name)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX; emulated: ~10x slower), by torch.cpu's probes."""
    return any(getattr(torch.cpu, p, lambda: False)() for p in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def machine() -> dict:
    """What a result was computed on: results differ slightly between CPU kinds, and timings about 2x."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {"cpu": cpu, "cores": os.cpu_count(), "simd": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def provenance(device: torch.device, precision: str = "fp32") -> dict:
    """What made a result (reproducible per commit and CPU kind): commit (dirty: .py files differ), machine, device."""
    def git(*cmd: str) -> str:
        try:
            out = subprocess.run(["git", *cmd], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):  # no git, or not a checkout: the record says None
            return ""
    commit = git("rev-parse", "HEAD") or None
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "*.py")) if commit else None
    return {"commit": commit, "dirty": dirty, **machine(), "device": str(device), "precision": precision}


def number(kind=float, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False):
    """An argparse type: a finite int or float in [lo, hi] ((lo, hi] with lo_open), else one line from argparse."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        low_ok = value > lo if lo_open else value >= lo
        if not (math.isfinite(value) and low_ok and value <= hi):
            raise argparse.ArgumentTypeError(f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = number(int, 1)
seed_int = number(int, 0)
fraction = number(float, 0.0, 1.0)
learning_rate = number(float, 0.0, 1.0, lo_open=True)  # larger ones only produce NaN losses here


def add_common_args(parser: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float, schedule="onecycle",
                    runs_dir: bool = True, resume: bool = True, threads: int = 0) -> argparse.ArgumentParser:
    """The flags every script shares, its recipe as defaults; runs_dir / resume: it keeps / can continue checkpoints."""
    g = parser.add_argument_group("common")
    g.add_argument("--epochs", type=positive_int, default=epochs, help=f"training epochs (default {epochs})")
    g.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"batch size (default {batch_size})")
    what = "peak learning rate of the one-cycle schedule" if schedule == "onecycle" else "constant learning rate"
    g.add_argument("--lr", type=learning_rate, default=lr, help=f"{what} (default {lr:g})")
    g.add_argument("--seed", type=seed_int, default=0, help="random seed of the training run (default 0)")
    add_io_args(g)
    if runs_dir:
        g.add_argument("--runs-dir", type=Path, help="checkpoint folder (default runs/, with --smoke <out-dir>/runs)")
    if resume:
        g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --runs-dir")
    g.add_argument("--tensorboard", action="store_true", help="also log per-epoch scalars to <runs dir>/tb/<script>/")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto: cuda > mps > cpu")
    g.add_argument("--threads", type=seed_int, default=threads, help=f"CPU threads, 0 = torch's (default {threads})")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="training steps in bf16 autocast or fp32; evaluation stays fp32 (default auto: bf16 where "
                   "python -m common.bench found it pays)")
    g.add_argument("--smoke", action="store_true", help="1-2 epochs on a tiny slice into a temp dir: checks it runs")
    return parser


def add_io_args(group) -> None:
    """--data-dir and --out-dir, for every script (python -m common.bench too)."""
    group.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "./data"), help="default $DATA_DIR, or ./data")
    group.add_argument("--out-dir", type=Path, help="for figures/, results/ (default report/, --smoke: a temp dir)")


def add_model_args(parser: argparse.ArgumentParser, *, hidden: bool = True) -> None:
    """The ex1 encoder's (and the classifier's MLP head's) size flags, shared by ex1-ex5."""
    parser.add_argument("--latent-dim", type=positive_int, default=12, help="size d of the latent code (default 12)")
    parser.add_argument("--channels", type=positive_int, nargs="+", default=[32, 64, 128],
                        help="conv channels per stride-2 layer of the encoder (default 32 64 128)")
    if hidden:
        parser.add_argument("--hidden", type=positive_int, default=64, help="hidden units of the MLP head (default 64)")


def setup(args: argparse.Namespace) -> tuple[Path, Path, Path, torch.device]:
    """(figures_dir, results_dir, runs_dir, device) of a run, its CPU threads set; --smoke never writes to report/."""
    out = args.out_dir or REPO_ROOT / "report"
    if args.smoke and args.out_dir is None:  # a temp folder, removed at exit: smoke runs only check a script runs
        out = Path(tempfile.mkdtemp(prefix="smoke_"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
    runs = getattr(args, "runs_dir", None) or (out / "runs" if args.smoke else RUNS_DIR)
    for d in (out / "figures", out / "results", *([runs] if hasattr(args, "runs_dir") else [])):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise UserError(f"cannot create the folder {d}: {exc.strerror.lower()} (a file is in the way); "
                            f"pass another --out-dir / --runs-dir") from None
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    return out / "figures", out / "results", runs, pick_device(getattr(args, "device", "auto"))


def jsonable(obj):
    """`obj` in JSON's types (dicts, lists, numbers, strings) for a results JSON or a run's config."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):  # relative to the repository where possible: the same JSON on every checkout
        return str(obj.resolve().relative_to(REPO_ROOT)) if obj.resolve().is_relative_to(REPO_ROOT) else str(obj)
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float):
        return round(obj, 6)  # 6 decimals: enough for every metric, keeps diffs readable
    return obj


def atomic_write(path: Path, write) -> Path:
    """Write `path` all at once or not at all (a crash leaves no half file): `write(tmp)` fills a temp file first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and checkpoints are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, obj) -> Path:
    """`obj` as indented JSON (tensors as lists, floats to 6 decimals), written atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(jsonable(obj), indent=1) + "\n"))


def write_results(path: Path, results: dict, args, device, t_start: float, precision: str = "fp32") -> Path:
    """The results JSON, with what made it: the run's flags, the provenance and the wall time."""
    results.update(config=jsonable(vars(args)), provenance=provenance(device, precision),
                   wall_time_s=time.perf_counter() - t_start)
    return write_json_atomic(path, results)
