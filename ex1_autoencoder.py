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
import time

import torch

from common.data import load_mnist, smoke_slice
from common.models import AE_RECIPE, AutoEncoder, count_parameters
from common.plots import image_rows, plot_curves
from common.train import fit, mean_l1, predict, recipe_record, tensorboard_dir
from common.utils import (add_common_args, pick_device, positive_int, resolve_output_dirs, run_config, run_main,
                          seed_everything, write_json_atomic)

VARIANTS = {"conv": False, "conv_fc": True}  # name -> use an FC layer at the latent level


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, **AE_RECIPE)  # the recipe ex3/ex5 expect of runs/ex1_conv_fc.pt (common.models)
    p.add_argument("--latent-dim", type=positive_int, default=12, help="size d of the latent code (default 12)")
    p.add_argument("--channels", type=positive_int, nargs="+", default=[32, 64, 128],
                   help="conv channels per stride-2 layer (default 32 64 128)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="which autoencoders to train (default: both)")
    return p.parse_args(argv)


def pca_l1(train_x: torch.Tensor, test_x: torch.Tensor, d: int, seed: int) -> dict:
    """Mean-L1 of the best rank-d linear reconstruction (PCA fitted on the training images)."""
    from sklearn.decomposition import PCA
    pca = PCA(n_components=d, random_state=seed).fit(train_x.flatten(1).numpy())
    test_flat = test_x.flatten(1).numpy()
    recon = torch.from_numpy(pca.inverse_transform(pca.transform(test_flat))).float()  # (N, 784)
    target = test_x.flatten(1)
    return {"test_l1": mean_l1(recon, target).item(),
            "test_l1_clipped": mean_l1(recon.clamp(0, 1), target).item(),  # pixels live in [0, 1]
            "explained_variance": float(pca.explained_variance_ratio_.sum()),
            "recon": recon.view_as(test_x)}


def is_collapsed(recon: torch.Tensor, x: torch.Tensor, tol: float = 0.9) -> bool:
    """True if the AE ignores its input: its L1 is close to that of predicting an all-black image
    (= mean pixel value, ~0.13) or its outputs barely vary across images."""
    all_black = x.abs().mean()
    spread = recon.std(dim=0).mean()  # mean over pixels of the std across images
    return bool(mean_l1(recon, x) > tol * all_black or spread < 0.01)


def train_variant(name: str, args, train, test, device, runs_dir, tb_root) -> tuple[dict, list[dict], torch.Tensor]:
    """Train one autoencoder variant from the run's seed: (its results entry, history, test reconstructions)."""
    gen = seed_everything(args.seed)  # each variant starts from the same seed
    model = AutoEncoder(args.latent_dim, args.channels, fc=VARIANTS[name]).to(device)
    hist = fit(model, train, test, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, gen=gen,
               device=device, reconstruct=True, ckpt_path=runs_dir / f"ex1_{name}.pt",
               resume=args.resume, desc=f"ex1 {name}", channels_last=True,
               tb_dir=tb_root / name if tb_root else None, hparams=run_config(args))
    recon = predict(model, test.x, device)  # (N, 1, 28, 28)
    collapsed = is_collapsed(recon, test.x)
    if collapsed:
        print(f"WARNING: ex1 {name} collapsed to a near-constant output (see report, 'collapse').")
    entry = {"test_l1": mean_l1(recon, test.x).item(), "train_l1_last_epoch": hist[-1]["train_loss"],
             "params": count_parameters(model), "collapsed": collapsed,
             "latent_shape": list(model.encoder(test.x[:1].to(device)).shape[1:])}
    return entry, hist, recon


def main(argv=None) -> dict:
    args = get_args(argv)
    fig_dir, res_dir, runs_dir = resolve_output_dirs(args)
    seed_everything(args.seed)
    device = pick_device(args.device)
    t_start = time.perf_counter()

    train, test = load_mnist(args.data_dir, train=True), load_mnist(args.data_dir, train=False)
    if args.smoke:
        train, test, args.epochs = smoke_slice(train, 1024), smoke_slice(test, 256), 1
    print(f"ex1: {len(train)} train / {len(test)} test images, d={args.latent_dim}, device={device}")

    results = {"name": "ex1", "config": run_config(args), "seed": args.seed, "threads": torch.get_num_threads(),
               "recipe": recipe_record(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size),
               "latent_dim": args.latent_dim,
               "variants": {}, "history": {}}
    recons = {}
    tb_root = tensorboard_dir(args, "ex1", runs_dir)  # None unless --tensorboard
    for name in args.variants:
        results["variants"][name], results["history"][name], recons[name] = train_variant(
            name, args, train, test, device, runs_dir, tb_root)

    pca = pca_l1(train.x, test.x, args.latent_dim, args.seed)
    results["pca_test_l1"] = pca["test_l1"]
    results["pca_test_l1_clipped"] = pca["test_l1_clipped"]
    results["pca_explained_variance"] = pca["explained_variance"]
    results["all_black_test_l1"] = test.x.mean().item()  # L1 of predicting 0 everywhere

    n_show = 12
    rows = [test.x[:n_show]] + [recons[n][:n_show] for n in args.variants] + [pca["recon"][:n_show].clamp(0, 1)]
    labels = ["input"] + [f"AE {n}\nL1={results['variants'][n]['test_l1']:.4f}" for n in args.variants] + \
             [f"PCA-{args.latent_dim}\nL1={pca['test_l1']:.4f}"]
    image_rows(rows, labels, fig_dir / "ex1_reconstructions.png",
               f"MNIST test digits and their reconstructions from a d={args.latent_dim} code")
    plot_curves({n: results["history"][n] for n in args.variants}, fig_dir / "ex1_loss.png",
                f"Autoencoder mean-L1 per epoch (d={args.latent_dim})", metrics=(("loss", "mean L1"),),
                hlines={f"PCA-{args.latent_dim} test": pca["test_l1"]}, logy_loss=True)

    results["wall_time_s"] = time.perf_counter() - t_start
    path = write_json_atomic(res_dir / "ex1.json", results)
    print("\n variant   | test mean-L1 | params")
    for n in args.variants:
        v = results["variants"][n]
        print(f" {n:9s} | {v['test_l1']:.4f}       | {v['params']:,}")
    print(f" PCA-{args.latent_dim:<4d} | {pca['test_l1']:.4f}       | -")
    print(f" all-black | {results['all_black_test_l1']:.4f}       | -")
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
