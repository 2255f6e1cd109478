"""The one training loop, evaluation and checkpointing used by every MNIST script.

`fit` is a flat loop over epochs and index mini-batches (see data.index_batches); it records, per
epoch, train/test loss (and accuracy for classifiers), the learning rate, and the wall-clock seconds
spent training (evaluation excluded), so curves can be drawn against epochs or against time.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import TensorData, index_batches
from .utils import UserError, mean_std, seed_everything


class CheckpointMismatchError(UserError):
    """A checkpoint was saved for another architecture than the model being built."""


# ----------------------------------------------------------------------------- losses
def mean_l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over every pixel of every image: (1/BCHW) sum |x_hat - x|."""
    return (recon - target).abs().mean()


cross_entropy = nn.functional.cross_entropy


# ----------------------------------------------------------------------------- one epoch / evaluation
def train_epoch(model: nn.Module, data: TensorData, loss_fn: Callable, opt: torch.optim.Optimizer,
                sched, batch_size: int, gen: torch.Generator, device: torch.device, *,
                reconstruct: bool = False, augment: Callable | None = None, bar=None) -> dict:
    """One pass over `data` in shuffled index batches. Returns mean loss (and accuracy)."""
    model.train()
    loss_sum = torch.zeros((), device=device)  # accumulated on device: no per-step .item() sync
    correct = torch.zeros((), device=device, dtype=torch.long)
    for idx in index_batches(len(data), batch_size, gen):
        xb = data.x[idx].to(device, non_blocking=True)          # (B, C, H, W)
        target = xb if reconstruct else data.y[idx].to(device, non_blocking=True)
        inp = augment(xb, gen) if augment is not None else xb
        out = model(inp)                                          # (B, C, H, W) or (B, classes)
        loss = loss_fn(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        loss_sum += loss.detach() * len(idx)
        if not reconstruct:
            correct += (out.detach().argmax(1) == target).sum()
        if bar is not None:
            bar.update(1)
    n = len(data)
    stats = {"loss": loss_sum.item() / n}
    if not reconstruct:
        stats["acc"] = correct.item() / n
    return stats


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 2000,
            fn: Callable | None = None) -> torch.Tensor:
    """Run `fn` (default: the model) over x in large eval-mode batches; result on CPU."""
    model.eval()
    fn = fn or model
    return torch.cat([fn(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


@torch.inference_mode()
def evaluate(model: nn.Module, data: TensorData, loss_fn: Callable, device: torch.device, *,
             reconstruct: bool = False, batch_size: int = 2000) -> dict:
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(data), batch_size):
        xb = data.x[i:i + batch_size].to(device)
        target = xb if reconstruct else data.y[i:i + batch_size].to(device)
        out = model(xb)
        loss_sum += loss_fn(out, target).item() * len(xb)
        if not reconstruct:
            correct += (out.argmax(1) == target).sum().item()
    stats = {"loss": loss_sum / len(data)}
    if not reconstruct:
        stats["acc"] = correct / len(data)
    return stats


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, model: nn.Module, **extra) -> None:
    """Atomic save of the weights plus the architecture config used to rebuild/validate them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save({"arch": getattr(model, "config", None), "model": model.state_dict(), **extra}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: nn.Module) -> dict:
    """Load weights into `model`; a checkpoint of another architecture raises a clear error."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointMismatchError(f"{path} is not a checkpoint written by this project")
    want = getattr(model, "config", None)
    if ckpt.get("arch") != want:
        raise CheckpointMismatchError(
            f"checkpoint {path} was saved for architecture {ckpt.get('arch')}, but this run builds "
            f"{want}. Delete the file, or pass a matching configuration / another --runs-dir.")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:  # same config dict but different tensors: still not a traceback wall
        raise CheckpointMismatchError(f"checkpoint {path} does not fit this model: "
                                      f"{str(exc).splitlines()[0]}") from exc
    return ckpt


# ----------------------------------------------------------------------------- fit
def fit(model: nn.Module, train: TensorData, test: TensorData, *, epochs: int, lr: float,
        batch_size: int, gen: torch.Generator, device: torch.device, reconstruct: bool = False,
        loss_fn: Callable | None = None, params=None, weight_decay: float = 0.0,
        schedule: str = "onecycle", eval_every: int = 1, augment: Callable | None = None,
        ckpt_path: Path | None = None, resume: bool = False, desc: str = "train",
        on_epoch: Callable | None = None) -> list[dict]:
    """Train `model` and return the per-epoch history.

    schedule='onecycle' (Smith & Topin 2019) warms up then anneals the LR per step: it reaches a given
    accuracy in far fewer epochs than a constant LR, which is what makes CPU training practical here.
    `params` restricts the optimised parameters (ex3 trains only the decoder). With `ckpt_path`, the
    model/optimiser/RNG state is saved after every epoch; `resume=True` continues from there.
    """
    loss_fn = loss_fn or (mean_l1 if reconstruct else cross_entropy)
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(train) // batch_size)  # ceil division
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs,
                                                    steps_per_epoch=steps_per_epoch)
    elif schedule == "constant":
        sched = None
    else:
        raise ValueError(f"unknown schedule {schedule!r}")

    history, start, train_time = [], 1, 0.0
    if resume and ckpt_path is not None and Path(ckpt_path).exists():
        ckpt = load_checkpoint(ckpt_path, model)
        if "optimizer" in ckpt:
            opt.load_state_dict(ckpt["optimizer"])
            if sched is not None and ckpt.get("scheduler"):
                sched.load_state_dict(ckpt["scheduler"])
            gen.set_state(ckpt["gen_state"])
            torch.set_rng_state(ckpt["rng_state"])
            history = ckpt["history"]
            start = ckpt["epoch"] + 1
            train_time = history[-1]["train_time_s"] if history else 0.0
            print(f"[{desc}] resumed from {ckpt_path} after epoch {ckpt['epoch']}")

    bar = tqdm(total=(epochs - start + 1) * steps_per_epoch, desc=desc, unit="step",
               mininterval=1.0, dynamic_ncols=True, leave=False)
    for epoch in range(start, epochs + 1):
        t0 = time.perf_counter()
        tr = train_epoch(model, train, loss_fn, opt, sched, batch_size, gen, device,
                         reconstruct=reconstruct, augment=augment, bar=bar)
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        row = {"epoch": epoch, "train_loss": tr["loss"], "lr": opt.param_groups[0]["lr"],
               "epoch_time_s": epoch_time, "train_time_s": train_time}
        if "acc" in tr:
            row["train_acc"] = tr["acc"]
        if epoch % eval_every == 0 or epoch == epochs:
            te = evaluate(model, test, loss_fn, device, reconstruct=reconstruct)
            row["test_loss"] = te["loss"]
            if "acc" in te:
                row["test_acc"] = te["acc"]
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if "test_loss" in row:  # log evaluation epochs only (ex4 runs hundreds of tiny epochs)
            msg = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch", "lr", "train_time_s"))
            bar.write(f"[{desc}] epoch {epoch}/{epochs} {msg}")
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, model, optimizer=opt.state_dict(),
                            scheduler=sched.state_dict() if sched is not None else None,
                            epoch=epoch, history=history, gen_state=gen.get_state(),
                            rng_state=torch.get_rng_state())
    bar.close()
    return history


# ----------------------------------------------------------------------------- prerequisites, seeds
def load_or_train(path: Path, model: nn.Module, train_fn: Callable[[nn.Module], object], what: str) -> nn.Module:
    """Load `model` from the checkpoint at `path`, or say so and train it first (train_fn saves it)."""
    path = Path(path)
    if path.exists():
        load_checkpoint(path, model)
        print(f"loaded {what} from {path}")
    else:
        print(f"{path} not found: training {what} first (same recipe as its own script)")
        train_fn(model)
        if not path.exists():
            save_checkpoint(path, model)
    return model


def aggregate_histories(histories: list[list[dict]]) -> list[dict]:
    """Mean over seeds of every metric, row by row (runs share their epochs), plus `<metric>_std`."""
    mean_rows = []
    for rows in zip(*histories):
        row = {"epoch": rows[0]["epoch"]}
        for key in rows[0]:
            if key == "epoch" or not all(key in r for r in rows):
                continue
            vals = torch.tensor([float(r[key]) for r in rows], dtype=torch.float64)
            row[key] = vals.mean().item()
            if len(vals) > 1 and not key.endswith("time_s") and key != "lr":
                row[f"{key}_std"] = vals.std().item()
        mean_rows.append(row)
    return mean_rows


def overfitting_summary(history: list[dict]) -> dict:
    """Numbers that say whether (and when) a run over-fits.

    epoch_min_test_loss: where the test loss is lowest; epoch_train_acc_100: first epoch with 100%
    training accuracy; final_gap_acc / final_gap_loss: train - test accuracy and test - train loss at
    the end; test_loss_rise: final test loss minus its minimum (> 0 means it went back up).
    """
    evals = [r for r in history if "test_loss" in r]
    best = min(evals, key=lambda r: r["test_loss"])
    full = next((r["epoch"] for r in history if r.get("train_acc", 0) >= 1.0), None)
    last = evals[-1]
    return {"epoch_min_test_loss": best["epoch"], "min_test_loss": best["test_loss"],
            "test_acc_at_min_test_loss": best.get("test_acc"), "epoch_train_acc_100": full,
            "final_gap_acc": last.get("train_acc", float("nan")) - last.get("test_acc", float("nan")),
            "final_gap_loss": last["test_loss"] - last["train_loss"],
            "test_loss_rise": last["test_loss"] - best["test_loss"]}


def fit_seeds(make_model: Callable[[], nn.Module], seeds, train: TensorData, test: TensorData, *,
              device: torch.device, desc: str, **fit_kwargs) -> dict:
    """Train one fresh model per seed (few-label runs are noisy) and summarise mean +- std.

    make_model() is called right after seeding, so initialisation and batch order both follow the seed.
    """
    histories = []
    for seed in seeds:
        gen = seed_everything(seed)
        model = make_model().to(device)
        histories.append(fit(model, train, test, gen=gen, device=device, desc=f"{desc} seed {seed}", **fit_kwargs))
    mean = aggregate_histories(histories)
    over = overfitting_summary(mean)
    return {"seeds": list(seeds),
            "final_test_acc": mean_std([h[-1]["test_acc"] for h in histories]),
            "final_test_loss": mean_std([h[-1]["test_loss"] for h in histories]),
            "best_test_acc": mean_std([max(r["test_acc"] for r in h if "test_acc" in r) for h in histories]),
            "best_epoch_test_loss": over["epoch_min_test_loss"],
            "overfitting": over,
            "overfitting_per_seed": [overfitting_summary(h) for h in histories],
            "train_time_s": mean_std([h[-1]["train_time_s"] for h in histories]),
            "mean_history": mean,
            "history": {str(s): h for s, h in zip(seeds, histories)}}
