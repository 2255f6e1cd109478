"""Exercise 2: the ex1 encoder + a two-layer MLP head as an MNIST classifier (cross-entropy).

The encoder is the conv+FC Encoder of ex1 (same layers, d = 12 latent), followed by
MLP 12 -> 64 -> 10. For comparison the same loop trains three course baselines:
  lab2_cnn  - MIT 6.S191 Lab 2 CNN (conv24 -> pool -> conv36 -> pool -> FC128 -> FC10)
  lab_mlp   - LAB01 MLP 784-64-64-10
  skip_mlp  - LAB01 MLP with residual (skip) blocks
and measures Q2(d) (report/theory.typ): the test accuracy of the classifier, trained with and without the
augmentation, as the test digits are shifted by 0..--shift-max pixels in each of the four directions.

    python ex2_classifier.py            # full run: report/figures/ex2_*.png, report/results/ex2.json
    python ex2_classifier.py --smoke    # seconds, into a temp dir
"""
from __future__ import annotations

import argparse
import dataclasses
import time

from common.data import AFFINE, first_n, load_mnist_splits, shift_images
from common.models import CLASSIFIER_RECIPE, Classifier, Lab2CNN, LabMLP, SkipMLP, count_parameters
from common.plots import plot_curves, shift_curves
from common.stats import wilson
from common.train import fit, predict, tensorboard_dir
from common.utils import add_common_args, add_model_args, positive_int, run_main, seed_everything, setup, write_results

# The recipe: AdamW + one-cycle, batch 128, 6 epochs over all 60,000 images, random shifts and rotations of
# the training digits. It lives in common/models.py because ex3 trains this classifier when it is missing.
RECIPE = CLASSIFIER_RECIPE
BASELINES = {"lab2_cnn": Lab2CNN, "lab_mlp": LabMLP, "skip_mlp": SkipMLP}
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}  # (dx, dy) per pixel of shift
MAX_SHIFT = 14  # half of the 28-pixel image: further shifts leave nothing of the digit


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, epochs=RECIPE.epochs, batch_size=RECIPE.batch_size, lr=RECIPE.lr)
    add_model_args(p)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=RECIPE.augment != "none",
                   help=f"augment the training digits ({AFFINE}; default on)")
    p.add_argument("--baselines", nargs="*", choices=list(BASELINES), default=list(BASELINES),
                   help="baseline networks to train too (default: all; pass none to skip)")
    p.add_argument("--baseline-epochs", type=positive_int, default=None,
                   help="epochs for the baselines (default: same as --epochs)")
    p.add_argument("--shift-max", type=int, default=6, choices=range(0, MAX_SHIFT + 1), metavar=f"{{0..{MAX_SHIFT}}}",
                   help="largest test-digit shift in pixels of the Q2(d) shift test; 0 skips the test and the "
                        "classifier trained without augmentation that it needs (default 6)")
    p.add_argument("--shift-images", type=positive_int, default=2000,
                   help="the shift test uses the first N test images (default 2000: 25 evaluations per model)")
    return p.parse_args(argv)


def shift_test(model, test, shifts: list[int], device) -> dict:
    """Accuracy (with its Wilson 95 % interval) of `model` on the test digits shifted by s pixels, zero
    fill, for every s in `shifts` and every direction: {direction: [stats.wilson(...) per shift]}."""
    out = {}
    for direction, (dx, dy) in DIRECTIONS.items():
        out[direction] = []
        for s in shifts:
            logits = predict(model, shift_images(test.x, dx * s, dy * s), device)   # (N, 10)
            out[direction].append(wilson(int((logits.argmax(1) == test.y).sum()), len(test)))
    return out


def shift_experiment(args, main_model, other_model, test, device, fig_dir) -> dict:
    """Q2(d): both classifiers (trained with and without augmentation) on the first --shift-images test
    digits shifted by 0..--shift-max pixels in every direction; the figure and the results entry."""
    this, other = ("with", "without") if args.augment else ("without", "with")
    shifts, sub = list(range(args.shift_max + 1)), first_n(test, args.shift_images)
    models = {f"{this} augmentation": main_model, f"{other} augmentation": other_model}
    curves = {k: shift_test(m, sub, shifts, device) for k, m in models.items()}
    shift_curves(curves, shifts, fig_dir / "ex2_shift.png",
                 f"ex2 classifier: accuracy on the first {len(sub):,} test digits shifted by 0-{args.shift_max} px")
    return {"shifts_px": shifts, "test_size": len(sub), "fill": "zeros", "models": curves}


def write_figures(args, ours: dict, baselines: dict, fig_dir) -> None:
    """Loss and accuracy per epoch of the classifier, and of the baselines beside it."""
    plot_curves({"encoder+MLP": ours["history"]}, fig_dir / "ex2_curves.png",
                f"ex2 classifier (encoder d={args.latent_dim} + MLP): loss and accuracy per epoch", logy_loss=True)
    if baselines:
        plot_curves({"encoder+MLP": ours["history"], **{n: b["history"] for n, b in baselines.items()}},
                    fig_dir / "ex2_baselines.png", "ex2: our classifier vs course baselines (same loop)",
                    logy_loss=True)


def main(argv=None) -> dict:
    args = get_args(argv)
    fig_dir, res_dir, runs_dir, device = setup(args)
    t_start = time.perf_counter()
    train, test = load_mnist_splits(args)
    if args.smoke:
        args.epochs, args.baseline_epochs = 1, 1
    recipe = dataclasses.replace(RECIPE.override(args), augment=AFFINE if args.augment else "none")
    print(f"ex2: {len(train)} train / {len(test)} test images, device={device}, augment={args.augment}")

    def train_one(name, model, ckpt, recipe=recipe):
        gen = seed_everything(args.seed)
        hist = fit(model.to(device), train, test, recipe, gen=gen, ckpt_path=runs_dir / ckpt, resume=args.resume,
                   tb_dir=tensorboard_dir(args, f"ex2/{name}", runs_dir))
        return {"test_acc": hist[-1]["test_acc"], "test_loss": hist[-1]["test_loss"],
                "params": count_parameters(model), "history": hist}

    def classifier():  # built right after seeding, so every run of it starts from the same weights
        seed_everything(args.seed)
        return Classifier(args.latent_dim, args.channels, fc=True, hidden=args.hidden)

    main_model = classifier()
    ours = train_one("encoder+MLP", main_model, "ex2_classifier.pt")
    results = {"name": "ex2", "seed": args.seed, "recipe": dataclasses.asdict(recipe), "train_size": len(train),
               "test_size": len(test), **ours, "baselines": {}}
    baseline_recipe = dataclasses.replace(recipe, epochs=args.baseline_epochs or args.epochs)
    for name in args.baselines:
        seed_everything(args.seed)
        results["baselines"][name] = train_one(name, BASELINES[name](), f"ex2_{name}.pt", baseline_recipe)

    if args.shift_max:  # Q2(d) measured: the same classifier and recipe, trained with and without augmentation
        other = "without" if args.augment else "with"
        other_model = classifier()
        results["other_augment"] = train_one(f"encoder+MLP {other} augmentation", other_model,
                                             "ex2_classifier_other_augment.pt",
                                             dataclasses.replace(recipe, augment="none" if args.augment else AFFINE))
        results["shift_test"] = shift_experiment(args, main_model, other_model, test, device, fig_dir)

    write_figures(args, ours, results["baselines"], fig_dir)

    path = write_results(res_dir / "ex2.json", results, args, device, t_start)
    print("\n model        | test acc | params")
    for name, r in [("encoder+MLP", ours), *results["baselines"].items()]:
        print(f" {name:12s} | {100 * r['test_acc']:.2f}%  | {r['params']:,}")
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
