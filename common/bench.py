"""Training-speed benchmark: the project's data path and loop vs typical course code, on this machine.

    python -m common.bench            # writes report/results/bench.json (a few minutes on 2 cores)
    python -m common.bench --smoke    # seconds, into a temp dir

In ONE process, for the ex1 autoencoder and the ex2 classifier (same model, batch size, threads and
seed on both sides) it trains a fixed number of steps with
  (a) ours:     MNIST as one in-memory float tensor, index batches (common.train.tensor_batches),
                common.train.train_epoch (zero_grad(set_to_none=True), loss accumulated on device:
                no per-step .item() sync)
  (b) baseline: torchvision.datasets.MNIST(transform=ToTensor()) + DataLoader(shuffle=True), the loop
                most course code has (optimizer.zero_grad(), loss.item() every step)
interleaving (a) and (b) `--repeats` times and keeping the median, so a slow moment of a shared machine
hits both. It also counts the model's training FLOPs per image (torch.utils.flop_counter) and measures
the machine's fp32 matmul peak in every round, interleaved with the model runs (best over square sizes
512-2048; the per-round spread is recorded), to say how close to the hardware we are. The optional
speed-ups (--options) are measured interleaved with the plain loop, as ratios; ADOPTED says which ones
the scripts use.

    python -m common.bench --recipes 4 6 8   # time-vs-quality sweep of the ex1/ex2 epoch counts
    python -m common.bench --stacking        # ex4: 10 seeds as one vmap-stacked network or not
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from .data import load_mnist
from .models import AutoEncoder, Classifier
from .train import CriterionLoss, argmax_correct, cross_entropy, mean_l1, tensor_batches, train_epoch
from .utils import add_io_args, nonneg_int, positive_int, resolve_output_dirs, run_main, seed_everything, write_json_atomic


def machine_info() -> dict:
    """What the timings were measured on: CPU model, cores, SIMD level torch dispatches to, torch threads."""
    import platform
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "platform": platform.platform()}


def matmul_gflops(n: int = 1024, seconds: float = 1.0) -> float:
    """Best fp32 GFLOP/s of an n x n matmul (2 n^3 flops each) over about `seconds`."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b  # warm-up: thread pool, caches
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


PEAK_SIZES = (512, 1024, 1536, 2048)  # square fp32 matmuls: the peak is the best over sizes, not one size


def matmul_peak(sizes=PEAK_SIZES, seconds: float = 1.0) -> dict:
    """The machine's fp32 matmul peak: the best GFLOP/s over square sizes `sizes`, each run for `seconds`.
    One size alone misleads (issue 13: 278 vs 193 GFLOP/s for n = 1024 in two runs of the same code)."""
    by_size = {str(n): matmul_gflops(n, seconds) for n in sizes}
    return {"best_gflops": max(by_size.values()), "by_size_gflops": by_size, "seconds_per_size": seconds}


def train_flops_per_image(model: nn.Module, x: torch.Tensor, target: torch.Tensor, loss_fn) -> float:
    """Forward + backward FLOPs of one training step, divided by the batch size."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn(model(x), target).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def run_ours(model, data, loss_fn, steps, batch_size, reconstruct, gen) -> float:
    """images/s of the project's loop over steps * batch_size in-memory images."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sub = data.subset(torch.arange(steps * batch_size))
    t0 = time.perf_counter()
    batches = tensor_batches(sub, batch_size, gen, torch.device("cpu"), reconstruct=reconstruct)
    train_epoch(model, batches, CriterionLoss(loss_fn), opt, correct=None if reconstruct else argmax_correct)
    return len(sub) / (time.perf_counter() - t0)


class Autocast(nn.Module):
    """Wraps a model so its forward runs under CPU bf16 autocast (weights and optimiser stay fp32)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x).float()


def with_option(model: nn.Module, data, option: str):
    """(model, data) prepared for one of the optional CPU speed-ups measured by --options."""
    if option == "channels_last":
        from .data import TensorData
        return (model.to(memory_format=torch.channels_last),
                TensorData(data.x.contiguous(memory_format=torch.channels_last), data.y))
    if option == "bf16_autocast":
        return Autocast(model), data
    if option == "compile":
        return torch.compile(model), data
    raise ValueError(option)


def run_baseline(model, loader, loss_fn, steps, reconstruct) -> float:
    """images/s of the usual DataLoader loop (as written in most course notebooks)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    seen, t0 = 0, time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if step == steps:
            break
        out = model(x)
        loss = loss_fn(out, x if reconstruct else y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running = loss.item()  # noqa: F841 - the per-step sync typical code does for logging
        seen += len(x)
    return seen / (time.perf_counter() - t0)


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=positive_int, default=150, help="training steps per measurement (default 150)")
    p.add_argument("--repeats", type=positive_int, default=3, help="interleaved (a)/(b) rounds (default 3)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="batch size, as ex1/ex2 (default 128)")
    p.add_argument("--threads", type=positive_int, default=torch.get_num_threads(),
                   help=f"torch threads (default {torch.get_num_threads()} on this machine)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    p.add_argument("--peak-seconds", type=float, default=0.75,
                   help="seconds per matrix size of each round's matmul-peak measurement (default 0.75)")
    add_io_args(p)
    p.add_argument("--options", nargs="*", default=["channels_last", "bf16_autocast"],
                   choices=["channels_last", "bf16_autocast", "compile"],
                   help="optional speed-ups to measure on our AE loop (default: channels_last bf16_autocast;"
                        " compile takes minutes to warm up on 2 cores)")
    p.add_argument("--smoke", action="store_true", help="3 steps, 1 repeat, into a temp dir")
    p.add_argument("--recipes", nargs="*", type=positive_int, default=None, metavar="EPOCHS",
                   help="instead: the time-vs-quality sweep of issue 13, the ex1 conv+FC autoencoder and the ex2 "
                        "classifier trained with their recipes for each of these epoch counts (default 4 6 8; "
                        "about 20 min on 2 cores), written to bench_recipes.json")
    p.add_argument("--stacking", action="store_true",
                   help="instead: ex4's question, 10 seeds as one vmap-stacked network vs 10 plain networks "
                        "(writes bench_stacking.json)")
    return p.parse_args(argv)


def bench_stacking(args, n_seeds: int = 10, test_images: int = 2000) -> dict:
    """Seconds per call, interleaved over `args.repeats` rounds, of (a) one training step of `n_seeds`
    ex4 classifiers stacked into one network (torch.func.stack_module_state + vmap: the convolutions
    become grouped convolutions) and (b) the same step of the `n_seeds` plain networks one after another,
    on ex4's full batch of 100 images; and the same for one forward pass over `test_images` images."""
    import copy
    from torch.func import functional_call, stack_module_state, vmap

    x, y = torch.rand(100, 1, 28, 28), torch.randint(0, 10, (100,))   # (B, 1, 28, 28): ex4's full batch
    xt = torch.rand(test_images, 1, 28, 28)
    models = []
    for s in range(n_seeds):
        seed_everything(s)
        models.append(Classifier())
    params, buffers = stack_module_state(models)                       # each tensor (S, ...)
    params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    base = copy.deepcopy(models[0]).to("meta")
    opt_s = torch.optim.AdamW(params.values(), 1e-3)
    opts = [torch.optim.AdamW(m.parameters(), 1e-3) for m in models]
    f = lambda p, b, inp: functional_call(base, (p, b), (inp,))         # noqa: E731

    def stacked_step():
        base.train()
        out = vmap(f, in_dims=(0, 0, None), randomness="different")(params, buffers, x)   # (S, B, 10)
        loss = cross_entropy(out.flatten(0, 1), y.repeat(n_seeds), reduction="none").view(n_seeds, -1).mean(1).sum()
        opt_s.zero_grad()
        loss.backward()
        opt_s.step()

    def plain_steps():
        for m, o in zip(models, opts):
            m.train()
            loss = cross_entropy(m(x), y)
            o.zero_grad()
            loss.backward()
            o.step()

    @torch.inference_mode()
    def stacked_eval():
        base.eval()
        vmap(f, in_dims=(0, 0, None))(params, buffers, xt)

    @torch.inference_mode()
    def plain_eval():
        for m in models:
            m.eval()
            m(xt)

    calls = {"stacked_step_s": (stacked_step, 5), "plain_steps_s": (plain_steps, 5),
             "stacked_eval_s": (stacked_eval, 2), "plain_eval_s": (plain_eval, 2)}
    for fn, _ in calls.values():
        fn()  # warm-up
    runs = {k: [] for k in calls}
    for r in range(args.repeats):
        for k, (fn, reps) in calls.items():
            t0 = time.perf_counter()
            for _ in range(1 if args.smoke else reps):
                fn()
            runs[k].append(time.perf_counter() - t0 if args.smoke else (time.perf_counter() - t0) / reps)
        print(f"stacking round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in runs.items()))
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"n_seeds": n_seeds, "test_images": test_images, "runs": runs, **med,
            "step_ratio_stacked_over_plain": med["stacked_step_s"] / med["plain_steps_s"],
            "eval_ratio_stacked_over_plain": med["stacked_eval_s"] / med["plain_eval_s"]}


def bench_recipes(args, data, test) -> dict:
    """Final test metric and training seconds of the ex1 conv+FC autoencoder (AE_RECIPE) and the ex2
    classifier (CLASSIFIER_RECIPE) for each epoch count in args.recipes, everything else as in the recipe
    (OneCycle: fewer epochs = a shorter schedule, not a truncated one). Evaluated once, at the end."""
    from .models import AE_RECIPE, CLASSIFIER_RECIPE
    from .train import fit
    rows = []
    for name, make, recipe, reconstruct in [("ex1 conv_fc", AutoEncoder, AE_RECIPE, True),
                                            ("ex2 classifier", Classifier, CLASSIFIER_RECIPE, False)]:
        for epochs in args.recipes:
            gen = seed_everything(args.seed)
            kw = dict(recipe, epochs=epochs)
            hist = fit(make(), data, test, gen=gen, device=torch.device("cpu"), reconstruct=reconstruct,
                       eval_every=epochs, channels_last=True, desc=f"{name} {epochs} ep", **kw)
            last = hist[-1]
            rows.append({"model": name, "epochs": epochs, "batch_size": kw["batch_size"], "lr": kw["lr"],
                         "augment": kw.get("augment") is not None, "train_time_s": last["train_time_s"],
                         "metric": "test mean-L1" if reconstruct else "test accuracy",
                         "value": last["test_loss"] if reconstruct else last["test_acc"],
                         "history": hist})
            print(f"{name}: {epochs} epochs -> {rows[-1]['metric']} {rows[-1]['value']:.4f} "
                  f"in {last['train_time_s']:.0f} s")
    return {"rows": rows}


def merge_recipe_rows(path: Path, rows: list[dict], machine: dict) -> list[dict]:
    """Extend a sweep instead of redoing it: the rows of an existing bench_recipes.json measured on the same
    kind of machine (CPU model and thread count) are kept unless this run measured the same (model, epochs);
    the result is sorted by model, then epochs. Rows from another machine are dropped (not comparable)."""
    import json
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return rows
    same_machine = all(old.get("machine", {}).get(k) == machine.get(k) for k in ("cpu", "torch_threads"))
    new_keys = {(r["model"], r["epochs"]) for r in rows}
    kept = [r for r in old.get("rows", []) if same_machine and (r.get("model"), r.get("epochs")) not in new_keys]
    order = {"ex1 conv_fc": 0, "ex2 classifier": 1}
    return sorted(kept + rows, key=lambda r: (order.get(r["model"], 2), r["epochs"]))


def bench_model(make, loss_fn, reconstruct: bool, data, ref_ds, args, name: str, peaks: list[dict]) -> dict:
    """(a) vs (b) for one model, interleaved `args.repeats` times with a matmul-peak measurement per round
    (appended to `peaks`); medians and FLOPs. The share of the peak is computed in main, over all rounds."""
    seed_everything(args.seed)
    xb = data.x[:args.batch_size]
    flops = train_flops_per_image(make(), xb, xb if reconstruct else data.y[:args.batch_size], loss_fn)
    ours, base = [], []
    for r in range(args.repeats):
        peaks.append(matmul_peak(seconds=0.1 if args.smoke else args.peak_seconds))
        gen = seed_everything(args.seed + r)
        ours.append(run_ours(make(), data, loss_fn, args.steps, args.batch_size, reconstruct, gen))
        seed_everything(args.seed + r)
        loader = torch.utils.data.DataLoader(ref_ds, batch_size=args.batch_size, shuffle=True)
        base.append(run_baseline(make(), loader, loss_fn, args.steps, reconstruct))
        print(f"{name} round {r + 1}/{args.repeats}: ours {ours[-1]:,.0f} img/s, DataLoader {base[-1]:,.0f} img/s")
    o, b = statistics.median(ours), statistics.median(base)
    return {"ours_img_s": o, "baseline_img_s": b, "speedup": o / b,
            "ours_runs_img_s": ours, "baseline_runs_img_s": base,
            "train_flops_per_img": flops, "achieved_gflops": flops * o / 1e9, "steps": args.steps}


# What the scripts use of the options measured here (issue 13: keep a change only if the bench shows it).
ADOPTED = {
    "in_memory_index_batches": "all MNIST scripts (common.train.tensor_batches): the 'ours' vs DataLoader rows",
    "no_per_step_sync": "common.train.train_epoch sums the loss on the device, one .item() per epoch",
    "channels_last": "every MNIST training run (fit(channels_last=True)); see options.channels_last",
    "inference_mode_eval": "common.train.evaluate/predict run under torch.inference_mode in batches of 2,000",
    "not_adopted": "bf16 autocast (slower on this CPU, see options) and torch.compile (minutes of compilation "
                   "on 2 cores for no measured gain)",
}


def bench_options(data, args) -> dict:
    """img/s of our AE training loop with each optional speed-up, interleaved with the plain loop in every
    round (after one warm-up / compilation step each); per option the median and the median per-round
    ratio to plain."""
    names = ["plain", *args.options]
    runs = {n: [] for n in names}
    for r in range(args.repeats):
        for option in names:
            gen = seed_everything(args.seed + r)
            model, data_opt = (AutoEncoder(), data) if option == "plain" else with_option(AutoEncoder(), data, option)
            run_ours(model, data_opt, mean_l1, 1, args.batch_size, True, gen)  # warm-up / compilation
            runs[option].append(run_ours(model, data_opt, mean_l1, args.steps, args.batch_size, True, gen))
        print(f"ae options round {r + 1}/{args.repeats}: " + ", ".join(f"{n} {v[-1]:,.0f}" for n, v in runs.items())
              + " img/s")
    return {n: {"img_s": statistics.median(v), "runs_img_s": v,
                "ratio_vs_plain": statistics.median(a / b for a, b in zip(v, runs["plain"]))}
            for n, v in runs.items()}


def main(argv=None) -> dict:
    args = get_args(argv)
    if args.smoke:
        args.steps, args.repeats = 3, 1
    _, res_dir = resolve_output_dirs(args)[:2]
    torch.set_num_threads(args.threads)
    if args.stacking:
        r = {"name": "bench_stacking", "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
             "torch": torch.__version__, "threads": args.threads, **bench_stacking(args)}
        print(f"stacked / plain: training step {r['step_ratio_stacked_over_plain']:.2f}x, "
              f"test forward {r['eval_ratio_stacked_over_plain']:.2f}x (above 1: stacking is slower)")
        print(f"wrote {write_json_atomic(res_dir / 'bench_stacking.json', r)}")
        return r

    if args.recipes is not None:
        args.recipes = args.recipes or [4, 6, 8]
        data, test = load_mnist(args.data_dir, train=True), load_mnist(args.data_dir, train=False)
        if args.smoke:
            data, test, args.recipes = data.subset(torch.arange(512)), test.subset(torch.arange(256)), [1]
        r = {"name": "bench_recipes", "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
             "torch": torch.__version__, "threads": args.threads, "machine": machine_info(),
             **bench_recipes(args, data, test)}
        out = res_dir / "bench_recipes.json"
        r["rows"] = merge_recipe_rows(out, r["rows"], r["machine"])
        print(f"wrote {write_json_atomic(out, r)}")
        return r

    from torchvision.datasets import MNIST
    from torchvision.transforms import ToTensor
    data = load_mnist(args.data_dir, train=True)
    ref_ds = MNIST(args.data_dir, train=True, transform=ToTensor())

    peaks = []  # one matmul_peak per round of every bench_model, interleaved with the model runs
    results = {"name": "bench", "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "torch": torch.__version__, "threads": args.threads, "cpu_count": os.cpu_count()}
    for name, make, loss_fn, reconstruct in [("ae", AutoEncoder, mean_l1, True),
                                             ("classifier", Classifier, cross_entropy, False)]:
        results[name] = bench_model(make, loss_fn, reconstruct, data, ref_ds, args, name, peaks)
    results["ae"]["options"] = bench_options(data, args)  # measured on the AE with our loop
    best = [p["best_gflops"] for p in peaks]
    peak = max(best)
    results["matmul_peak"] = {"best_gflops": peak, "round_best_gflops": best, "spread_gflops": [min(best), peak],
                              "sizes": list(PEAK_SIZES), "rounds": peaks}
    results["matmul_gflops"] = peak
    for name in ("ae", "classifier"):
        r = results[name]
        r["frac_of_matmul_peak"] = r["achieved_gflops"] / peak
        # what the share would read against the slowest round's peak: how much the peak's noise matters
        r["frac_of_matmul_peak_vs_slowest_round"] = r["achieved_gflops"] / min(best)
    results["machine"] = machine_info()
    results["adopted"] = ADOPTED
    path = write_json_atomic(res_dir / "bench.json", results)
    print(f"\nfp32 matmul peak on this machine: {peak:.1f} GFLOP/s, best over sizes {PEAK_SIZES} "
          f"(per-round best {min(best):.1f}-{peak:.1f}; {args.threads} threads)")
    print(" model      | ours img/s | DataLoader img/s | speedup | MFLOP/img | GFLOP/s | % of matmul peak")
    for name in ("ae", "classifier"):
        r = results[name]
        print(f" {name:10s} | {r['ours_img_s']:10,.0f} | {r['baseline_img_s']:16,.0f} | {r['speedup']:6.2f}x |"
              f" {r['train_flops_per_img'] / 1e6:9.1f} | {r['achieved_gflops']:7.1f} | {100 * r['frac_of_matmul_peak']:5.1f}%")
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    run_main(main)
