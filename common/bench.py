"""Training speed on this machine: the project's data path and loop vs typical course code.

    python -m common.bench                   # results/bench.json (a few minutes on 2 cores; --smoke: seconds)
    python -m common.bench --stacking        # ex4: 10 seeds as one vmap-stacked network or not
    python -m common.bench --recipes 4 6 8   # test quality vs training time of the ex1/ex2 epoch counts

Ours (in-memory MNIST, common.train.train_epoch), the baseline (torchvision MNIST + DataLoader, loss.item() every
step), each --option and the fp32 matmul peak take turns in every round, so a slow moment hits every side alike.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from . import utils
from .data import first_n, load_mnist
from .models import AE_RECIPE, CLASSIFIER_RECIPE, AutoEncoder, Classifier
from .train import cross_entropy, fit, mean_l1, train_epoch

OPTIONS = ("channels_last", "bf16_autocast")
MODELS = [("ae", AutoEncoder, mean_l1), ("classifier", Classifier, cross_entropy)]


def matmul_peak(sizes=(512, 1024, 1536, 2048), seconds: float = 1.0) -> dict:
    """Best fp32 GFLOP/s of an n x n matmul (2 n^3 flops) over about `seconds` per size (the fastest size varies)."""
    by_size = {}
    for n in sizes:
        a, b, best = torch.randn(n, n), torch.randn(n, n), 0.0
        a @ b  # warm-up: thread pool, caches
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
        by_size[str(n)] = best
    return {"best_gflops": max(by_size.values()), "by_size_gflops": by_size, "seconds_per_size": seconds}


def train_flops_per_image(model, x: torch.Tensor, target: torch.Tensor, loss_fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        loss_fn(model(x), target).backward()
    return counter.get_total_flops() / len(x)


def run_ours(model, data, loss_fn, steps: int, batch_size: int, gen, precision: str = "fp32") -> float:
    """images/s of train_epoch over steps * batch_size images, after one untimed step (one-off set-up)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_epoch(model, first_n(data, batch_size), loss_fn, opt, None, gen, batch_size=batch_size, precision=precision)
    sub = first_n(data, steps * batch_size)
    t0 = time.perf_counter()
    train_epoch(model, sub, loss_fn, opt, None, gen, batch_size=batch_size, precision=precision)
    return len(sub) / (time.perf_counter() - t0)


def run_baseline(model, dataset, loss_fn, steps: int, batch_size: int) -> float:
    """images/s of the DataLoader loop most course notebooks write, its first step untimed as in run_ours."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    for step, (x, y) in enumerate(itertools.islice(loader, steps + 1)):
        if step == 1:
            t0 = time.perf_counter()
        loss = loss_fn(model(x), x if loss_fn is mean_l1 else y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the per-step sync such code does for logging
    return step * batch_size / (time.perf_counter() - t0)


def interleaved(calls: dict, repeats: int, label: str) -> dict[str, list[float]]:
    """Each call's number per round, the calls taking turns within every round; call(r) gets the round."""
    runs = {k: [] for k in calls}
    for r in range(repeats):
        for k, call in calls.items():
            runs[k].append(call(r))
        print(f"{label} round {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.4g}" for k, v in runs.items()))
    return runs


def bench_speed(args) -> dict:
    """Our loop (plain, and the AE's with each option) vs the baseline for both models, and the matmul peak."""
    from torchvision.datasets import MNIST
    from torchvision.transforms import ToTensor
    data, ref_ds = load_mnist(args.data_dir, train=True), MNIST(args.data_dir, train=True, transform=ToTensor())

    def side(make, loss_fn, option):
        def run(r):
            gen = utils.seed_everything(args.seed + r)  # before make(): every side starts from the same weights
            if option == "baseline":
                return run_baseline(make(), ref_ds, loss_fn, args.steps, args.batch_size)
            # channels_last as common.train.fit trains: NHWC weights select oneDNN's NHWC conv kernels
            fmt = torch.channels_last if option == "channels_last" else torch.preserve_format
            precision = "bf16" if option == "bf16_autocast" else "fp32"
            return run_ours(make().to(memory_format=fmt), data, loss_fn, args.steps, args.batch_size, gen, precision)
        return run

    options = {"ae": args.options, "classifier": []}
    runs = interleaved({"peak": lambda r: matmul_peak(seconds=0.1 if args.smoke else 0.75)["best_gflops"],
                        **{f"{name} {o}": side(make, loss_fn, o) for name, make, loss_fn in MODELS
                           for o in ["plain", *options[name], "baseline"]}}, args.repeats, "speed")
    peak = max(runs["peak"])
    r = {"matmul_gflops": peak, "matmul_peak": {"best_gflops": peak, "round_best_gflops": runs["peak"],
                                                "spread_gflops": [min(runs["peak"]), peak]}}
    for name, make, loss_fn in MODELS:
        x, target = data.x[:args.batch_size], (data.x if loss_fn is mean_l1 else data.y)[:args.batch_size]
        flops = train_flops_per_image(make(), x, target, loss_fn)
        med = {o: statistics.median(runs[f"{name} {o}"]) for o in ["plain", *options[name], "baseline"]}
        ours, base, gflops = med["plain"], med["baseline"], flops * med["plain"] / 1e9
        r[name] = {"ours_img_s": ours, "baseline_img_s": base, "speedup": ours / base, "train_flops_per_img": flops,
                   "achieved_gflops": gflops, "frac_of_matmul_peak": gflops / peak, "steps": args.steps,
                   "runs_img_s": {o: runs[f"{name} {o}"] for o in med},
                   "options": {o: {"img_s": med[o], "ratio_vs_plain": med[o] / ours} for o in options[name]}}
        print(f"{name}: ours {ours:,.0f} img/s, DataLoader {base:,.0f}, {gflops / peak:.1%} of the matmul peak")
    return r


def bench_stacking(args, n_seeds: int = 10, test_images: int = 2000) -> dict:
    """Seconds of a training step on ex4's 100 images, and of a forward pass over `test_images`, of `n_seeds`
    ex4 classifiers stacked into one network (vmap: grouped convolutions) vs the plain networks in turn."""
    from torch.func import functional_call, stack_module_state, vmap
    models, base = [Classifier() for _ in range(n_seeds)], Classifier().to("meta")
    x, y, xt = torch.rand(100, 1, 28, 28), torch.randint(0, 10, (100,)), torch.rand(test_images, 1, 28, 28)
    params, buffers = stack_module_state(models)  # each tensor (S, ...)
    stacked = vmap(lambda p, b, inp: functional_call(base, (p, b), (inp,)), (0, 0, None), randomness="different")
    opt_stacked, opts = torch.optim.AdamW(params.values()), [torch.optim.AdamW(m.parameters()) for m in models]

    def train_steps(losses, optimizers):  # one step per network, `losses` computing each one's loss in turn
        for loss, opt in zip(losses, optimizers):
            opt.zero_grad()
            loss.backward()
            opt.step()

    def stacked_loss():  # the mean over all S x B images, times S: the sum of the S networks' losses
        return cross_entropy(stacked(params, buffers, x).flatten(0, 1), y.repeat(n_seeds)) * n_seeds

    def seconds(fn, training: bool):
        def run(r):
            reps = 1 if args.smoke else 5 if training else 2
            for m in [base, *models]:
                m.train(training)
            t0 = time.perf_counter()
            with torch.inference_mode(not training):
                for _ in range(reps):
                    fn()
            return (time.perf_counter() - t0) / reps
        return run

    calls = {"stacked_step_s": seconds(lambda: train_steps([stacked_loss()], [opt_stacked]), True),
             "plain_steps_s": seconds(lambda: train_steps((cross_entropy(m(x), y) for m in models), opts), True),
             "stacked_eval_s": seconds(lambda: stacked(params, buffers, xt), False),
             "plain_eval_s": seconds(lambda: [m(xt) for m in models], False)}
    runs = {k: v[1:] for k, v in interleaved(calls, args.repeats + 1, "stacking").items()}  # round 1: warm-up
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"n_seeds": n_seeds, "test_images": test_images, "runs": runs, **med,
            "step_ratio_stacked_over_plain": med["stacked_step_s"] / med["plain_steps_s"],
            "eval_ratio_stacked_over_plain": med["stacked_eval_s"] / med["plain_eval_s"]}


def bench_recipes(args, data, test) -> list[dict]:
    """Test metric and training time of ex1's AE and ex2's classifier after each of args.recipes epoch counts."""
    rows = []
    for name, make, base, loss_fn, metric, key in [
            ("ex1 conv_fc", AutoEncoder, AE_RECIPE, mean_l1, "test mean-L1", "test_loss"),
            ("ex2 classifier", Classifier, CLASSIFIER_RECIPE, cross_entropy, "test accuracy", "test_acc")]:
        for epochs in args.recipes:
            recipe = replace(base, epochs=epochs, eval_every=epochs)  # one-cycle over `epochs`: shorter, not cut
            gen = utils.seed_everything(args.seed)  # before make(): the same initial weights for every epoch count
            history = fit(make(), data, test, recipe, gen=gen, loss_fn=loss_fn)
            rows.append({"model": name, "epochs": epochs, "recipe": asdict(recipe), "metric": metric,
                         "value": history[-1][key], "train_time_s": history[-1]["train_time_s"], "history": history})
            print(f"{name}: {epochs} epochs, {metric} {rows[-1]['value']:.4f} in {rows[-1]['train_time_s']:.0f} s")
    return rows


def merge_recipe_rows(path: Path, rows: list[dict], machine: dict) -> list[dict]:
    """This run's rows, and those of the sweep in `path` it did not redo if that ran on the same CPU and threads."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    same = all(old.get("machine", {}).get(k) == machine.get(k) for k in ("cpu", "threads"))
    new = {(r["model"], r["epochs"]) for r in rows}
    kept = [r for r in old.get("rows", []) if same and (r.get("model"), r.get("epochs")) not in new]
    return sorted(kept + rows, key=lambda r: (r["model"], r["epochs"]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=utils.positive_int, default=150, help="training steps per measurement (default 150)")
    p.add_argument("--repeats", type=utils.positive_int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--batch-size", type=utils.positive_int, default=128, help="batch size, as ex1/ex2 (default 128)")
    p.add_argument("--seed", type=utils.seed_int, default=0, help="random seed (default 0)")
    p.add_argument("--options", nargs="*", default=list(OPTIONS), choices=OPTIONS, help="speed-ups timed on the AE")
    p.add_argument("--smoke", action="store_true", help="3 steps of 32 images, 1 round, 1 epoch, into a temp dir")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--recipes", nargs="*", type=utils.positive_int, default=None, metavar="EPOCHS",
                      help="instead: train the ex1 AE and the ex2 classifier for each epoch count (default 4 6 8; "
                           "about 20 min on 2 cores), into bench_recipes.json")
    mode.add_argument("--stacking", action="store_true", help="instead: ex4's 10 seeds as one vmap-stacked network "
                                                              "vs 10 plain ones, into bench_stacking.json")
    utils.add_io_args(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.repeats, args.batch_size = 3, 1, min(args.batch_size, 32)
    if args.recipes is not None:
        args.recipes = [1] if args.smoke else args.recipes or [4, 6, 8]
    res_dir = utils.setup(args)[1]
    name = "bench_stacking" if args.stacking else "bench" if args.recipes is None else "bench_recipes"
    result = {"name": name, "config": utils.run_config(args), "machine": utils.machine()}
    if args.recipes:
        data, test = load_mnist(args.data_dir, train=True), load_mnist(args.data_dir, train=False)
        if args.smoke:
            data, test = first_n(data, 512), first_n(test, 256)
        result["rows"] = merge_recipe_rows(res_dir / f"{name}.json", bench_recipes(args, data, test), result["machine"])
    else:
        result.update(bench_stacking(args) if args.stacking else bench_speed(args))
    print(f"wrote {utils.write_json_atomic(res_dir / f'{name}.json', result)}")
    return result


if __name__ == "__main__":
    utils.run_main(main)
