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
import time

import torch

from common.data import load_mnist, shift_images, smoke_slice
from common.models import CLASSIFIER_RECIPE, Classifier, Lab2CNN, LabMLP, SkipMLP, count_parameters
from common.plots import plot_curves, shift_curves
from common.stats import wilson
from common.train import fit, predict, recipe_record, tensorboard_dir
from common.utils import (add_common_args, pick_device, positive_int, resolve_output_dirs, run_config, run_main,
                          seed_everything, write_json_atomic)

BASELINES = {"lab2_cnn": Lab2CNN, "lab_mlp": LabMLP, "skip_mlp": SkipMLP}
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}  # (dx, dy) per pixel of shift


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # the recipe ex3 expects of runs/ex2_classifier.pt (common.models.CLASSIFIER_RECIPE)
    add_common_args(p, epochs=CLASSIFIER_RECIPE["epochs"], batch_size=CLASSIFIER_RECIPE["batch_size"],
                    lr=CLASSIFIER_RECIPE["lr"])
    p.add_argument("--latent-dim", type=positive_int, default=12, help="encoder output size d (default 12)")
    p.add_argument("--channels", type=positive_int, nargs="+", default=[32, 64, 128],
                   help="encoder conv channels, as in ex1 (default 32 64 128)")
    p.add_argument("--hidden", type=positive_int, default=64, help="MLP hidden units (default 64)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   default=CLASSIFIER_RECIPE["augment"] is not None,
                   help="random shifts (<=2 px) and rotations (<=10 deg) of training digits (default on)")
    p.add_argument("--baselines", nargs="*", choices=list(BASELINES), default=list(BASELINES),
                   help="baseline networks to train too (default: all; pass none to skip)")
    p.add_argument("--baseline-epochs", type=positive_int, default=None,
                   help="epochs for the baselines (default: same as --epochs)")
    p.add_argument("--shift-max", type=int, default=6, choices=range(0, 15), metavar="{0..14}",
                   help="largest test-digit shift in pixels of the Q2(d) shift test; 0 skips the test and the "
                        "classifier trained without augmentation that it needs (default 6)")
    p.add_argument("--shift-test-n", type=positive_int, default=2000,
                   help="first test images used by the shift test (default 2000: 25 evaluations per model)")
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


def main(argv=None) -> dict:
    args = get_args(argv)
    fig_dir, res_dir, runs_dir = resolve_output_dirs(args)
    device = pick_device(args.device)
    t_start = time.perf_counter()

    train, test = load_mnist(args.data_dir, train=True), load_mnist(args.data_dir, train=False)
    if args.smoke:
        train, test, args.epochs, args.baseline_epochs = smoke_slice(train, 1024), smoke_slice(test, 256), 1, 1
    augment = CLASSIFIER_RECIPE["augment"] if args.augment else None  # data.random_affine
    print(f"ex2: {len(train)} train / {len(test)} test images, device={device}, augment={args.augment}")

    def train_one(name, model, epochs, ckpt, augment=augment):
        gen = seed_everything(args.seed)
        model = model.to(device)
        hist = fit(model, train, test, epochs=epochs, lr=args.lr, batch_size=args.batch_size, gen=gen,
                   device=device, augment=augment, ckpt_path=runs_dir / ckpt, resume=args.resume,
                   desc=f"ex2 {name}", hparams=run_config(args), channels_last=True,
                   tb_dir=tensorboard_dir(args, f"ex2/{name}", runs_dir))
        return {"test_acc": hist[-1]["test_acc"], "test_loss": hist[-1]["test_loss"],
                "params": count_parameters(model), "history": hist}

    seed_everything(args.seed)  # same init for the main model whatever else ran before
    main_model = Classifier(args.latent_dim, args.channels, fc=True, hidden=args.hidden)
    ours = train_one("encoder+MLP", main_model, args.epochs, "ex2_classifier.pt")
    results = {"name": "ex2", "config": run_config(args), "seed": args.seed, "threads": torch.get_num_threads(),
               "recipe": recipe_record(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, augment=augment),
               "train_size": len(train),
               "test_size": len(test), **ours, "baselines": {}}
    for name in args.baselines:
        seed_everything(args.seed)
        results["baselines"][name] = train_one(name, BASELINES[name](), args.baseline_epochs or args.epochs,
                                               f"ex2_{name}.pt")

    if args.shift_max:  # Q2(d) measured: the same classifier and recipe, trained with and without augmentation
        this, other = ("with", "without") if args.augment else ("without", "with")
        seed_everything(args.seed)
        other_model = Classifier(args.latent_dim, args.channels, fc=True, hidden=args.hidden)
        results["other_augment"] = train_one(f"encoder+MLP {other} augmentation", other_model, args.epochs,
                                             "ex2_classifier_other_augment.pt",
                                             augment=None if args.augment else CLASSIFIER_RECIPE["augment"])
        shifts = list(range(args.shift_max + 1))
        sub = test.subset(torch.arange(min(args.shift_test_n, len(test))))
        models = {f"{this} augmentation": main_model, f"{other} augmentation": other_model}
        results["shift_test"] = {"shifts_px": shifts, "test_size": len(sub), "fill": "zeros",
                                 "models": {k: shift_test(m, sub, shifts, device) for k, m in models.items()}}
        shift_curves(results["shift_test"]["models"], shifts, fig_dir / "ex2_shift.png",
                     f"ex2 classifier: accuracy on the first {len(sub):,} test digits shifted by 0-{args.shift_max} px")

    plot_curves({"encoder+MLP": ours["history"]}, fig_dir / "ex2_curves.png",
                f"ex2 classifier (encoder d={args.latent_dim} + MLP): loss and accuracy per epoch", logy_loss=True)
    if args.baselines:
        plot_curves({"encoder+MLP": ours["history"], **{n: b["history"] for n, b in results["baselines"].items()}},
                    fig_dir / "ex2_baselines.png", "ex2: our classifier vs course baselines (same loop)",
                    logy_loss=True)

    results["wall_time_s"] = time.perf_counter() - t_start
    path = write_json_atomic(res_dir / "ex2.json", results)
    print("\n model        | test acc | params")
    for name, r in [("encoder+MLP", ours), *results["baselines"].items()]:
        print(f" {name:12s} | {100 * r['test_acc']:.2f}%  | {r['params']:,}")
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
