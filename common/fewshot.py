"""The few-label setting of ex4 and ex5: the first N MNIST training images, many seeds, their summary.

Shared so that ex5's `scratch` variant is ex4's run (same data, recipe and seeds), which makes every
ex5-vs-scratch comparison a paired one (common.stats.paired).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from .data import SMOKE_TRAIN, TensorData, first_n, load_mnist
from .stats import summarize
from .train import Recipe
from .utils import UserError, add_common_args, add_model_args, fraction, number, positive_int, seed_everything, seed_int

N_SEEDS = 10  # seeds per run: 100 examples make one run noisy, and 10 give a t-interval of useful width
SMOKE_TEST = 500  # --smoke: test images (and data.SMOKE_TRAIN images in the unlabelled pool)
# Curves and final numbers use the same test images: all 10,000 every 10 epochs would cost 3x the training (a
# pass ~ 37 steps); a fixed random 2,000 fits the budget and, unlike the first N (writers differ), is fair.
TEST_IMAGES, MNIST_TEST = 2000, 10_000
TEST_SUBSET_SEED = 0  # the same test images for every run and every --seed, so all comparisons stay paired


def add_args(p: argparse.ArgumentParser, recipe: Recipe, *, runs_dir: bool) -> argparse.ArgumentParser:
    """The command-line flags of ex4 and ex5, with `recipe` (the script's own) as defaults."""
    add_common_args(p, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, schedule=recipe.schedule,
                    runs_dir=runs_dir, resume=False)
    add_model_args(p)
    p.add_argument("--train-images", type=positive_int, default=100,
                   help="labelled training images: the first N of MNIST's training set (default 100)")
    p.add_argument("--n-seeds", type=positive_int, default=None,
                   help=f"run the seeds --seed, --seed+1, ..., --seed+n-1 (default {N_SEEDS}; ex5 with selftrain: 3)")
    p.add_argument("--seeds", type=seed_int, nargs="+", default=None, help="an explicit list of seeds instead")
    p.add_argument("--eval-every", type=positive_int, default=recipe.eval_every,
                   help=f"evaluate for the curves every N epochs (default {recipe.eval_every})")
    p.add_argument("--test-images", type=number(int, 1, MNIST_TEST), default=TEST_IMAGES,
                   help=f"test images for every test number, curves and final metrics alike: a fixed random N "
                        f"of the {MNIST_TEST} (default {TEST_IMAGES}; {MNIST_TEST} = the whole test set)")
    p.add_argument("--dropout", type=fraction, default=0.0, help="dropout in the MLP head (default 0)")
    p.add_argument("--weight-decay", type=number(float, 0), default=recipe.weight_decay,
                   help=f"AdamW weight decay (default {recipe.weight_decay:g})")
    return p


def resolve_seeds(args: argparse.Namespace, n_seeds: int = N_SEEDS) -> list[int]:
    """--seeds, else --seed .. --seed + n - 1 with n = --n-seeds or the script's `n_seeds`."""
    n = args.n_seeds or n_seeds
    seeds = list(args.seeds) if args.seeds is not None else list(range(args.seed, args.seed + n))
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds has duplicates: {seeds}")
    return seeds


@dataclass
class FewLabelData:
    full_train: TensorData  # all 60,000 training images (ex5's unlabelled pool and AE pre-training)
    train: TensorData       # the first train_images of them: the only labels any method may read
    test: TensorData        # test_images fixed random test images (test.index), every eval_every epochs


def load(args: argparse.Namespace) -> FewLabelData:
    """The few-label data; --smoke also shrinks the run to 4 epochs and 2 seeds."""
    full_train, test = load_mnist(args.data_dir, train=True), load_mnist(args.data_dir, train=False)
    if args.train_images > len(full_train):
        raise UserError(f"--train-images {args.train_images} is more than the {len(full_train)} MNIST training images")
    train = first_n(full_train, args.train_images)  # exactly indices 0..n-1; train.index records them
    if args.smoke:
        full_train, test = first_n(full_train, SMOKE_TRAIN), first_n(test, SMOKE_TEST)
        args.epochs, args.eval_every, args.n_seeds = 4, 2, min(args.n_seeds or 2, 2)
        args.seeds = args.seeds[:2] if args.seeds else None
    return FewLabelData(full_train, train, fixed_subset(test, args.test_images))


def fixed_subset(data: TensorData, n: int) -> TensorData:
    """n examples drawn once with TEST_SUBSET_SEED, in their original order (all of them for n >= len)."""
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(TEST_SUBSET_SEED))
    return data.subset(pick[:n].sort().values)


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
    """Whether and when a run over-fits: the epoch of the lowest test loss, the first epoch with 100 %
    training accuracy, the train - test gaps at the end, and how far the test loss rose from its minimum."""
    evals = [r for r in history if "test_loss" in r]
    best, last = min(evals, key=lambda r: r["test_loss"]), evals[-1]
    return {"epoch_min_test_loss": best["epoch"], "min_test_loss": best["test_loss"],
            "test_acc_at_min_test_loss": best.get("test_acc"),
            "epoch_train_acc_100": next((r["epoch"] for r in history if r.get("train_acc", 0) >= 1.0), None),
            "final_gap_acc": last.get("train_acc", float("nan")) - last.get("test_acc", float("nan")),
            "final_gap_loss": last["test_loss"] - last["train_loss"],
            "test_loss_rise": last["test_loss"] - best["test_loss"]}


def fit_seeds(train_one: Callable[[torch.Generator], tuple[torch.nn.Module, list[dict]]], seeds,
              desc: str) -> dict:
    """One fresh run per seed (few-label runs are noisy), every final metric summarised over seeds.

    train_one(gen) -> (model, history) is called right after seeding, so a seed's result does not depend on
    the seeds run before it. The final test numbers are the curves' last points (same images, last epoch)."""
    histories, seconds = [], []
    bar = tqdm(seeds, desc=desc, unit="seed", dynamic_ncols=True)
    for seed in bar:
        t0 = time.perf_counter()
        histories.append(train_one(seed_everything(seed))[1])
        seconds.append(time.perf_counter() - t0)  # training, evaluation and (selftrain) relabelling
        bar.set_postfix(seed=seed, test_acc=f"{histories[-1][-1]['test_acc']:.4f}")
    per_seed, mean = [overfitting_summary(h) for h in histories], aggregate_histories(histories)
    seed_keys = ("final_gap_acc", "epoch_min_test_loss", "test_loss_rise")  # summarised from per_seed
    final = lambda key: summarize(h[-1][key] for h in histories)  # noqa: E731
    return {"seeds": list(seeds), "final_test_acc": final("test_acc"), "final_test_loss": final("test_loss"),
            "final_train_acc": final("train_acc"), "final_train_loss": final("train_loss"),
            "train_time_s": final("train_time_s"), "seed_time_s": summarize(seconds),
            **{k: summarize(o[k] for o in per_seed) for k in seed_keys},
            "overfitting": overfitting_summary(mean), "overfitting_per_seed": per_seed,
            "mean_history": mean, "history": {str(s): h for s, h in zip(seeds, histories)}}
