"""Training speed (results/bench.json, minutes on 2 cores): our in-memory MNIST loop vs torchvision MNIST + DataLoader
with loss.item() every step; the --options and the fp32 matmul peak take turns in each round (slow spells hit all)."""
import argparse
import statistics
import time
import timeit
from dataclasses import asdict, replace
from functools import partial

import torch

from . import utils
from .data import first_n, load_mnist, load_mnist_splits
from .models import AE_RECIPE, CLASSIFIER_RECIPE, AutoEncoder, Classifier
from .train import cross_entropy, fit, mean_l1, train_epoch

OPTIONS = ("channels_last", "bf16_autocast")
MODELS = [("ae", AutoEncoder, mean_l1, AE_RECIPE), ("classifier", Classifier, cross_entropy, CLASSIFIER_RECIPE)]


def optimizer_step(opt, loss: torch.Tensor) -> torch.Tensor:
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def matmul_peak(sizes=(512, 1024, 1536, 2048), seconds: float = 1.0) -> float:
    """Best fp32 GFLOP/s of an n x n matmul (2 n^3 flops) over sizes (the fastest varies), warm-up + `seconds` each."""
    gflops = []
    for n in sizes:
        timer = timeit.Timer(partial(torch.mm, torch.randn(n, n), torch.randn(n, n)), timer=time.perf_counter)
        number, total = timer.autorange()  # products per block of at least 0.2 s; also the warm-up
        best = min(timer.repeat(repeat=max(1, round(seconds / total)), number=number)) / number
        gflops.append(2 * n ** 3 / best / 1e9)
    return max(gflops)


def train_flops_per_image(model, x: torch.Tensor, target: torch.Tensor, loss_fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        loss_fn(model(x), target).backward()
    return counter.get_total_flops() / len(x)


def run_ours(model, data, loss_fn, steps: int, batch_size: int, gen, precision: str = "fp32") -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for sub in first_n(data, batch_size), first_n(data, steps * batch_size):  # one untimed step first: set-up
        t0 = time.perf_counter()
        train_epoch(model, sub, loss_fn, opt, None, gen, batch_size=batch_size, precision=precision)
    return len(sub) / (time.perf_counter() - t0)


def run_baseline(model, dataset, loss_fn, steps: int, batch_size: int) -> float:
    """images/s of the DataLoader loop most course notebooks write, its first step untimed as in run_ours."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    for step, (x, y) in zip(range(steps + 1), loader):
        if step == 1:
            t0 = time.perf_counter()
        optimizer_step(opt, loss_fn(model(x), x if loss_fn is mean_l1 else y)).item()  # the usual per-step sync
    return step * batch_size / (time.perf_counter() - t0)


def interleaved(calls: dict, repeats: int, warmup: int = 0) -> dict[str, list[float]]:
    runs = {k: [] for k in calls}
    for r in range(warmup + repeats):
        for k, call in calls.items():
            runs[k].append(call(r))  # r: the round
        print(f"round {r + 1}/{warmup + repeats}: " + ", ".join(f"{k} {v[-1]:.4g}" for k, v in runs.items()))
    return {k: v[warmup:] for k, v in runs.items()}


def bench(args) -> dict:
    from torchvision import datasets, transforms
    data, ref_ds = load_mnist(args.data_dir, train=True), datasets.MNIST(args.data_dir, transform=transforms.ToTensor())
    sides = {"ae": ["plain", *args.options, "baseline"], "classifier": ["plain", "baseline"]}

    def side(make, loss_fn, option, r):
        gen = utils.seed_everything(args.seed + r)  # before make(): every side starts from the same weights
        if option == "baseline":
            return run_baseline(make(), ref_ds, loss_fn, args.steps, args.batch_size)
        fmt = torch.channels_last if option == "channels_last" else torch.preserve_format  # as common.train.fit
        precision = "bf16" if option == "bf16_autocast" else "fp32"
        return run_ours(make().to(memory_format=fmt), data, loss_fn, args.steps, args.batch_size, gen, precision)

    calls = {f"{name} {o}": partial(side, make, loss_fn, o) for name, make, loss_fn, _ in MODELS for o in sides[name]}
    runs = interleaved({"peak": lambda r: matmul_peak(seconds=0.1 if args.smoke else 0.75), **calls}, args.repeats)
    peak = max(runs["peak"])
    r = {"matmul_gflops": peak, "matmul_peak": {"best_gflops": peak, "spread_gflops": [min(runs["peak"]), peak]}}
    for name, make, loss_fn, _ in MODELS:
        flops = train_flops_per_image(make(), data.x[:8], (data.x if loss_fn is mean_l1 else data.y)[:8], loss_fn)
        med = {o: statistics.median(runs[f"{name} {o}"]) for o in sides[name]}
        ours, base, gflops = med["plain"], med["baseline"], flops * med["plain"] / 1e9
        r[name] = {"ours_img_s": ours, "baseline_img_s": base, "speedup": ours / base, "train_flops_per_img": flops,
                   "frac_of_matmul_peak": gflops / peak, "runs_img_s": {o: runs[f"{name} {o}"] for o in med},
                   "options": {o: {"img_s": med[o], "ratio_vs_plain": med[o] / ours} for o in sides[name][1:-1]}}
        print(f"{name}: ours {ours:,.0f} img/s, DataLoader {base:,.0f}, {gflops / peak:.1%} of the matmul peak")
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

    step = {"stacked_step_s": lambda: optimizer_step(opt_stacked, stacked_loss()),
            "plain_steps_s": lambda: [optimizer_step(o, cross_entropy(m(x), y)) for m, o in zip(models, opts)]}
    test = {"stacked_eval_s": lambda: stacked(params, buffers, xt), "plain_eval_s": lambda: [m(xt) for m in models]}
    runs = interleaved({k: partial(seconds, fn, k in step) for k, fn in (step | test).items()}, args.repeats, warmup=1)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"n_seeds": n_seeds, "test_images": test_images, "runs": runs, **med,
            "step_ratio_stacked_over_plain": med["stacked_step_s"] / med["plain_steps_s"],
            "eval_ratio_stacked_over_plain": med["stacked_eval_s"] / med["plain_eval_s"]}


def bench_recipes(args) -> dict:
    data, test = load_mnist_splits(args)
    rows = []
    for name, make, loss_fn, base in MODELS:  # ex1's AE (conv_fc) and ex2's classifier
        key = "test_loss" if loss_fn is mean_l1 else "test_acc"
        for epochs in [1] if args.smoke else args.recipes or [4, 6, 8]:
            recipe = replace(base, epochs=epochs, eval_every=epochs)  # one-cycle over `epochs`: shorter, not cut
            gen = utils.seed_everything(args.seed)  # before make(): the same initial weights for every epoch count
            history = fit(make(), data, test, recipe, gen=gen, loss_fn=loss_fn)  # its last row: the final metrics
            rows.append({"model": name, "epochs": epochs, "recipe": asdict(recipe), "history": history})
            print(f"{name}: {epochs} epochs, {key} {history[-1][key]:.4f} in {history[-1]['train_time_s']:.0f} s")
    return {"rows": rows}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=utils.positive_int, default=150, help="training steps per measurement (default 150)")
    p.add_argument("--repeats", type=utils.positive_int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--batch-size", type=utils.positive_int, default=128, help="batch size, as ex1/ex2 (default 128)")
    p.add_argument("--seed", type=utils.seed_int, default=0, help="random seed (default 0)")
    p.add_argument("--options", nargs="*", default=list(OPTIONS), choices=OPTIONS, help="speed-ups timed on the AE")
    p.add_argument("--smoke", action="store_true", help="3 steps of 32 images, 1 round, 1 epoch, into a temp dir")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--recipes", nargs="*", type=utils.positive_int, metavar="EPOCHS", help="instead: train ex1's "
                      "AE and ex2's classifier for each epoch count (default 4 6 8; about 20 min on 2 cores)")
    mode.add_argument("--stacking", action="store_true", help="instead: ex4's 10 seeds, vmap-stacked or not")
    utils.add_io_args(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.repeats, args.batch_size = 3, 1, min(args.batch_size, 32)
    res_dir = utils.setup(args)[1]
    run = bench_stacking if args.stacking else bench if args.recipes is None else bench_recipes  # -> <its name>.json
    result = {"name": run.__name__, "config": utils.run_config(args), "machine": utils.machine(), **run(args)}
    print(f"wrote {utils.write_json_atomic(res_dir / f'{run.__name__}.json', result)}")
    return result


if __name__ == "__main__":
    utils.run_main(main)
