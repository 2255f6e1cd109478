"""Exercise 4: train the encoder + MLP classifier on only the first 100 MNIST training images.

The training set is exactly `Subset(train, torch.arange(100))`. Every `--eval-every` epochs the model
is evaluated on the full 10,000-image test set, so losses and accuracies can be plotted against epochs
and against wall-clock training seconds. Several seeds are run (100 examples make one run noisy) and
reported as mean +- std, together with the signs of over-fitting: the epoch of minimum test loss, the
epoch where training accuracy reaches 100%, and the train/test gap at the end.

This is the project's main job:  python ex4_few_shot.py   (about a minute on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import time

from common.data import first_n_subset, load_mnist, smoke_slice
from common.models import Classifier, count_parameters
from common.plots import plot_curves
from common.train import fit_seeds
from common.utils import (add_common_args, fraction, pick_device, positive_int, resolve_output_dirs,
                          run_config, run_main, write_json_atomic)


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, epochs=150, batch_size=100, lr=1e-3)
    p.add_argument("--n-train", type=positive_int, default=100, help="labelled examples: the first N (default 100)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run (default 0 1 2)")
    p.add_argument("--eval-every", type=positive_int, default=10,
                   help="evaluate on the full test set every N epochs (default 10)")
    p.add_argument("--latent-dim", type=positive_int, default=12, help="encoder output size d (default 12)")
    p.add_argument("--channels", type=positive_int, nargs="+", default=[32, 64, 128],
                   help="encoder conv channels, as in ex1 (default 32 64 128)")
    p.add_argument("--hidden", type=positive_int, default=64, help="MLP hidden units (default 64)")
    p.add_argument("--dropout", type=fraction, default=0.0, help="dropout in the MLP head (default 0)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    return p.parse_args(argv)


def print_summary(name: str, r: dict) -> None:
    o = r["overfitting"]
    acc, loss = r["final_test_acc"], r["final_test_loss"]
    print(f" {name:22s} | {100 * acc['mean']:6.2f} +- {100 * acc['std']:5.2f} | {loss['mean']:6.3f} +- {loss['std']:5.3f}"
          f" | {o['epoch_min_test_loss']:>5} | {str(o['epoch_train_acc_100']):>5} | {100 * o['final_gap_acc']:5.1f}")


def print_header() -> None:
    print(f"\n {'run':22s} | {'final test acc':15s} | {'test loss':15s} | {'best':>5} | {'100%':>5} | gap %")
    print(" " + "-" * 82)


def main(argv=None) -> dict:
    args = get_args(argv)
    fig_dir, res_dir, runs_dir = resolve_output_dirs(args)
    device = pick_device(args.device)
    t_start = time.perf_counter()

    full_train, test = load_mnist(args.data_dir, train=True), load_mnist(args.data_dir, train=False)
    train = first_n_subset(full_train, args.n_train)  # exactly indices 0..n-1
    if args.smoke:
        test, args.epochs, args.eval_every, args.seeds = smoke_slice(test, 500), 4, 2, args.seeds[:2]
    print(f"ex4: {len(train)} labelled training images (indices 0..{len(train) - 1}), "
          f"{len(test)} test images, seeds {args.seeds}, device={device}")

    def make_model():
        return Classifier(args.latent_dim, args.channels, fc=True, hidden=args.hidden, dropout=args.dropout)

    r = fit_seeds(make_model, args.seeds, train, test, device=device, desc="ex4", epochs=args.epochs,
                  lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
                  schedule="constant", eval_every=args.eval_every)
    results = {"name": "ex4", "config": run_config(args), "train_indices": list(range(len(train))),
               "train_labels": train.y.tolist(), "params": count_parameters(make_model()), **r}

    title = f"ex4: encoder+MLP trained on the first {len(train)} images (mean +- std over {len(args.seeds)} seeds)"
    plot_curves({"from scratch": r["mean_history"]}, fig_dir / "ex4_curves.png", title)
    plot_curves({"from scratch": r["mean_history"]}, fig_dir / "ex4_curves_time.png", title, x="train_time_s")

    results["wall_time_s"] = time.perf_counter() - t_start
    path = write_json_atomic(res_dir / "ex4.json", results)
    print_header()
    print_summary("ex4 from scratch", r)
    print(" (best = epoch of minimum mean test loss; 100% = first epoch with 100% train accuracy;"
          " gap = train - test accuracy at the end)")
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
