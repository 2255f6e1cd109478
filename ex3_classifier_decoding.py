"""Exercise 3: decode the latent space of the ex2 classifier.

The trained ex2 classifier's encoder is frozen (requires_grad=False, BatchNorm in eval mode) and a
fresh decoder with the ex1 architecture is trained on top of it with the mean-L1 loss. Its
reconstructions are compared with the ex1 conv+FC autoencoder's, and the two 12-d latent spaces are
measured on the test set (after standardising each latent dimension):
  within-class spread  - mean distance of a digit's code to its class centroid
  between-class spread - mean distance between the 10 class centroids
  silhouette score     - (b - a) / max(a, b), in [-1, 1]; higher = better separated clusters
  k-NN accuracy        - 5-nearest-neighbour classification of test codes from training codes
plus a t-SNE map of both spaces coloured by digit.

Checkpoints runs/ex2_classifier.pt and runs/ex1_conv_fc.pt are reused; a missing one is trained
first with its script's recipe (common.models CLASSIFIER_RECIPE / AE_RECIPE, and the script says so),
and one trained with another recipe is refused.

    python ex3_classifier_decoding.py           # report/figures/ex3_*.png, report/results/ex3.json
    python ex3_classifier_decoding.py --smoke   # seconds, into a temp dir
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from common.data import load_mnist_splits
from common.models import AE_RECIPE, CLASSIFIER_RECIPE, AutoEncoder, Classifier, Decoder, EncoderDecoder
from common.plots import image_grid, scatter_panels
from common.stats import standardise
from common.train import Recipe, fit, load_or_fit, mean_l1, predict, tensorboard_dir
from common.utils import add_common_args, add_model_args, positive_int, run_main, seed_everything, setup, write_results

# The decoder's recipe: AdamW + one-cycle, batch 128, over all 60,000 training images; only the decoder learns.
RECIPE = Recipe(epochs=4, lr=3e-3, batch_size=128)
N_CLASSES = 10
STAT_KEYS = {"within_class": "within", "between_class": "between", "between_within_ratio": "ratio",
             "min_between_class": "min_between", "per_class_within": "per_class_within"}  # JSON key -> latent_stats


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, epochs=RECIPE.epochs, batch_size=RECIPE.batch_size, lr=RECIPE.lr)
    add_model_args(p)
    p.add_argument("--per-class", type=positive_int, default=6, help="digits per class in the figure (default 6)")
    p.add_argument("--tsne-images", type=positive_int, default=3000,
                   help="the t-SNE maps show the first N test images (default 3000)")
    p.add_argument("--knn", type=positive_int, default=5, help="k of the k-NN accuracy (default 5)")
    g = p.add_argument_group("prerequisites (only trained if their checkpoint is missing; ex1's and ex2's recipes)")
    g.add_argument("--pretrain-epochs", type=positive_int, default=None,
                   help="epochs of the ex1 autoencoder and the ex2 classifier (default: their recipes', "
                        f"{AE_RECIPE.epochs} and {CLASSIFIER_RECIPE.epochs})")
    return p.parse_args(argv)


def classifier_decoder(classifier: Classifier, latent_dim: int, channels) -> EncoderDecoder:
    """The classifier's encoder, frozen, followed by a fresh ex1-architecture decoder."""
    decoder = Decoder(latent_dim, channels, fc=True, in_shape=classifier.encoder.config["in_shape"])
    return EncoderDecoder(classifier.encoder, decoder).freeze_encoder()


def latent_stats(z: torch.Tensor, y: torch.Tensor) -> dict:
    """Within-class and between-class distances of standardised codes z (N, d) with labels y (N,)."""
    classes = y.unique()
    cents = torch.stack([z[y == c].mean(0) for c in classes])                      # (10, d)
    within = torch.stack([(z[y == c] - cents[i]).norm(dim=1).mean() for i, c in enumerate(classes)])  # (10,)
    between = torch.pdist(cents)                                                    # (45,) pairs i < j
    return {"within": within.mean().item(), "per_class_within": within.tolist(),
            "between": between.mean().item(), "min_between": between.min().item(),
            "ratio": (between.mean() / within.mean()).item()}


def latent_measurements(codes: dict, train, test, args) -> tuple[dict, dict, dict]:
    """Per latent space {name: (train codes, test codes)}: within/between-class spread, silhouette and k-NN
    accuracy of the test codes, standardised with the training codes' statistics. (stats, sil, knn)."""
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import KNeighborsClassifier
    stats, sil, knn = {}, {}, {}
    for k, (z_tr, z_te) in codes.items():
        z_tr, z_te = standardise(z_tr), standardise(z_te, z_tr)
        stats[k] = latent_stats(z_te, test.y)
        sil[k] = float(silhouette_score(z_te.numpy(), test.y.numpy(), random_state=args.seed))
        knn_model = KNeighborsClassifier(args.knn).fit(z_tr.numpy(), train.y.numpy())
        knn[k] = float(knn_model.score(z_te.numpy(), test.y.numpy()))
    return stats, sil, knn


def write_figures(test, recon: dict, l1: dict, codes: dict, sil: dict, args, fig_dir) -> None:
    """>= 60 test digits (per_class per digit) from both decoders, and t-SNE maps of both latent spaces."""
    idx = torch.cat([torch.nonzero(test.y == c).flatten()[:args.per_class] for c in range(N_CLASSES)])
    idx = idx.view(N_CLASSES, -1).t().flatten()  # row r holds the r-th example of every digit 0..9
    names = {"ae": "AE (ex1)", "cls": "classifier enc. + decoder"}
    image_grid({"input": test.x[idx], **{f"{names[k]}\nL1={l1[k]:.4f}": v[idx] for k, v in recon.items()}},
                 fig_dir / "ex3_digits.png", f"{len(idx)} test digits ({args.per_class} per class): input, "
                 "ex1 autoencoder, decoder on the frozen ex2 classifier encoder", ncol=N_CLASSES)
    from sklearn.manifold import TSNE
    n = min(args.tsne_images, len(test))
    maps = {}
    for k, name in (("ae", "autoencoder latent (ex1)"), ("cls", "classifier latent (ex2)")):
        z = standardise(codes[k][1][:n]).numpy()
        maps[f"{name}\nsilhouette={sil[k]:.3f}"] = TSNE(2, init="pca", random_state=args.seed,
                                                      perplexity=min(30.0, n / 4)).fit_transform(z)
    scatter_panels(maps, test.y[:n], fig_dir / "ex3_tsne.png",
                   f"t-SNE of {n} test codes (d={args.latent_dim}), coloured by digit")


def main(argv=None) -> dict:
    args = get_args(argv)
    fig_dir, res_dir, runs_dir, device = setup(args)
    t_start = time.perf_counter()
    train, test = load_mnist_splits(args, smoke_test=500)
    if args.smoke:
        args.epochs, args.pretrain_epochs, args.tsne_images = 1, 1, 200
    recipe = RECIPE.override(args)

    # ---- prerequisites: the ex2 classifier and the ex1 conv+FC autoencoder, with their own recipes
    epochs = {"epochs": args.pretrain_epochs} if args.pretrain_epochs else {}
    seed_everything(args.seed)
    cls = Classifier(args.latent_dim, args.channels, hidden=args.hidden).to(device)
    cls = load_or_fit(runs_dir / "ex2_classifier.pt", cls, "the ex2 classifier",
                      dataclasses.replace(CLASSIFIER_RECIPE, **epochs), train, test, seed=args.seed)
    seed_everything(args.seed)
    ae = AutoEncoder(args.latent_dim, args.channels, fc=True).to(device)
    ae = load_or_fit(runs_dir / "ex1_conv_fc.pt", ae, "the ex1 conv+FC autoencoder",
                     dataclasses.replace(AE_RECIPE, **epochs), train, test, seed=args.seed, loss_fn=mean_l1)

    # ---- train only the decoder on top of the frozen classifier encoder
    gen = seed_everything(args.seed)
    model = classifier_decoder(cls, args.latent_dim, args.channels).to(device)
    hist = fit(model, train, test, recipe, gen=gen, loss_fn=mean_l1, ckpt_path=runs_dir / "ex3_cls_decoder.pt",
               resume=args.resume, tb_dir=tensorboard_dir(args, "ex3", runs_dir))

    # ---- evaluate: reconstructions, and the latent spaces on the test set (standardised codes)
    recon = {"ae": predict(ae, test.x, device), "cls": predict(model, test.x, device)}  # (N, 1, 28, 28) each
    l1 = {k: mean_l1(v, test.x).item() for k, v in recon.items()}
    codes = {"ae": (predict(ae, train.x, device, fn=ae.encoder), predict(ae, test.x, device, fn=ae.encoder)),
             "cls": (predict(cls, train.x, device, fn=cls.encoder), predict(cls, test.x, device, fn=cls.encoder))}
    stats, sil, knn = latent_measurements(codes, train, test, args)

    write_figures(test, recon, l1, codes, sil, args, fig_dir)
    results = {"name": "ex3", "seed": args.seed, "recipe": dataclasses.asdict(recipe),
               "ae_test_l1": l1["ae"], "cls_decoder_test_l1": l1["cls"],
               "silhouette": sil, "knn_acc": knn,
               **{key: {k: s[stat] for k, s in stats.items()} for key, stat in STAT_KEYS.items()},
               "history": hist}
    path = write_results(res_dir / "ex3.json", results, args, device, t_start)
    print("\n latent      | test L1 | within | between | ratio | silhouette | k-NN acc")
    for k, name in (("ae", "AE (ex1)"), ("cls", "classifier")):
        print(f" {name:11s} | {l1[k]:.4f}  | "
              f"{stats[k]['within']:.3f}  | {stats[k]['between']:.3f}   | {stats[k]['ratio']:.2f}  | "
              f"{sil[k]:.3f}      | {100 * knn[k]:.2f}%")
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
