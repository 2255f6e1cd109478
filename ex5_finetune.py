"""Exercise 5: transfer learning from the ex1 autoencoder to the 100-label classifier of ex4.

The classifier's encoder starts from the encoder of the ex1 conv+FC autoencoder (trained, without
labels, on all 60,000 training images; loaded from runs/ex1_conv_fc.pt, or trained first with ex1's
recipe if missing), the MLP head starts random, and the network is trained on the same first 100
images, with the same recipe and the same seeds as ex4 (common/fewshot.py), so every comparison with
`scratch` is paired: the difference is taken seed by seed (common.stats.paired).

Variants (default: all but selftrain):
  scratch           - ex4's run repeated here (same recipe, seeds): the reference of every comparison
  finetune          - the assignment: AE-initialised encoder, everything trained at one learning rate
  finetune_lowlr    - beyond: as finetune, but the encoder learns --encoder-lr-ratio x slower than the head
  frozen_encoder    - beyond: AE encoder kept fixed (BatchNorm statistics too), only the MLP trained
  finetune_augment  - beyond: finetune + random shifts (<= 2 px) / rotations (<= 10 deg)
  frozen_augment    - beyond: frozen AE encoder + the same augmentation
  selftrain         - semi-supervised, beyond the assignment: the 100 labels plus the 59,900 other
                      training images *without* their labels: label spreading on the AE codes, then
                      rounds of self-training on class-balanced confident pseudo-labels. Not in the
                      default run (minutes per seed on a CPU; 3 seeds): results/ex5_selftrain.json.

No variant is called "best": choosing one by its test accuracy would make that number optimistic.

    python ex5_finetune.py                                   # report/figures/ex45_*.pdf, results/ex5.json
    python ex5_finetune.py --variants scratch selftrain      # results/ex5_selftrain.json
    python ex5_finetune.py --smoke                           # seconds, into a temp dir
"""
from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from functools import partial
from itertools import product

import numpy as np
import torch
from matplotlib.lines import Line2D

from common import fewshot
from common.data import AFFINE, TensorData
from common.models import AE_RECIPE, AutoEncoder, Classifier
from common.plots import TEXT_WIDTH_IN, plt, save
from common.stats import paired, standardise
from common.train import Recipe, fit, load_or_fit, mean_l1, predict, tensorboard_dir
from common.utils import fraction, learning_rate, positive_int, run_main, seed_everything, setup, write_results

# ex4's recipe, repeated because the `scratch` variant must be ex4's run (tests/test_fewshot.py checks that
# the two agree): one full batch of 100 images, one AdamW step per epoch at a constant learning rate.
RECIPE = Recipe(epochs=100, lr=1e-3, batch_size=100, schedule="constant", eval_every=10)
VARIANTS = {  # name -> (encoder from the AE?, freeze it?, augment?, label)
    "scratch": (False, False, False, "ex4: from scratch"),
    "finetune": (True, False, False, "ex5: AE encoder, fine-tuned"),
    "finetune_lowlr": (True, False, False, "beyond: fine-tuned, slower encoder lr"),
    "frozen_encoder": (True, True, False, "beyond: AE encoder frozen"),
    "finetune_augment": (True, False, True, "beyond: fine-tuned, augmented"),
    "frozen_augment": (True, True, True, "beyond: frozen, augmented"),
    "selftrain": (True, False, True, "beyond: semi-supervised self-training"),
}
DEFAULT = [v for v in VARIANTS if v != "selftrain"]
# Paired comparisons that answer "why is frozen better than fine-tuned?" (a - b, same seeds).
QUESTIONS = [("finetune", "frozen_encoder"), ("finetune_lowlr", "frozen_encoder"), ("finetune_lowlr", "finetune")]
# selftrain's rounds and epochs per round: of the configurations in report/results/ex5_selftrain_sweep.json
# (seeds 10-12), the highest mean accuracy among those whose 3-seed run fits 5 minutes on 2 CPU cores.
SELFTRAIN_ROUNDS, SELFTRAIN_EPOCHS, SELFTRAIN_SEEDS = [0.3, 0.6, 0.9, 0.95], 2, 3


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fewshot.add_args(p, RECIPE, runs_dir=True)  # --runs-dir: where the ex1 autoencoder checkpoint is read
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT,
                   help="which variants to run (default: all but selftrain); scratch always runs")
    p.add_argument("--encoder-lr-ratio", type=fraction, default=0.1,
                   help="finetune_lowlr: encoder lr = ratio x --lr, head lr = --lr (default 0.1)")
    g = p.add_argument_group("selftrain (semi-supervised)")
    g.add_argument("--rounds", type=fraction, nargs="+", default=SELFTRAIN_ROUNDS,
                   help="one self-training round per number: the fraction of each pseudo-class kept (most "
                        f"confident first); default {' '.join(map(str, SELFTRAIN_ROUNDS))}")
    g.add_argument("--round-epochs", type=positive_int, default=SELFTRAIN_EPOCHS,
                   help=f"epochs per round (default {SELFTRAIN_EPOCHS})")
    g.add_argument("--round-lr", type=learning_rate, default=3e-3,
                   help="peak learning rate of each round's one-cycle schedule (default 3e-3)")
    g.add_argument("--round-batch-size", type=positive_int, default=256, help="batch size (default 256)")
    g.add_argument("--neighbours", type=positive_int, default=15,
                   help="label spreading: k of the k-NN graph (default 15)")
    return p.parse_args(argv)


def make_model(args, ae: AutoEncoder | None, freeze: bool) -> Classifier:
    """ex4's architecture with a random MLP head; the encoder (and its BatchNorm statistics) copied from the
    autoencoder when given, and kept fixed when `freeze`."""
    model = Classifier(args.latent_dim, args.channels, fc=True, hidden=args.hidden, dropout=args.dropout)
    if ae is not None:
        model.encoder.load_state_dict(ae.encoder.state_dict())
    return model.freeze_encoder() if freeze else model


def lowlr_groups(model: Classifier, ratio: float, lr: float) -> list[dict]:
    """Discriminative fine-tuning (Howard & Ruder 2018): the pre-trained encoder moves `ratio` x slower."""
    return [{"params": list(model.encoder.parameters()), "lr": ratio * lr},
            {"params": list(model.mlp.parameters()), "lr": lr}]


def pretrained_autoencoder(args, data: fewshot.FewLabelData, runs_dir, device) -> tuple[AutoEncoder, Recipe]:
    """The ex1 conv+FC autoencoder from its checkpoint, or trained here with ex1's recipe on all (unlabelled)
    training images; and that recipe, which the checkpoint was checked against."""
    recipe = dataclasses.replace(AE_RECIPE, epochs=1) if args.smoke else AE_RECIPE
    seed_everything(args.seed)
    ae = AutoEncoder(args.latent_dim, args.channels, fc=True).to(device)
    ae = load_or_fit(runs_dir / "ex1_conv_fc.pt", ae, "the ex1 conv+FC autoencoder", recipe, data.full_train,
                     data.test, seed=args.seed, loss_fn=mean_l1)
    return ae.cpu(), recipe


# ----------------------------------------------------------------------------- semi-supervised (selftrain)
def label_spreading(z_labelled: torch.Tensor, y_labelled: torch.Tensor, z_unlabelled: torch.Tensor, *,
                    n_neighbors: int = 15, alpha: float = 0.9, num_classes: int = 10) -> torch.Tensor:
    """Class probabilities (N_u, classes) of unlabelled codes by label spreading (Zhou et al. 2004): on a
    k-nearest-neighbour graph of all codes (standardised), labels diffuse from the labelled points,
    F <- alpha S F + (1 - alpha) Y (scikit-learn's LabelSpreading). The unlabelled points get no label."""
    from sklearn.semi_supervised import LabelSpreading

    z = standardise(torch.cat([z_labelled, z_unlabelled]).double()).numpy()  # (N_l + N_u, d)
    y = torch.full((len(z),), -1, dtype=torch.long)                           # -1 = unlabelled (sklearn)
    y[:len(y_labelled)] = y_labelled
    model = LabelSpreading(kernel="knn", n_neighbors=n_neighbors, alpha=alpha, max_iter=200, tol=1e-4)
    with warnings.catch_warnings():  # 'max_iter reached' only says the last change was above tol
        warnings.simplefilter("ignore")
        model.fit(z, y.numpy())
    probs = torch.zeros(len(z), num_classes)
    probs[:, torch.as_tensor(model.classes_)] = torch.as_tensor(model.label_distributions_, dtype=torch.float32)
    # The k-NN graph is directed: a point whose neighbours never lead to a labelled point receives no mass
    # (an all-zero row). It knows nothing, so it gets the uniform distribution and is selected last.
    probs[probs.sum(1) == 0] = 1.0 / num_classes
    return probs[len(y_labelled):]                                            # (N_u, classes)


def confident_per_class(probs: torch.Tensor, fraction: float) -> torch.Tensor:
    """Sorted indices (M,) of the `fraction` most confident rows of each predicted class: class-balanced, so
    an easy class cannot crowd out a hard one."""
    conf, label = probs.max(1)
    keep = []
    for c in label.unique():
        idx = torch.nonzero(label == c).squeeze(1)
        keep.append(idx[conf[idx].argsort(descending=True, stable=True)[:int(round(fraction * len(idx)))]])
    return torch.cat(keep).sort().values


def self_train(make, labelled: TensorData, unlabelled_x: torch.Tensor, prior: torch.Tensor, test: TensorData,
               recipe: Recipe, fractions, gen: torch.Generator, device) -> tuple[torch.nn.Module, list[dict]]:
    """Self-training on class-balanced confident pseudo-labels (Lee 2013; Xie et al. 2020 without noise in the
    teacher): round r trains a fresh make() on the labelled images plus the `fractions[r]` most confident
    unlabelled images (N_u, C, H, W) of each class, then relabels them all. Round 0 starts from `prior`.
    Returns the last model and the rounds' histories joined (with `round` and `n_pseudo` columns)."""
    probs, history = prior, []
    for r, frac in enumerate(fractions):
        keep = confident_per_class(probs, frac)                               # (M,) indices into unlabelled
        data = TensorData(torch.cat([labelled.x, unlabelled_x[keep]]), torch.cat([labelled.y, probs[keep].argmax(1)]))
        model = make().to(device)
        epoch0, time0 = (history[-1]["epoch"], history[-1]["train_time_s"]) if history else (0, 0.0)
        for row in fit(model, data, test, recipe, gen=gen):
            history.append(dict(row, epoch=row["epoch"] + epoch0, train_time_s=row["train_time_s"] + time0,
                                round=r, n_pseudo=len(keep)))
        probs = predict(model, unlabelled_x, device).softmax(1)               # (N_u, classes)
    return model, history


def selftrain_fn(args, ae: AutoEncoder, data: fewshot.FewLabelData, device):
    """train_one for fit_seeds: label spreading on the AE codes (once), then self-training per seed. The
    unlabelled pool is data.full_train.x[train_images:]: images only, its labels are never passed on."""
    unlabelled_x = data.full_train.x[len(data.train):]                        # (N_u, 1, 28, 28)
    codes = lambda x: predict(ae, x, device, fn=ae.to(device).encoder)        # noqa: E731  (N, d)
    prior = label_spreading(codes(data.train.x), data.train.y, codes(unlabelled_x), n_neighbors=args.neighbours)
    recipe = Recipe(epochs=1 if args.smoke else args.round_epochs, lr=args.round_lr, batch_size=args.round_batch_size,
                    eval_every=args.round_epochs, augment=AFFINE)
    rounds = args.rounds[:2] if args.smoke else args.rounds
    make = partial(make_model, args, ae, False)
    return lambda gen: self_train(make, data.train, unlabelled_x, prior, data.test, recipe, rounds, gen, device)


def compare(variants: dict, seeds: list[int]) -> dict:
    """Paired comparisons over seeds (a - b): each variant vs scratch, and QUESTIONS. A single seed is a
    legitimate quick run, but gives no paired test: then this is empty."""
    if len(seeds) < 2:
        return {}
    pair = lambda a, b, key: paired(variants[a][key]["values"], variants[b][key]["values"])  # noqa: E731
    for name, v in variants.items():
        if name != "scratch":
            v["vs_scratch"] = pair(name, "scratch", "final_test_acc")
            v["vs_scratch_loss"] = pair(name, "scratch", "final_test_loss")
    return {f"{a} - {b}": {"acc": pair(a, b, "final_test_acc"), "loss": pair(a, b, "final_test_loss")}
            for a, b in QUESTIONS if a in variants and b in variants}


def plot_variants(variants: dict, path, title: str, x: str = "epoch"):
    """Small multiples, four lines a panel: one column per variant over scratch (grey), rows loss and accuracy,
    test solid with a +- 1 std band over seeds, train dashed. A vector PDF, 7 pt text at the report's text width."""
    others = [n for n in variants if n != "scratch"]
    with plt.rc_context({"font.size": 7, "axes.titlesize": 7, "axes.grid": True, "grid.alpha": 0.3}):
        fig, axes = plt.subplots(2, len(others), figsize=(TEXT_WIDTH_IN, 3.3), sharex=True, sharey="row", squeeze=False)
        for col, name in enumerate(others):
            for (run, color), (ax, key), (split, style) in product((("scratch", "0.6"), (name, "C0")),
                                                                 zip(axes[:, col], ("loss", "acc")),
                                                                 (("train", "--"), ("test", "-"))):
                m = f"{split}_{key}"
                xs, ys, sd = (np.array(v) for v in zip(*[(h[x], h[m], h.get(f"{m}_std", 0.0))
                                                         for h in variants[run]["mean_history"] if m in h]))
                ax.plot(xs, ys, style, color=color, lw=1)
                if split == "test":
                    ax.fill_between(xs, ys - sd, ys + sd, color=color, alpha=0.2, lw=0)
            axes[0, col].set_title(VARIANTS[name][3].split(": ")[-1].replace(", ", ",\n"))  # its label
            axes[1, col].set_xlabel({"epoch": "epoch", "train_time_s": "training time (s)"}[x])
        axes[0, 0].set_ylabel("loss"), axes[1, 0].set_ylabel("accuracy")
        handles = [Line2D([], [], color=c, ls=ls, lw=1, label=lab) for c, ls, lab in (
            ("0.6", "-", "scratch (ex4)"), ("C0", "-", "variant"), ("k", "--", "train"), ("k", "-", "test ± 1 std"))]
        fig.suptitle(title, fontsize=7.5)
        fig.tight_layout()
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, frameon=False)
        return save(fig, path, vector=True)


def main(argv=None) -> dict:
    args = get_args(argv)
    fig_dir, res_dir, runs_dir, device = setup(args)
    t_start = time.perf_counter()
    data = fewshot.load(args)
    seeds = fewshot.resolve_seeds(args, SELFTRAIN_SEEDS if "selftrain" in args.variants else fewshot.N_SEEDS)
    recipe = RECIPE.override(args)
    names = ["scratch"] + [v for v in args.variants if v != "scratch"]  # the reference runs first
    ae, ae_recipe = (pretrained_autoencoder(args, data, runs_dir, device) if any(VARIANTS[v][0] for v in names)
                     else (None, None))
    results = {"name": "ex5", "recipe": dataclasses.asdict(recipe), "model": make_model(args, None, False).config,
               "train_indices": data.train.index, "train_class_counts": fewshot.class_counts(data.train.y),
               "test_size": len(data.test), "test_indices": data.test.index, "seeds": seeds,
               "autoencoder_recipe": ae_recipe and dataclasses.asdict(ae_recipe), "variants": {}}
    for name in names:
        from_ae, freeze, aug, label = VARIANTS[name]
        v_recipe = dataclasses.replace(recipe, augment=AFFINE if aug else "none")
        tb = tensorboard_dir(args, f"ex5/{name}", runs_dir)

        def train_one(gen):  # called by fit_seeds right after seeding: the seed decides the initialisation
            model = make_model(args, ae if from_ae else None, freeze).to(device)
            groups = lowlr_groups(model, args.encoder_lr_ratio, args.lr) if name == "finetune_lowlr" else None
            return model, fit(model, data.train, data.test, v_recipe, gen=gen, params=groups,
                              tb_dir=tb / f"seed{gen.initial_seed()}" if tb else None)

        r = fewshot.fit_seeds(selftrain_fn(args, ae, data, device) if name == "selftrain" else train_one, seeds,
                              desc=f"ex5 {name}")
        results["variants"][name] = {"label": label, "augment": v_recipe.augment, **r}
    results["comparisons"] = compare(results["variants"], seeds)

    stem = "ex5_selftrain" if "selftrain" in names else "ex5"
    if stem == "ex5" and len(names) > 1:  # the figures show variants against scratch
        title = (f"Each variant against scratch (grey): {len(data.train)} labels, mean over {len(seeds)} seeds, "
                 f"test on {len(data.test)} fixed random test images")
        plot_variants(results["variants"], fig_dir / "ex45_compare.pdf", title)
        plot_variants(results["variants"], fig_dir / "ex45_compare_time.pdf", title, x="train_time_s")
    path = write_results(res_dir / f"{stem}.json", results, args, device, t_start)
    fewshot.print_table(results["variants"], reference="scratch")
    print(f"wrote {path} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
