"""The speed benchmark (common/bench.py): its FLOP counts against closed forms, its timing arithmetic with
a fake clock (so a wrong formula, not a slow machine, is what fails), and its --smoke mode."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import needs_mnist
from torch import nn

from common import bench
from common.bench import interleaved, matmul_peak, run_baseline, run_ours, train_flops_per_image
from common.data import TensorData
from common.models import LabMLP
from common.train import cross_entropy, mean_l1


def test_flop_count_of_an_mlp_matches_the_closed_form():
    # LabMLP 784-64-64-10: forward 2*(784*64 + 64*64 + 64*10) flops per image, backward twice that
    # (grad wrt inputs and wrt weights) except the first layer's input grad, which autograd skips.
    model, b = LabMLP(), 8
    x, y = torch.rand(b, 1, 28, 28), torch.randint(0, 10, (b,))
    fwd = 2 * (784 * 64 + 64 * 64 + 64 * 10)
    expected = fwd + 2 * fwd - 2 * 784 * 64
    assert train_flops_per_image(model, x, y, cross_entropy) == expected


def test_flop_count_of_convolutions_matches_the_closed_form():
    """A conv layer costs 2 Cin Cout k^2 Hout Wout flops per image forward, as much again for its weight
    gradient and, unless it is the first layer (its input needs no gradient), again for its input gradient."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),   # 16x16 -> 8x8
                          nn.Conv2d(8, 4, 3, stride=1, padding=0))               # 8x8 -> 6x6
    x = torch.rand(4, 3, 16, 16)
    first, second = 2 * 3 * 8 * 3 * 3 * 8 * 8, 2 * 8 * 4 * 3 * 3 * 6 * 6
    assert train_flops_per_image(model, x, torch.zeros(4, 4, 6, 6), mean_l1) == 2 * first + 3 * second


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


def test_throughput_is_images_trained_per_second(monkeypatch):
    """Both loops report images / elapsed seconds for exactly steps * batch timed images (the untimed
    first step aside), and really train."""
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=FakeClock(2.0).perf_counter))
    model = LabMLP()
    before = [p.detach().clone() for p in model.parameters()]
    assert run_ours(model, data, cross_entropy, 3, 8, g) == pytest.approx(3 * 8 / 2.0)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # every layer was updated
    dataset = torch.utils.data.TensorDataset(data.x, data.y)
    assert run_baseline(LabMLP(), dataset, cross_entropy, 5, 8) == pytest.approx(5 * 8 / 2.0)


def test_rounds_interleave():
    order = []
    runs = interleaved({k: (lambda r, k=k: order.append(k) or 10.0 * r + len(order)) for k in "ab"}, 2)
    assert order == ["a", "b", "a", "b"] and runs == {"a": [1.0, 13.0], "b": [2.0, 14.0]}
    order.clear()  # a warm-up round runs like the others and is dropped
    runs = interleaved({k: (lambda r, k=k: order.append(k) or 10.0 * r + len(order)) for k in "ab"}, 1, warmup=1)
    assert order == ["a", "b", "a", "b"] and runs == {"a": [13.0], "b": [14.0]}


@pytest.mark.slow
@needs_mnist
def test_bench_smoke_writes_structured_json(tmp_path, data_dir):
    r = bench.main(["--smoke", "--out-dir", str(tmp_path), "--data-dir", str(data_dir)])
    assert json.loads((tmp_path / "results" / "bench.json").read_text())["config"]["steps"] == 3
    assert r["matmul_gflops"] > 0
    for name in ("ae", "classifier"):
        m = r[name]
        assert m["ours_img_s"] > 0 and m["baseline_img_s"] > 0  # both paths trained
        assert m["speedup"] == pytest.approx(m["ours_img_s"] / m["baseline_img_s"])
        assert all(len(v) == r["config"]["repeats"] == 1 for v in m["runs_img_s"].values())
        assert m["train_flops_per_img"] > 0
    ae = r["ae"]
    assert set(ae["options"]) == {"channels_last", "bf16_autocast"} and r["classifier"]["options"] == {}
    assert set(ae["runs_img_s"]) == {"plain", "channels_last", "bf16_autocast", "baseline"}
    cl = ae["options"]["channels_last"]
    assert cl["ratio_vs_plain"] == pytest.approx(cl["img_s"] / ae["ours_img_s"])
    peak = r["matmul_peak"]  # one peak measurement per round, interleaved with the model runs: one round here
    assert peak["best_gflops"] == r["matmul_gflops"] and peak["spread_gflops"] == [r["matmul_gflops"]] * 2
    assert ae["frac_of_matmul_peak"] == pytest.approx(ae["train_flops_per_img"] * ae["ours_img_s"] / 1e9
                                                      / peak["best_gflops"])
    assert r["machine"]["simd"] == torch.backends.cpu.get_cpu_capability()
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
