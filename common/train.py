"""The one training loop, evaluation and checkpointing used by every script.

`train_epoch` is the loop itself: one pass over a batch sampler (any iterable of (x, y) pairs) with a
loss callable loss_fn(model, x, y) -> (loss, output). `fit` drives it over epochs with in-memory index
mini-batches (tensor_batches over data.index_batches) for the MNIST scripts and lab_cam; lab_dbvae
plugs in its own sampler (common.dbvae.FaceBatches) and loss callables. `fit` records, per epoch,
train/test loss (and accuracy for classifiers), the learning rate, and the wall-clock seconds spent
training (evaluation excluded), so curves can be drawn against epochs or against time.
"""
from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import TensorData, describe_exception, index_batches
from .stats import summarize
from .utils import UserError, atomic_write, seed_everything


class CheckpointError(UserError):
    """A checkpoint file that cannot be read (empty, truncated, not written by torch.save of this project)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint saved for another architecture, recipe or epoch count than this run's."""


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite: the run stops before any result is written."""


# ----------------------------------------------------------------------------- losses
def mean_l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over every pixel of every image: (1/BCHW) sum |x_hat - x|."""
    return (recon - target).abs().mean()


cross_entropy = nn.functional.cross_entropy


# ----------------------------------------------------------------------------- one epoch / evaluation
def tensor_batches(data: TensorData, batch_size: int, gen: torch.Generator, device: torch.device, *,
                   reconstruct: bool = False, augment: Callable | None = None):
    """fit's batch sampler: one shuffled pass over in-memory `data` in index batches (data.index_batches),
    yielding (input, target) on `device`: input = augment(x, gen) (or x), target = y, or x itself when
    `reconstruct` (an autoencoder's target is its clean input)."""
    for idx in index_batches(len(data), batch_size, gen):
        xb = data.x[idx].to(device, non_blocking=True)          # (B, C, H, W)
        target = xb if reconstruct else data.y[idx].to(device, non_blocking=True)
        yield (augment(xb, gen) if augment is not None else xb), target


class CriterionLoss:
    """The loss callable of an ordinary criterion(output, target), e.g. cross_entropy or mean_l1:
    (model, x, y) -> (criterion(model(x), y), model(x))."""

    def __init__(self, criterion: Callable):
        self.criterion = criterion

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        out = model(x)                                            # (B, C, H, W) or (B, classes)
        return self.criterion(out, y), out


def argmax_correct(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How many rows of logits out (B, classes) have their largest entry at the label y (B,)."""
    return (out.argmax(1) == y).sum()


def train_epoch(model: nn.Module, batches, loss_fn: Callable, opt: torch.optim.Optimizer, sched=None, *,
                correct: Callable | None = None, loss_dtype: torch.dtype = torch.float32, bar=None) -> dict:
    """One training pass: for every (x, y) of the batch sampler `batches`, loss, output = loss_fn(model, x, y),
    then backward and an optimiser (and scheduler) step.

    Returns {"loss": mean over the examples seen} and, with `correct(output, y)` (how many of the batch
    are right, e.g. argmax_correct), {"acc": ...}. Both are summed on the loss's device, so there is no
    per-step .item() sync; the loss sum in `loss_dtype` (lab_dbvae sums in float64, as it always did).
    """
    model.train()
    loss_sum = n_correct = None
    seen = 0
    for x, y in batches:
        loss, out = loss_fn(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if loss_sum is None:
            loss_sum = torch.zeros((), device=loss.device, dtype=loss_dtype)
            n_correct = torch.zeros((), device=loss.device, dtype=torch.long)
        loss_sum += loss.detach().to(loss_dtype) * len(y)
        if correct is not None:
            n_correct += correct(out.detach(), y)
        seen += len(y)
        if bar is not None:
            bar.update(1)
    stats = {"loss": loss_sum.item() / seen}
    if correct is not None:
        stats["acc"] = n_correct.item() / seen
    return stats


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 2000,
            fn: Callable | None = None):
    """Run `fn` (default: the model) over x in eval-mode batches of `batch_size`, each moved to `device`;
    the outputs concatenated on the CPU. An `fn` returning a tuple gives a tuple of tensors (lab_cam:
    logits and maps). x goes in as stored: for uint8 photos, `fn` converts each batch (data.to_float)."""
    model.eval()
    fn = fn or model
    outs = []
    for i in range(0, len(x), batch_size):
        out = fn(x[i:i + batch_size].to(device))
        outs.append(tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu())
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


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
    """Atomic save of the weights plus the architecture config used to rebuild/validate them.

    `extra` must hold only tensors and plain Python values (numbers, strings, lists, dicts): checkpoints
    are read back with torch.load(weights_only=True), which refuses anything else.
    """
    ckpt = {"arch": getattr(model, "config", None), "model": model.state_dict(), **extra}
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path: Path, model: nn.Module) -> dict:
    """Load weights into `model`; an unreadable checkpoint or one of another architecture raises a clear error.

    weights_only=True: unpickling arbitrary objects would let a checkpoint file run code.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # empty/truncated file, random bytes, or a pickle of disallowed objects
        why = describe_exception(exc).split(". ")[0]  # torch's advice to load with weights_only=False: not ours
        raise CheckpointError(f"cannot read checkpoint {path} ({why}); delete it, and the run that needs "
                              f"it trains it again") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint written by this project; delete it, and the "
                              f"run that needs it trains it again")
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


# ----------------------------------------------------------------------------- recipes, sanity
def _callable_name(fn) -> str | None:
    """A stable name for a loss/augmentation callable: a partial's arguments included, no memory address."""
    if fn is None:
        return None
    if isinstance(fn, functools.partial):
        args = [repr(a) for a in fn.args] + [f"{k}={v!r}" for k, v in sorted(fn.keywords.items())]
        return f"{_callable_name(fn.func)}({', '.join(args)})"
    return getattr(fn, "__qualname__", type(fn).__name__)


def recipe_record(*, epochs: int, lr: float, batch_size: int, schedule: str = "onecycle",
                  weight_decay: float = 0.0, augment: Callable | None = None, eval_every: int = 1) -> dict:
    """A `fit` run's recipe as the results JSON records it for the report's training-setup table: plain
    numbers and words (fit always uses AdamW and, in the MNIST scripts, channels_last)."""
    from .data import augment_words
    return {"optimizer": "AdamW", "schedule": {"onecycle": "OneCycle"}.get(schedule, schedule), "lr": lr,
            "batch_size": batch_size, "epochs": epochs, "weight_decay": weight_decay,
            "augment": augment_words(augment), "eval_every": eval_every, "channels_last": True}


def fit_recipe(*, epochs: int, lr: float, batch_size: int, train_size: int, weight_decay: float = 0.0,
               schedule: str = "onecycle", loss_fn: Callable | None = None,
               augment: Callable | None = None) -> dict:
    """The hyper-parameters of a `fit` run, as its checkpoints record them (plain values only).

    A script that reuses another script's checkpoint (load_or_train) builds the recipe it expects with
    this function and passes it, so a checkpoint of another recipe is refused, not silently used.
    """
    return {"epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size), "train_size": int(train_size),
            "weight_decay": float(weight_decay), "schedule": schedule, "loss": _callable_name(loss_fn),
            "augment": _callable_name(augment)}


def recipe_differences(ckpt: dict, wanted: dict) -> list[str]:
    """'key saved (this run: wanted)' for every key of `wanted` the checkpoint's recipe differs in;
    [] for a checkpoint that records no recipe (written before recipes were recorded)."""
    saved = ckpt.get("recipe")
    if not isinstance(saved, dict):
        return []
    return [f"{k} {saved.get(k)!r} (this run: {v!r})" for k, v in wanted.items() if saved.get(k) != v]


def check_finite(stats: dict, epoch: int, opt: torch.optim.Optimizer) -> None:
    """Stop with one line when an epoch's training loss is NaN/inf (a float, or a list: one per seed).

    A diverged run would otherwise go on and write NaN results as if they were numbers.
    """
    loss = stats["loss"]
    values = [float(v) for v in loss] if isinstance(loss, (list, tuple)) else [float(loss)]
    if all(math.isfinite(v) for v in values):
        return
    lrs = sorted({g.get("max_lr", g["lr"]) for g in opt.param_groups})  # OneCycleLR keeps the peak here
    shown = values[0] if len(values) == 1 else values
    raise NonFiniteLossError(
        f"training loss is {shown} in epoch {epoch} (peak lr {', '.join(f'{v:.3g}' for v in lrs)}): "
        f"training diverged; lower --lr (no results were written)")


# ----------------------------------------------------------------------------- TensorBoard
class TensorBoardLog:
    """A run's history as TensorBoard scalars: `train_loss` -> `loss/train`, `test_acc` -> `acc/test`,
    `lr` -> `lr`, one point per epoch (LAB01's trainer logs the same). `close` adds the config as hparams
    with the last row's metrics, so runs can be compared in TensorBoard's HPARAMS tab."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # lazy: only with --tensorboard
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))

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
        if flat:
            self.writer.add_hparams(flat, metrics, run_name=".")
        self.writer.close()


def tensorboard_dir(args, script: str, runs_dir: Path | None = None) -> Path | None:
    """<runs dir>/tb/<script>/<time stamp> with --tensorboard, else None. `runs_dir` is the script's
    resolved checkpoint folder (utils.resolve_output_dirs: runs/, or <out-dir>/runs for --smoke)."""
    if not getattr(args, "tensorboard", False):
        return None
    from .utils import RUNS_DIR
    root = runs_dir or getattr(args, "runs_dir", None) or RUNS_DIR
    return Path(root) / "tb" / script / time.strftime("%Y%m%d-%H%M%S")


# ----------------------------------------------------------------------------- fit
def fit(model: nn.Module, train: TensorData, test: TensorData, *, epochs: int, lr: float,
        batch_size: int, gen: torch.Generator, device: torch.device, reconstruct: bool = False,
        loss_fn: Callable | None = None, params=None, weight_decay: float = 0.0,
        schedule: str = "onecycle", eval_every: int = 1, augment: Callable | None = None,
        ckpt_path: Path | None = None, resume: bool = False, desc: str = "train",
        on_epoch: Callable | None = None, log: bool = True, tb_dir: Path | None = None,
        hparams: dict | None = None, channels_last: bool = False) -> list[dict]:
    """Train `model` and return the per-epoch history.

    schedule='onecycle' (Smith & Topin 2019) warms up then anneals the LR per step: it reaches a given
    accuracy in far fewer epochs than a constant LR, which is what makes CPU training practical here.
    `params` restricts the optimised parameters (ex3 trains only the decoder). With `ckpt_path`, the
    model/optimiser/RNG state is saved after every epoch; `resume=True` continues from there.
    With `tb_dir`, every history row is also written as TensorBoard scalars there, and `hparams` (the
    run's config) with the final metrics at the end (see TensorBoardLog).
    """
    if channels_last:  # NHWC activations: oneDNN's faster conv kernels on CPU (ex4: -12 % per step, measured)
        model.to(memory_format=torch.channels_last)
    loss_fn = loss_fn or (mean_l1 if reconstruct else cross_entropy)
    params = list(params if params is not None else model.parameters())
    if params and isinstance(params[0], dict):  # parameter groups, e.g. a lower lr for a pre-trained encoder
        params = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in params]
    else:
        params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(train) // batch_size)  # ceil division
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs,
                                                    steps_per_epoch=steps_per_epoch)
    elif schedule == "constant":
        sched = None
    else:
        raise ValueError(f"unknown schedule {schedule!r}")

    recipe = fit_recipe(epochs=epochs, lr=lr, batch_size=batch_size, train_size=len(train),
                        weight_decay=weight_decay, schedule=schedule, loss_fn=loss_fn, augment=augment)
    history, start, train_time = [], 1, 0.0
    if resume and ckpt_path is not None and Path(ckpt_path).exists():
        ckpt = load_checkpoint(ckpt_path, model)
        if "optimizer" in ckpt:
            # another epoch count changes the whole OneCycle schedule (and OneCycleLR would fail past its
            # last step), another lr/batch size/data size another run: refuse rather than mix two recipes
            diff = recipe_differences(ckpt, recipe)
            if ckpt.get("recipe") is None and sched is not None and ckpt.get("scheduler") \
                    and ckpt["scheduler"].get("total_steps") != sched.total_steps:  # older checkpoint
                diff.append(f"{ckpt['scheduler'].get('total_steps')} schedule steps "
                            f"(this run: {sched.total_steps})")
            if diff:
                raise CheckpointMismatchError(
                    f"cannot resume from {ckpt_path}: it was trained with {'; '.join(diff)}. Rerun with "
                    f"its settings, or delete it (or drop --resume) to start over")
            opt.load_state_dict(ckpt["optimizer"])
            if sched is not None and ckpt.get("scheduler"):
                sched.load_state_dict(ckpt["scheduler"])
            gen.set_state(ckpt["gen_state"])
            torch.set_rng_state(ckpt["rng_state"])
            history = ckpt["history"]
            start = ckpt["epoch"] + 1
            train_time = history[-1]["train_time_s"] if history else 0.0
            print(f"[{desc}] resumed from {ckpt_path} after epoch {ckpt['epoch']}")

    tb = TensorBoardLog(tb_dir) if tb_dir is not None else None
    bar = tqdm(total=(epochs - start + 1) * steps_per_epoch, desc=desc, unit="step",
               mininterval=1.0, dynamic_ncols=True, leave=False, disable=not log)
    for epoch in range(start, epochs + 1):
        t0 = time.perf_counter()
        batches = tensor_batches(train, batch_size, gen, device, reconstruct=reconstruct, augment=augment)
        tr = train_epoch(model, batches, CriterionLoss(loss_fn), opt, sched,
                         correct=None if reconstruct else argmax_correct, bar=bar)
        check_finite(tr, epoch, opt)
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
        if tb is not None:
            tb.scalars(row)
        if log and "test_loss" in row:  # log evaluation epochs only (ex4 runs hundreds of tiny epochs)
            msg = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch", "lr", "train_time_s"))
            bar.write(f"[{desc}] epoch {epoch}/{epochs} {msg}")
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, model, optimizer=opt.state_dict(),
                            scheduler=sched.state_dict() if sched is not None else None,
                            epoch=epoch, history=history, gen_state=gen.get_state(),
                            rng_state=torch.get_rng_state(), recipe=recipe)
    bar.close()
    if tb is not None:
        tb.close(hparams or {}, history[-1] if history else {})
    return history


# ----------------------------------------------------------------------------- prerequisites, seeds
def load_or_train(path: Path, model: nn.Module, train_fn: Callable[[nn.Module], object], what: str,
                  recipe: dict | None = None) -> nn.Module:
    """Load `model` from the checkpoint at `path`, or say so and train it first (train_fn saves it).

    `recipe` (see fit_recipe) is what the checkpoint must have been trained with. A checkpoint of an
    unfinished run (epoch < its recorded epochs) or of another recipe is refused in one line, naming
    the file: it is the user's (e.g. a --smoke or a killed run), so it is neither used nor overwritten
    silently. A checkpoint that records no recipe (older) is used with a printed note.
    """
    path = Path(path)
    if path.exists():
        ckpt = load_checkpoint(path, model)
        saved = ckpt.get("recipe")
        if isinstance(saved, dict) and "epoch" in ckpt and ckpt["epoch"] < saved.get("epochs", 0):
            raise CheckpointMismatchError(
                f"{path} holds an unfinished run of {what} (epoch {ckpt['epoch']} of {saved['epochs']}); "
                f"finish it with its script's --resume, or delete it to have it trained here")
        diff = recipe_differences(ckpt, recipe or {})
        if diff:
            raise CheckpointMismatchError(
                f"{path} holds {what} trained with {'; '.join(diff)}; delete it to have it trained here "
                f"with this run's recipe, or pass another --runs-dir")
        if recipe is not None and not isinstance(saved, dict):
            print(f"note: {path} records no training recipe (an older checkpoint); using it unchecked "
                  f"(delete it to retrain {what})")
        print(f"loaded {what} from {path}")
    else:
        print(f"{path} not found: training {what} first (same recipe as its own script)")
        train_fn(model)
        if not path.exists():
            save_checkpoint(path, model, **({"recipe": recipe, "epoch": recipe["epochs"]} if recipe else {}))
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
              device: torch.device, desc: str, final_test: TensorData | None = None,
              param_groups: Callable[[nn.Module], list[dict]] | None = None,
              train_fn: Callable | None = None, tb_dir: Path | None = None, hparams: dict | None = None,
              **fit_kwargs) -> dict:
    """Train one fresh model per seed (few-label runs are noisy) and summarise every metric over seeds.

    make_model() is called right after seeding, so initialisation and batch order both follow the seed,
    and a seed's result does not depend on which other seeds ran before it (tests/test_fewshot.py).
    `test` is evaluated every `eval_every` epochs for the curves; `final_test` (default: `test`) once at
    the end for the final metrics, so the curves may use a fixed subset of the test set and the reported
    numbers the whole of it. `param_groups(model)` gives per-group learning rates (see fit).
    `train_fn(gen, desc) -> (model, history)` replaces the default "make_model() then fit" (ex5's
    self-training runs several fits per seed); it is called right after seeding, like make_model.
    Every final metric is `common.stats.summarize` over seeds: mean, std, 95% t-interval and the values.
    """
    final_test = final_test if final_test is not None else test
    histories, finals = [], []
    bar = tqdm(seeds, desc=desc, unit="seed", dynamic_ncols=True)
    for seed in bar:
        gen = seed_everything(seed)
        if train_fn is not None:
            model, history = train_fn(gen, f"{desc} seed {seed}")
        else:
            model = make_model().to(device)
            params = param_groups(model) if param_groups is not None else None
            history = fit(model, train, test, gen=gen, device=device, params=params,
                          desc=f"{desc} seed {seed}", log=False, hparams=dict(hparams or {}, seed=seed),
                          tb_dir=tb_dir / f"seed{seed}" if tb_dir is not None else None, **fit_kwargs)
        histories.append(history)
        finals.append(evaluate(model, final_test, cross_entropy, device))
        bar.set_postfix(seed=seed, test_acc=f"{finals[-1]['acc']:.4f}")
    mean = aggregate_histories(histories)
    return {"seeds": list(seeds), "curve_test_size": len(test), "final_test_size": len(final_test),
            "final_test_acc": summarize([f["acc"] for f in finals]),
            "final_test_loss": summarize([f["loss"] for f in finals]),
            "final_train_acc": summarize([h[-1]["train_acc"] for h in histories]),
            "final_train_loss": summarize([h[-1]["train_loss"] for h in histories]),
            # train - test accuracy at the end, both on the full sets: the over-fitting gap
            "final_gap_acc": summarize([h[-1]["train_acc"] - f["acc"] for h, f in zip(histories, finals)]),
            "overfitting": overfitting_summary(mean),
            "overfitting_per_seed": [overfitting_summary(h) for h in histories],
            "train_time_s": summarize([h[-1]["train_time_s"] for h in histories]),
            "mean_history": mean,
            "history": {str(s): h for s, h in zip(seeds, histories)}}
