"""Exercise 2: the ex1 encoder + a two-layer MLP head as an MNIST classifier (cross-entropy), over seeds.

The encoder is the conv+FC Encoder of ex1 (d = 12), then MLP 12 -> 64 -> 10. Three course baselines are trained
by the same loop with the same seeds (--seed, --n-seeds) and compared with ours on the same 10,000 test images
(paired t-test over seeds, McNemar's exact test per seed; primary endpoint: ours vs lab2_cnn, the others Holm):
  lab2_cnn  - MIT 6.S191 Lab 2 CNN (conv24 -> pool -> conv36 -> pool -> FC128 -> FC10)
  lab_mlp   - LAB01 MLP 784-64-64-10
  skip_mlp  - LAB01 MLP with residual (skip) blocks
Q2(d) (report/theory.typ), with the first --shift-seeds seeds: the test accuracy as the test digits are shifted
by 0..--shift-max pixels in each direction, of the classifier trained with and without the augmentation and of
a control whose head averages over space (GAPClassifier, not augmented: shift tolerant by construction).
The runs are trained side by side on a CPU, one per core, in bf16 where the hardware computes it (--precision).

    python ex2_classifier.py            # full run: report/figures/ex2_*.pdf, report/results/ex2.json
    python ex2_classifier.py --smoke    # seconds, into a temp dir
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from common import utils
from common.data import AFFINE, first_n, load_mnist_splits, shift_images
from common.models import CLASSIFIER_RECIPE, Classifier, GAPClassifier, Lab2CNN, LabMLP, SkipMLP, count_parameters
from common.plots import plot_curves, shift_curves
from common.stats import holm, mcnemar, paired, summarize, verdict, wilson
from common.train import fit, fit_parallel, predict, resolve_precision, tensorboard_dir
from common.utils import add_common_args, add_model_args, positive_int, run_main, seed_everything, setup, write_results

# The recipe: AdamW + one-cycle, batch 128, all 60,000 images, random shifts and rotations of the training
# digits. It lives in common/models.py because ex3 trains this classifier when it is missing.
RECIPE = CLASSIFIER_RECIPE
BASELINES = {"lab2_cnn": Lab2CNN, "lab_mlp": LabMLP, "skip_mlp": SkipMLP}
LABELS = {"lab2_cnn": "MIT Lab 2 CNN", "lab_mlp": "LAB01 MLP", "skip_mlp": "LAB01 MLP + skips"}  # in the figures
PRIMARY = "lab2_cnn"  # the strongest baseline: "ours vs lab2_cnn" is the question that gets the verdict
SHIFT_MODELS = {"augmented": (Classifier, AFFINE, "FC head, augmented"),  # Q2(d): (network, augment, label)
                "not_augmented": (Classifier, "none", "FC head, not augmented"),
                "gap_head": (GAPClassifier, "none", "GAP head, not augmented")}
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}  # (dx, dy) per pixel of shift
MAX_SHIFT = 14  # half of the 28-pixel image: further shifts leave nothing of the digit
at_least_2 = utils.number(int, 2)  # a paired test over seeds needs two of them


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, epochs=RECIPE.epochs, batch_size=RECIPE.batch_size, lr=RECIPE.lr)
    add_model_args(p)
    p.add_argument("--n-seeds", type=at_least_2, default=5, help="seeds --seed, ..., --seed+n-1 (default 5)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=RECIPE.augment != "none",
                   help=f"augment the training digits ({AFFINE}; default on)")
    p.add_argument("--baselines", nargs="*", choices=list(BASELINES), default=list(BASELINES),
                   help="baseline networks to train too (default: all; pass none to skip)")
    p.add_argument("--shift-max", type=int, default=6, choices=range(0, MAX_SHIFT + 1), metavar=f"{{0..{MAX_SHIFT}}}",
                   help="largest test-digit shift in pixels of the Q2(d) shift test; 0 skips the test and the "
                        "two models it trains (default 6)")
    # all 5 seeds: Holm over the 12 shift-wise comparisons leaves a 3-point effect near p = 0.05 at 3 seeds
    p.add_argument("--shift-seeds", type=at_least_2, default=5, help="the shift test's seeds: the first N (default 5)")
    p.add_argument("--shift-images", type=positive_int, default=2000,
                   help="the shift test uses the first N test images (default 2000: 28 evaluations per model)")
    return p.parse_args(argv)


def plan(args, seeds: list[int], recipe) -> list[tuple]:
    """Every run as (network, seed, recipe, shift-tested?), the longest first: ours on every seed, the shift test's
    other two networks on its seeds (ours is reused as the third), the baselines on every seed."""
    ours_key, shift_seeds = "augmented" if args.augment else "not_augmented", seeds[:args.shift_seeds]
    jobs = [("classifier", s, recipe, bool(args.shift_max) and s in shift_seeds) for s in seeds]
    jobs += [(k, s, dataclasses.replace(recipe, augment=a), True) for k, (_, a, _) in SHIFT_MODELS.items()
             if args.shift_max and k != ours_key for s in shift_seeds]
    return jobs + [(k, s, recipe, False) for k in args.baselines for s in seeds]


def build_run(job: tuple, args, train, test, device, runs_dir, precision):
    """The plan's `job`: its network built here, right after seeding (the initial weights follow the seed alone), and
    the job that trains it with its own generator and returns its history, which test images it gets right (N,) bool
    and, with `shift`, its shift-test accuracies (directions, shifts). Only the --seed runs of ours and of the
    baselines are evaluated every epoch (the curves); runs/ex2_classifier.pt is ours, which ex3 reuses."""
    key, seed, recipe, shift = job
    gen = seed_everything(seed)
    net = SHIFT_MODELS.get(key, (Classifier,))[0]  # ours and the shift test's networks: sized by the model flags
    model = BASELINES[key]() if key in BASELINES else net(args.latent_dim, args.channels, hidden=args.hidden)
    model = model.to(device)
    curves = seed == args.seed and key not in SHIFT_MODELS
    ckpt = "ex2_classifier.pt" if key == "classifier" and curves else f"ex2_{key}_seed{seed}.pt"
    last_only = dataclasses.replace(recipe, eval_every=recipe.epochs)  # the last epoch is always evaluated
    tb = tensorboard_dir(args, f"ex2/{key}_seed{seed}", runs_dir)

    def run() -> dict:
        hist = fit(model, train, test, recipe if curves else last_only, gen=gen, precision=precision,
                   ckpt_path=runs_dir / ckpt, resume=args.resume, tb_dir=tb)
        out = {"seed": seed, "history": hist, "params": count_parameters(model),
               "correct": (predict(model, test.x, device).argmax(1) == test.y).numpy()}
        if shift:
            rates = shift_test(model, first_n(test, args.shift_images), list(range(args.shift_max + 1)), device)
            out["shift"] = np.array([[p["rate"] for p in rates[d]] for d in DIRECTIONS])  # (directions, shifts)
        return out
    return run


def shift_test(model, test, shifts: list[int], device) -> dict:
    """Accuracy (with its Wilson 95 % interval) of `model` on the test digits shifted by s pixels, zero
    fill, for every s in `shifts` and every direction: {direction: [stats.wilson(...) per shift]}."""
    out = {}
    for direction, (dx, dy) in DIRECTIONS.items():
        out[direction] = []
        for s in shifts:
            logits = predict(model, shift_images(test.x, dx * s, dy * s), device)   # (N, 10)
            out[direction].append(wilson(int((logits.argmax(1) == test.y).sum()), len(test)))
    return out


def summary(runs: list[dict]) -> dict:
    return {"test_acc": summarize(r["history"][-1]["test_acc"] for r in runs),
            "test_loss": summarize(r["history"][-1]["test_loss"] for r in runs),
            "params": runs[0]["params"], "history": runs[0]["history"]}


def with_holm(tests: dict) -> dict:
    """Secondary endpoints: each p-value Holm-adjusted over the family, and the verdict that this allows."""
    for t, p in zip(tests.values(), holm([t["p_value"] for t in tests.values()])):
        t.update(p_holm=p, verdict=verdict(*t["ci95"], p=p))
    return tests


def compare_baselines(ours: list[dict], baselines: dict) -> dict:
    """ours - baseline on the same seeds and test images: the paired t-test over seeds (the run-to-run spread
    that one run cannot show, Dietterich 1998) and McNemar's exact test of each seed's pair of networks."""
    acc = {k: [r["history"][-1]["test_acc"] for r in runs] for k, runs in {"ours": ours, **baselines}.items()}
    tests = {k: paired(acc["ours"], acc[k]) for k in baselines}
    primary = PRIMARY if PRIMARY in baselines else next(iter(baselines), None)
    with_holm({k: t for k, t in tests.items() if k != primary})
    out = {"primary": primary}
    for k, b in baselines.items():
        out[k] = {"paired_t": tests[k], "mcnemar": [mcnemar(o["correct"], r["correct"]) for o, r in zip(ours, b)]}
    return out


def shift_summary(args, runs: dict, fig_dir) -> dict:
    """Q2(d) over the shift test's seeds: the accuracy per shift, averaged over the four directions (and per
    direction). Primary endpoint: augmented - not_augmented, averaged over the shifts 1..max (paired over
    seeds); secondary: that and gap_head - not_augmented at every shift (Holm)."""
    acc = {k: np.stack([r["shift"] for r in runs[k]]) for k in SHIFT_MODELS}  # (seeds, directions, shifts)
    mean = {k: a.mean(1) for k, a in acc.items()}  # (seeds, shifts): the mean over the four directions
    base, shifts = mean["not_augmented"], list(range(args.shift_max + 1))  # the reference: FC head, no augmentation
    models = {k: {"mean_over_directions": [summarize(v) for v in mean[k].T],
                  "directions": {d: [summarize(v) for v in a[:, j].T] for j, d in enumerate(DIRECTIONS)}}
              for k, a in acc.items()}
    lines = {SHIFT_MODELS[k][2]: [{"rate": s["mean"], "ci95": s["ci95"]} for s in m["mean_over_directions"]]
             for k, m in models.items()}  # one line per network: the mean over seeds, its 95 % CI as error bars
    shift_curves({"mean over the four directions": lines}, shifts, fig_dir / "ex2_shift.png", f"ex2: accuracy on "
                 f"{args.shift_images:,} shifted test digits,\nmean and 95 % CI over {len(base)} seeds")
    return {"shifts_px": shifts, "test_size": args.shift_images, "fill": "zeros",
            "seeds": [r["seed"] for r in runs["gap_head"]], "models": models, "primary": "augmented_vs_not_augmented",
            "augmented_vs_not_augmented": paired(mean["augmented"][:, 1:].mean(1), base[:, 1:].mean(1)),
            "secondary": with_holm({f"{k}_vs_not_augmented_{px}px": paired(mean[k][:, px], base[:, px])
                                    for k in ("augmented", "gap_head") for px in shifts[1:]})}


def write_figures(args, results: dict, fig_dir) -> None:
    """Loss and accuracy per epoch of our classifier, and of the baselines beside it (the first seed's runs)."""
    runs = {"encoder+MLP": results["history"], **{LABELS[n]: b["history"] for n, b in results["baselines"].items()}}
    plot_curves(dict(list(runs.items())[:1]), fig_dir / "ex2_curves.png", f"ex2 classifier (encoder d="
                f"{args.latent_dim} + MLP), seed {args.seed}: loss and accuracy per epoch", logy_loss=True)
    if len(runs) > 1:
        plot_curves(runs, fig_dir / "ex2_baselines.png", f"ex2: our classifier vs course baselines (same loop, "
                    f"seed {args.seed})", logy_loss=True)


def main(argv=None) -> dict:
    args = get_args(argv)
    fig_dir, res_dir, runs_dir, device = setup(args)
    t_start, precision = time.perf_counter(), resolve_precision(args.precision, device, "classifier")
    train, test = load_mnist_splits(args)
    seeds = list(range(args.seed, args.seed + (2 if args.smoke else args.n_seeds)))
    if args.smoke:
        args.epochs = 1
    recipe = dataclasses.replace(RECIPE.override(args), augment=AFFINE if args.augment else "none")
    jobs = plan(args, seeds, recipe)
    print(f"ex2: {len(jobs)} runs, device={device}, {precision}, seeds {seeds}")
    runs = {}  # network -> its runs, in seed order
    built = [build_run(j, args, train, test, device, runs_dir, precision) for j in jobs]  # seeded in plan order
    for (key, *_), r in zip(jobs, fit_parallel(built, device, desc="ex2 runs")):
        runs.setdefault(key, []).append(r)
    ours, baselines = runs["classifier"], {k: runs[k] for k in args.baselines}
    results = {"name": "ex2", "seeds": seeds, "recipe": dataclasses.asdict(recipe),
               "train_size": len(train), "test_size": len(test), **summary(ours),
               "baselines": {k: summary(b) for k, b in baselines.items()},
               "comparisons": compare_baselines(ours, baselines)}
    if args.shift_max:  # Q2(d) measured: the same recipe with and without augmentation, and the GAP-head control
        args.shift_images = min(args.shift_images, results["test_size"])
        runs["augmented" if args.augment else "not_augmented"] = [r for r in ours if "shift" in r]
        results["shift_test"] = shift_summary(args, runs, fig_dir)
    write_figures(args, results, fig_dir)

    path = write_results(res_dir / "ex2.json", results, args, device, t_start, precision)
    print(f"\n model        | test acc % [95% CI], {len(seeds)} seeds | ours - model: paired t over the seeds")
    for name, r in [("encoder+MLP", results), *results["baselines"].items()]:
        s, t = r["test_acc"], results["comparisons"].get(name, {}).get("paired_t")
        vs = f"{100 * t['mean_diff']:+.2f} pts, p={t['p_value']:.2g} ({t['verdict']})" if t else ""
        print(f" {name:12s} | {100 * s['mean']:.2f} [{100 * s['ci95'][0]:.2f}, {100 * s['ci95'][1]:.2f}] | {vs}")
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
