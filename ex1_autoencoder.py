"""Exercise 1: a convolutional autoencoder of MNIST with a d = 12 latent space.

Two variants share the Encoder/Decoder of common/models.py:
  conv     - the convolution stack itself ends in exactly d numbers (3 channels x 2x2 for d = 12)
  conv_fc  - the convolution stack ends at 128x4x4 and a fully connected layer maps it to d
Both are trained with the mean-L1 reconstruction loss and compared with a PCA baseline of the same d.

    python ex1_autoencoder.py            # full run: report/figures/ex1_*.png, report/results/ex1.json
    python ex1_autoencoder.py --smoke    # seconds, into a temp dir
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from common.data import load_mnist_splits
from common.models import AE_RECIPE, AutoEncoder, count_parameters
from common.plots import image_grid, plot_curves
from common.train import fit, mean_l1, predict, tensorboard_dir
from common.utils import add_common_args, add_model_args, run_main, seed_everything, setup, write_results

# The recipe: AdamW + one-cycle, batch 128, 6 epochs over all 60,000 images. It lives in common/models.py
# because ex3 and ex5 train this autoencoder too when runs/ex1_conv_fc.pt is missing.
RECIPE = AE_RECIPE
VARIANTS = {"conv": False, "conv_fc": True}  # name -> a fully connected layer at the latent level
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
    return p.parse_args(argv)


def pca_l1(train_x: torch.Tensor, test_x: torch.Tensor, d: int, seed: int) -> dict:
    """Mean-L1 of the best rank-d linear reconstruction (PCA fitted on the training images)."""
    from sklearn.decomposition import PCA
    pca = PCA(n_components=d, random_state=seed).fit(train_x.flatten(1).numpy())
    recon = torch.from_numpy(pca.inverse_transform(pca.transform(test_x.flatten(1).numpy()))).float()  # (N, 784)
    target = test_x.flatten(1)
    return {"test_l1": mean_l1(recon, target).item(),
            "test_l1_clipped": mean_l1(recon.clamp(0, 1), target).item(),  # pixels live in [0, 1]
            "explained_variance": float(pca.explained_variance_ratio_.sum()),
            "recon": recon.view_as(test_x)}


def is_collapsed(recon: torch.Tensor, x: torch.Tensor) -> bool:
    """True if the autoencoder ignores its input (see COLLAPSE_L1_SHARE and COLLAPSE_SPREAD)."""
    spread = recon.std(dim=0).mean()  # mean over pixels of the std across images
    return bool(mean_l1(recon, x) > COLLAPSE_L1_SHARE * x.abs().mean() or spread < COLLAPSE_SPREAD)


def train_variant(name: str, args, recipe, train, test, device, runs_dir) -> tuple[dict, list[dict], torch.Tensor]:
    """Train one variant from the run's seed: (its results entry, history, test reconstructions (N, 1, 28, 28))."""
    gen = seed_everything(args.seed)  # each variant starts from the same seed
    model = AutoEncoder(args.latent_dim, args.channels, fc=VARIANTS[name]).to(device)
    tb = tensorboard_dir(args, "ex1", runs_dir)
    hist = fit(model, train, test, recipe, gen=gen, loss_fn=mean_l1, ckpt_path=runs_dir / f"ex1_{name}.pt",
               resume=args.resume, tb_dir=tb / name if tb else None)
    recon = predict(model, test.x, device)
    collapsed = is_collapsed(recon, test.x)
    if collapsed:
        print(f"WARNING: ex1 {name} collapsed to a near-constant output (see report, 'collapse').")
    entry = {"test_l1": mean_l1(recon, test.x).item(), "train_l1_last_epoch": hist[-1]["train_loss"],
             "params": count_parameters(model), "collapsed": collapsed,
             "latent_shape": list(model.encoder(test.x[:1].to(device)).shape[1:])}
    return entry, hist, recon


def main(argv=None) -> dict:
    args = get_args(argv)
    fig_dir, res_dir, runs_dir, device = setup(args)
    t_start = time.perf_counter()
    train, test = load_mnist_splits(args)
    args.epochs = 1 if args.smoke else args.epochs
    recipe = RECIPE.override(args)
    print(f"ex1: {len(train)} train / {len(test)} test images, d={args.latent_dim}, device={device}")

    results = {"name": "ex1", "seed": args.seed, "recipe": dataclasses.asdict(recipe), "latent_dim": args.latent_dim,
               "variants": {}, "history": {}}
    recons = {}
    for name in args.variants:
        results["variants"][name], results["history"][name], recons[name] = train_variant(
            name, args, recipe, train, test, device, runs_dir)
    pca = pca_l1(train.x, test.x, args.latent_dim, args.seed)
    results.update(pca_test_l1=pca["test_l1"], pca_test_l1_clipped=pca["test_l1_clipped"],
                   pca_explained_variance=pca["explained_variance"],
                   all_black_test_l1=test.x.mean().item())  # the L1 of predicting 0 everywhere

    rows = {"input": test.x[:N_SHOW], **{f"AE {n}\nL1={results['variants'][n]['test_l1']:.4f}": recons[n][:N_SHOW]
                                        for n in args.variants},
            f"PCA-{args.latent_dim}\nL1={pca['test_l1']:.4f}": pca["recon"][:N_SHOW]}
    image_grid(rows, fig_dir / "ex1_reconstructions.png",
               f"MNIST test digits and their reconstructions from a d={args.latent_dim} code", N_SHOW, rows=True)
    plot_curves({n: results["history"][n] for n in args.variants}, fig_dir / "ex1_loss.png",
                f"Autoencoder mean-L1 per epoch (d={args.latent_dim})", metrics=(("loss", "mean L1"),),
                hlines={f"PCA-{args.latent_dim} test": pca["test_l1"]}, logy_loss=True)

    path = write_results(res_dir / "ex1.json", results, args, device, t_start)
    print("\n variant   | test mean-L1 | params")
    for n in args.variants:
        print(f" {n:9s} | {results['variants'][n]['test_l1']:.4f}       | {results['variants'][n]['params']:,}")
    print(f" PCA-{args.latent_dim:<4d} | {pca['test_l1']:.4f}       | -")
    print(f" all-black | {results['all_black_test_l1']:.4f}       | -")
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
