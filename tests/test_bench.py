"""The benchmark (common/bench.py): its timing arithmetic with a fake clock (so a wrong formula, not a slow machine, is
what fails), its seeding, the rule that decides whether bf16 pays, and its --smoke mode."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import DATA_DIR, needs_mnist

from common import bench
from common.bench import interleaved, matmul_peak
from common.data import TensorData
from common.models import LabMLP
from common.train import Recipe, cross_entropy, evaluate


class FakeClock:
    """time.perf_counter stand-in that advances by `step` seconds at every call."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def perf_counter(self) -> float:
        self.now += self.step
        return self.now


def test_matmul_peak_counts_2n3_flops_per_product_and_keeps_the_best_size(monkeypatch):
    """On a clock where every product takes 1 ms (and nothing else takes time), an n x n matmul is 2 n^3 flops in
    1e-3 s, however many products a timed block holds; the larger size does more flops in the same time, so it is
    the peak, wherever it comes in `sizes`."""
    clock = FakeClock(0.0)
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(bench.torch, "mm", lambda a, b: setattr(clock, "now", clock.now + 1e-3))
    assert matmul_peak(sizes=(64, 32), seconds=0.5) == pytest.approx(2 * 64 ** 3 / 1e-3 / 1e9)


def tiny_spec(steps: int = 4) -> bench.Bench:
    """LabMLP as a bench model: batches of 8, cross-entropy, the test loss as its metric (it moves with any update)."""
    return bench.Bench(LabMLP, Recipe(1, lr=1e-2, batch_size=8), steps, lambda m, x, y: cross_entropy(m(x), y),
                       "test_loss", lambda m, test: evaluate(m, test, cross_entropy)["loss"], channels_last=False)


def random_digits(n: int, seed: int) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    return TensorData(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_short_run_times_every_step_after_the_first_and_is_seeded(monkeypatch):
    """images/s = (steps - 1) x batch / the seconds between the end of the first step and the end of the last (a clock
    that moves 2 s per reading); the seed fixes the weights and the batches, so the test metric repeats exactly."""
    train, test = random_digits(64, 0), random_digits(32, 1)
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=FakeClock(2.0).perf_counter))
    img_s, loss = bench.short_run(tiny_spec(), train, test, "fp32", seed=0)
    assert img_s == pytest.approx(3 * 8 / 2.0)
    torch.manual_seed(0)
    untrained = evaluate(LabMLP(), test, cross_entropy)["loss"]  # seed 0's initial weights
    assert loss != pytest.approx(untrained)  # it trained
    assert bench.short_run(tiny_spec(), train, test, "fp32", seed=0)[1] == loss
    assert bench.short_run(tiny_spec(), train, test, "fp32", seed=1)[1] != loss


def test_bf16_pays_only_when_fast_enough_and_within_the_fp32_spread():
    """fp32 seeds 0.90, 0.92, 0.91 (mean 0.91, std 0.01): bf16's mean must lie in 0.91 +- 0.02 and its median speed be
    >= 1.15 x fp32's (median 100 images/s)."""
    fp32 = [(100.0, 0.90), (120.0, 0.92), (80.0, 0.91)]
    r = bench.compare(fp32, [(150.0, 0.915), (130.0, 0.905), (160.0, 0.92)])
    assert r["img_s_fp32"] == 100 and r["img_s_bf16"] == 150 and r["speedup"] == pytest.approx(1.5)
    assert r["quality"]["fp32"]["values"] == [0.90, 0.92, 0.91] and r["quality"]["fp32"]["std"] == pytest.approx(0.01)
    assert r["bf16_minus_fp32"]["diffs"] == pytest.approx([0.015, -0.015, 0.01])  # paired by seed
    assert r["within_spread"] and r["pays"] and r["adopted"] == "bf16"
    worse = bench.compare(fp32, [(150.0, 0.88), (130.0, 0.89), (160.0, 0.88)])  # mean 0.8833: 0.0267 below
    assert not worse["within_spread"] and not worse["pays"] and worse["adopted"] == "fp32"
    slow = bench.compare(fp32, [(110.0, 0.91), (105.0, 0.91), (112.0, 0.91)])  # 1.10 x
    assert slow["within_spread"] and not slow["pays"] and slow["adopted"] == "fp32"
    assert bench.compare(fp32, [(115.0, 0.93)] * 3)["pays"]  # both limits count as inside: 1.15 x, 0.91 + 0.02


def test_rounds_interleave():
    order = []
    runs = interleaved({k: (lambda r, k=k: order.append(k) or 10.0 * r + len(order)) for k in "ab"}, 2)
    assert order == ["a", "b", "a", "b"] and runs == {"a": [1.0, 13.0], "b": [2.0, 14.0]}
    order.clear()  # a warm-up round runs like the others and is dropped
    runs = interleaved({k: (lambda r, k=k: order.append(k) or 10.0 * r + len(order)) for k in "ab"}, 1, warmup=1)
    assert order == ["a", "b", "a", "b"] and runs == {"a": [13.0], "b": [14.0]}


@pytest.mark.slow
@needs_mnist
@pytest.mark.skipif(not (DATA_DIR / "UTKFace").is_dir() or not (DATA_DIR / "imagenette2-160").is_dir(),
                    reason="UTKFace or Imagenette not found")
def test_bench_smoke_writes_structured_json(tmp_path, data_dir):
    r = bench.main(["--smoke", "--out-dir", str(tmp_path), "--data-dir", str(data_dir)])
    saved = json.loads((tmp_path / "results" / "bench.json").read_text())
    assert saved["config"]["repeats"] == 2 and saved["provenance"]["precision"] == "fp32+bf16"
    assert r["rule"] == {"pays_speedup": bench.PAYS_SPEEDUP, "spread_sds": bench.SPREAD_SDS}
    for name, spec in bench.MODELS.items():
        m = r[name]
        assert m["batch_size"] == spec.recipe.batch_size and m["steps"] == bench.SMOKE_STEPS
        assert m["img_s_fp32"] > 0 and m["speedup"] == pytest.approx(m["img_s_bf16"] / m["img_s_fp32"])
        assert all(len(m["quality"][p]["values"]) == len(m["runs_img_s"][p]) == 2 for p in ("fp32", "bf16"))
        assert m["adopted"] == ("bf16" if m["pays"] else "fp32") and m["metric"] == spec.metric
    assert saved["provenance"]["simd"] == torch.backends.cpu.get_cpu_capability()
    assert not [s for s in strings(r) if len(s.split()) > 4], "prose in the results JSON"


def strings(obj):
    """Every string value in a JSON-like object (keys not included)."""
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return [obj] if isinstance(obj, str) else []


@pytest.mark.slow
def test_stacking_bench_reports_both_paths_and_their_ratio():
    import argparse

    from common.bench import bench_stacking
    r = bench_stacking(argparse.Namespace(repeats=2, smoke=True), n_seeds=2, test_images=50)
    assert r["n_seeds"] == 2 and all(len(v) == 2 and min(v) > 0 for v in r["runs"].values())
    assert r["step_ratio_stacked_over_plain"] == pytest.approx(r["stacked_step_s"] / r["plain_steps_s"])
    assert r["eval_ratio_stacked_over_plain"] == pytest.approx(r["stacked_eval_s"] / r["plain_eval_s"])
