"""Exercise 5: transfer learning from the ex1 autoencoder to the 100-label classifier of ex4.

The classifier's encoder starts from the encoder of the ex1 conv+FC autoencoder (trained, without
labels, on all 60,000 training images; loaded from runs/ex1_conv_fc.pt or trained first if missing),
the MLP head starts random, and the whole network is trained on the same first 100 images as ex4.

Variants (all with the same seeds, optimiser and evaluation as ex4):
  scratch           - ex4's recipe re-run here, so the overlay compares like with like
  finetune          - the assignment: AE-initialised encoder, everything trained
  frozen_encoder    - beyond the assignment: AE encoder kept fixed, only the MLP trained
  finetune_augment  - beyond the assignment: finetune + random shifts (<=2 px) / rotations (<=10 deg)
  frozen_augment    - beyond the assignment: frozen AE encoder + the same augmentation

    python ex5_finetune.py            # full run: report/figures/ex5_*.png, ex45_compare.png, results/ex5.json
    python ex5_finetune.py --smoke    # seconds, into a temp dir
"""
from __future__ import annotations

import argparse
import time
from functools import partial

from common.data import first_n_subset, load_mnist, random_affine, smoke_slice
from common.models import AutoEncoder, Classifier
from common.plots import plot_curves
from common.train import fit, fit_seeds, load_or_train
from common.utils import (add_common_args, pick_device, positive_int, resolve_output_dirs, run_config, run_main,
                          seed_everything, write_json_atomic)

VARIANTS = {  # name -> (encoder from the AE?, freeze it?, augment?, label)
    "scratch": (False, False, False, "ex4: from scratch"),
    "finetune": (True, False, False, "ex5: AE encoder, fine-tuned"),
    "frozen_encoder": (True, True, False, "beyond: AE encoder frozen"),
    "finetune_augment": (True, False, True, "beyond: fine-tuned + augmentation"),
    "frozen_augment": (True, True, True, "beyond: frozen + augmentation"),
}


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, epochs=150, batch_size=100, lr=1e-3)
    p.add_argument("--n-train", type=positive_int, default=100, help="labelled examples: the first N (default 100)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run (default 0 1 2)")
    p.add_argument("--eval-every", type=positive_int, default=10, help="evaluate every N epochs (default 10)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="which variants to run (default: all)")
    p.add_argument("--latent-dim", type=positive_int, default=12, help="encoder output size d (default 12)")
    p.add_argument("--channels", type=positive_int, nargs="+", default=[32, 64, 128],
                   help="encoder conv channels, must match ex1 (default 32 64 128)")
    p.add_argument("--hidden", type=positive_int, default=64, help="MLP hidden units (default 64)")
    g = p.add_argument_group("autoencoder pre-training (only if runs/ex1_conv_fc.pt is missing; ex1's recipe)")
    g.add_argument("--ae-epochs", type=positive_int, default=15, help="epochs (default 15, as ex1)")
    g.add_argument("--ae-lr", type=float, default=3e-3, help="peak learning rate (default 3e-3, as ex1)")
    g.add_argument("--ae-batch-size", type=positive_int, default=128, help="batch size (default 128, as ex1)")
    return p.parse_args(argv)


def init_from_autoencoder(model: Classifier, ae: AutoEncoder) -> Classifier:
    """Copy the autoencoder's encoder weights (and BatchNorm statistics) into the classifier."""
    model.encoder.load_state_dict(ae.encoder.state_dict())
    return model


def make_model(args, ae: AutoEncoder | None, freeze: bool) -> Classifier:
    model = Classifier(args.latent_dim, args.channels, fc=True, hidden=args.hidden)  # random MLP head
    if ae is not None:
        init_from_autoencoder(model, ae)
    return model.freeze_encoder() if freeze else model


def main(argv=None) -> dict:
    args = get_args(argv)
    fig_dir, res_dir, runs_dir = resolve_output_dirs(args)
    device = pick_device(args.device)
    t_start = time.perf_counter()

    full_train, test = load_mnist(args.data_dir, train=True), load_mnist(args.data_dir, train=False)
    train = first_n_subset(full_train, args.n_train)  # exactly indices 0..n-1, as ex4
    if args.smoke:
        full_train, test = smoke_slice(full_train, 1024), smoke_slice(test, 500)
        args.epochs, args.eval_every, args.seeds, args.ae_epochs = 4, 2, args.seeds[:2], 1

    ae = None
    if any(VARIANTS[v][0] for v in args.variants):
        def pretrain(model):  # ex1's recipe, on all (unlabelled) training images
            fit(model.to(device), full_train, test, epochs=args.ae_epochs, lr=args.ae_lr,
                batch_size=args.ae_batch_size, gen=seed_everything(args.seed), device=device, reconstruct=True,
                ckpt_path=runs_dir / "ex1_conv_fc.pt", desc="ex1 conv_fc (pre-training)")
        seed_everything(args.seed)
        ae = load_or_train(runs_dir / "ex1_conv_fc.pt", AutoEncoder(args.latent_dim, args.channels, fc=True),
                           pretrain, "the ex1 conv+FC autoencoder").cpu()

    results = {"name": "ex5", "config": run_config(args), "train_indices": list(range(len(train))),
               "seeds": args.seeds, "variants": {}}
    for name in args.variants:
        from_ae, freeze, aug, label = VARIANTS[name]
        r = fit_seeds(partial(make_model, args, ae if from_ae else None, freeze), args.seeds, train, test,
                      device=device, desc=f"ex5 {name}", epochs=args.epochs, lr=args.lr,
                      batch_size=args.batch_size, schedule="constant", eval_every=args.eval_every,
                      augment=random_affine if aug else None)
        results["variants"][name] = {"label": label, **r}
    if "finetune" in results["variants"]:  # the assignment's answer at the top level
        results.update({k: v for k, v in results["variants"]["finetune"].items() if k not in ("label",)})

    curves = {v["label"]: v["mean_history"] for v in results["variants"].values()}
    title = f"Few labels (first {len(train)} images): mean +- std over seeds {args.seeds}"
    plot_curves(curves, fig_dir / "ex45_compare.png", title)
    plot_curves(curves, fig_dir / "ex45_compare_time.png", title, x="train_time_s")

    results["wall_time_s"] = time.perf_counter() - t_start
    path = write_json_atomic(res_dir / "ex5.json", results)
    print("\n variant                              | final test acc %  | test loss       | best epoch | gap %")
    for v in results["variants"].values():
        acc, loss, o = v["final_test_acc"], v["final_test_loss"], v["overfitting"]
        print(f" {v['label']:36s} | {100 * acc['mean']:6.2f} +- {100 * acc['std']:4.2f} | "
              f"{loss['mean']:.3f} +- {loss['std']:.3f} | {o['epoch_min_test_loss']:>10} | {100 * o['final_gap_acc']:5.1f}")
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
