"""Exercise 1: a convolutional autoencoder of MNIST with a d = 12 latent space.

Two variants share the Encoder/Decoder of common/models.py:
  conv     - the convolution stack itself ends in exactly d numbers (3 channels x 2x2 for d = 12)
  conv_fc  - the convolution stack ends at 128x4x4 and a fully connected layer maps it to d
Both learn the mean-L1 reconstruction loss from the same --n-seeds seeds and are compared with a PCA baseline
of the same d. results/ex1.json: the primary endpoint test_l1_conv_fc_minus_conv (test mean-L1 of conv_fc minus
conv, paired over the seeds: common.stats.paired); variants.<v>.test_l1 over the seeds (stats.summarize) and
.params (conv_fc has more: its FC layers); flattening.<v>: the mean test-L1 curve (on curve_test_images), each
epoch's relative gain (L[e-1] - L[e]) / L[e-1], and `flat`: the last gain < flat_rel_gain_threshold. The first
seed's conv+FC model, runs/ex1_conv_fc.pt, is the one ex3 and ex5 load.

    python ex1_autoencoder.py            # full run: report/figures/ex1_*.png, report/results/ex1.json
    python ex1_autoencoder.py --smoke    # seconds, into a temp dir
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from common.data import load_mnist_splits
from common.fewshot import aggregate_histories, fixed_subset
from common.models import AE_RECIPE, AutoEncoder, count_parameters
from common.plots import image_grid, plot_curves
from common.stats import paired, summarize
from common.train import FLAT_GAIN, fit, fit_parallel, flattening, mean_l1, predict, resolve_precision, tensorboard_dir
from common.utils import add_common_args, add_model_args, positive_int, run_main, seed_everything, setup, write_results

# The recipe: AdamW + one-cycle, batch 128, over all 60,000 images. It lives in common/models.py because ex3 and
# ex5 train this autoencoder too when runs/ex1_conv_fc.pt is missing. 8 epochs: the last one gains < FLAT_GAIN (over 3
# seeds 0.7 % conv_fc, 0.9 % conv; with 6 epochs 1.7 %); each run's own gains are in flattening.*.
RECIPE = AE_RECIPE
VARIANTS = {"conv": False, "conv_fc": True}  # name -> a fully connected layer at the latent level
LABELS = {"conv": "conv only", "conv_fc": "conv + FC"}  # in the figures
PRIMARY = "test_l1_conv_fc_minus_conv"
N_SEEDS = 3       # the fewest paired seeds with a finite t interval of useful width (2 degrees of freedom)
CURVE_IMAGES = 2000  # the per-epoch test curves: a fixed random 2,000 test images (all 10,000 every epoch would add
                     # 10 % to the training time); every reported test L1 is over all 10,000
# Collapse: an autoencoder that ignores its input reconstructs every digit as (nearly) the same image.
COLLAPSE_L1_SHARE = 0.9  # its L1 is at least 90 % of the all-black image's (which predicts 0 everywhere) ...
COLLAPSE_SPREAD = 0.01   # ... or its pixels vary by less than this (std across images, pixel values in [0, 1])
N_SHOW = 12              # test digits in the reconstruction figure


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, epochs=RECIPE.epochs, batch_size=RECIPE.batch_size, lr=RECIPE.lr)
    add_model_args(p, hidden=False)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="which autoencoders to train (default: both)")
    p.add_argument("--n-seeds", type=positive_int, default=N_SEEDS,
                   help=f"train each variant from the seeds --seed .. --seed+n-1 (default {N_SEEDS})")
    return p.parse_args(argv)


def pca_l1(train_x: torch.Tensor, test_x: torch.Tensor, d: int, seed: int) -> dict:
    """Mean-L1 of the best rank-d linear reconstruction (PCA fitted on the training images)."""
    from sklearn.decomposition import PCA
    pca = PCA(n_components=d, random_state=seed).fit(train_x.flatten(1).numpy())
    recon = torch.from_numpy(pca.inverse_transform(pca.transform(test_x.flatten(1).numpy()))).float()  # (N, 784)
    target = test_x.flatten(1)
    return {"test_l1": mean_l1(recon, target).item(),
            "test_l1_clipped": mean_l1(recon.clamp(0, 1), target).item(),  # pixels live in [0, 1]
            "explained_variance": float(pca.explained_variance_ratio_.sum()), "recon": recon.view_as(test_x)}


def is_collapsed(recon: torch.Tensor, x: torch.Tensor) -> bool:
    """True if the autoencoder ignores its input (see COLLAPSE_L1_SHARE and COLLAPSE_SPREAD)."""
    spread = recon.std(dim=0).mean()  # mean over pixels of the std across images
    return bool(mean_l1(recon, x) > COLLAPSE_L1_SHARE * x.abs().mean() or spread < COLLAPSE_SPREAD)


def train_variants(args, seeds, recipe, train, test, device, runs_dir, precision) -> dict:
    """Every variant from every seed: {variant: [(history, test reconstructions (N, 1, 28, 28), model)]}."""
    tb, jobs, curve_test = tensorboard_dir(args, "ex1", runs_dir), [], fixed_subset(test, CURVE_IMAGES)
    for name in args.variants:
        for seed in seeds:
            gen = seed_everything(seed)  # built here, in order: the initial weights follow the seed alone
            model = AutoEncoder(args.latent_dim, args.channels, fc=VARIANTS[name]).to(device)
            tag = name if seed == seeds[0] else f"{name}_seed{seed}"  # the first seed's: ex1_conv_fc.pt

            def job(model=model, gen=gen, tag=tag):
                hist = fit(model, train, curve_test, recipe, gen=gen, loss_fn=mean_l1, resume=args.resume,
                           ckpt_path=runs_dir / f"ex1_{tag}.pt", precision=precision, tb_dir=tb / tag if tb else None)
                return hist, predict(model, test.x, device), model
            jobs.append(job)
    done = iter(fit_parallel(jobs, device))
    return {name: [next(done) for _ in seeds] for name in args.variants}


def main(argv=None) -> dict:
    args = get_args(argv)
    fig_dir, res_dir, runs_dir, device = setup(args)
    t_start = time.perf_counter()
    train, test = load_mnist_splits(args)
    if args.smoke:
        args.epochs, args.n_seeds = 1, 2
    recipe, precision = RECIPE.override(args), resolve_precision(args.precision, device, "ae")
    seeds = list(range(args.seed, args.seed + args.n_seeds))
    print(f"ex1: {len(train)} train / {len(test)} test images, d={args.latent_dim}, seeds {seeds}, {precision}")
    runs = train_variants(args, seeds, recipe, train, test, device, runs_dir, precision)

    hist = {n: aggregate_histories([h for h, _, _ in rs]) for n, rs in runs.items()}  # mean and std over seeds
    variants = {n: {"test_l1": summarize([mean_l1(r, test.x).item() for _, r, _ in rs]),
                    "params": count_parameters(rs[0][2]), "collapsed": [is_collapsed(r, test.x) for _, r, _ in rs],
                    "latent_shape": list(predict(rs[0][2], test.x[:1], device, fn=rs[0][2].encoder).shape[1:])}
                for n, rs in runs.items()}
    l1 = {n: v["test_l1"]["values"] for n, v in variants.items()}  # per seed, paired by seed across variants
    compare = len(runs) == len(VARIANTS) and len(seeds) > 1
    pca = pca_l1(train.x, test.x, args.latent_dim, args.seed)
    results = {"name": "ex1", "seeds": seeds, "recipe": dataclasses.asdict(recipe), "precision": precision,
               "latent_dim": args.latent_dim, "primary_endpoint": PRIMARY, "variants": variants,
               **({PRIMARY: paired(l1["conv_fc"], l1["conv"])} if compare else {}),
               "curve_test_images": min(CURVE_IMAGES, len(test)), "flat_rel_gain_threshold": FLAT_GAIN,
               "flattening": {n: flattening(h) for n, h in hist.items()},
               "history": hist,
               "pca_test_l1": pca["test_l1"], "pca_test_l1_clipped": pca["test_l1_clipped"],
               "pca_explained_variance": pca["explained_variance"],
               "all_black_test_l1": test.x.mean().item()}  # the L1 of predicting 0 everywhere

    first_l1 = {n: variants[n]["test_l1"]["values"][0] for n in runs}  # the first seed's, shown with its digits
    rows = {"input": test.x[:N_SHOW], **{f"AE {LABELS[n]}, seed {seeds[0]}\nL1={first_l1[n]:.4f}": rs[0][1][:N_SHOW]
                                        for n, rs in runs.items()},
            f"PCA-{args.latent_dim}\nL1={pca['test_l1']:.4f}": pca["recon"][:N_SHOW]}
    image_grid(rows, fig_dir / "ex1_reconstructions.png",
               f"MNIST test digits and their reconstructions from a d={args.latent_dim} code", N_SHOW, rows=True)
    plot_curves({LABELS[n]: h for n, h in hist.items()}, fig_dir / "ex1_loss.png",
                f"Autoencoder mean-L1 per epoch (d={args.latent_dim}; mean ± std, {len(seeds)} seeds)",
                metrics=(("loss", "mean L1"),), logy_loss=True,
                hlines={f"PCA-{args.latent_dim} test": pca["test_l1"]})

    path = write_results(res_dir / "ex1.json", results, args, device, t_start, precision)
    for n, v in variants.items():
        print(f" {n:8s} test mean-L1 {v['test_l1']['mean']:.4f} ± {v['test_l1']['std']:.4f}, {v['params']:,} params")
    c = results.get(PRIMARY, {"mean_diff": float("nan"), "verdict": "not compared"})
    print(f" conv_fc - conv: {c['mean_diff']:+.4f} ({c['verdict']}); PCA-{args.latent_dim}: {pca['test_l1']:.4f}")
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
