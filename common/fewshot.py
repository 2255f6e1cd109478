"""The few-label setting shared by ex4 and ex5: the first N MNIST training images, one recipe, many seeds.

Defined once here so that ex5's `scratch` variant *is* ex4's run (same recipe, same seeds, same data),
which is what makes the ex5-vs-ex4 comparison a paired one (common.stats.paired).

Recipe (Adam with decoupled weight decay, Loshchilov & Hutter 2019, at a constant learning rate):
the 100 images form one full batch, so an epoch is one optimiser step and the seeds differ only in the
network's initialisation (and, with augmentation, in the random transforms).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .data import TensorData, first_n_subset, load_mnist, smoke_slice
from .train import fit, predict
from .utils import UserError, add_common_args, fraction, nonneg_float, nonneg_int, positive_int

# The assignment's few-label run (ex4 and ex5). 100 epochs: training accuracy reaches 100 % by epoch ~25
# and the test curves are flat after ~75 (150 epochs were run before, with the same picture); it keeps
# 10 seeds of ex4 under a minute on 2 CPU cores.
RECIPE = dict(epochs=100, batch_size=100, lr=1e-3)
N_SEEDS = 10           # enough for a t-interval of useful width; a seed costs ~4 s on 2 CPU cores
CURVE_TEST_SIZE = 500   # test images evaluated every --eval-every epochs for the curves (see add_args)


def add_args(p: argparse.ArgumentParser, *, runs_dir: bool) -> argparse.ArgumentParser:
    """The command-line options of ex4 and ex5 (model, recipe, seeds, evaluation)."""
    add_common_args(p, **RECIPE, runs_dir=runs_dir, resume=False)
    p.add_argument("--n-train", type=positive_int, default=100, help="labelled examples: the first N (default 100)")
    p.add_argument("--n-seeds", type=positive_int, default=N_SEEDS,
                   help=f"run the seeds --seed, --seed+1, ..., --seed+n-1 (default {N_SEEDS})")
    p.add_argument("--seeds", type=nonneg_int, nargs="+", default=None,
                   help="an explicit list of seeds instead of --seed/--n-seeds")
    p.add_argument("--eval-every", type=positive_int, default=10,
                   help="evaluate for the curves every N epochs (default 10)")
    p.add_argument("--curve-test-size", type=positive_int, default=CURVE_TEST_SIZE,
                   help=f"the curves use the first N test images (default {CURVE_TEST_SIZE}); the final "
                        "metrics always use the whole test set")
    p.add_argument("--latent-dim", type=positive_int, default=12, help="encoder output size d (default 12)")
    p.add_argument("--channels", type=positive_int, nargs="+", default=[32, 64, 128],
                   help="encoder conv channels, as in ex1 (default 32 64 128)")
    p.add_argument("--hidden", type=positive_int, default=64, help="MLP hidden units (default 64)")
    p.add_argument("--dropout", type=fraction, default=0.0, help="dropout in the MLP head (default 0)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.0, help="AdamW weight decay (default 0)")
    return p


def resolve_seeds(args: argparse.Namespace) -> list[int]:
    seeds = list(args.seeds) if args.seeds is not None else list(range(args.seed, args.seed + args.n_seeds))
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds has duplicates: {seeds}")
    return seeds


def fit_kwargs(args: argparse.Namespace) -> dict:
    """The recipe as keyword arguments of common.train.fit / fit_seeds."""
    return dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
                schedule="constant", eval_every=args.eval_every, channels_last=True)


@dataclass
class FewLabelData:
    full_train: TensorData  # all 60,000 training images (ex5's unlabelled pool and AE pre-training)
    train: TensorData       # the first n_train of them: the only labels any method may read
    curve_test: TensorData  # the first curve_test_size test images, evaluated every eval_every epochs
    test: TensorData        # the whole test set, evaluated once at the end


def load(args: argparse.Namespace) -> FewLabelData:
    full_train, test = load_mnist(args.data_dir, train=True), load_mnist(args.data_dir, train=False)
    if args.n_train > len(full_train):
        raise UserError(f"--n-train {args.n_train} is larger than the {len(full_train)} MNIST training images")
    train = first_n_subset(full_train, args.n_train)  # exactly indices 0..n-1; train.index records them
    if args.smoke:  # seconds: a small test set, a few epochs, two seeds
        full_train, test = smoke_slice(full_train, 1024), smoke_slice(test, 500)
        args.epochs, args.eval_every, args.n_seeds = 4, 2, 2
        args.seeds = args.seeds[:2] if args.seeds else None
    curve_test = smoke_slice(test, args.curve_test_size)
    return FewLabelData(full_train, train, curve_test, test)


def class_counts(y: torch.Tensor, num_classes: int = 10) -> list[int]:
    return torch.bincount(y, minlength=num_classes).tolist()


def _ci(s: dict, scale: float = 100.0, fmt: str = ".2f") -> str:
    lo, hi = s["ci95"]
    return f"{scale * s['mean']:{fmt}} [{scale * lo:{fmt}}, {scale * hi:{fmt}}]"


def print_table(rows: dict[str, dict], reference: str | None = None) -> None:
    """Final test accuracy / loss with 95% CIs per run, and the paired difference to `reference`."""
    print(f"\n {'run':40s} | {'test acc % [95% CI]':24s} | {'test loss [95% CI]':24s} | {'vs ' + (reference or '-'):28s}")
    print(" " + "-" * 118)
    for name, r in rows.items():
        vs = r.get("vs_scratch")
        cmp = (f"{100 * vs['mean_diff']:+.2f} pts, p={vs['p_value']:.2g} ({vs['verdict']})" if vs else "")
        print(f" {r.get('label', name):40s} | {_ci(r['final_test_acc']):24s} | "
              f"{_ci(r['final_test_loss'], 1.0, '.3f'):24s} | {cmp}")
    print(" (means over seeds; 95% CI = Student t interval of the mean; p = paired t-test on the same seeds)")


# ----------------------------------------------------------------------------- semi-supervised (ex5)
def label_spreading(z_labelled: torch.Tensor, y_labelled: torch.Tensor, z_unlabelled: torch.Tensor, *,
                    n_neighbors: int = 15, alpha: float = 0.9, num_classes: int = 10) -> torch.Tensor:
    """Class probabilities (N_u, classes) for unlabelled codes by label spreading (Zhou et al. 2004).

    On a k-nearest-neighbour graph of all codes (standardised per dimension), labels diffuse from the
    labelled points: F <- alpha S F + (1 - alpha) Y with S the normalised graph (scikit-learn's
    LabelSpreading). Only the labelled points' labels are passed in; the unlabelled ones have none.
    """
    from sklearn.semi_supervised import LabelSpreading

    z = torch.cat([z_labelled, z_unlabelled]).double()                     # (N_l + N_u, d)
    z = ((z - z.mean(0)) / z.std(0).clamp_min(1e-12)).numpy()
    y = torch.full((len(z),), -1, dtype=torch.long)                        # -1 = unlabelled (sklearn)
    y[:len(y_labelled)] = y_labelled
    model = LabelSpreading(kernel="knn", n_neighbors=n_neighbors, alpha=alpha, max_iter=200, tol=1e-4)
    import warnings
    with warnings.catch_warnings():  # 'max_iter reached' only says the last change was above tol
        warnings.simplefilter("ignore")
        model.fit(z, y.numpy())
    probs = torch.zeros(len(z), num_classes)
    probs[:, torch.as_tensor(model.classes_)] = torch.as_tensor(model.label_distributions_, dtype=torch.float32)
    # The k-NN graph is directed: a point whose neighbours never lead to a labelled point receives no
    # mass (an all-zero row, which sklearn's transduction_ would silently call classes_[0]). It knows
    # nothing, so it gets the uniform distribution: the lowest confidence, selected last.
    unreached = probs.sum(1) == 0
    probs[unreached] = 1.0 / num_classes
    return probs[len(y_labelled):]                                         # (N_u, classes)


def confident_per_class(probs: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the `fraction` most confident rows of each predicted class (class-balanced selection,
    so an easy class cannot crowd out a hard one): sorted, (M,)."""
    conf, label = probs.max(1)
    keep = []
    for c in label.unique():
        idx = torch.nonzero(label == c).squeeze(1)
        n = int(round(fraction * len(idx)))
        keep.append(idx[conf[idx].argsort(descending=True, stable=True)[:n]])
    return torch.cat(keep).sort().values


def self_train(make_model: Callable[[], nn.Module], labelled: TensorData, unlabelled_x: torch.Tensor,
               prior: torch.Tensor, test: TensorData, *, fractions, gen: torch.Generator,
               device: torch.device, desc: str, **fit_kw) -> tuple[nn.Module, list[dict]]:
    """Self-training with class-balanced confident pseudo-labels (Lee 2013; Xie et al. 2020 without noise
    in the teacher): round r trains a fresh model (make_model()) on the labelled images plus the
    `fractions[r]` most confident unlabelled images of each class under the current pseudo-label
    probabilities, then relabels every unlabelled image with its predictions. Round 0 starts from `prior`.

    unlabelled_x: (N_u, C, H, W) images only; their labels never reach this function.
    Returns the last round's model and the concatenated per-epoch history (with a `round` column).
    """
    probs, history, epoch0, time0 = prior, [], 0, 0.0
    for r, frac in enumerate(fractions):
        keep = confident_per_class(probs, frac)                            # (M,) indices into unlabelled
        data = TensorData(torch.cat([labelled.x, unlabelled_x[keep]]),
                          torch.cat([labelled.y, probs[keep].argmax(1)]))
        model = make_model().to(device)
        rows = fit(model, data, test, gen=gen, device=device, desc=f"{desc} round {r}", log=False, **fit_kw)
        for row in rows:
            history.append(dict(row, epoch=row["epoch"] + epoch0, train_time_s=row["train_time_s"] + time0,
                                round=r, n_pseudo=len(keep)))
        epoch0, time0 = history[-1]["epoch"], history[-1]["train_time_s"]
        probs = predict(model, unlabelled_x, device).softmax(1)            # (N_u, classes)
    return model, history
