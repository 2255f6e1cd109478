"""Exercise 3: decode the latent space of the ex2 classifier.

The ex2 classifier's encoder and, as the reference, the ex1 conv+FC autoencoder's encoder are frozen
(requires_grad=False, BatchNorm in eval mode) and a fresh ex1-architecture decoder is trained on each with the
mean-L1 loss: the same decoder, recipe, seed and epochs, so the two differ only in what the 12-d codes keep.
Latent dimensions are standardised with the training codes' mean and std, so no number depends on their scale.
results/ex3.json ({"ae": .., "cls": ..}: the autoencoder's and the classifier's encoder):
  ae_test_l1, cls_decoder_test_l1  test mean-L1 of the decoder on the frozen AE / classifier encoder
  ae_own_decoder_test_l1    test mean-L1 of the ex1 autoencoder with its own, jointly trained decoder
  test_l1_cls_minus_ae      primary endpoint: cls minus ae test mean-L1, paired over per_class_test_l1 (digits 0..9)
  within_class              mean distance of a standardised test code to its class mean (std units); per_class_within
  between_class             mean distance between the 10 class means of the standardised codes (std units)
  between_within_ratio      between_class / within_class: > 1 = classes lie further apart than they are wide
  min_between_within_ratio  distance between the two closest class means / within_class
  silhouette                mean of (b - a) / max(a, b) over the standardised test codes, in [-1, 1]; a, b: mean
                            distance to the codes of its own class, of the nearest other class
  knn_acc, knn_k            test accuracy of the majority vote of the knn_k nearest standardised training codes
  flattening                each decoder's test-L1 curve, relative gain per epoch and `flat` (as in ex1)
Figures ex3_*: digits, loss, tsne, class_means (decoded class-mean codes), interpolations (decoded codes on the
line between two test digits). runs/ex2_classifier.pt and runs/ex1_conv_fc.pt are reused; a missing one is
trained first with its script's recipe (common.models), and one trained with another recipe is refused.

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
from common.plots import image_grid, plot_curves, scatter_panels
from common.stats import paired, standardise
from common.train import (
    FLAT_GAIN,
    Recipe,
    fit,
    fit_parallel,
    flattening,
    load_or_fit,
    mean_l1,
    predict,
    resolve_precision,
    tensorboard_dir,
)
from common.utils import add_common_args, add_model_args, positive_int, run_main, seed_everything, setup, write_results

# Both decoders' recipe: AdamW + one-cycle, batch 128, over all 60,000 training images; only the decoder learns.
# 8 epochs: both test curves flat by FLAT_GAIN (last epoch 0.4 % and 0.5 %; with 4 epochs, 2 %).
RECIPE = Recipe(epochs=8, lr=3e-3, batch_size=128)
ENCODERS = {"ae": "AE (ex1) encoder", "cls": "classifier (ex2) encoder"}
PRIMARY = "test_l1_cls_minus_ae"
N_CLASSES = 10
STAT_KEYS = {"within_class": "within", "between_class": "between", "between_within_ratio": "ratio",  # JSON key ->
             "min_between_within_ratio": "min_ratio", "per_class_within": "per_class_within"}  # latent_stats key
# Interpolations: the first test image of each digit in a pair, one unlike pair and one alike pair, and
# INTERP_STEPS codes on the straight line between their codes, both ends included.
INTERPOLATE, INTERP_STEPS = ((0, 1), (4, 9)), 8


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


def classifier_decoder(model, latent_dim: int, channels) -> EncoderDecoder:
    """The encoder of `model` (the ex2 classifier, or the ex1 autoencoder), frozen, and a fresh ex1 decoder."""
    decoder = Decoder(latent_dim, channels, fc=True, in_shape=model.encoder.config["in_shape"])
    return EncoderDecoder(model.encoder, decoder).freeze_encoder()


def train_decoders(trained: dict, args, recipe, precision, train, test, device, runs_dir) -> tuple[dict, dict]:
    """A fresh decoder on each frozen encoder of {name: trained model}, trained side by side: (models, histories)."""
    tb, jobs, models = tensorboard_dir(args, "ex3", runs_dir), [], {}
    for k, trained_model in trained.items():
        gen = seed_everything(args.seed)
        model = models[k] = classifier_decoder(trained_model, args.latent_dim, args.channels).to(device)
        jobs.append(lambda model=model, gen=gen, k=k: fit(
            model, train, test, recipe, gen=gen, loss_fn=mean_l1, ckpt_path=runs_dir / f"ex3_{k}_decoder.pt",
            resume=args.resume, precision=precision, tb_dir=tb / k if tb else None))
    return models, dict(zip(models, fit_parallel(jobs, device)))


def latent_stats(z: torch.Tensor, y: torch.Tensor) -> dict:
    """Within-class and between-class distances of standardised codes z (N, d) with labels y (N,)."""
    classes = y.unique()
    cents = torch.stack([z[y == c].mean(0) for c in classes])                      # (10, d)
    within = torch.stack([(z[y == c] - cents[i]).norm(dim=1).mean() for i, c in enumerate(classes)])  # (10,)
    between = torch.pdist(cents)                                                    # (45,) pairs i < j
    return {"within": within.mean().item(), "per_class_within": within.tolist(), "between": between.mean().item(),
            "ratio": (between.mean() / within.mean()).item(), "min_ratio": (between.min() / within.mean()).item()}


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


def latent_pictures(models: dict, codes: dict, test, device) -> tuple[dict, dict]:
    """Per encoder, its decoder applied to the 10 class-mean test codes, and to INTERP_STEPS codes on the
    straight line between the codes of the first test images of each INTERPOLATE pair of digits."""
    t, means, lines = torch.linspace(0, 1, INTERP_STEPS)[:, None], {}, {}               # t: (steps, 1)
    for k, model in models.items():
        z = codes[k][1]                                                                 # (N, d) test codes
        decode = lambda zs: predict(model, zs, device, fn=model.decoder)  # noqa: E731  (n, d) -> (n, 1, 28, 28)
        means[ENCODERS[k]] = decode(torch.stack([z[test.y == c].mean(0) for c in range(N_CLASSES)]))
        for a, b in INTERPOLATE:
            za, zb = (z[torch.nonzero(test.y == c)[0, 0]] for c in (a, b))
            lines[f"{ENCODERS[k].split()[0]} {a}→{b}"] = decode((1 - t) * za + t * zb)
    return means, lines


def write_figures(test, recon: dict, l1: dict, codes: dict, sil: dict, pictures, hist, args, fig_dir) -> None:
    """Reconstructions of >= 60 test digits, the decoders' curves, t-SNE maps and the latent pictures."""
    idx = torch.cat([torch.nonzero(test.y == c).flatten()[:args.per_class] for c in range(N_CLASSES)])
    idx = idx.view(N_CLASSES, -1).t().flatten()  # row r holds the r-th example of every digit 0..9
    rows = {"input": test.x[idx], **{f"{ENCODERS[k]}\n+ decoder, L1={l1[k]:.4f}": v[idx] for k, v in recon.items()}}
    image_grid(rows, fig_dir / "ex3_digits.png", f"{len(idx)} test digits ({args.per_class} per class) decoded from "
               "each frozen encoder", ncol=N_CLASSES)
    plot_curves({ENCODERS[k]: h for k, h in hist.items()}, fig_dir / "ex3_loss.png",
                "Decoder mean-L1 per epoch on a frozen encoder", metrics=(("loss", "mean L1"),), logy_loss=True)
    image_grid(pictures[0], fig_dir / "ex3_class_means.png", "Decoded class-mean codes, 0-9", N_CLASSES, rows=True)
    image_grid(pictures[1], fig_dir / "ex3_interpolations.png", "Decoded codes between two test digits", INTERP_STEPS,
               rows=True)
    from sklearn.manifold import TSNE
    n = min(args.tsne_images, len(test))
    maps = {f"{ENCODERS[k]}\nsilhouette={sil[k]:.3f}": TSNE(2, init="pca", random_state=args.seed,
            perplexity=min(30.0, n / 4)).fit_transform(standardise(codes[k][1][:n]).numpy()) for k in ENCODERS}
    scatter_panels(maps, test.y[:n], fig_dir / "ex3_tsne.png",
                   f"t-SNE of {n} test codes (d={args.latent_dim}), coloured by digit")


def main(argv=None) -> dict:
    args = get_args(argv)
    fig_dir, res_dir, runs_dir, device = setup(args)
    t_start = time.perf_counter()
    train, test = load_mnist_splits(args, smoke_test=500)
    if args.smoke:
        args.epochs, args.pretrain_epochs, args.tsne_images = 1, 1, 200
    recipe, precision = RECIPE.override(args), resolve_precision(args.precision, device, "ae")

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
    ae_own_l1 = mean_l1(predict(ae, test.x, device), test.x).item()

    # ---- train only a decoder on each frozen encoder: the same decoder, recipe, seed and epochs
    models, hist = train_decoders({"ae": ae, "cls": cls}, args, recipe, precision, train, test, device, runs_dir)

    # ---- evaluate: reconstructions, and the latent spaces on the test set (standardised codes)
    recon = {k: predict(m, test.x, device) for k, m in models.items()}  # (N, 1, 28, 28) each
    l1 = {k: mean_l1(v, test.x).item() for k, v in recon.items()}
    per_class = {k: [mean_l1(v[test.y == c], test.x[test.y == c]).item() for c in range(N_CLASSES)]
                 for k, v in recon.items()}
    codes = {k: (predict(m, train.x, device, fn=m.encoder), predict(m, test.x, device, fn=m.encoder))
             for k, m in models.items()}
    stats, sil, knn = latent_measurements(codes, train, test, args)

    write_figures(test, recon, l1, codes, sil, latent_pictures(models, codes, test, device), hist, args, fig_dir)
    results = {"name": "ex3", "seed": args.seed, "recipe": dataclasses.asdict(recipe), "precision": precision,
               "primary_endpoint": PRIMARY, PRIMARY: paired(per_class["cls"], per_class["ae"]),
               "ae_test_l1": l1["ae"], "cls_decoder_test_l1": l1["cls"], "ae_own_decoder_test_l1": ae_own_l1,
               "per_class_test_l1": per_class, "silhouette": sil, "knn_k": args.knn, "knn_acc": knn,
               **{key: {k: s[stat] for k, s in stats.items()} for key, stat in STAT_KEYS.items()},
               "flat_rel_gain_threshold": FLAT_GAIN, "flattening": {k: flattening(h) for k, h in hist.items()},
               "history": hist}
    path = write_results(res_dir / "ex3.json", results, args, device, t_start, precision)
    for k in ENCODERS:
        print(f" {ENCODERS[k]:24s}: decoder test L1 {l1[k]:.4f}, between/within {stats[k]['ratio']:.2f}, "
              f"silhouette {sil[k]:.3f}, {args.knn}-NN acc {knn[k]:.2%}")
    print(f" cls - ae test L1: {results[PRIMARY]['mean_diff']:+.4f} ({results[PRIMARY]['verdict']})")
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
