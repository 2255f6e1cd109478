"""The speed benchmark's --smoke mode: structure of bench.json and that both paths really trained."""
from __future__ import annotations

import pytest
import torch

from common.bench import matmul_gflops, train_flops_per_image
from common.models import LabMLP
from common.train import cross_entropy
from conftest import needs_mnist


def test_flop_count_of_an_mlp_matches_the_closed_form():
    # LabMLP 784-64-64-10: forward 2*(784*64 + 64*64 + 64*10) flops per image, backward twice that
    # (grad wrt inputs and wrt weights) except the first layer's input grad, which autograd skips.
    model, b = LabMLP(), 8
    x, y = torch.rand(b, 1, 28, 28), torch.randint(0, 10, (b,))
    fwd = 2 * (784 * 64 + 64 * 64 + 64 * 10)
    expected = fwd + 2 * fwd - 2 * 784 * 64
    assert train_flops_per_image(model, x, y, cross_entropy) == expected


def test_matmul_gflops_is_positive():
    assert matmul_gflops(n=128, seconds=0.05) > 0


@pytest.mark.slow
@needs_mnist
def test_bench_smoke_writes_structured_json(tmp_path, data_dir):
    from common.bench import main
    r = main(["--smoke", "--out-dir", str(tmp_path), "--data-dir", str(data_dir)])
    assert (tmp_path / "results" / "bench.json").exists()
    assert r["matmul_gflops"] > 0
    for name in ("ae", "classifier"):
        m = r[name]
        assert m["ours_img_s"] > 0 and m["baseline_img_s"] > 0  # both paths trained
        assert m["speedup"] == m["ours_img_s"] / m["baseline_img_s"]
        assert 0 < m["frac_of_matmul_peak"] and m["train_flops_per_img"] > 0
