"""bf16 autocast vs fp32 training (results/bench.json, 2-3 min on 2 idle cores): short runs of ex1's autoencoder, ex2's
classifier, the labs' DB-VAE and CAM CNN at their batch sizes; each round (one seed) runs all in both precisions, so
slow spells hit all. Per model: images/s, the metric per seed, if bf16 pays. --stacking: ex4's seeds vmap-stacked."""
import argparse
import statistics
import time
import timeit
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import stats, utils
from .cam import CamCNN
from .data import IMAGENETTE_CLASSES, TensorData, decode_images, imagenette_split, load_mnist_splits, require_images
from .dbvae import DBVAE, IMAGE_SHAPE, NONFACE_CLASSES, dbvae_loss
from .models import AE_RECIPE, CLASSIFIER_RECIPE, AutoEncoder, Classifier
from .train import Recipe, autocast, cross_entropy, evaluate, make_optimizer, mean_l1, optimizer_step, predict

PAYS_SPEEDUP = 1.15  # bf16 pays from 15 % more images/s (smaller gains are within the timing noise of 2 cores) ...
SPREAD_SDS = 2.0     # ... if its mean test metric lies within the fp32 mean +- 2 sample std over the seeds
PER_CLASS = 60  # Imagenette training images per class (val: half as many): 900 photos to decode
SMOKE_PER_CLASS, SMOKE_STEPS = 4, 3


@dataclass(frozen=True)
class Bench:
    """A model as its script trains it (recipe: optimiser, batch size; memory format), the steps of its short run,
    its loss (model, x (B, C, H, W), y (B,)) and its fp32 test metric (model, test TensorData) -> float."""
    make: Callable
    recipe: Recipe
    steps: int
    loss: Callable
    metric: str
    evaluate: Callable
    channels_last: bool = True  # NHWC: oneDNN's faster conv kernels, as common.train.fit; lab_dbvae.py trains NCHW


def accuracy(model, test: TensorData) -> float:
    return evaluate(model, test, cross_entropy)["acc"]


def face_accuracy(model: DBVAE, test: TensorData) -> float:  # the sign of the face logit against y (N,) in {0, 1}
    return ((predict(model, test.x, torch.device("cpu"))[:, 0] > 0).float() == test.y).float().mean().item()


# The labs' recipes as in lab_dbvae.py and lab_cam.py (without lab_cam's label smoothing and crops). Steps: fewer for
# the slower models, so that 3 rounds x 4 models x 2 precisions take 2-3 min (< 240 s) on 2 idle cores.
MODELS = {
    "ae": Bench(AutoEncoder, AE_RECIPE, 120, lambda m, x, y: mean_l1(m(x).float(), x), "test_l1",
                lambda m, test: evaluate(m, test, mean_l1)["loss"]),
    "classifier": Bench(Classifier, CLASSIFIER_RECIPE, 200, lambda m, x, y: cross_entropy(m(x).float(), y),
                        "test_acc", accuracy),
    "dbvae": Bench(DBVAE, Recipe(1, lr=5e-4, batch_size=32, schedule="constant"), 200,
                   lambda m, x, y: dbvae_loss(m, x, y)[0], "test_acc", face_accuracy, channels_last=False),
    "cam": Bench(CamCNN, Recipe(1, lr=4e-3, batch_size=128, weight_decay=0.05), 40,
                 lambda m, x, y: cross_entropy(m(x).float(), y), "test_acc", accuracy),
}


def matmul_peak(sizes=(512, 1024, 1536, 2048), seconds: float = 1.0) -> float:
    """Best fp32 GFLOP/s of an n x n matmul (2 n^3 flops) over sizes (the fastest varies), warm-up + `seconds` each."""
    gflops = []
    for n in sizes:
        timer = timeit.Timer(partial(torch.mm, torch.randn(n, n), torch.randn(n, n)), timer=time.perf_counter)
        number, total = timer.autorange()  # products per block of at least 0.2 s; also the warm-up
        best = min(timer.repeat(repeat=max(1, round(seconds / total)), number=number)) / number
        gflops.append(2 * n ** 3 / best / 1e9)
    return max(gflops)


def interleaved(calls: dict, repeats: int, warmup: int = 0) -> dict[str, list]:
    runs = {k: [] for k in calls}
    for r in range(warmup + repeats):
        for k, call in calls.items():
            runs[k].append(call(r))  # r: the round
        last = {k: v[-1] if isinstance(v[-1], tuple) else (v[-1],) for k, v in runs.items()}  # short_run: 2 values
        print(f"round {r + 1}/{warmup + repeats}:", ", ".join(k + " " + "/".join(f"{x:.4g}" for x in t)
                                                              for k, t in last.items()), flush=True)
    return {k: v[warmup:] for k, v in runs.items()}


def load_data(args) -> dict[str, tuple[TensorData, TensorData]]:
    """(train, test) per model: MNIST; Imagenette at the CAM CNN's training crop size (64 px in lab_cam.py, also the
    DB-VAE's face size), its classes without people as the DB-VAE's non-faces (y 0) next to as many UTKFace faces."""
    n, nette = SMOKE_PER_CLASS if args.smoke else PER_CLASS, []
    for split, per_class in (("train", n), ("val", n // 2)):
        files = [(f, c) for c, w in enumerate(IMAGENETTE_CLASSES)
                 for f in sorted((imagenette_split(args.data_dir, split) / w).glob("*.JPEG"))[:per_class]]
        x = decode_images([f for f, _ in files], IMAGE_SHAPE[1])  # (N, 3, 64, 64) uint8
        nette.append(TensorData(x, torch.tensor([c for _, c in files])))
    no_people = torch.tensor([c for c, w in enumerate(IMAGENETTE_CLASSES) if w in NONFACE_CLASSES])
    negs = [d.x[torch.isin(d.y, no_people)] for d in nette]
    utk = require_images(Path(args.data_dir).expanduser() / "UTKFace", "*.jpg", "UTKFace faces")
    counts = [len(x) for x in negs]  # faces spread over the files (sorted by age), train then test
    faces = decode_images(utk[::len(utk) // sum(counts)][:sum(counts)], IMAGE_SHAPE[1]).split(counts)
    # y = 1 for a face; x as float in [0, 1]: the DB-VAE's loss compares it with the decoded image
    dbvae = [TensorData(torch.cat([f, x]) / 255, torch.cat([torch.ones(len(f)), torch.zeros(len(x))]))
             for f, x in zip(faces, negs)]
    mnist = load_mnist_splits(args)
    return {"ae": mnist, "classifier": mnist, "dbvae": dbvae, "cam": nette}


def short_run(spec: Bench, train: TensorData, test: TensorData, precision: str, seed: int) -> tuple[float, float]:
    """`spec.steps` steps on batches from `train` -> (images/s, fp32 test metric); the seed fixes weights, batches."""
    gen = utils.seed_everything(seed)
    model = spec.make().to(memory_format=torch.channels_last if spec.channels_last else torch.contiguous_format)
    opt, sched = make_optimizer(model, replace(spec.recipe, epochs=1), None, spec.steps)  # one-cycle over the run
    batches = torch.randint(len(train), (spec.steps, spec.recipe.batch_size), generator=gen)  # (steps, B)
    for step, idx in enumerate(tqdm(batches, desc=f"{precision} seed {seed}", mininterval=1.0, leave=False)):
        if step == 1:  # the first step sets up the kernels: untimed
            t0 = time.perf_counter()
        with autocast(precision, torch.device("cpu")):
            loss = spec.loss(model, train.x[idx], train.y[idx])
        optimizer_step(opt, sched, loss)
    return (spec.steps - 1) * spec.recipe.batch_size / (time.perf_counter() - t0), spec.evaluate(model, test)


def compare(fp32: list[tuple], bf16: list[tuple]) -> dict:
    """(images/s, test metric) per round of each precision -> the median speeds, the metric over the seeds and
    paired (bf16 - fp32), within_spread: bf16's mean within fp32's mean +- SPREAD_SDS std; pays: also fast enough."""
    (s32, q32), (s16, q16) = zip(*fp32), zip(*bf16)
    speedup = statistics.median(s16) / statistics.median(s32)
    q = {"fp32": stats.summarize(q32), "bf16": stats.summarize(q16)}
    within = abs(q["bf16"]["mean"] - q["fp32"]["mean"]) <= SPREAD_SDS * q["fp32"]["std"]
    pays = speedup >= PAYS_SPEEDUP and within
    return {"img_s_fp32": statistics.median(s32), "img_s_bf16": statistics.median(s16), "speedup": speedup,
            "runs_img_s": {"fp32": s32, "bf16": s16}, "quality": q, "bf16_minus_fp32": stats.paired(q16, q32),
            "within_spread": within, "pays": pays, "adopted": "bf16" if pays else "fp32"}


def bench(args) -> dict:
    data, specs = load_data(args), {k: replace(s, steps=SMOKE_STEPS) if args.smoke else s for k, s in MODELS.items()}

    def run(k: str, precision: str, r: int) -> tuple[float, float]:  # round r: seed + r, for both precisions
        return short_run(specs[k], *data[k], precision, args.seed + r)
    runs = interleaved({f"{k} {p}": partial(run, k, p) for k in specs for p in ("fp32", "bf16")}, args.repeats)
    r = {"rule": {"pays_speedup": PAYS_SPEEDUP, "spread_sds": SPREAD_SDS}}
    for k, s in specs.items():
        r[k] = {"metric": s.metric, "batch_size": s.recipe.batch_size, "steps": s.steps,
                "channels_last": s.channels_last, **compare(runs[f"{k} fp32"], runs[f"{k} bf16"])}
        print(f"{k}: bf16 {r[k]['speedup']:.2f}x the images/s of fp32, {s.metric} within the fp32 spread: "
              f"{r[k]['within_spread']}; adopted: {r[k]['adopted']}")
    return r


def bench_stacking(args, n_seeds: int = 10, test_images: int = 2000) -> dict:
    """Seconds per training step on 100 images and per test pass of `n_seeds` ex4 classifiers: vmap-stacked or not."""
    from torch.func import functional_call, stack_module_state, vmap
    models, base = [Classifier() for _ in range(n_seeds)], Classifier().to("meta")
    x, y, xt = torch.rand(100, 1, 28, 28), torch.randint(0, 10, (100,)), torch.rand(test_images, 1, 28, 28)
    params, buffers = stack_module_state(models)  # each tensor (S, ...)
    stacked = vmap(lambda p, b, inp: functional_call(base, (p, b), (inp,)), (0, 0, None), randomness="different")
    opt_stacked, opts = torch.optim.AdamW(params.values()), [torch.optim.AdamW(m.parameters()) for m in models]

    def stacked_loss():  # the mean over all S x B images, times S: the sum of the S networks' losses
        return cross_entropy(stacked(params, buffers, x).flatten(0, 1), y.repeat(n_seeds)) * n_seeds

    def seconds(fn, training: bool, r: int) -> float:
        torch.nn.ModuleList([base, *models]).train(training)  # BatchNorm and Dropout differ in training
        reps = 1 if args.smoke else 5 if training else 2
        with torch.inference_mode(not training):
            return timeit.timeit(fn, number=reps, timer=time.perf_counter) / reps

    step = {"stacked_step_s": lambda: optimizer_step(opt_stacked, None, stacked_loss()),
            "plain_steps_s": lambda: [optimizer_step(o, None, cross_entropy(m(x), y)) for m, o in zip(models, opts)]}
    test = {"stacked_eval_s": lambda: stacked(params, buffers, xt), "plain_eval_s": lambda: [m(xt) for m in models]}
    runs = interleaved({k: partial(seconds, fn, k in step) for k, fn in (step | test).items()}, args.repeats, warmup=1)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"n_seeds": n_seeds, "test_images": test_images, "runs": runs, **med,
            "step_ratio_stacked_over_plain": med["stacked_step_s"] / med["plain_steps_s"],
            "eval_ratio_stacked_over_plain": med["stacked_eval_s"] / med["plain_eval_s"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=utils.number(int, 2), default=3,
                   help="interleaved rounds, each its own seed; at least 2, for a spread (default 3)")
    p.add_argument("--seed", type=utils.seed_int, default=0, help="seed of the first round (default 0)")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_STEPS} steps per run, {SMOKE_PER_CLASS} Imagenette "
                   "images per class, 2 rounds, into a temp dir")
    p.add_argument("--stacking", action="store_true", help="instead: ex4's 10 seeds, vmap-stacked or not")
    utils.add_io_args(p)
    args = p.parse_args(argv)
    args.repeats = 2 if args.smoke else args.repeats
    t_start, res_dir = time.perf_counter(), utils.setup(args)[1]
    run = bench_stacking if args.stacking else bench  # -> results/<its name>.json
    result, precision = {"name": run.__name__, **run(args)}, "fp32+bf16" if run is bench else "fp32"
    path = utils.write_results(res_dir / f"{run.__name__}.json", result, args, torch.device("cpu"), t_start, precision)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    utils.run_main(main)
