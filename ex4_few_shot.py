"""Exercise 4: train the encoder + MLP classifier on only the first 100 MNIST training images.

The training set is exactly `Subset(train, torch.arange(100))` (the indices used are written to the
JSON). Every `--eval-every` epochs the model is evaluated on `--test-images` fixed random test images
(2,000 of 10,000; indices in the JSON) for the curves against epochs and training seconds; the final
numbers are the curves' last points, on the same images. Ten seeds are run (100 examples make one
run noisy); every final number carries its mean, std, 95% CI and per-seed values, with the signs of
over-fitting: the epoch of minimum test loss, of 100% training accuracy, and the final train/test gap.

This is the project's main job:  python ex4_few_shot.py   (about 30 s on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import dataclasses
import time

from common import fewshot
from common.models import Classifier, count_parameters
from common.plots import plot_curves
from common.train import Recipe, fit, tensorboard_dir
from common.utils import run_main, setup, write_results

# The 100 images form one full batch, so an epoch is one AdamW step at a constant learning rate and the
# seeds differ only in the initialisation. Training accuracy reaches 100 % by epoch ~25 and the test
# curves are flat after ~75. ex5 repeats this recipe as its `scratch` variant (tests check they agree).
RECIPE = Recipe(epochs=100, lr=1e-3, batch_size=100, schedule="constant", eval_every=10)


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fewshot.add_args(p, RECIPE, runs_dir=False)  # a few seconds per seed: nothing worth checkpointing
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = get_args(argv)
    fig_dir, res_dir, runs_dir, device = setup(args)  # runs_dir: --tensorboard only
    t_start = time.perf_counter()
    data = fewshot.load(args)
    seeds = fewshot.resolve_seeds(args)
    recipe = RECIPE.override(args)
    print(f"ex4: {len(data.train)} labelled training images (indices {data.train.index[0]}..{data.train.index[-1]}), "
          f"curves and final metrics on {len(data.test)} test images, seeds {seeds}, device={device}")
    tb, models = tensorboard_dir(args, "ex4", runs_dir), []

    def train_one(gen):  # called right after seeding: the seed decides the initialisation
        models.append(Classifier(args.latent_dim, args.channels, hidden=args.hidden, dropout=args.dropout).to(device))
        tb_seed = tb / f"seed{gen.initial_seed()}" if tb else None
        return models[-1], fit(models[-1], data.train, data.test, recipe, gen=gen, tb_dir=tb_seed)

    r = fewshot.fit_seeds(train_one, seeds, desc="ex4")
    results = {"name": "ex4", "recipe": dataclasses.asdict(recipe), "model": models[0].config,
               "train_indices": data.train.index, "train_labels": data.train.y,
               "train_class_counts": fewshot.class_counts(data.train.y), "params": count_parameters(models[0]),
               "test_size": len(data.test), "test_indices": data.test.index, **r}

    title = (f"ex4: trained on the first {len(data.train)} images, mean ± std over {len(seeds)} seeds\n"
             f"(test curves and final numbers on the same {len(data.test)} fixed random test images)")
    plot_curves({"from scratch": r["mean_history"]}, fig_dir / "ex4_curves.pdf", title)
    plot_curves({"from scratch": r["mean_history"]}, fig_dir / "ex4_curves_time.pdf", title, x="train_time_s")
    path = write_results(res_dir / "ex4.json", results, args, device, t_start)
    fewshot.print_table({"ex4 from scratch": r})
    o = r["overfitting"]
    print(f" over-fitting (mean curve): test loss lowest at epoch {o['epoch_min_test_loss']} (evaluated every "
          f"{args.eval_every}), then +{o['test_loss_rise']:.3f}; train accuracy 100% from epoch "
          f"{o['epoch_train_acc_100']}; final train - test accuracy {100 * r['final_gap_acc']['mean']:.1f} pts")
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
