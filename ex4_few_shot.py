"""Exercise 4: train the encoder + MLP classifier on only the first 100 MNIST training images.

The training set is exactly `Subset(train, torch.arange(100))` (the indices used are written to the
JSON). Every `--eval-every` epochs the model is evaluated on a fixed subset of the test set (the first
`--curve-test-size` images) for the loss/accuracy curves against epochs and against training seconds;
at the end each seed is evaluated on the whole 10,000-image test set. Ten seeds are run (100 examples
make one run noisy) and every final number carries its mean, std, 95% confidence interval and per-seed
values (common.stats), together with the signs of over-fitting: the epoch of minimum test loss, the
epoch where training accuracy reaches 100%, and the train/test gap at the end.

Seeds run one after another, not stacked into one vectorised network: stacking ten copies with
torch.func.vmap (grouped convolutions) measured slower per seed on this CPU than ten plain runs.

This is the project's main job:  python ex4_few_shot.py   (under a minute on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import time

import torch

from common import fewshot
from common.data import augment_words
from common.models import Classifier, count_parameters
from common.plots import plot_curves
from common.train import fit_seeds, tensorboard_dir
from common.utils import pick_device, resolve_output_dirs, run_config, run_main, write_json_atomic


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fewshot.add_args(p, runs_dir=False)  # ~4 s per seed: nothing worth checkpointing
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = get_args(argv)
    fig_dir, res_dir, runs_dir = resolve_output_dirs(args)  # runs_dir: --tensorboard only
    device = pick_device(args.device)
    t_start = time.perf_counter()

    data = fewshot.load(args)
    seeds = fewshot.resolve_seeds(args)
    print(f"ex4: {len(data.train)} labelled training images (indices {data.train.index[0]}..{data.train.index[-1]}), "
          f"curves on {len(data.curve_test)} test images, final metrics on {len(data.test)}, seeds {seeds}, "
          f"device={device}")

    def make_model():
        return Classifier(args.latent_dim, args.channels, fc=True, hidden=args.hidden, dropout=args.dropout)

    r = fit_seeds(make_model, seeds, data.train, data.curve_test, final_test=data.test, device=device,
                  desc="ex4", tb_dir=tensorboard_dir(args, "ex4", runs_dir), hparams=run_config(args),
                  **fewshot.fit_kwargs(args))
    results = {"name": "ex4", "config": run_config(args), "threads": torch.get_num_threads(),
               "recipe": {"optimizer": "AdamW", **fewshot.fit_kwargs(args), "augment": augment_words(None)}, "model": make_model().config,
               "train_indices": data.train.index, "train_labels": data.train.y,
               "train_class_counts": fewshot.class_counts(data.train.y),
               "params": count_parameters(make_model()), **r}

    title = (f"ex4: trained on the first {len(data.train)} images, mean ± std over {len(seeds)} seeds\n"
             f"(test curves on the first {len(data.curve_test)} test images)")
    plot_curves({"from scratch": r["mean_history"]}, fig_dir / "ex4_curves.png", title)
    plot_curves({"from scratch": r["mean_history"]}, fig_dir / "ex4_curves_time.png", title, x="train_time_s")

    results["wall_time_s"] = time.perf_counter() - t_start
    path = write_json_atomic(res_dir / "ex4.json", results)
    fewshot.print_table({"ex4 from scratch": r})
    o = r["overfitting"]
    print(f" over-fitting (mean curve): test loss lowest at epoch {o['epoch_min_test_loss']} "
          f"(evaluated every {args.eval_every}), then +{o['test_loss_rise']:.3f}; train accuracy 100% from "
          f"epoch {o['epoch_train_acc_100']}; final train - test accuracy {100 * r['final_gap_acc']['mean']:.1f} pts")
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
