"""The training loop of the MNIST scripts and lab_cam: `fit` trains on in-memory TensorData with AdamW and a `Recipe`,
checkpoints every epoch and returns one history row per epoch; `fit_parallel` runs several trainings side by side."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import AFFINE, TensorData, describe_exception, random_affine
from .utils import INTERRUPTED, REPO_ROOT, RUNS_DIR, UserError, atomic_write, machine, native_bf16, seed_everything

EVAL_BATCH = 2000  # images per evaluation batch: one MNIST test pass is 5 batches; memory stays < 1 GB
FLAT_GAIN = 0.01   # a test curve is flat when its last epoch improves the test L1 by less than 1 %
BENCH_JSON = REPO_ROOT / "report" / "results" / "bench.json"
cross_entropy = nn.functional.cross_entropy


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: what the results JSON records and a checkpoint must match to be reused."""
    epochs: int
    lr: float                  # the peak of the one-cycle schedule, or the constant rate
    batch_size: int
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (Loshchilov & Hutter 2019)
    schedule: str = "onecycle"  # "onecycle" (Smith & Topin 2019: warm-up, then annealing per step) or "constant"
    eval_every: int = 1        # epochs between test evaluations (the last epoch is always evaluated)
    augment: str = "none"      # "none", or data.AFFINE: random shifts and rotations of every training batch

    def override(self, args) -> "Recipe":
        """This recipe with the numeric fields given on the command line (flags named like the fields)."""
        numeric = ("epochs", "lr", "batch_size", "weight_decay", "eval_every")
        return replace(self, **{k: v for k, v in vars(args).items() if k in numeric})


def mean_l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over every pixel of every image: (1/BCHW) sum |x_hat - x|."""
    return (recon - target).abs().mean()


def resolve_precision(name: str, device: torch.device, model: str | None = None) -> str:
    """--precision auto: bf16 on a CUDA GPU that supports it; on a CPU only if it computes bf16 natively (emulated: ~10x
    slower) and bench.json, measured on this CPU model, says bf16 pays for `model` (ae, classifier, dbvae, cam)."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type != "cpu" or model is None or not native_bf16():
        return "fp32"
    try:
        bench = json.loads(BENCH_JSON.read_text())
    except (OSError, ValueError):
        return "fp32"
    same_cpu = bench.get("provenance", {}).get("cpu") == machine()["cpu"]
    return "bf16" if same_cpu and bench.get(model, {}).get("pays") is True else "fp32"


def autocast(precision: str, device: torch.device):
    """bfloat16 autocast for training steps when precision == "bf16"; evaluation always runs in float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def optimizer_step(opt, sched, loss: torch.Tensor) -> None:
    """One optimiser step on `loss`, then one step of the schedule (None: a constant rate)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()


def train_epoch(model: nn.Module, data: TensorData, loss_fn: Callable, opt, sched, gen: torch.Generator, *,
                batch_size: int, augment: Callable | None = None, precision: str = "fp32", bar=None) -> dict:
    """One shuffled pass in index batches (mean_l1: reconstruct the clean input); accuracy counted on the device."""
    model.train()
    device = next(model.parameters()).device
    reconstruct = loss_fn is mean_l1
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for idx in torch.randperm(len(data), generator=gen).split(batch_size):
        x = data.x[idx].to(device, non_blocking=True)                         # (B, C, H, W)
        y = x if reconstruct else data.y[idx].to(device, non_blocking=True)   # (B, C, H, W) or (B,)
        with autocast(precision, device):
            out = model(augment(x, gen) if augment is not None else x)        # (B, C, H, W) or (B, classes)
        loss = loss_fn(out.float(), y)
        optimizer_step(opt, sched, loss)
        loss_sum += loss.detach() * len(y)
        if not reconstruct:
            correct += (out.detach().argmax(1) == y).sum()
        if bar is not None:
            bar.update(1)
    return {"loss": loss_sum.item() / len(data), **({} if reconstruct else {"acc": correct.item() / len(data)})}


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = EVAL_BATCH, fn=None):
    """`fn` (default: the model) over x in eval-mode batches, concatenated on the CPU (a tuple-valued fn: a tuple)."""
    model.eval()
    outs = [(fn or model)(x[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat([o.cpu() for o in parts]) for parts in zip(*outs))
    return torch.cat([o.cpu() for o in outs])


@torch.inference_mode()
def evaluate(model: nn.Module, data: TensorData, loss_fn: Callable) -> dict:
    """Mean loss over `data` (and accuracy for a classifier), in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    reconstruct = loss_fn is mean_l1
    loss_sum, correct = 0.0, 0
    for i in range(0, len(data), EVAL_BATCH):
        x = data.x[i:i + EVAL_BATCH].to(device)
        y = x if reconstruct else data.y[i:i + EVAL_BATCH].to(device)
        out = model(x)
        loss_sum += loss_fn(out, y).item() * len(x)
        correct += 0 if reconstruct else (out.argmax(1) == y).sum().item()
    return {"loss": loss_sum / len(data), **({} if reconstruct else {"acc": correct / len(data)})}


def save_checkpoint(path: Path, model: nn.Module, **extra) -> None:
    """Atomic save of the weights and architecture config; `extra`: tensors and plain values (weights_only loads)."""
    ckpt = {"arch": getattr(model, "config", None), "model": model.state_dict(), **extra}
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path: Path, model: nn.Module) -> dict:
    """Load weights into `model` (weights_only: a checkpoint must not run code); a bad one is one clear line."""
    redo = "delete it, and the run that needs it trains it again"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # empty or truncated file, random bytes, a pickle of disallowed objects
        why = describe_exception(exc).split(". ")[0]  # torch's advice to load with weights_only=False: not ours
        raise UserError(f"cannot read checkpoint {path} ({why}); {redo}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this project; {redo}")
    want = getattr(model, "config", None)
    if ckpt.get("arch") != want:
        raise UserError(f"checkpoint {path} was saved for architecture {ckpt.get('arch')}, but this run builds "
                        f"{want}. Delete the file, or pass a matching configuration / another --runs-dir.")
    model.load_state_dict(ckpt["model"])
    return ckpt


def recipe_differences(ckpt: dict, recipe, train_size: int) -> str:
    """'' when the checkpoint was trained with `recipe` on `train_size` images, else what differs."""
    want = {**asdict(recipe), "train_size": train_size}
    saved = {**ckpt.get("recipe", {}), "train_size": ckpt.get("train_size")}
    return "; ".join(f"{k} {saved.get(k)!r} (this run: {v!r})" for k, v in want.items() if saved.get(k) != v)


def load_or_fit(path: Path, model: nn.Module, what: str, recipe: Recipe, train: TensorData, test: TensorData, *,
                seed: int, loss_fn: Callable = cross_entropy) -> nn.Module:
    """`model` (built right after seeding) from the checkpoint at `path`, or trained there first with its script's
    `recipe` and `seed`. An unfinished run's or another recipe's checkpoint is the user's: refused, not overwritten."""
    if not Path(path).exists():
        print(f"{path} not found: training {what} first (with its own script's recipe)")
        fit(model, train, test, recipe, gen=seed_everything(seed), loss_fn=loss_fn, ckpt_path=path)
        return model
    ckpt = load_checkpoint(path, model)
    if ckpt.get("epoch", 0) < recipe.epochs:
        raise UserError(f"{path} holds an unfinished run of {what} (epoch {ckpt.get('epoch')} of {recipe.epochs}); "
                        f"finish it with its script's --resume, or delete it to have it trained here")
    if diff := recipe_differences(ckpt, recipe, len(train)):
        raise UserError(f"{path} holds {what} trained with {diff}; delete it to have it trained here with this "
                        f"run's recipe, or pass another --runs-dir")
    print(f"loaded {what} from {path}")
    return model


class TensorBoardLog:
    """A run's history as TensorBoard scalars (`train_loss` -> `loss/train`); `close` adds the HPARAMS tab's record."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # lazy: only with --tensorboard
        self.writer = SummaryWriter(str(log_dir))

    @staticmethod
    def tag(key: str) -> str:
        split, _, metric = key.partition("_")
        return f"{metric}/{split}" if split in ("train", "test") and metric and not metric.endswith("time_s") else key

    def scalars(self, row: dict) -> None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(self.tag(key), value, row["epoch"])

    def close(self, hparams: dict, final: dict) -> None:
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        metrics = {f"final/{self.tag(k)}": v for k, v in final.items()
                   if isinstance(v, (int, float)) and k.startswith(("train_", "test_")) and "time" not in k}
        self.writer.add_hparams(flat, metrics, run_name=".")
        self.writer.close()


def tensorboard_dir(args, script: str, runs_dir: Path | None = None) -> Path | None:
    """<runs dir>/tb/<script>/<time stamp> with --tensorboard, else None."""
    if not getattr(args, "tensorboard", False):
        return None
    return Path(runs_dir or RUNS_DIR) / "tb" / script / time.strftime("%Y%m%d-%H%M%S")


def make_optimizer(model: nn.Module, recipe: Recipe, params, steps_per_epoch: int):
    """AdamW over the trainable parameters (or the given groups), and the one-cycle schedule per batch (or None)."""
    groups = params if params is not None else [p for p in model.parameters() if p.requires_grad]  # frozen: none
    opt = torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return opt, (None if recipe.schedule == "constant" else torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.lr, epochs=recipe.epochs, steps_per_epoch=steps_per_epoch))


def fit(model: nn.Module, train: TensorData, test: TensorData, recipe: Recipe, *, gen: torch.Generator,
        loss_fn: Callable = cross_entropy, augment: Callable | None = None, params=None, precision: str = "fp32",
        ckpt_path: Path | None = None, resume: bool = False, tb_dir: Path | None = None) -> list[dict]:
    """Train `model` (on its device) with `recipe`; the per-epoch history. augment: (x, gen) -> x, default the recipe's;
    params: AdamW groups with own lr. `ckpt_path`: weights, optimiser, RNG states after every epoch, for `resume`."""
    model.to(memory_format=torch.channels_last)  # NHWC activations: oneDNN's faster CPU conv kernels
    augment = augment or (random_affine if recipe.augment == AFFINE else None)
    steps = math.ceil(len(train) / recipe.batch_size)
    opt, sched = make_optimizer(model, recipe, params, steps)
    history, desc = [], Path(ckpt_path).stem if ckpt_path else "train"
    if resume and ckpt_path is not None and Path(ckpt_path).exists():
        ckpt = load_checkpoint(ckpt_path, model)
        if diff := recipe_differences(ckpt, recipe, len(train)):
            raise UserError(f"cannot resume from {ckpt_path}: it was trained with {diff}. Rerun with its "
                            f"settings, or delete it (or drop --resume) to start over")
        opt.load_state_dict(ckpt["optimizer"])
        if sched is not None:
            sched.load_state_dict(ckpt["scheduler"])
        gen.set_state(ckpt["gen_state"])
        torch.set_rng_state(ckpt["rng_state"])
        history = ckpt["history"]
        print(f"[{desc}] resumed from {ckpt_path} after epoch {ckpt['epoch']}")
    tb = TensorBoardLog(tb_dir) if tb_dir is not None else None
    bar = tqdm(total=(recipe.epochs - len(history)) * steps, desc=desc, unit="step", mininterval=1.0,
               dynamic_ncols=True, leave=False)
    for epoch in range(len(history) + 1, recipe.epochs + 1):
        t0 = time.perf_counter()
        tr = train_epoch(model, train, loss_fn, opt, sched, gen, batch_size=recipe.batch_size, augment=augment,
                         precision=precision, bar=bar)
        if not math.isfinite(tr["loss"]):  # a diverged run would otherwise write NaN results as numbers
            raise UserError(f"training loss is {tr['loss']} in epoch {epoch} (lr {recipe.lr:g}): training "
                            f"diverged; lower --lr (no results were written)")
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": tr["loss"], "lr": opt.param_groups[0]["lr"], "epoch_time_s": seconds,
               "train_time_s": seconds + (history[-1]["train_time_s"] if history else 0.0)}
        row.update({"train_acc": tr["acc"]} if "acc" in tr else {})
        if epoch % recipe.eval_every == 0 or epoch == recipe.epochs:
            row.update({f"test_{k}": v for k, v in evaluate(model, test, loss_fn).items()})
        if ckpt_path is not None and "test_loss" in row:  # long single runs say where they are; seed sweeps don't
            bar.write(f"[{desc}] epoch {epoch}/{recipe.epochs} " + " ".join(
                f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch", "lr", "train_time_s")))
        history.append(row)
        if tb is not None:
            tb.scalars(row)
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, model, optimizer=opt.state_dict(), epoch=epoch, history=history,
                            scheduler=sched.state_dict() if sched is not None else None, gen_state=gen.get_state(),
                            rng_state=torch.get_rng_state(), recipe=asdict(recipe), train_size=len(train))
    bar.close()
    if tb is not None:
        tb.close(asdict(recipe), history[-1])
    return history


def fit_parallel(jobs: list[Callable], device: torch.device, desc: str | None = None) -> list:
    """The results of the callables `jobs`, in order (`desc`: a progress bar). On a CPU, side by side, one thread each:
    small convolutions gain little from a second thread, two runs use two cores fully. Each job's model is built
    beforehand (or under a lock) and draws from its own generators (never the global RNG): the interleaving changes
    nothing."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # affinity: Linux only
    workers = min(len(jobs), cores) if device.type == "cpu" else 1
    progress = lambda results: list(tqdm(results, total=len(jobs), desc=desc, disable=desc is None))  # noqa: E731
    if workers == 1:
        return progress(job() for job in jobs)
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))  # OpenMP: per thread
    try:
        return progress(pool.map(lambda job: job(), jobs))
    except KeyboardInterrupt:  # a worker inside a torch kernel cannot be stopped, shutting down aborts: exit now
        print(INTERRUPTED, file=sys.stderr)
        os._exit(130)
    finally:
        pool.shutdown(cancel_futures=True)  # after an error in one job: no new ones
        torch.set_num_threads(threads)


def flattening(history: list[dict]) -> dict:
    """The test-L1 curve, each epoch's relative gain over the one before, and whether the last gain < FLAT_GAIN."""
    l1 = [row["test_loss"] for row in history if "test_loss" in row]
    gains = [(a - b) / a for a, b in zip(l1, l1[1:])]
    return {"test_l1": l1, "rel_gain": gains, "last_rel_gain": gains[-1] if gains else None,
            "flat": bool(gains) and gains[-1] < FLAT_GAIN}
