"""Exercise 5: transfer learning from the ex1 autoencoder to the 100-label classifier of ex4.

The classifier's encoder starts from the encoder of the ex1 conv+FC autoencoder (trained, without
labels, on all 60,000 training images; loaded from runs/ex1_conv_fc.pt, or trained first with ex1's
recipe if missing), the MLP head starts random, and the network is trained on the same first 100
images, with the same recipe and the same seeds as ex4 (common/fewshot.py), so every comparison with
`scratch` is paired: the difference is taken seed by seed (common.stats.paired).

Variants (default: all but selftrain):
  scratch           - ex4's run repeated here (same recipe, seeds): the reference of every comparison
  finetune          - the assignment: AE-initialised encoder, everything trained at one learning rate
  finetune_lowlr    - beyond: as finetune, but the encoder learns --encoder-lr-ratio x slower than the head
  frozen_encoder    - beyond: AE encoder kept fixed (BatchNorm statistics too), only the MLP trained
  finetune_augment  - beyond: finetune + random shifts (<= 2 px) / rotations (<= 10 deg)
  frozen_augment    - beyond: frozen AE encoder + the same augmentation
  selftrain         - semi-supervised, beyond the assignment: the 100 labels plus the 59,900 other
                      training images *without* their labels: label spreading on the AE codes, then
                      rounds of self-training on class-balanced confident pseudo-labels. Not in the
                      default run (minutes per seed on a CPU); written to results/ex5_selftrain.json.

No variant is called "best": choosing one by its test accuracy would make that number optimistic.

    python ex5_finetune.py                                   # report/figures/ex45_*.png, results/ex5.json
    python ex5_finetune.py --variants scratch selftrain      # results/ex5_selftrain.json
    python ex5_finetune.py --smoke                           # seconds, into a temp dir
"""
from __future__ import annotations

import argparse
import time

import torch
from functools import partial

from common import fewshot
from common.data import augment_words, random_affine
from common.models import AE_RECIPE, AutoEncoder, Classifier
from common.plots import plot_curves
from common.stats import paired
from common.train import fit, fit_recipe, fit_seeds, load_or_train, mean_l1, predict, tensorboard_dir
from common.utils import (fraction, pick_device, positive_int, resolve_output_dirs, run_config, run_main,
                          seed_everything, write_json_atomic)

VARIANTS = {  # name -> (encoder from the AE?, freeze it?, augment?, label)
    "scratch": (False, False, False, "ex4: from scratch"),
    "finetune": (True, False, False, "ex5: AE encoder, fine-tuned"),
    "finetune_lowlr": (True, False, False, "beyond: fine-tuned, slower encoder lr"),
    "frozen_encoder": (True, True, False, "beyond: AE encoder frozen"),
    "finetune_augment": (True, False, True, "beyond: fine-tuned + augmentation"),
    "frozen_augment": (True, True, True, "beyond: frozen + augmentation"),
    "selftrain": (True, False, True, "beyond: semi-supervised self-training"),
}
DEFAULT = [v for v in VARIANTS if v != "selftrain"]
# Paired comparisons that answer "why is frozen better than fine-tuned?" (a - b, same seeds).
QUESTIONS = [("finetune", "frozen_encoder"), ("finetune_lowlr", "frozen_encoder"), ("finetune_lowlr", "finetune")]


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fewshot.add_args(p, runs_dir=True)  # --runs-dir: where the ex1 autoencoder checkpoint is read
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT,
                   help="which variants to run (default: all but selftrain); scratch always runs")
    p.add_argument("--encoder-lr-ratio", type=fraction, default=0.1,
                   help="finetune_lowlr: encoder lr = ratio x --lr, head lr = --lr (default 0.1)")
    g = p.add_argument_group("selftrain (semi-supervised)")
    g.add_argument("--rounds", type=fraction, nargs="+", default=[0.3, 0.5, 0.7, 0.8, 0.9, 0.9, 0.95, 0.95],
                   help="one self-training round per number: the fraction of each pseudo-class kept "
                        "(most confident first); default 0.3 0.5 0.7 0.8 0.9 0.9 0.95 0.95")
    g.add_argument("--round-epochs", type=positive_int, default=4, help="epochs per round (default 4)")
    g.add_argument("--round-lr", type=fraction, default=3e-3, help="peak OneCycle lr per round (default 3e-3)")
    g.add_argument("--round-batch-size", type=positive_int, default=256, help="batch size (default 256)")
    g.add_argument("--neighbours", type=positive_int, default=15, help="label spreading: k of the k-NN graph (default 15)")
    return p.parse_args(argv)


def init_from_autoencoder(model: Classifier, ae: AutoEncoder) -> Classifier:
    """Copy the autoencoder's encoder weights (and BatchNorm statistics) into the classifier."""
    model.encoder.load_state_dict(ae.encoder.state_dict())
    return model


def make_model(args, ae: AutoEncoder | None, freeze: bool) -> Classifier:
    model = Classifier(args.latent_dim, args.channels, fc=True, hidden=args.hidden,
                       dropout=args.dropout)  # random MLP head, ex4's architecture
    if ae is not None:
        init_from_autoencoder(model, ae)
    return model.freeze_encoder() if freeze else model


def lowlr_groups(model: Classifier, ratio: float, lr: float) -> list[dict]:
    """Discriminative fine-tuning (Howard & Ruder 2018): the pre-trained encoder moves `ratio` x slower."""
    return [{"params": list(model.encoder.parameters()), "lr": ratio * lr},
            {"params": list(model.mlp.parameters()), "lr": lr}]


def pretrained_autoencoder(args, data: fewshot.FewLabelData, runs_dir, device) -> tuple[AutoEncoder, dict]:
    """The ex1 conv+FC autoencoder: its checkpoint, or trained here with ex1's recipe (AE_RECIPE); and that
    recipe (fit_recipe), which the checkpoint was checked against and ex5.json records."""
    epochs = 1 if args.smoke else AE_RECIPE["epochs"]
    recipe = fit_recipe(epochs=epochs, lr=AE_RECIPE["lr"], batch_size=AE_RECIPE["batch_size"],
                        train_size=len(data.full_train), loss_fn=mean_l1)

    def pretrain(model):  # ex1's recipe, on all (unlabelled) training images
        fit(model.to(device), data.full_train, data.test, epochs=epochs, lr=AE_RECIPE["lr"],
            batch_size=AE_RECIPE["batch_size"], gen=seed_everything(args.seed), device=device, reconstruct=True,
            ckpt_path=runs_dir / "ex1_conv_fc.pt", desc="ex1 conv_fc (pre-training)", channels_last=True)

    seed_everything(args.seed)
    return load_or_train(runs_dir / "ex1_conv_fc.pt", AutoEncoder(args.latent_dim, args.channels, fc=True),
                         pretrain, "the ex1 conv+FC autoencoder", recipe=recipe).cpu(), recipe


def selftrain_fn(args, ae: AutoEncoder, data: fewshot.FewLabelData, device):
    """train_fn for fit_seeds: label spreading on the AE codes (once), then self-training per seed.

    The unlabelled pool is data.full_train.x[n_train:]: images only, its labels are never passed on.
    """
    unlabelled_x = data.full_train.x[len(data.train):]                       # (N_u, 1, 28, 28)
    codes = lambda x: predict(ae, x, device, fn=ae.to(device).encoder)       # (N, d)
    prior = fewshot.label_spreading(codes(data.train.x), data.train.y, codes(unlabelled_x),
                                    n_neighbors=args.neighbours)             # (N_u, 10)
    rounds = args.rounds[:2] if args.smoke else args.rounds
    fit_kw = dict(epochs=1 if args.smoke else args.round_epochs, lr=args.round_lr,
                  batch_size=args.round_batch_size, eval_every=args.round_epochs, augment=random_affine)
    model_fn = partial(make_model, args, ae, False)
    return (lambda gen, desc: fewshot.self_train(model_fn, data.train, unlabelled_x, prior, data.curve_test,
                                                 fractions=rounds, gen=gen, device=device, desc=desc, **fit_kw))


def augment_note(variants) -> str:
    """The augmentation cell of the report's training-setup table for this run's variants."""
    n = sum(VARIANTS[v][2] for v in variants if v in VARIANTS)
    return "none" if n == 0 else (f"none, except the {n} augmented variant{'s' if n > 1 else ''} "
                                  f"({augment_words(random_affine)})")


def main(argv=None) -> dict:
    args = get_args(argv)
    fig_dir, res_dir, runs_dir = resolve_output_dirs(args)
    device = pick_device(args.device)
    t_start = time.perf_counter()

    data = fewshot.load(args)
    seeds = fewshot.resolve_seeds(args)
    variants = ["scratch"] + [v for v in args.variants if v != "scratch"]  # the reference runs first
    ae, ae_recipe = (pretrained_autoencoder(args, data, runs_dir, device) if any(VARIANTS[v][0] for v in variants)
                     else (None, None))

    results = {"name": "ex5", "config": run_config(args), "threads": torch.get_num_threads(),
               "recipe": {"optimizer": "AdamW", **fewshot.fit_kwargs(args), "augment": augment_note(args.variants)}, "model": make_model(args, None, False).config,
               "train_indices": data.train.index, "train_class_counts": fewshot.class_counts(data.train.y),
               "seeds": seeds, "autoencoder_recipe": ae_recipe, "variants": {}}
    for name in variants:
        from_ae, freeze, aug, label = VARIANTS[name]
        extra = {"augment": random_affine} if aug else {}
        if name == "finetune_lowlr":
            extra["param_groups"] = partial(lowlr_groups, ratio=args.encoder_lr_ratio, lr=args.lr)
        if name == "selftrain":
            extra = {"train_fn": selftrain_fn(args, ae, data, device)}
        r = fit_seeds(partial(make_model, args, ae if from_ae else None, freeze), seeds, data.train,
                      data.curve_test, final_test=data.test, device=device, desc=f"ex5 {name}",
                      tb_dir=tensorboard_dir(args, f"ex5/{name}", runs_dir), hparams=run_config(args),
                      **fewshot.fit_kwargs(args), **extra)
        results["variants"][name] = {"label": label, **r}
    ref = results["variants"]["scratch"]
    for name, v in results["variants"].items():
        if name != "scratch":
            v["vs_scratch"] = paired(v["final_test_acc"]["values"], ref["final_test_acc"]["values"])
            v["vs_scratch_loss"] = paired(v["final_test_loss"]["values"], ref["final_test_loss"]["values"])
    results["comparisons"] = {f"{a} - {b}": {"acc": paired(results["variants"][a]["final_test_acc"]["values"],
                                                           results["variants"][b]["final_test_acc"]["values"]),
                                             "loss": paired(results["variants"][a]["final_test_loss"]["values"],
                                                            results["variants"][b]["final_test_loss"]["values"])}
                              for a, b in QUESTIONS if a in results["variants"] and b in results["variants"]}
    if "finetune" in results["variants"]:  # the assignment's goal: fine-tuned >= scratch + 10 points
        vs = results["variants"]["finetune"]["vs_scratch"]
        results["goal_finetune_plus_10"] = {"mean_diff": vs["mean_diff"], "ci95": vs["ci95"],
                                            "met": vs["mean_diff"] >= 0.10, "ci_excludes_5": vs["ci95"][0] > 0.05}

    stem = "ex5_selftrain" if "selftrain" in variants else "ex5"
    curves = {v["label"]: v["mean_history"] for n, v in results["variants"].items() if n != "selftrain"}
    if stem == "ex5":
        title = (f"Few labels (first {len(data.train)} images): mean ± std over {len(seeds)} seeds\n"
                 f"(test curves on the first {len(data.curve_test)} test images)")
        plot_curves(curves, fig_dir / "ex45_compare.png", title)
        plot_curves(curves, fig_dir / "ex45_compare_time.png", title, x="train_time_s")
    results["wall_time_s"] = time.perf_counter() - t_start
    path = write_json_atomic(res_dir / f"{stem}.json", results)
    fewshot.print_table(results["variants"], reference="scratch")
    print(f"wrote {path} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
