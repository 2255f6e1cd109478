"""MIT 6.S191 Lab 2 part 2: debiasing a face detector with a DB-VAE (Amini et al., AIES 2019), in PyTorch.

Per seed, three face detectors learn from the same data in the same order, with few dark-skinned faces (default
20 of 2,000): the lab's CNN, the DB-VAE (which draws faces inversely to the density of their latent means,
Algorithm 1, without race labels) and a control without dark faces. Tests per group (light/dark, female/male):
held-out UTKFace faces, aligned and jittered, and the lab's MIT faces. Primary endpoint: the group variance of
the jittered detection rate at 99 % non-face rejection, DB-VAE vs standard CNN over paired seeds.

    python lab_dbvae.py [--smoke]    # report/figures/lab_dbvae_*.png, report/results/lab_dbvae.json"""
from __future__ import annotations

import argparse
import copy
import itertools
import math
import time
from collections import namedtuple
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from common import dbvae, stats, utils
from common.data import IMAGENETTE_CLASSES, decode_images, imagenette_split, require_images
from common.dbvae import AUGMENT, DBVAE, IMAGE_SHAPE, StandardCNN, dbvae_loss, sampling_probabilities
from common.plots import plt, save
from common.train import TensorBoardLog, load_checkpoint, predict, save_checkpoint, tensorboard_dir
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
    train_faces: int = flag(2000, utils.positive_int, "training faces")  # 8 seeds x 3 models: 15 min on 2 CPU cores
    dark_fraction: float = flag(0.01, utils.fraction, "share of dark-skinned faces among the training faces")
    test_per_group: int = flag(1000, utils.positive_int, "held-out UTKFace faces per group, or as many as exist")
    augment: bool = flag(True, None, "random shift/zoom/rotation", action=argparse.BooleanOptionalAction)
    split_seed: int = flag(0, utils.seed_int, "seed of the UTKFace train/test split, the same for every seed")
    jitter_seed: int = flag(1234, utils.seed_int, "seed of the fixed jittered test copy")
    smoke: bool = False   # a slice of the data that runs in seconds


N_SEEDS = 8  # paired training seeds: the fewest for which an exact sign-flip test reaches p < 0.01
# --smoke: 64 training faces, at least 4 of them dark so that every code path runs; 8 test faces per group
SMOKE_FACES, SMOKE_MIN_DARK, SMOKE_TEST_PER_GROUP = 64, 4, 8
SMOKE_NEGS, SMOKE_MIT_PER_GROUP = (64, 32), 4  # non-faces (train, test) and MIT faces per group
# group -> (race, gender) in UTKFace names: race 0 White = light, 1 Black = dark (annotators' labels); gender 1 female
GROUPS = {"LF": (0, 1), "LM": (0, 0), "DF": (1, 1), "DM": (1, 0)}
LIGHT, DARK = 0, 1
NEG_CLASSES = {w: IMAGENETTE_CLASSES[w] for w in ("n02979186", "n03028079", "n03417042", "n03425413",
                                                  "n03445777", "n03888257")}  # Imagenette without people
MODEL_NAMES = {"standard": "standard CNN", "dbvae": "DB-VAE", "standard_nodark": "standard CNN, 0 % dark faces"}
TEST_SET_NAMES = {"aligned": "UTKFace held-out, aligned", "jittered": "UTKFace held-out, jittered",
                  "mit": "MIT 6.S191 test faces"}
REJECT = 0.99  # the detection threshold rejects this share of the held-out non-faces
# one trained model: rows per epoch, test set -> group_metrics, parameter count, the DB-VAE's last p (Nf,) or None
Run = namedtuple("Run", ["history", "metrics", "params", "p_faces"])
# uint8 (N, 3, 64, 64) train {model: faces}, train_negs, tests {name: {group: faces, "negs": ...}}; race (N,); info
LabData = namedtuple("LabData", ["train", "train_negs", "race", "tests", "info"])


def get_args(argv=None) -> tuple[argparse.Namespace, Recipe]:
    """The command line and its Recipe; --smoke: one epoch, two seeds and a slice of the data."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 1 thread: batch-32 convs gain little from a 2nd; on a shared 2-core machine 2 threads were ~10x slower
    add_common_args(p, epochs=Recipe.epochs, batch_size=Recipe.batch_size, lr=Recipe.lr, schedule="constant", threads=1)
    p.add_argument("--seeds", type=utils.seed_int, nargs="+", help=f"paired seeds (default: {N_SEEDS} from --seed on)")
    p.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                   help="also train the 0 %%-dark standard CNN control (default %(default)s)")
    for f in [f for f in fields(Recipe) if f.metadata]:  # the Recipe fields with a flag of their own
        p.add_argument("--" + f.name.replace("_", "-"), default=f.default, **f.metadata)
    args = p.parse_args(argv)
    args.seeds = args.seeds or list(range(args.seed, args.seed + N_SEEDS))
    if args.smoke:  # two seeds, the fewest for a paired comparison
        args.epochs, args.seeds = 1, args.seeds[:2]
    r = Recipe(**{f.name: getattr(args, f.name) for f in fields(Recipe)})
    n_dark = max(round(r.dark_fraction * SMOKE_FACES), SMOKE_MIN_DARK)  # --smoke keeps a few dark faces
    smoke = dict(train_faces=SMOKE_FACES, dark_fraction=n_dark / SMOKE_FACES, test_per_group=SMOKE_TEST_PER_GROUP)
    return args, replace(r, **smoke) if r.smoke else r


def jittered_copy(x: torch.Tensor, seed: int, chunk: int = 500) -> torch.Tensor:
    """A fixed random affine copy of uint8 images x (N, 3, H, W), in chunks that bound the float memory."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([AUGMENT(c / 255, gen).mul(255).round().clamp(0, 255).to(torch.uint8) for c in x.split(chunk)])


def parse_utkface_name(name: str) -> tuple[int, int, int]:
    """'age_gender_race_datetime.jpg.chip.jpg' -> (age, gender, race) (see $DATA_DIR/README.md)."""
    return tuple(int(v) for v in name.split("_")[:3])


def load_lab_data(data_dir, recipe: Recipe) -> LabData:
    """Decode every image once (uint8): the training sets and the three test sets. Per group, a seeded shuffle
    holds out test_per_group UTKFace faces; the shuffled rest gives the light and dark training faces."""
    root, gen = Path(data_dir).expanduser(), torch.Generator().manual_seed(recipe.split_seed)
    n_dark = round(recipe.dark_fraction * recipe.train_faces)
    n_light, k = recipe.train_faces - n_dark, recipe.test_per_group
    files = require_images(root / "UTKFace", "*.jpg", "UTKFace photos named age_gender_race_date.jpg.chip.jpg")

    def shuffled(files: list) -> list:
        return [files[i] for i in torch.randperm(len(files), generator=gen).tolist()]
    test, rest = {}, {LIGHT: [], DARK: []}
    for grp, (race, gender) in GROUPS.items():
        pool = shuffled([f for f in files if parse_utkface_name(f.name)[1:] == (gender, race)])
        test[grp], rest[race] = pool[:k], rest[race] + pool[k:]
    light, dark = shuffled(rest[LIGHT]), shuffled(rest[DARK])  # the leftovers: LF + LM, DF + DM
    if n_light + n_dark > len(light) or n_dark > len(dark) or min(len(v) for v in test.values()) == 0:
        raise UserError(f"UTKFace: {n_light + n_dark} light and {n_dark} dark training faces asked, {len(light)} + "
                        f"{len(dark)} left after the test split {({g: len(v) for g, v in test.items()})}")
    neg_train, neg_test = ([f for c in NEG_CLASSES for f in sorted((imagenette_split(root, split) / c).glob(
        "*.JPEG"))] for split in ("train", "val"))
    mit = {g: sorted((root / "mit_test_faces" / g).glob("*.png")) for g in GROUPS}  # none: no MIT test set
    if recipe.smoke:  # evenly spread slices of the non-faces
        neg_train, neg_test = (v[::len(v) // n][:n] for v, n in zip((neg_train, neg_test), SMOKE_NEGS))
        mit = {g: f[:SMOKE_MIT_PER_GROUP] for g, f in mit.items()}
    lists = {"light": light[:n_light + n_dark], "dark": dark[:n_dark], "train_negs": neg_train, "test_negs": neg_test,
             **{f"test_{g}": f for g, f in test.items()}, **{f"mit_{g}": f for g, f in mit.items()}}
    total, t0 = sum(len(v) for v in lists.values()), time.perf_counter()
    with tqdm(total=total, desc="decode images", unit="img", mininterval=1.0, dynamic_ncols=True, leave=False) as bar:
        x = {key: decode_images(v, IMAGE_SHAPE[1], bar=bar) for key, v in lists.items()}
    skewed = torch.cat([x["light"][:n_light], x["dark"]])                        # (train_faces, 3, 64, 64)
    race = torch.tensor([LIGHT] * n_light + [DARK] * n_dark)                      # (train_faces,)
    train = {"standard": skewed, "dbvae": skewed, "standard_nodark": x["light"]}  # n_dark more light faces
    aligned = {**{g: x[f"test_{g}"] for g in GROUPS}, "negs": x["test_negs"]}  # uint8 (n, 3, 64, 64) each
    # one fixed jittered copy for every seed and model: seed jitter_seed + i for group i, + 4 for the non-faces
    jittered = {key: jittered_copy(v, recipe.jitter_seed + i) for i, (key, v) in enumerate(aligned.items())}
    tests = {"aligned": aligned, "jittered": jittered}
    if all(mit.values()):  # as they are (not re-aligned): the threshold comes from the aligned non-faces
        tests["mit"] = {**{g: x[f"mit_{g}"] for g in GROUPS}, "negs": aligned["negs"]}
    counts = {"train_faces": {m: len(v) for m, v in train.items()}, "train_nonfaces": len(x["train_negs"]),
              "test_nonfaces": len(x["test_negs"]), **{f"{t}_{g}": len(v[g]) for t, v in tests.items() for g in GROUPS}}
    fractions = {"standard": n_dark / recipe.train_faces, "dbvae": n_dark / recipe.train_faces, "standard_nodark": 0.0}
    info = dict(counts=counts, dark_fractions=fractions, decoded_images=total, decode_time_s=time.perf_counter() - t0)
    return LabData(train, x["train_negs"], race, tests, info)


def train(model, kind: str, seed: int, data: LabData, recipe: Recipe, device, tb: TensorBoardLog | None):
    """Adam, constant lr; the DB-VAE re-samples its faces every epoch (Algorithm 1). -> (history, last p_faces (Nf,))"""
    faces, gens, augment = data.train[kind], dbvae.batch_generators(seed), AUGMENT if recipe.augment else None
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    history, p_faces = [], None
    with tqdm(total=recipe.epochs * max(1, len(faces) // (recipe.batch_size // 2)), desc=f"{kind} seed {seed}",
              unit="step", mininterval=2.0, dynamic_ncols=True, leave=False) as bar:
        for epoch in range(1, recipe.epochs + 1):
            t0, row = time.perf_counter(), {"epoch": epoch}
            loss_sum, n_correct, seen = 0.0, 0, 0
            if kind == "dbvae":  # latent means (N, L) with BatchNorm's running statistics (eval mode) -> p (N,)
                mu = predict(model, faces, device, fn=lambda b: model.encode(b)[1])
                p = sampling_probabilities(mu, recipe.bins, recipe.alpha)  # Algorithm 1, {rule: p}
                p_faces, other = p[recipe.combine], "product" if recipe.combine == "max" else "max"
                # diagnostics, the only use of the race labels: the dark faces' share of p, and had the other rule drawn
                dark, pct = data.race == DARK, 100 * (rankdata(p_faces.numpy()) - 1) / max(1, len(faces) - 1)
                row.update({"dark_sampling_mass": p_faces[dark].sum().item(), f"dark_sampling_mass_if_{other}":
                            p[other][dark].sum().item(), "dark_mean_p_percentile": pct[dark.numpy()].mean().item()})
            model.train()
            for x, y in dbvae.epoch_batches(faces, data.train_negs, recipe.batch_size, gens, p_faces, augment, device):
                if kind == "dbvae":
                    loss, logit = dbvae_loss(model, x, y, recipe.kl_weight)  # paper Eq. 5
                else:  # the face logit (B,) and its binary cross-entropy
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit := model(x)[:, 0], y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(y)  # in float64; the per-step sync costs little at these sizes
                n_correct += int(((logit.detach() > 0).float() == y).sum())  # on the drawn batches: a diagnostic
                seen += len(y)
                bar.update(1)
            row.update(train_loss=loss_sum / seen, train_acc=n_correct / seen, epoch_time_s=time.perf_counter() - t0)
            row["train_time_s"] = sum(r["epoch_time_s"] for r in history) + row["epoch_time_s"]
            history.append(row)
            if tb is not None:
                tb.scalars(row)
    return history, p_faces


def run_model(kind: str, seed: int, data: LabData, recipe: Recipe, device, runs_dir: Path, resume, tb_root) -> Run:
    """One model of one seed, trained and evaluated; with `resume` a finished run of the same recipe is reused."""
    seed_everything(seed)  # the weights, and the DB-VAE's reparameterisation noise after them
    model = (DBVAE(recipe.latent_dim) if kind == "dbvae" else StandardCNN()).to(device)
    ckpt = runs_dir / f"lab_dbvae_{kind}_seed{seed}.pt"
    if resume and ckpt.exists():
        saved = load_checkpoint(ckpt, copy.deepcopy(model))  # a copy: another recipe's weights are not wanted
        if saved.get("recipe") == asdict(recipe):
            print(f"[{kind} seed {seed}] reusing the finished run in {ckpt}")
            return Run(**saved["run"])
        print(f"[{kind} seed {seed}] {ckpt} was trained with another recipe: training again")
    tb = TensorBoardLog(tb_root / f"{kind}_seed{seed}") if tb_root is not None else None
    history, p_faces = train(model, kind, seed, data, recipe, device, tb)
    if tb is not None:
        tb.close(dict(asdict(recipe), seed=seed, model=kind), history[-1])
    scores = {t: {k: predict(model, x, device)[:, 0].double() for k, x in ts.items()} for t, ts in data.tests.items()}
    metrics = {t: group_metrics(s, s["negs"]) for t, s in scores.items()}
    tqdm.write(f"[{kind} seed {seed}] jittered test: group variance {metrics['jittered']['group_var']:.1f} %²")
    run = Run(history, metrics, sum(p.numel() for p in model.parameters()), p_faces)
    save_checkpoint(ckpt, model, run=run._asdict(), recipe=asdict(recipe))
    return run


def rejection_threshold(neg_scores: torch.Tensor, reject: float = REJECT) -> float:
    """The ceil(reject * n)-th smallest of the n non-face scores (n,): faces above it are detected, and exactly that
    many non-faces are rejected when the scores have no ties. -1e-9: 0.99 * 200 is 198.00000000000003 in floats."""
    return torch.kthvalue(neg_scores.double(), max(1, math.ceil(reject * len(neg_scores) - 1e-9))).values.item()


def group_metrics(face_scores: dict, neg_scores: torch.Tensor, reject: float = REJECT) -> dict:
    """Per group (logits {group: (n_g,)} vs non-faces (n_neg,)): detection rate, AUC, mean p(face); over the groups
    the variance of the rates in %^2 (the paper's unit) and the light mean - worst dark group in points."""
    t, neg = rejection_threshold(neg_scores, reject), list(neg_scores.double().numpy())
    s = {g: face_scores[g].double() for g in GROUPS}
    detected = {g: int((v > t).sum()) for g, v in s.items()}
    rate = {g: detected[g] / len(v) for g, v in s.items()}
    auc = {g: float(roc_auc_score([1] * len(v) + [0] * len(neg), list(v.numpy()) + neg)) for g, v in s.items()}
    return {"threshold": t, "nonface_rejected": (neg_scores <= t).double().mean().item(), "detect": rate,
            "detected": detected, "n": {g: len(v) for g, v in s.items()}, "auc": auc,
            "mean_p_face": {g: torch.sigmoid(v).mean().item() for g, v in s.items()},
            "group_var": (100 * torch.tensor(list(rate.values()), dtype=torch.float64)).var(unbiased=False).item(),
            "dark_gap": 100 * ((rate["LF"] + rate["LM"]) / 2 - min(rate["DF"], rate["DM"]))}


def compare_paired(a: list[float], b: list[float], endpoint: str, names=("standard", "dbvae")) -> dict:
    """b - a over paired seeds: BCa bootstrap 95 % CI, exact sign-flip p; a direction: p < ALPHA, 0 outside the CI."""
    d = [y - x for x, y in zip(a, b)]
    ci, p = stats.bootstrap_ci(d), stats.sign_flip_p_value(d)
    return {"endpoint": endpoint, "difference": f"{names[1]} - {names[0]}", "n_seeds": len(d),
            names[0]: stats.summarize(a), names[1]: stats.summarize(b), "mean_diff": sum(d) / len(d),
            "ci95": ci, "p_value": p, "test": "sign_flip", "alpha": stats.ALPHA,
            "verdict": stats.verdict(*ci) if p < stats.ALPHA else "no significant difference", "per_seed_diff": d}


def over_seeds(rows: list[dict], keys) -> dict:
    """stats.summarize over seeds (rows: one dict per seed) of each key: a number, or per group of {group: number}."""
    return {k: {g: stats.summarize([r[k][g] for r in rows]) for g in rows[0][k]} if isinstance(rows[0][k], dict)
            else stats.summarize([r[k] for r in rows]) for k in keys}


def sampling_summary(histories: list[list[dict]], fraction: float) -> dict:
    """Per epoch, over the seeds' histories: the dark faces' sampling mass (and over their share of the faces)."""
    per_epoch = []
    for rows in zip(*histories):  # one epoch, a row per seed
        s = over_seeds(rows, [k for k in rows[0] if k.startswith("dark_")])
        mass = s.pop("dark_sampling_mass")
        per_epoch.append({"epoch": rows[0]["epoch"], "dark_mass": mass, **s,
                          "mass_over_share": mass["mean"] / fraction if fraction > 0 else None})
    return {"dark_share_of_faces": fraction, "per_epoch": per_epoch}


def build_results(args, recipe: Recipe, data: LabData, runs: dict) -> dict:
    """The lab_dbvae.json dict. runs: {model: {seed: Run}}."""
    seeds, models = list(args.seeds), list(runs)
    tests, metrics = list(data.tests), {m: {} for m in models}
    for m, t in itertools.product(models, tests):  # seed statistics per model and test set
        rows = [runs[m][s].metrics[t] for s in seeds]
        o = metrics[m][t] = over_seeds(rows, [k for k in rows[0] if k not in ("detected", "n")])
        o.update(detected_per_seed={g: [r["detected"][g] for r in rows] for g in GROUPS}, n=rows[0]["n"])
        if t == "mit":  # 15 faces per group: the binomial spread dominates; Wilson interval at the seed-mean count
            o["wilson"] = {g: stats.wilson(round(sum(k) / len(k)), o["n"][g])
                           for g, k in o["detected_per_seed"].items()}

    def paired(key, a="standard", b="dbvae"):  # b - a per test set; none from a single seed
        return {t: compare_paired(*(metrics[m][t][key]["values"] for m in (a, b)), key, (a, b))
                for t in tests if len(seeds) > 1}
    comparison, secondary = paired("group_var"), {"dark_gap": paired("dark_gap")}
    if "standard_nodark" in runs:
        secondary["control_vs_standard"] = paired("group_var", "standard_nodark", "standard")
    gap = metrics["standard"]["jittered"]["dark_gap"]
    gap_ci = stats.bootstrap_ci(gap["values"])  # one seed: [gap, gap]
    return {"name": "lab_dbvae", "recipe": asdict(recipe), "seeds": seeds, "groups": list(GROUPS), "reject": REJECT,
            "models": {m: MODEL_NAMES[m] for m in models}, "test_sets": {t: TEST_SET_NAMES[t] for t in tests},
            "primary_endpoint": {"name": "jittered_group_var", "comparison": "comparison.jittered"},
            "data": {**data.info, "source": "UTKFace+Imagenette", "negative_classes": NEG_CLASSES, "augmentation": {
                "train": asdict(AUGMENT) if recipe.augment else None, "jittered_test": asdict(AUGMENT)}},
            "metrics": metrics, "comparison": comparison, "secondary": secondary,
            "standard_gap_jittered": {**gap, "bootstrap_ci95": gap_ci, "measurable": gap_ci[0] > 0},
            "sampling": sampling_summary([runs["dbvae"][s].history for s in seeds],
                                         data.info["dark_fractions"]["dbvae"]),
            "history": {m: {str(s): runs[m][s].history for s in seeds} for m in models},
            "params": {m: runs[m][seeds[0]].params for m in models}}


# figures 8 in wide, placed at the report's 17 cm text width (0.84 scale: 9 pt text prints at 7.5 pt)
@plt.rc_context({"figure.figsize": (8.0, 3.0), "font.size": 9, "axes.titlesize": 10, "figure.titlesize": 10,
                 "legend.frameon": False, "figure.autolayout": True})  # autolayout: tight_layout per draw
def plot_figures(results: dict, data: LabData, p: torch.Tensor, fig_dir: Path) -> None:
    """lab_dbvae_groups.png: the detection rate per group, model and test set (seed mean, t 95 % CI; MIT: Wilson);
    lab_dbvae_paired.png: (a) the primary endpoint per model and seed, (b) the DB-VAE's draws of dark faces;
    lab_dbvae_sampling.png: the training faces with the highest and lowest last p (Nf,) of the first seed."""
    m, tests, k = results["metrics"], list(results["test_sets"]), len(results["metrics"])
    fig, axes = plt.subplots(1, len(tests), sharey=True, squeeze=False)
    for ax, t in zip(axes[0], tests):
        for i, model in enumerate(m):
            mean = [m[model][t]["detect"][g]["mean"] for g in GROUPS]
            ci = [(m[model][t]["wilson"] if t == "mit" else m[model][t]["detect"])[g]["ci95"] for g in GROUPS]
            err = [[max(0.0, a - c[0]) for a, c in zip(mean, ci)], [max(0.0, c[1] - a) for a, c in zip(mean, ci)]]
            ax.bar([j + (i - (k - 1) / 2) * 0.8 / k for j in range(len(GROUPS))], mean, 0.8 / k, yerr=err, capsize=2,
                   label=MODEL_NAMES[model], error_kw={"lw": 0.8})
        ax.set(xticks=range(len(GROUPS)), xticklabels=list(GROUPS), ylim=(0, 1.05), title=TEST_SET_NAMES[t])
        ax.grid(axis="y", alpha=0.3)
    axes[0][len(tests) // 2].set_xlabel("group (L/D: light/dark skin, F/M: female/male)")
    axes[0][0].set_ylabel(f"faces detected at {REJECT:.0%}\nnon-face rejection")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=k)
    fig.suptitle(f"Detection rate per group: mean over {len(results['seeds'])} seeds, 95 % CI (MIT: Wilson, 15 faces)")
    save(fig, fig_dir / "lab_dbvae_groups.png")
    fig, (ax, bx) = plt.subplots(1, 2)
    gv, x = [v["jittered"]["group_var"] for v in m.values()], range(k)
    ax.plot(x, [v["values"] for v in gv], "o-", color="0.6", lw=0.8, ms=3)  # (models, seeds): a line per seed
    ax.plot(x, [v["mean"] for v in gv], "s-", color="C3", lw=2, label="mean over seeds")
    ax.set(xticks=x, xticklabels=[MODEL_NAMES[v].replace(", ", ",\n") for v in m], ylim=(0, None),
           ylabel="group variance (%²)\non the jittered test", title="(a) primary endpoint, per seed")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.34))
    rows, share = results["sampling"]["per_epoch"], results["sampling"]["dark_share_of_faces"]
    ep, other = [r["epoch"] for r in rows], "product" if results["recipe"]["combine"] == "max" else "max"
    bx.plot(ep, [[100 * v for v in r["dark_mass"]["values"]] for r in rows], "o-", color="0.6", lw=0.8, ms=3)
    bx.plot(ep, [100 * r["dark_mass"]["mean"] for r in rows], "s-", color="C1", lw=2,
            label="dark faces' share of the sampling mass (mean)")
    bx.plot(ep, [100 * r[f"dark_sampling_mass_if_{other}"]["mean"] for r in rows], "^:", color="C4", lw=1.5,
            label=f"the same had p used the {other} rule (not used)")
    bx.axhline(100 * share, color="k", ls="--", lw=1, label="their share of the faces")
    bx.set(xticks=ep, ylim=(0, None), xlabel="epoch (p re-estimated at its start)", ylabel="% of draws",
           title="(b) DB-VAE draws of dark faces")
    bx.legend(loc="upper left", bbox_to_anchor=(-0.1, -0.3))
    save(fig, fig_dir / "lab_dbvae_paired.png")
    n, order = min(8, len(p) // 2), torch.argsort(p, descending=True, stable=True)
    fig, axes = plt.subplots(2, n, figsize=(8.0, 3.6), squeeze=False)
    for row, label, idx in zip(axes, ("highest p", "lowest p"), (order[:n], order[-n:].flip(0))):
        for ax, i in zip(row, idx.tolist()):
            ax.imshow(data.train["dbvae"][i].permute(1, 2, 0).numpy())
            ax.set(xticks=[], yticks=[])
            ax.set_title(f"{('light', 'dark')[int(data.race[i])]}\n{p[i] * len(p):.1f}× unif.", fontsize="medium")
        row[0].set_ylabel(label)
    fig.suptitle(f"DB-VAE seed {results['seeds'][0]}: training faces with the highest / lowest resampling probability "
                 "(last epoch;\nrace labels shown for reading only, never used in training)")
    save(fig, fig_dir / "lab_dbvae_sampling.png")


def main(argv=None) -> dict:
    args, recipe = get_args(argv)
    fig_dir, res_dir, runs_dir, device = setup(args)
    t_start, data = time.perf_counter(), load_lab_data(args.data_dir, recipe)
    print(f"lab_dbvae: {data.info['counts']}, device={device}, threads={torch.get_num_threads()}")
    models = [m for m in MODEL_NAMES if args.control or m != "standard_nodark"]
    runs, tb_root = {m: {} for m in models}, tensorboard_dir(args, "lab_dbvae", runs_dir)
    for seed, kind in itertools.product(args.seeds, models):  # a seed's models see the same data in the same order
        runs[kind][seed] = run_model(kind, seed, data, recipe, device, runs_dir, args.resume, tb_root)
    results = build_results(args, recipe, data, runs)
    plot_figures(results, data, runs["dbvae"][args.seeds[0]].p_faces, fig_dir)
    path = write_results(res_dir / "lab_dbvae.json", results, args, device, t_start)
    for t, c in results["comparison"].items():
        print("{:9s} group var {:7.2f} -> {:7.2f} %², diff {:+.2f} CI [{:+.2f}, {:+.2f}], p {:.3f}: {}".format(
            t, c["standard"]["mean"], c["dbvae"]["mean"], c["mean_diff"], *c["ci95"], c["p_value"], c["verdict"]))
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
