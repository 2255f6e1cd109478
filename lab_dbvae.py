"""MIT 6.S191 Lab 2 part 2 in PyTorch: where a face detector's skin-tone gap comes from, and when the DB-VAE's
resampling (Amini et al., AIES 2019, Algorithm 1) removes it.

Per paired seed, nine detectors learn the lab's task (UTKFace faces vs Imagenette non-faces) from the same initial
weights, non-faces, batch order and augmentation; only the training faces and how they are drawn differ:
  dose    the lab's CNN with 0, 1, 10 and 50 % dark-skinned training faces: is the gap a matter of how many?
  dbvae   at 1 %: the DB-VAE (draws faces inversely to their latent density, no labels): does it narrow the gap?
  rare    the 1 % arms again with 1 % of the faces underexposed (dim), a feature the VAE must encode to reconstruct:
          does the DB-VAE narrow the dim-face gap?
  oracle  an oracle drawing the rare and the common faces equally often from the true labels, beside both DB-VAEs:
          how much of what resampling can close does the DB-VAE close? (asked on the dim faces, where the oracle
          has a gap to close; its few points on the dark faces are a secondary endpoint)
Tests: held-out UTKFace faces per group (light/dark x female/male), jittered, and a dimmed copy of them; the lab's
MIT faces; all at the threshold rejecting 99 % of jittered held-out non-faces. Endpoints are gaps in detection points,
paired over seeds: one primary endpoint per question (PRIMARY), the others Holm-adjusted. The trained DB-VAEs'
sampling mass on the rare faces is recomputed over a grid of Algorithm 1's smoothing alpha and bins (no retraining).

    python lab_dbvae.py [--quick | --smoke]   # report/figures/lab_dbvae_*.pdf, report/results/lab_dbvae.json"""
from __future__ import annotations

import argparse
import copy
import itertools
import math
import threading
import time
from collections import namedtuple
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from statistics import fmean

import numpy as np
import torch
from scipy import stats as sps
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_score
from tqdm.auto import tqdm

from common import dbvae, stats, utils
from common.data import decode_images, imagenette_split, require_images
from common.dbvae import AUGMENT, DBVAE, IMAGE_SHAPE, NONFACE_CLASSES, StandardCNN, dbvae_loss
from common.plots import plt, save
from common.train import (
    TensorBoardLog,
    autocast,
    fit_parallel,
    load_checkpoint,
    predict,
    resolve_precision,
    save_checkpoint,
    tensorboard_dir,
)
from common.utils import UserError, add_common_args, run_main, seed_everything, setup, write_results


def flag(default, kind, text: str, **kw):
    """A Recipe field with its own command-line flag, --name-with-dashes."""
    return field(default=default, metadata={"type": kind, "help": f"{text} (default %(default)s)", **kw})


@dataclass(frozen=True)
class Recipe:
    """What changes a trained model or its test metrics (checkpoints store it); defaults: the lab's."""
    epochs: int = 2
    batch_size: int = 32  # half faces, half non-faces, as the lab's get_batch
    lr: float = 5e-4      # Adam, constant
    latent_dim: int = flag(100, utils.positive_int, "DB-VAE latent size")
    kl_weight: float = flag(5e-4, utils.number(float, 0), "weight of the KL term in the VAE loss")
    alpha: float = flag(1e-3, utils.number(float, 0, lo_open=True), "smoothing of Algorithm 1's latent histograms")
    bins: int = flag(10, utils.positive_int, "histogram bins per latent dimension")
    combine: str = flag("max", str, "per-dimension weights: max (the lab's) or product", choices=["max", "product"])
    train_faces: int = flag(2000, utils.positive_int, "training faces of every arm")
    dark_fraction: float = flag(0.01, utils.fraction, "share of dark-skinned faces in the resampling arms")
    dose_fractions: tuple = flag((0.0, 0.1, 0.5), utils.fraction, "further dark shares for the standard CNN", nargs="+")
    dim_fraction: float = flag(0.01, utils.fraction, "share of (light) faces underexposed in the rare-feature arms")
    test_per_group: int = flag(500, utils.positive_int, "held-out UTKFace faces per group, or as many as exist")
    augment: bool = flag(True, None, "random shift/zoom/rotation", action=argparse.BooleanOptionalAction)
    split_seed: int = flag(0, utils.seed_int, "seed of the UTKFace train/test split and of the dim faces")
    jitter_seed: int = flag(1234, utils.seed_int, "seed of the fixed jittered test copy")
    smoke: bool = False   # a slice of the data that runs in seconds
    precision: str = "auto"  # of the training steps: --precision, resolved in main() to bf16 where it pays or fp32


# paired seeds per arm group: an arm trains on the first SEEDS[...] of the run's seeds. Over 192 seeds (0-95 and
# 300-395) the DB-VAE's dim-gap reduction had mean ~14 and sd ~50 points: 96 seeds give its paired t-test ~80 % power
# (48 seeds ~50 %). The oracle's dim-face endpoints are ~30-50 points with sd ~30-40: 24 seeds. The dark-face endpoints
# had sd 3-16: 10 seeds give ~80 % power for 6-16 points. The oracle's dark-gap reduction (~3 points, sd ~11 over 40
# pilot seeds) would need ~90: hence the oracle question is asked on the dim faces and its dark-face reduction is a
# secondary endpoint
SEEDS = {"dark": 10, "dim": 96, "oracle_dim": 24}
QUICK_SEEDS, QUICK_EPOCHS, QUICK_FACES = 3, 1, 1000  # --quick: minutes, for iterating on the code
SMOKE_FACES, SMOKE_MIN_RARE, SMOKE_TEST_PER_GROUP = 64, 4, 8  # --smoke: >= 4 dark (and dim) faces: every path runs
SMOKE_NEGS, SMOKE_MIT_PER_GROUP = (64, 32), 4  # non-faces (train, test) and MIT faces per group
# group -> (race, gender) in UTKFace names: race 0 White = light, 1 Black = dark (annotators' labels); gender 1 female
GROUPS = {"LF": (0, 1), "LM": (0, 0), "DF": (1, 1), "DM": (1, 0)}
LIGHT, DARK = 0, 1
REJECT = 0.99  # the detection threshold rejects this share of the held-out non-faces
EXPOSURE = 0.25  # dim faces: pixel values x 1/4 (two stops under); the lab's CNN detects them ~40 points less often
ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # Algorithm 1's smoothing, around the lab's 1e-3 up to a near-uniform p
BIN_COUNTS = (5, 10, 20, 40)            # histogram bins per latent dimension, around the lab's 10
POWER = 0.8  # for the minimal detectable effect of each endpoint
RULES = ("max", "product")  # Algorithm 1's ways to combine the latent dimensions (common.dbvae.sampling_probabilities)
PROBE_FOLDS, PROBE_ITERS = 5, 1000  # the linear probe of the latents: stratified folds, L-BFGS iterations
GAP, MIT_GAP, DIM_GAP = "jittered/dark_gap", "mit/dark_gap", "dim/dim_gap"  # endpoint metrics: "test set/key"
# the primary endpoint of each question, fixed before any run; an endpoint is a per-seed difference a - b (endpoints())
PRIMARY = {"dose": "dose_gap_low_minus_high", "dbvae": "gap_reduction_dbvae", "rare": "dim_gap_reduction_dbvae",
           "oracle": "dim_gap_dbvae_minus_oracle"}
# an arm: network (cnn/dbvae), face sampler (None: shuffled passes, latent: Algorithm 1, oracle: true labels), dark
# and dim shares of its faces, which faces the oracle balances and the sampling mass is measured on, paired seeds
Arm = namedtuple("Arm", ["net", "sampler", "dark", "dim", "rare", "seeds"])
# one trained arm: rows per epoch, test set -> group_metrics, parameter count, the DB-VAE's latent_diagnostics or None
Run = namedtuple("Run", ["history", "metrics", "params", "mass"])
# uint8 (N, 3, 64, 64) light and dark training pools, train non-faces, tests {set: {group: faces}}, test non-faces
LabData = namedtuple("LabData", ["light", "dark", "train_negs", "tests", "test_negs", "info"])


def get_args(argv=None) -> tuple[argparse.Namespace, Recipe]:
    """The command line and its Recipe; --smoke: one epoch, two seeds and a slice of the data; --quick: a small run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, epochs=Recipe.epochs, batch_size=Recipe.batch_size, lr=Recipe.lr, schedule="constant")
    p.add_argument("--seeds", type=utils.seed_int, nargs="+", help=f"paired seeds (default: {max(SEEDS.values())} from "
                   f"--seed on); the dark-face arms train on the first {SEEDS['dark']}, the dim-face oracle on the "
                   f"first {SEEDS['oracle_dim']}, the other dim-face arms on the first {SEEDS['dim']}")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_SEEDS} seeds, {QUICK_EPOCHS} epoch, {QUICK_FACES} "
                   "training faces, in runs/lab_dbvae_quick/ unless --out-dir: a run for iterating")
    for f in [f for f in fields(Recipe) if f.metadata]:  # the Recipe fields with a flag of their own
        p.add_argument("--" + f.name.replace("_", "-"), default=f.default, **f.metadata)
    args = p.parse_args(argv)
    args.seeds = args.seeds or list(range(args.seed, args.seed + max(SEEDS.values())))
    args.dose_fractions = tuple(args.dose_fractions)  # a Recipe is hashable and compares equal to the defaults
    if args.smoke:  # two seeds, the fewest for a paired comparison
        args.epochs, args.seeds = 1, args.seeds[:2]
    elif args.quick:
        args.epochs, args.seeds, args.train_faces = QUICK_EPOCHS, args.seeds[:QUICK_SEEDS], QUICK_FACES
        args.out_dir = args.out_dir or utils.RUNS_DIR / "lab_dbvae_quick"
        args.runs_dir = args.runs_dir or args.out_dir / "runs"
    if args.dark_fraction + args.dim_fraction > 1:
        p.error("--dark-fraction + --dim-fraction must be at most 1: the dim faces are light ones")
    r = Recipe(**{f.name: getattr(args, f.name) for f in fields(Recipe)})
    few = {k: max(round(getattr(r, k) * SMOKE_FACES), SMOKE_MIN_RARE) / SMOKE_FACES  # --smoke keeps a few rare faces
           for k in ("dark_fraction", "dim_fraction")}
    return args, replace(r, train_faces=SMOKE_FACES, test_per_group=SMOKE_TEST_PER_GROUP, **few) if r.smoke else r


def dose_arms(r: Recipe) -> dict[str, float]:
    """The standard CNN's dose-response, arm -> dark share, by share; "standard" (at dark_fraction) is shared."""
    return {"standard" if f == r.dark_fraction else f"standard_dark{f:g}": f
            for f in sorted({*r.dose_fractions, r.dark_fraction})}


def arm_seeds(arm: Arm, seeds: list[int]) -> list[int]:
    """The paired seeds an arm trains on: the first arm.seeds of the run's seeds."""
    return list(seeds[:arm.seeds])


def make_arms(r: Recipe) -> dict[str, Arm]:
    """name -> Arm: the standard CNN per dark share, the resampling trio at dark_fraction, the trio with dim faces."""
    n = SEEDS["dark"]
    trio = {"standard": Arm("cnn", None, r.dark_fraction, 0.0, "dark", n),
            "dbvae": Arm("dbvae", "latent", r.dark_fraction, 0.0, "dark", n),
            "oracle": Arm("cnn", "oracle", r.dark_fraction, 0.0, "dark", n)}
    dose = {a: Arm("cnn", None, f, 0.0, "dark", n) for a, f in dose_arms(r).items()}
    dim = {f"{k}_dim": a._replace(dim=r.dim_fraction, rare="dim", seeds=SEEDS.get(f"{k}_dim", SEEDS["dim"]))
           for k, a in trio.items()}
    return {**dose, **trio, **dim}


def endpoints(r: Recipe) -> dict[str, tuple]:
    """name -> (metric, arm a, arm b): the per-seed difference a - b in points (b None: a itself). The other dose arms
    are shown with their CIs, not tested: at SEEDS["dark"] seeds their differences from the balanced arm (1-8 points
    in pilot runs) are near their MDEs (5-9), too small a margin for a verdict that holds on new seeds."""
    doses = dose_arms(r)
    high = max(doses, key=doses.get)
    return {"dose_gap_low_minus_high": (GAP, "standard", high), "gap_reduction_dbvae": (GAP, "standard", "dbvae"),
            "dim_gap_reduction_dbvae": (DIM_GAP, "standard_dim", "dbvae_dim"),
            "dim_gap_dbvae_minus_oracle": (DIM_GAP, "dbvae_dim", "oracle_dim"),
            "gap_reduction_oracle": (GAP, "standard", "oracle"),
            "dark_gap_standard": (GAP, "standard", None), "gap_dbvae_minus_oracle": (GAP, "dbvae", "oracle"),
            "gap_reduction_dbvae_mit": (MIT_GAP, "standard", "dbvae"),
            "gap_reduction_oracle_mit": (MIT_GAP, "standard", "oracle"),
            "dim_gap_standard": (DIM_GAP, "standard_dim", None),
            "dim_gap_reduction_oracle": (DIM_GAP, "standard_dim", "oracle_dim")}


def underexpose(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, H, W) as if photographed with EXPOSURE times the light: every pixel value scaled, rounded."""
    return (x.double() * EXPOSURE).round().to(torch.uint8)


def jittered_copy(x: torch.Tensor, seed: int, chunk: int = 500) -> torch.Tensor:
    """A fixed random affine copy of uint8 images x (N, 3, H, W), in chunks that bound the float memory."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([AUGMENT(c / 255, gen).mul(255).round().clamp(0, 255).to(torch.uint8) for c in x.split(chunk)])


def parse_utkface_name(name: str) -> tuple[int, int, int]:
    """'age_gender_race_datetime.jpg.chip.jpg' -> (age, gender, race) (see $DATA_DIR/README.md)."""
    return tuple(int(v) for v in name.split("_")[:3])


def load_lab_data(data_dir, recipe: Recipe) -> LabData:
    """Decode every image once (uint8). Per group, a seeded shuffle holds out test_per_group UTKFace faces; the
    shuffled rest gives the light and dark training pools, whose prefixes make every arm's faces (nested sets)."""
    root, gen = Path(data_dir).expanduser(), torch.Generator().manual_seed(recipe.split_seed)
    n, n_dark = recipe.train_faces, round(max(dose_arms(recipe).values()) * recipe.train_faces)
    files = require_images(root / "UTKFace", "*.jpg", "UTKFace photos named age_gender_race_date.jpg.chip.jpg")

    def shuffled(files: list) -> list:
        return [files[i] for i in torch.randperm(len(files), generator=gen).tolist()]
    test, rest = {}, {LIGHT: [], DARK: []}
    for grp, (race, gender) in GROUPS.items():
        pool = shuffled([f for f in files if parse_utkface_name(f.name)[1:] == (gender, race)])
        test[grp], rest[race] = pool[:recipe.test_per_group], rest[race] + pool[recipe.test_per_group:]
    light, dark = shuffled(rest[LIGHT]), shuffled(rest[DARK])  # the leftovers: LF + LM, DF + DM
    if n > len(light) or n_dark > len(dark) or min(len(v) for v in test.values()) == 0:
        raise UserError(f"UTKFace: {n} light and {n_dark} dark training faces asked, {len(light)} + {len(dark)} "
                        f"left after the test split {({g: len(v) for g, v in test.items()})}")
    neg_train, neg_test = ([f for c in NONFACE_CLASSES for f in sorted((imagenette_split(root, s) / c).glob("*.JPEG"))]
                           for s in ("train", "val"))
    mit = {g: sorted((root / "mit_test_faces" / g).glob("*.png")) for g in GROUPS}  # none: no MIT test set
    if recipe.smoke:  # evenly spread slices of the non-faces
        neg_train, neg_test = (v[::len(v) // m][:m] for v, m in zip((neg_train, neg_test), SMOKE_NEGS))
        mit = {g: f[:SMOKE_MIT_PER_GROUP] for g, f in mit.items()}
    lists = {"light": light[:n], "dark": dark[:n_dark], "train_negs": neg_train, "test_negs": neg_test,
             **{f"test_{g}": f for g, f in test.items()}, **{f"mit_{g}": f for g, f in mit.items()}}
    total, t0 = sum(len(v) for v in lists.values()), time.perf_counter()
    with tqdm(total=total, desc="decode images", unit="img", mininterval=1.0, dynamic_ncols=True, leave=False) as bar:
        x = {key: decode_images(v, IMAGE_SHAPE[1], bar=bar) for key, v in lists.items()}
    # one fixed jittered copy for every seed and arm: seed jitter_seed + i for group i, + 4 for the non-faces
    jittered = {g: jittered_copy(x[f"test_{g}"], recipe.jitter_seed + i) for i, g in enumerate(GROUPS)}
    test_negs = jittered_copy(x["test_negs"], recipe.jitter_seed + 4)
    tests = {"jittered": jittered, "dim": {g: underexpose(v) for g, v in jittered.items()}}
    if all(mit.values()):  # as they are (not re-aligned), at the same threshold
        tests["mit"] = {g: x[f"mit_{g}"] for g in GROUPS}
    counts = {"light_pool": len(x["light"]), "dark_pool": len(x["dark"]), "train_nonfaces": len(x["train_negs"]),
              "test_nonfaces": len(x["test_negs"]), **{f"{t}_{g}": len(v[g]) for t, v in tests.items() for g in GROUPS}}
    info = dict(counts=counts, decoded_images=total, decode_time_s=time.perf_counter() - t0)
    return LabData(x["light"], x["dark"], x["train_negs"], tests, test_negs, info)


def training_faces(data: LabData, arm: Arm, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An arm's faces uint8 (N, 3, 64, 64): the first N - n_dark light and n_dark dark faces of the pools, n_dim of
    the light ones (a split_seed choice, the same in every dim arm) underexposed; and dark, dim (N,) bool."""
    n = recipe.train_faces
    n_dark, n_dim = round(arm.dark * n), round(arm.dim * n)
    faces = torch.cat([data.light[:n - n_dark], data.dark[:n_dark]])
    dark, dim = torch.arange(n) >= n - n_dark, torch.zeros(n, dtype=torch.bool)
    dim[torch.randperm(n - n_dark, generator=torch.Generator().manual_seed(recipe.split_seed))[:n_dim]] = True
    faces[dim] = underexpose(faces[dim])
    return faces, dark, dim


def train(model, arm: Arm, seed: int, faces, rare, negs, recipe: Recipe, device, tb: TensorBoardLog | None):
    """The lab's loop, one history row per epoch: Adam at a constant lr, half faces uint8 (N, 3, 64, 64) and half
    non-faces per batch; faces in shuffled passes or drawn from p (N,): the DB-VAE's (Algorithm 1 on its latent means,
    every epoch) or the oracle's (from the true labels rare (N,) bool)."""
    *gens, noise_gen = dbvae.batch_generators(seed)
    augment = AUGMENT if recipe.augment else None
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    # the oracle: the rare and the common faces each get half of the draws, uniformly within each
    p_faces, history = dbvae.balanced_probabilities(rare.long()) if arm.sampler == "oracle" else None, []
    for epoch in range(1, recipe.epochs + 1):
        t0, row = time.perf_counter(), {"epoch": epoch}
        loss_sum, n_correct, seen = 0.0, 0, 0
        if arm.sampler == "latent":  # latent means (N, L) with BatchNorm's running statistics (eval mode) -> p (N,)
            mu = predict(model, faces, device, fn=lambda b: model.encode(b)[1])
            p_faces = dbvae.sampling_probabilities(mu, recipe.bins, recipe.alpha)[recipe.combine]  # Algorithm 1
        if p_faces is not None:  # a diagnostic, the DB-VAE's only use of the labels: the rare faces' share of p
            row["rare_sampling_mass"] = p_faces[rare].sum().item()
        model.train()
        for x, y in dbvae.epoch_batches(faces, negs, recipe.batch_size, gens, p_faces, augment, device):
            with autocast(recipe.precision, device):
                if arm.net == "dbvae":
                    loss, logit = dbvae_loss(model, x, y, recipe.kl_weight, noise_gen)  # paper Eq. 5
                else:  # the face logit (B,) and its binary cross-entropy
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit := model(x)[:, 0], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)  # in float64; the per-step sync costs little at these sizes
            n_correct += int(((logit.detach() > 0).float() == y).sum())  # on the drawn batches: a diagnostic
            seen += len(y)
        row.update(train_loss=loss_sum / seen, train_acc=n_correct / seen, epoch_time_s=time.perf_counter() - t0)
        row["train_time_s"] = sum(r["epoch_time_s"] for r in history) + row["epoch_time_s"]
        history.append(row)
        if tb is not None:
            tb.scalars(row)
    return history


BUILD_LOCK = threading.Lock()  # the global RNG makes the initial weights: one model built at a time


def make_job(name: str, arm: Arm, seed: int, data: LabData, recipe: Recipe, device, runs_dir: Path, resume,
             tb_root) -> Callable[[], Run]:
    """One arm of one seed as a job for fit_parallel: it trains and evaluates the arm, or with `resume` reuses a
    finished run of the same recipe. Every random draw comes from the seed alone, whichever thread runs it."""
    def job() -> Run:
        faces, dark, dim = training_faces(data, arm, recipe)
        with BUILD_LOCK:
            seed_everything(seed)
            model = (DBVAE(recipe.latent_dim) if arm.net == "dbvae" else StandardCNN()).to(device)
        ckpt, tag = runs_dir / f"lab_dbvae_{name}_seed{seed}.pt", f"[{name} seed {seed}]"
        if resume and ckpt.exists():
            saved = load_checkpoint(ckpt, copy.deepcopy(model))  # a copy: another recipe's weights are not wanted
            if saved.get("recipe") == asdict(recipe):
                tqdm.write(f"{tag} reusing the finished run in {ckpt}")
                return Run(**saved["run"])
            tqdm.write(f"{tag} {ckpt} was trained with another recipe: training again")
        tb = TensorBoardLog(tb_root / f"{name}_seed{seed}") if tb_root is not None else None
        history = train(model, arm, seed, faces, dim if arm.rare == "dim" else dark, data.train_negs, recipe, device,
                        tb)
        if tb is not None:
            tb.close(dict(asdict(recipe), seed=seed, arm=name), history[-1])
        neg = predict(model, data.test_negs, device)[:, 0].double()  # (n_neg,): one threshold for every test set
        metrics = {t: group_metrics({g: predict(model, x, device)[:, 0].double() for g, x in ts.items()}, neg)
                   for t, ts in data.tests.items()}
        # the rare-feature gap: the same held-out faces detected as they are minus dimmed, in points
        detect = {t: fmean(metrics[t]["detect"].values()) for t in ("jittered", "dim")}
        metrics["dim"]["dim_gap"] = 100 * (detect["jittered"] - detect["dim"])
        # Algorithm 1 again on the trained DB-VAE's latent means (N, L), over a grid of its settings
        mass = (latent_diagnostics(predict(model, faces, device, fn=lambda b: model.encode(b)[1]),
                                   dict(dark=dark, dim=dim)) if arm.sampler == "latent" else None)
        tqdm.write(f"{tag} gaps (points): dark {metrics['jittered']['dark_gap']:+.1f}, "
                   f"dim {metrics['dim']['dim_gap']:+.1f}")
        run = Run(history, metrics, sum(p.numel() for p in model.parameters()), mass)
        save_checkpoint(ckpt, model, run=run._asdict(), recipe=asdict(recipe))
        return run
    return job


def latent_diagnostics(mu: torch.Tensor, masks: dict) -> dict:
    """Per rare group (masks {group: (N,) bool}) of latent means mu (N, L): Algorithm 1's sampling mass on its faces per
    rule over [alpha in ALPHAS][bins in BIN_COUNTS], and a linear probe's cross-validated AUC (0.5: not encoded)."""
    ps = [[dbvae.sampling_probabilities(mu, b, a) for b in BIN_COUNTS] for a in ALPHAS]
    out = {}
    for g, m in masks.items():
        if m.sum() >= 2:  # a probe needs a rare face per fold
            probe = LogisticRegression(max_iter=PROBE_ITERS, class_weight="balanced")
            auc = cross_val_score(probe, mu.numpy(), m.numpy(), scoring="roc_auc", cv=min(PROBE_FOLDS, int(m.sum())))
            mass = {rule: [[p[rule][m].sum().item() for p in row] for row in ps] for rule in RULES}
            out[g] = {"probe_auc": float(auc.mean()), **mass}
    return out


def rejection_threshold(neg_scores: torch.Tensor, reject: float = REJECT) -> float:
    """The ceil(reject * n)-th smallest of the n non-face scores (n,): faces above it are detected, exactly that many
    non-faces rejected (no ties). -1e-9: 0.99 * 200 is 198.00000000000003 in floats."""
    return torch.kthvalue(neg_scores.double(), max(1, math.ceil(reject * len(neg_scores) - 1e-9))).values.item()


def group_metrics(face_scores: dict, neg_scores: torch.Tensor, reject: float = REJECT) -> dict:
    """Per group (logits {group: (n_g,)} vs non-faces (n_neg,)): detection rate, AUC, mean p(face); dark_gap: the
    light groups' mean detection rate minus the dark groups', in points."""
    t, neg = rejection_threshold(neg_scores, reject), list(neg_scores.double().numpy())
    s = {g: face_scores[g].double() for g in GROUPS}
    rate = {g: (v > t).double().mean().item() for g, v in s.items()}
    auc = {g: float(roc_auc_score([1] * len(v) + [0] * len(neg), list(v.numpy()) + neg)) for g, v in s.items()}
    return {"threshold": t, "nonface_rejected": (neg_scores <= t).double().mean().item(), "detect": rate,
            "n": {g: len(v) for g, v in s.items()}, "auc": auc,
            "mean_p_face": {g: torch.sigmoid(v).mean().item() for g, v in s.items()},
            "dark_gap": 100 * (rate["LF"] + rate["LM"] - rate["DF"] - rate["DM"]) / 2}


def mde80(d: list[float]) -> float:
    """The smallest true mean difference a two-sided paired t-test at ALPHA detects with POWER, given the std of the
    n observed differences d."""
    t = sps.t.ppf(1 - stats.ALPHA / 2, len(d) - 1) + sps.t.ppf(POWER, len(d) - 1)
    return float(t * np.std(d, ddof=1) / math.sqrt(len(d)))


def share_of_oracle(dbvae: list[float], oracle: list[float]) -> dict:
    """The DB-VAE's mean gap reduction in % of the oracle's, with a percentile bootstrap 95 % CI resampling whole
    seeds (a seed's two reductions together); None where a mean reduction of the oracle is 0."""
    def ratio(a, b, axis=-1):
        with np.errstate(divide="ignore", invalid="ignore"):
            return 100 * np.mean(a, axis) / np.mean(b, axis)
    ci = sps.bootstrap((dbvae, oracle), ratio, paired=True, method="percentile", rng=np.random.default_rng(0))
    finite = [float(v) if np.isfinite(v) else None for v in (ratio(dbvae, oracle), *ci.confidence_interval)]
    return {"pct": finite[0], "ci95": finite[1:]}


def summary(values: list[float], bounded: bool = True) -> dict:
    """stats.summarize; a bounded quantity (a rate, an AUC, a mass) gets a bootstrap CI, which stays in its range."""
    return {**stats.summarize(values), "ci95": stats.bootstrap_ci(values)} if bounded else stats.summarize(values)


def over_seeds(rows: list[dict]) -> dict:
    """summary() over seeds (one row per seed) of each number or {group: number}; gaps and thresholds: t CIs."""
    return {k: {g: summary([r[k][g] for r in rows]) for g in v} if isinstance(v, dict)
            else summary([r[k] for r in rows], not k.endswith("_gap") and k != "threshold")
            for k, v in rows[0].items() if k != "n"}


def sampling_summary(histories: list[list[dict]], share: float) -> dict:
    """Per epoch, over the seeds' histories: the rare faces' sampling mass and the mass over their share of faces."""
    mass = [[r["rare_sampling_mass"] for r in rows] for rows in zip(*histories)]  # [epoch][seed]
    return {"share_of_faces": share, "per_epoch": [{"epoch": epoch, "mass": summary(m), "mass_over_share": (
        fmean(m) / share if share > 0 else None)} for epoch, m in enumerate(mass, start=1)]}


def build_results(recipe: Recipe, arms: dict, data: LabData, runs: dict) -> dict:
    """The lab_dbvae.json dict. runs: {arm: {seed: Run}}, runs[a] on the seeds arm a trained on."""
    ends = {}
    for name, (metric, a, b) in endpoints(recipe).items():  # none from a single seed, none without the test set
        test, key = metric.split("/")
        seeds = [s for s in runs[a] if b is None or s in runs[b]]  # paired: the seeds both arms trained on
        if len(seeds) > 1 and test in data.tests:
            x = [runs[a][s].metrics[test][key] for s in seeds]
            y = [runs[b][s].metrics[test][key] for s in seeds] if b else [0.0] * len(x)
            d = np.subtract(x, y)  # (seeds,): mean, t CI, p and per-seed values from stats.paired, with std and MDE
            ends[name] = dict(metric=metric, a=a, b=b, seeds=seeds, **stats.paired(x, y), std=float(d.std(ddof=1)),
                              mde80=mde80(d))
    secondary = [n for n in ends if n not in PRIMARY.values()]
    for name, p in zip(secondary, stats.holm([ends[n]["p_value"] for n in secondary])):
        ends[name].update(p_holm=p, verdict=stats.verdict(*ends[name]["ci95"], p=p))
    # per rare group: the DB-VAE's gap reduction in % of the oracle's, on the oracle's seeds
    pairs = {"dark": ("gap_reduction_dbvae", "gap_reduction_oracle"),
             "dim": ("dim_gap_reduction_dbvae", "dim_gap_reduction_oracle")}
    share = {}
    for g, (a, b) in pairs.items():
        if b in ends:
            by_seed = dict(zip(ends[a]["seeds"], ends[a]["diffs"]))
            share[g] = share_of_oracle([by_seed[s] for s in ends[b]["seeds"]], ends[b]["diffs"])
    def latent(a: str, g: str) -> dict:  # a DB-VAE arm's diagnostics of group g over seeds
        d = [r.mass[g] for r in runs[a].values()]
        rules = {r: {"mean": np.mean([v[r] for v in d], axis=0).tolist(), "per_seed": [v[r] for v in d]} for r in RULES}
        return {"probe_auc": summary([v["probe_auc"] for v in d]), **rules}
    grid = {a: {g: latent(a, g) for g in next(iter(runs[a].values())).mass} for a, arm in arms.items()
            if arm.sampler == "latent"}
    doses = dose_arms(recipe)
    return {"name": "lab_dbvae", "recipe": asdict(recipe), "groups": list(GROUPS), "reject": REJECT,
            "seeds": {a: list(runs[a]) for a in arms},  # the paired seeds each arm trained on
            "arms": {a: arm._asdict() for a, arm in arms.items()}, "test_sets": list(data.tests),
            "primary": PRIMARY, "endpoints": ends, "oracle_share": share,
            "dose": {"fractions": list(doses.values()), "arms": list(doses)},
            "sampling": {a: sampling_summary([r.history for r in runs[a].values()], getattr(arm, arm.rare))
                         for a, arm in arms.items() if arm.sampler},
            "mass_grid": {"alphas": ALPHAS, "bins": BIN_COUNTS, **grid},
            "metrics": {a: {t: over_seeds([r.metrics[t] for r in runs[a].values()]) for t in data.tests} for a in arms},
            "data": {**data.info, "source": "UTKFace+Imagenette", "negative_classes": NONFACE_CLASSES, "augmentation": {
                "train": asdict(AUGMENT) if recipe.augment else None, "jittered_test": asdict(AUGMENT)}},
            "history": {a: {str(s): r.history for s, r in runs[a].items()} for a in arms},
            "params": {a: next(iter(runs[a].values())).params for a in arms}}


HALF, FULL = 8 / 2.54, 16 / 2.54  # figure widths (in) at which the report places them: half and full text width


def strip(path: Path, summaries: list[dict], labels: list[str], ylabel: str, **kw) -> None:
    """A HALF-wide figure, one endpoint per x position: per-seed values (grey, a line per seed; the seeds are the first
    n at every position, fewer at some) and the mean with its 95 % t CI; kw: further Axes settings."""
    fig, ax = plt.subplots(figsize=(HALF, 2.4))
    x, mean = range(len(summaries)), [s["mean"] for s in summaries]
    values = np.array(list(itertools.zip_longest(*(s["values"] for s in summaries), fillvalue=np.nan))).T  # (x, seeds)
    ax.plot(x, values, "o-", color="0.7", lw=0.6, ms=2)
    err = np.abs(np.array([s["ci95"] for s in summaries]).T - mean)  # (2, positions): below and above the mean
    ax.errorbar(x, mean, yerr=err, fmt="s", color="k", ms=3, capsize=2)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xticks=x, xticklabels=labels, ylabel=ylabel, **kw)
    save(fig, path)


# drawn at the size the report places them (HALF or FULL wide): 8 pt text, 7 pt ticks and legends
@plt.rc_context({"font.size": 8, "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7,
                 "legend.frameon": False, "figure.autolayout": True})
def plot_figures(results: dict, fig_dir: Path) -> None:
    """lab_dbvae_dose.pdf: the dark gap per dark share; lab_dbvae_oracle.pdf: the gap reductions of the DB-VAE and the
    oracle per seed; lab_dbvae_rare.pdf: the dim-face gap per arm; lab_dbvae_mass.pdf (FULL): the trained DB-VAEs'
    sampling mass on the rare faces against alpha, a line per bin count (mean over seeds)."""
    m, ends, n = results["metrics"], results["endpoints"], {a: len(v) for a, v in results["seeds"].items()}
    strip(fig_dir / "lab_dbvae_dose.pdf", [m[a]["jittered"]["dark_gap"] for a in results["dose"]["arms"]],
          [f"{100 * f:g}" for f in results["dose"]["fractions"]], "light − dark detection\n(points, jittered test)",
          xlabel="dark-skinned training faces (%)", title=f"standard CNN, {n['standard']} seeds")
    if "gap_reduction_oracle" in ends:
        strip(fig_dir / "lab_dbvae_oracle.pdf", [{"mean": e["mean_diff"], "ci95": e["ci95"], "values": e["diffs"]}
                                                 for e in (ends["gap_reduction_dbvae"], ends["gap_reduction_oracle"])],
              ["DB-VAE", "oracle (labels)"], "gap reduction vs the\nstandard CNN (points)",
              title=f"{100 * results['recipe']['dark_fraction']:g} % dark training faces, {n['standard']} seeds")
    dim_arms = ("standard", "standard_dim", "dbvae_dim", "oracle_dim")
    strip(fig_dir / "lab_dbvae_rare.pdf", [m[a]["dim"]["dim_gap"] for a in dim_arms],
          ["standard,\nno dim", "standard", "DB-VAE", "oracle"], "as taken − dimmed\ndetection (points)",
          title=f"{100 * results['recipe']['dim_fraction']:g} % dim training faces, {n['standard_dim']} seeds "
          f"(oracle {n['oracle_dim']})")
    grid, rule = results["mass_grid"], results["recipe"]["combine"]
    panels = [(a, g) for a in grid if a not in ("alphas", "bins") for g in grid[a] if g == results["arms"][a]["rare"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(FULL, 2.2), sharey=True, squeeze=False)
    for ax, (a, g) in zip(axes[0], panels):
        for j, b in enumerate(grid["bins"]):
            ax.plot(grid["alphas"], [100 * row[j] for row in grid[a][g][rule]["mean"]], "o-", ms=3, label=f"{b} bins")
        share = 100 * results["sampling"][a]["share_of_faces"]
        ax.axhline(share, color="k", ls="--", lw=0.8, label="share of faces")
        ax.axvline(results["recipe"]["alpha"], color="0.5", ls=":", lw=0.8, label="α trained with")
        ax.set(xscale="log", xlabel="smoothing α", title=f"{share:g} % {g} training faces")
    axes[0][0].set(ylabel=f"DB-VAE's draws on them\n(%, {rule} rule)", ylim=(0, None))  # after all lines: a top for all
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the panels: the lines can be anywhere
    save(fig, fig_dir / "lab_dbvae_mass.pdf")


def main(argv=None) -> dict:
    args, recipe = get_args(argv)
    fig_dir, res_dir, runs_dir, device = setup(args)
    recipe = replace(recipe, precision=resolve_precision(recipe.precision, device, "dbvae"))
    t_start, data, arms = time.perf_counter(), load_lab_data(args.data_dir, recipe), make_arms(recipe)
    n = {k: len(arm_seeds(a, args.seeds)) for k, a in arms.items()}
    print(f"lab_dbvae: {len(arms)} arms, {sum(n.values())} trainings ({n}), {data.info['counts']}, device={device}, "
          f"threads={torch.get_num_threads()}, {recipe.precision}")
    tb_root = tensorboard_dir(args, "lab_dbvae", runs_dir)
    # a seed's arms: the same initial weights, non-faces, batch order and augmentation
    jobs = {(name, seed): make_job(name, arms[name], seed, data, recipe, device, runs_dir, args.resume, tb_root)
            for seed, name in itertools.product(args.seeds, arms) if seed in arm_seeds(arms[name], args.seeds)}
    runs = {a: {} for a in arms}
    for (name, seed), run in zip(jobs, fit_parallel(list(jobs.values()), device, desc="lab_dbvae trainings")):
        runs[name][seed] = run
    results = build_results(recipe, arms, data, runs)
    plot_figures(results, fig_dir)
    path = write_results(res_dir / "lab_dbvae.json", results, args, device, t_start, recipe.precision)
    for question, name, e in ((q, n, results["endpoints"][n]) for q, n in PRIMARY.items() if n in results["endpoints"]):
        print("{:6s} {:26s} {:+6.2f} points, CI [{:+.2f}, {:+.2f}], p {:.3f}, MDE80 {:.1f}: {}".format(
            question, name, e["mean_diff"], *e["ci95"], e["p_value"], e["mde80"], e["verdict"]))
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
