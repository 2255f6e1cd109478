"""Paths, seeding, device selection, CLI helpers and the atomic file writer (results, checkpoints)."""
from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
REPORT_DIR = REPO_ROOT / "report"
RUNS_DIR = REPO_ROOT / "runs"  # checkpoints; git-ignored


# ----------------------------------------------------------------------------- errors / entry point
class UserError(RuntimeError):
    """A problem the user can fix (missing data, a foreign checkpoint): reported in one line, no traceback."""


def run_main(main) -> None:
    """The scripts' entry point: run main(); a UserError exits with 'error: ...' and status 1, Ctrl-C
    with one line and status 130 (128 + SIGINT, as a shell reports it), no traceback either way."""
    try:
        main()
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:
        # checkpoints are written after every finished epoch, so nothing more needs saving here
        print("\ninterrupted; resume with --resume (continues after the last finished epoch)", file=sys.stderr)
        raise SystemExit(130) from None


# ----------------------------------------------------------------------------- seeding / device
def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator for shuffling.

    Batches are drawn from this explicit generator, so the data order does not depend on how
    many random numbers model initialisation consumed.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # warn_only: a few CUDA kernels have no deterministic version; on CPU everything used here does.
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit name is honoured (and checked)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available on this machine (try --device auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps requested but MPS is not available on this machine (try --device auto)")
    return torch.device(name)


# ----------------------------------------------------------------------------- CLI
def _number(text: str, kind=float):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a{'n integer' if kind is int else ' number'}, got {text!r}")
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonneg_int(text: str) -> int:
    """A seed or a count that may be 0."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def nonneg_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def learning_rate(text: str) -> float:
    """A positive, finite learning rate no larger than 1 (larger ones only produce NaN losses here)."""
    value = positive_float(text)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def fraction(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def add_common_args(parser: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float,
                    seed: int = 0, runs_dir: bool = True, resume: bool = True) -> argparse.ArgumentParser:
    """Arguments every experiment script shares, with the script's own defaults.

    runs_dir / resume: offer --runs-dir (the script reads or writes checkpoints) and --resume (it can
    continue an interrupted run); scripts that do neither do not offer them, so --help promises nothing.
    """
    g = parser.add_argument_group("common")
    g.add_argument("--epochs", type=positive_int, default=epochs, help=f"training epochs (default {epochs})")
    g.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help=f"mini-batch size (default {batch_size})")
    g.add_argument("--lr", type=learning_rate, default=lr, help=f"peak learning rate (default {lr})")
    g.add_argument("--seed", type=nonneg_int, default=seed, help=f"random seed (default {seed})")
    add_io_args(g)
    if runs_dir:
        g.add_argument("--runs-dir", type=Path, default=None,
                       help="checkpoint folder (default: runs/, or <out-dir>/runs with --smoke)")
    if resume:
        g.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --runs-dir")
    g.add_argument("--tensorboard", action="store_true",
                   help="also log per-epoch scalars and the config to runs/tb/<script>/<time> "
                        "(view: tensorboard --logdir runs/tb)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="compute device (default: auto = cuda > mps > cpu)")
    g.add_argument("--smoke", action="store_true",
                   help="tiny data slice and 1-2 epochs, written to a temp dir: checks the script runs")
    return parser


def add_io_args(group) -> None:
    """--data-dir and --out-dir, for every script (python -m common.bench too, which trains no epochs)."""
    group.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "./data"),
                       help="dataset root (default: $DATA_DIR, else ./data); downloads there when online")
    group.add_argument("--out-dir", type=Path, default=None,
                       help="where figures/ and results/ go (default: report/, or a temp dir with --smoke)")


def smoke_output_dir() -> Path:
    """A temp folder for a --smoke run without --out-dir, removed when the process exits (saying so):
    smoke runs check that a script runs, and would otherwise pile up in the system temp folder."""
    out = Path(tempfile.mkdtemp(prefix="smoke_"))

    def remove():
        shutil.rmtree(out, ignore_errors=True)
        print(f"(smoke run: removed {out}; pass --out-dir to keep the outputs)")
    atexit.register(remove)
    return out


def resolve_output_dirs(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """(figures_dir, results_dir, runs_dir). --smoke never writes over the committed report/."""
    out = args.out_dir
    if out is None:
        out = smoke_output_dir() if args.smoke else REPORT_DIR
    runs = getattr(args, "runs_dir", None)
    runs = runs if runs is not None else (out / "runs" if args.smoke else RUNS_DIR)
    fig, res = out / "figures", out / "results"
    for d in (fig, res) + ((runs,) if hasattr(args, "runs_dir") else ()):  # no runs/ for scripts without
        d.mkdir(parents=True, exist_ok=True)
    return fig, res, runs


# ----------------------------------------------------------------------------- results
def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        try:
            return str(obj.resolve().relative_to(REPO_ROOT))
        except ValueError:
            return str(obj)
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, float):
        return round(obj, 6)  # 6 decimals: enough for every metric, keeps diffs readable
    return obj


def atomic_write(path: Path, write) -> Path:
    """Write a file all at once or not at all: `write(tmp)` fills a temp file next to `path`, which then
    replaces `path` (os.replace), so a crash never leaves a half-written result or checkpoint. Mode 0644."""
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
    """`obj` as indented JSON (tensors as lists, floats to 6 decimals), written atomically (atomic_write)."""
    text = json.dumps(_jsonable(obj), indent=1) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def run_config(args: argparse.Namespace) -> dict:
    """The argparse namespace as a JSON-friendly dict (paths relative to the repo)."""
    return _jsonable(vars(args))
