"""The few-label setting of ex4 and ex5: the first N MNIST training images, many seeds, one table.

Shared so that ex5's `scratch` variant is ex4's run (same data, recipe and seeds), which makes every
ex5-vs-scratch comparison a paired one (common.stats.paired).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from .data import SMOKE_TRAIN, TensorData, first_n, load_mnist
from .train import Recipe
from .utils import UserError, add_common_args, add_model_args, fraction, number, positive_int, seed_int

SMOKE_TEST = 500  # --smoke: test images (and data.SMOKE_TRAIN images in the unlabelled pool)


def add_args(p: argparse.ArgumentParser, recipe: Recipe, *, runs_dir: bool) -> argparse.ArgumentParser:
    """The command-line flags of ex4 and ex5, with `recipe` (the script's own) as defaults."""
    add_common_args(p, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, schedule=recipe.schedule,
                    runs_dir=runs_dir, resume=False)
    add_model_args(p)
    p.add_argument("--train-images", type=positive_int, default=100,
                   help="labelled training images: the first N of MNIST's training set (default 100)")
    p.add_argument("--n-seeds", type=positive_int, default=10,
                   help="run the seeds --seed, --seed+1, ..., --seed+n-1 (default 10: a t-interval of useful width)")
    p.add_argument("--seeds", type=seed_int, nargs="+", default=None, help="an explicit list of seeds instead")
    p.add_argument("--eval-every", type=positive_int, default=recipe.eval_every,
                   help=f"evaluate for the curves every N epochs (default {recipe.eval_every})")
    p.add_argument("--curve-images", type=positive_int, default=500,
                   help="the curves use the first N test images (default 500); the final metrics always use "
                        "the whole test set")
    p.add_argument("--dropout", type=fraction, default=0.0, help="dropout in the MLP head (default 0)")
    p.add_argument("--weight-decay", type=number(float, 0), default=recipe.weight_decay,
                   help=f"AdamW weight decay (default {recipe.weight_decay:g})")
    return p


def resolve_seeds(args: argparse.Namespace) -> list[int]:
    seeds = list(args.seeds) if args.seeds is not None else list(range(args.seed, args.seed + args.n_seeds))
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds has duplicates: {seeds}")
    return seeds


@dataclass
class FewLabelData:
    full_train: TensorData  # all 60,000 training images (ex5's unlabelled pool and AE pre-training)
    train: TensorData       # the first train_images of them: the only labels any method may read
    curve_test: TensorData  # the first curve_images test images, evaluated every eval_every epochs
    test: TensorData        # the whole test set, evaluated once at the end


def load(args: argparse.Namespace) -> FewLabelData:
    """The few-label data; --smoke also shrinks the run to 4 epochs and 2 seeds."""
    full_train, test = load_mnist(args.data_dir, train=True), load_mnist(args.data_dir, train=False)
    if args.train_images > len(full_train):
        raise UserError(f"--train-images {args.train_images} is more than the {len(full_train)} MNIST training images")
    train = first_n(full_train, args.train_images)  # exactly indices 0..n-1; train.index records them
    if args.smoke:
        full_train, test = first_n(full_train, SMOKE_TRAIN), first_n(test, SMOKE_TEST)
        args.epochs, args.eval_every, args.n_seeds = 4, 2, min(args.n_seeds, 2)
        args.seeds = args.seeds[:2] if args.seeds else None
    return FewLabelData(full_train, train, first_n(test, args.curve_images), test)


def class_counts(y: torch.Tensor, num_classes: int = 10) -> list[int]:
    return torch.bincount(y, minlength=num_classes).tolist()


def print_table(rows: dict[str, dict], reference: str | None = None) -> None:
    """Final test accuracy / loss with 95 % CIs per run, and the paired difference to `reference`."""
    def ci(s: dict, scale: float = 100.0, fmt: str = ".2f") -> str:
        return f"{scale * s['mean']:{fmt}} [{scale * s['ci95'][0]:{fmt}}, {scale * s['ci95'][1]:{fmt}}]"

    vs = "vs " + (reference or "-")
    print(f"\n {'run':40s} | {'test acc % [95% CI]':24s} | {'test loss [95% CI]':24s} | {vs:28s}")
    print(" " + "-" * 118)
    for name, r in rows.items():
        vs = r.get("vs_scratch")
        cmp = f"{100 * vs['mean_diff']:+.2f} pts, p={vs['p_value']:.2g} ({vs['verdict']})" if vs else ""
        print(f" {r.get('label', name):40s} | {ci(r['final_test_acc']):24s} | "
              f"{ci(r['final_test_loss'], 1.0, '.3f'):24s} | {cmp}")
    print(" (means over seeds; 95% CI = Student t interval of the mean; p = paired t-test on the same seeds)")
