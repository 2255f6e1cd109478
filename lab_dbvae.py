"""MIT 6.S191 Lab 2 part 2: debiasing a face detector with a DB-VAE (Amini et al., AIES 2019), in PyTorch.

A face detector (face vs. not face) is trained on a deliberately skewed set of faces in which dark-skinned
faces are rare (default 1 %: 20 of 2,000), with random shift/zoom/rotation augmentation so that it learns
faces rather than the aligned UTKFace template (issue 11). Per seed, three models see the same data in the
same order (only the DB-VAE's face draws differ):
  standard         the lab's CNN (4 stride-2 convs + dense 512 + 1 logit), faces drawn uniformly
  dbvae            the same CNN as the encoder of a VAE of faces (logit, mu, logsigma) + a decoder; each
                   epoch the training faces are re-sampled with probabilities inversely proportional to the
                   density of their latent means (paper Algorithm 1). No race/gender label is used.
  standard_nodark  control: the standard CNN with the dark faces replaced by light ones (0 % dark)

Test sets (per group LF/LM/DF/DM): the balanced aligned held-out UTKFace faces, a jittered copy of them
(fixed seed: shift +-6 px, zoom 0.85-1.15, rotation +-10 deg) and the lab's 60 MIT faces. Metrics: detection
rate at the threshold rejecting 99 % of held-out non-faces, AUC against the non-faces, mean p(face).
Primary endpoint (fixed before the run): the group variance (%^2) of the detection rate on the jittered
test, compared DB-VAE vs standard over paired seeds (sign-flip permutation test, bootstrap CI).

Data ($DATA_DIR, see its README.md): UTKFace races 0 (White, "light") and 1 (Black, "dark"); Imagenette
classes without people as non-faces (train split to train, val split to test); mit_test_faces/.

    python lab_dbvae.py            # full run: report/figures/lab_dbvae_*.png, report/results/lab_dbvae.json
    python lab_dbvae.py --smoke    # seconds, into a temp dir
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from scipy.stats import rankdata
from tqdm.auto import tqdm

from common.dbvae import (DARK, DBVAE, GROUPS, MODELS, Augment, DBVAELoss, FaceBatches, StandardCNN,
                          binary_correct, build_results, classifier_loss, evaluate_model, latent_means,
                          load_lab_data, plot_groups, plot_paired, plot_sampling_faces, sampling_probabilities)
from common.models import count_parameters
from common.train import TensorBoardLog, load_checkpoint, save_checkpoint, tensorboard_dir, train_epoch
from common.utils import (add_common_args, fraction, nonneg_float, nonneg_int, pick_device, positive_float,
                          positive_int, resolve_output_dirs, run_config, run_main, seed_everything,
                          write_json_atomic)

# everything that changes a finished run or its test metrics: --resume reuses a checkpoint only if all of it matches
RUN_KEYS = ("epochs", "batch_size", "lr", "seed", "data_dir", "latent_dim", "kl_weight", "alpha", "bins",
            "combine", "dark_fraction", "train_faces", "augment", "h5", "smoke", "test_per_group", "jitter_seed")


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # the lab: Adam, lr 5e-4, batch 32 (half faces, half non-faces)
    add_common_args(p, epochs=2, batch_size=32, lr=5e-4)
    p.add_argument("--seeds", type=nonneg_int, nargs="+", default=list(range(8)),
                   help="training seeds, each trains every model on the same data and order (default 0..7: "
                        "8 paired seeds, the fewest for which an exact sign-flip test reaches p < 0.01)")
    p.add_argument("--train-faces", type=positive_int, default=2000,
                   help="training faces, light + dark (default 2000: with 2 epochs and 8 seeds x 3 models the default "
                        "run fits 15 min on 2 shared CPU cores)")
    p.add_argument("--dark-fraction", type=fraction, default=0.01,
                   help="share of dark-skinned faces among the training faces (default 0.01: 20 of 2,000)")
    p.add_argument("--test-per-group", type=positive_int, default=1000,
                   help="held-out UTKFace test faces per group LF/LM/DF/DM (default 1000, or as many as exist)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random shift/zoom/rotation of training faces and non-faces (default on)")
    p.add_argument("--jitter-seed", type=nonneg_int, default=1234, help="seed of the fixed jittered test copy (default 1234)")
    p.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                   help="also train the 0 %%-dark standard CNN control arm (default on)")
    p.add_argument("--latent-dim", type=positive_int, default=100, help="DB-VAE latent size (default 100, the lab's)")
    p.add_argument("--kl-weight", type=nonneg_float, default=5e-4, help="weight of the KL term in the VAE loss (default 0.0005)")
    p.add_argument("--alpha", type=positive_float, default=1e-3,
                   help="histogram smoothing added to the latent densities before inverting (default 0.001)")
    p.add_argument("--bins", type=positive_int, default=10, help="histogram bins per latent dimension (default 10)")
    p.add_argument("--combine", choices=["max", "product"], default="max",
                   help="how per-dimension weights combine: the lab's max (default) or the paper's product")
    p.add_argument("--threads", type=nonneg_int, default=1,
                   help="torch CPU threads (default 1: batch-32 convs gain little from a 2nd thread, and on a "
                        "shared 2-core machine 2 threads per process were measured ~10x slower; 0 = torch's choice)")
    p.add_argument("--h5", type=Path, default=None,
                   help="train on the lab's train_face.h5 (datasets images, labels) instead of UTKFace/Imagenette")
    return p.parse_args(argv)


def train_model(kind: str, seed: int, data: dict, args, device, runs_dir: Path, augment) -> dict:
    """Train one model for one seed, then evaluate it: {"history", "metrics", "params", "p_faces", "model"}."""
    seed_everything(seed)
    make = lambda: (DBVAE(args.latent_dim) if kind == "dbvae" else StandardCNN()).to(device)  # noqa: E731
    model, ckpt = make(), runs_dir / f"lab_dbvae_{kind}_seed{seed}.pt"
    setup = {k: v for k, v in run_config(args).items() if k in RUN_KEYS}
    if args.resume and ckpt.exists():  # a finished run of this model/seed (resume is per run, not per epoch)
        saved = load_checkpoint(ckpt, model)
        if saved.get("setup") == setup:
            print(f"[{kind} seed {seed}] reusing the finished run in {ckpt}")
            return {**saved["run"], "model": model}
        print(f"[{kind} seed {seed}] {ckpt} was trained with other settings: training again")
        model = make()
    faces, race = data["train"][kind], data["race"]
    batches = FaceBatches(faces, data["train_negs"], args.batch_size, seed, device, augment)  # the batch sampler
    loss_fn = DBVAELoss(args.kl_weight) if kind == "dbvae" else classifier_loss          # the loss callable
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    tb_root = tensorboard_dir(args, "lab_dbvae", runs_dir)
    tb = TensorBoardLog(tb_root / f"{kind}_seed{seed}") if tb_root is not None else None
    history, train_time = [], 0.0
    bar = tqdm(total=args.epochs * len(batches), desc=f"{kind} seed {seed}", unit="step", mininterval=2.0,
               dynamic_ncols=True, leave=False)
    for epoch in range(1, args.epochs + 1):
        t0, row = time.perf_counter(), {"epoch": epoch}
        if kind == "dbvae":  # Algorithm 1: re-estimate the latent density of the training faces every epoch
            mu = latent_means(model, faces, device)                                          # (Nf, L)
            batches.p_faces = sampling_probabilities(mu, args.bins, args.alpha, args.combine)  # (Nf,)
            row["p_max_over_uniform"] = batches.p_faces.max().item() * len(faces)
            if race is not None:  # diagnostic only (the model never sees it)
                pct = 100 * (torch.from_numpy(rankdata(batches.p_faces.numpy())) - 1) / max(1, len(faces) - 1)
                row["dark_sampling_mass"] = batches.p_faces[race == DARK].sum().item()
                row["dark_mean_p_percentile"] = pct[race == DARK].mean().item()
                # the other combination rule on the same latent means (diagnostic, not used for drawing)
                other = "product" if args.combine == "max" else "max"
                p_other = sampling_probabilities(mu, args.bins, args.alpha, other)
                row[f"dark_sampling_mass_if_{other}"] = p_other[race == DARK].sum().item()
        tr = train_epoch(model, batches, loss_fn, opt, correct=binary_correct, loss_dtype=torch.float64, bar=bar)
        train_time += time.perf_counter() - t0
        row.update(train_loss=tr["loss"], train_acc=tr["acc"], epoch_time_s=time.perf_counter() - t0,
                   train_time_s=train_time)
        history.append(row)
        if tb is not None:
            tb.scalars(row)
    bar.close()
    if tb is not None:
        tb.close(dict(run_config(args), seed=seed, model=kind), history[-1])
    t0 = time.perf_counter()
    run = {"history": history, "metrics": evaluate_model(model, data["tests"], device),
           "params": count_parameters(model), "p_faces": batches.p_faces, "eval_time_s": time.perf_counter() - t0}
    m = run["metrics"].get("jittered", {})
    tqdm.write(f"[{kind} seed {seed}] train {train_time:.0f} s, eval {run['eval_time_s']:.0f} s | jittered detection "
               + " ".join(f"{g}={m['detect'][g]:.3f}" for g in GROUPS) + f" var={m['group_var']:.1f} %²"
               + (f" | dark mass {history[-1]['dark_sampling_mass']:.3f}" if "dark_sampling_mass" in history[-1] else ""))
    save_checkpoint(ckpt, model, run=run, setup=setup)
    return {**run, "model": model}


def write_figures(results: dict, data: dict, runs: dict, args, fig_dir: Path) -> None:
    plot_groups(results, fig_dir / "lab_dbvae_groups.png")
    plot_paired(results, fig_dir / "lab_dbvae_paired.png")
    first = runs["dbvae"][args.seeds[0]]
    plot_sampling_faces(data["train"]["dbvae"], first["p_faces"], data["race"], fig_dir / "lab_dbvae_sampling.png",
                        f"DB-VAE seed {args.seeds[0]}: training faces with the highest / lowest resampling "
                        f"probability (last epoch;\nrace labels shown for reading only, never used in training)")


def main(argv=None) -> dict:
    args = get_args(argv)
    fig_dir, res_dir, runs_dir = resolve_output_dirs(args)
    device = pick_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    if args.smoke:
        args.epochs, args.seeds = 1, args.seeds[:2]
    augment = Augment()  # issue 11: +-6 px, zoom 0.85-1.15, +-10 deg, for training and the jittered test
    # load: decoded images, the skewed/control training sets and the three test sets
    data = load_lab_data(args.data_dir, train_faces=args.train_faces, dark_fraction=args.dark_fraction,
                         test_per_group=args.test_per_group, split_seed=args.seed, jitter_seed=args.jitter_seed,
                         augment=augment, smoke=args.smoke, h5=args.h5)
    data["augment"] = augment
    print(f"lab_dbvae: {data['counts']}, dark fractions {data['fractions']}, device={device}, "
          f"threads={torch.get_num_threads()}, decode {data['decode_time_s']:.0f} s")
    # train + evaluate: every model of every seed (paired: same data and order within a seed)
    models = [m for m in MODELS if m in data["train"] and (m != "standard_nodark" or args.control)]
    runs = {m: {} for m in models}
    for seed in args.seeds:
        for kind in models:
            runs[kind][seed] = train_model(kind, seed, data, args, device, runs_dir,
                                           augment if args.augment else None)
    # statistics, figures, JSON
    results = build_results(args, data, runs, time.perf_counter() - t_start)
    write_figures(results, data, runs, args, fig_dir)
    results["wall_time_s"] = time.perf_counter() - t_start
    path = write_json_atomic(res_dir / "lab_dbvae.json", results)
    for t, c in results["comparison"].items():
        print(f"{t:9s} group var standard {c['standard']['mean']:7.2f} -> DB-VAE {c['dbvae']['mean']:7.2f} %²; "
              f"diff {c['mean_diff']:+.2f} CI [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}] p={c['p_value']:.3f}: "
              f"{c['verdict']}")
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
