"""ex1 (flattening criterion, runs side by side) and ex3 (class-mean and interpolation pictures)."""
from __future__ import annotations

import threading

import pytest
import torch

import ex1_autoencoder as ex1
import ex3_classifier_decoding as ex3
from common.data import TensorData
from common.models import AutoEncoder


def test_flattening_gains_against_hand_computation():
    f = ex1.flattening([{"epoch": 1, "test_loss": 0.10}, {"epoch": 2, "train_loss": 1.0},  # not evaluated
                        {"epoch": 3, "test_loss": 0.05}, {"epoch": 4, "test_loss": 0.0496}])
    assert f["test_l1"] == [0.10, 0.05, 0.0496]
    assert f["rel_gain"] == pytest.approx([0.5, 0.008])
    assert f["last_rel_gain"] == pytest.approx(0.008) and f["flat"]           # 0.8 % < FLAT_GAIN = 1 %
    steep = ex1.flattening([{"test_loss": 0.10}, {"test_loss": 0.098}])      # 2 %: still falling
    assert not steep["flat"] and steep["last_rel_gain"] == pytest.approx(0.02)
    assert ex1.flattening([{"test_loss": 0.1}]) == {"test_l1": [0.1], "rel_gain": [], "last_rel_gain": None,
                                                    "flat": False}


def test_fit_parallel_keeps_order_uses_one_thread_per_job_and_restores_threads():
    before = torch.get_num_threads()
    seen = []

    def job(i):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return i * i
    out = ex1.fit_parallel([lambda i=i: job(i) for i in range(5)], torch.device("cpu"))
    assert out == [0, 1, 4, 9, 16]
    if len(ex1.os.sched_getaffinity(0)) > 1:  # side by side: worker threads, one torch thread each
        assert all(n == 1 and name != "MainThread" for name, n in seen)
    assert torch.get_num_threads() == before
    with pytest.raises(ZeroDivisionError):  # a job's error reaches the caller
        ex1.fit_parallel([lambda: 1, lambda: 1 / 0], torch.device("cpu"))
    assert torch.get_num_threads() == before


def test_parallel_runs_equal_sequential_runs():
    """Two tiny trainings side by side give exactly the weights they give one after the other on one thread:
    each has its own generator and its model is built before, so the interleaving changes nothing."""
    data = TensorData(torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.zeros(32).long())
    recipe = ex1.dataclasses.replace(ex1.RECIPE, epochs=1, batch_size=16)

    def job(seed):
        gen, model = ex1.seed_everything(seed), AutoEncoder(channels=(4, 8))
        return lambda: (ex1.fit(model, data, data, recipe, gen=gen, loss_fn=ex1.mean_l1), model)[1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: another thread count may sum in another order
    try:
        sequential = [job(0)(), job(1)()]
    finally:
        torch.set_num_threads(threads)
    parallel = ex1.fit_parallel([job(0), job(1)], torch.device("cpu"))
    for a, b in zip(sequential, parallel):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name
    assert not torch.equal(parallel[0].decoder.features[0].weight, parallel[1].decoder.features[0].weight)


def test_latent_pictures_decode_class_means_and_straight_lines():
    torch.manual_seed(0)
    model = AutoEncoder(channels=(4, 8)).eval()
    y = torch.arange(20) % 10
    z = torch.randn(20, 12)                                                    # (N, d) test codes
    test = TensorData(torch.rand(20, 1, 28, 28), y)
    means, lines = ex3.latent_pictures({"ae": model}, {"ae": (z, z)}, test, torch.device("cpu"))
    with torch.no_grad():
        want_means = model.decoder(torch.stack([z[y == c].mean(0) for c in range(10)]))
        a, b = ex3.INTERPOLATE[0]
        want_ends = model.decoder(torch.stack([z[a], z[b]]))                  # first test image of digit a, b
        midpoint = model.decoder(((z[a] + z[b]) / 2)[None])
    assert torch.allclose(means[ex3.ENCODERS["ae"]], want_means, atol=1e-6)
    line = lines[f"AE {a}→{b}"]
    assert line.shape == (ex3.INTERP_STEPS, 1, 28, 28) and len(lines) == len(ex3.INTERPOLATE)
    assert torch.allclose(line[[0, -1]], want_ends, atol=1e-6)
    if ex3.INTERP_STEPS % 2:
        assert torch.allclose(line[ex3.INTERP_STEPS // 2], midpoint[0], atol=1e-6)
    assert not torch.allclose(line[1], line[0])  # the line moves
