"""common.train's side-by-side runner and flattening criterion."""
from __future__ import annotations

import os
import threading

import pytest
import torch

from common import train
from common.data import AFFINE, TensorData
from common.models import AutoEncoder, Classifier
from common.utils import seed_everything


def test_flattening_gains_against_hand_computation():
    f = train.flattening([{"epoch": 1, "test_loss": 0.10}, {"epoch": 2, "train_loss": 1.0},  # not evaluated
                          {"epoch": 3, "test_loss": 0.05}, {"epoch": 4, "test_loss": 0.0496}])
    assert f["test_l1"] == [0.10, 0.05, 0.0496]
    assert f["rel_gain"] == pytest.approx([0.5, 0.008])
    assert f["last_rel_gain"] == pytest.approx(0.008) and f["flat"]           # 0.8 % < FLAT_GAIN = 1 %
    steep = train.flattening([{"test_loss": 0.10}, {"test_loss": 0.098}])      # 2 %: still falling
    assert not steep["flat"] and steep["last_rel_gain"] == pytest.approx(0.02)
    assert train.flattening([{"test_loss": 0.1}]) == {"test_l1": [0.1], "rel_gain": [], "last_rel_gain": None,
                                                      "flat": False}


def test_fit_parallel_keeps_order_uses_one_thread_per_job_and_restores_threads():
    before = torch.get_num_threads()
    seen = []

    def job(i):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return i * i
    out = train.fit_parallel([lambda i=i: job(i) for i in range(5)], torch.device("cpu"))
    assert out == [0, 1, 4, 9, 16]
    if len(os.sched_getaffinity(0)) > 1:  # side by side: worker threads, one torch thread each
        assert all(n == 1 and name != "MainThread" for name, n in seen)
    assert torch.get_num_threads() == before
    with pytest.raises(ZeroDivisionError):  # a job's error reaches the caller
        train.fit_parallel([lambda: 1, lambda: 1 / 0], torch.device("cpu"))
    assert torch.get_num_threads() == before


def test_parallel_runs_equal_sequential_runs():
    """Two tiny trainings side by side give exactly the weights they give one after the other on one thread:
    each has its own generator and its model is built before, so the interleaving changes nothing."""
    data = TensorData(torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.zeros(32).long())
    recipe = train.Recipe(epochs=1, lr=3e-3, batch_size=16)

    def job(seed):
        gen, model = seed_everything(seed), AutoEncoder(channels=(4, 8))
        return lambda: (train.fit(model, data, data, recipe, gen=gen, loss_fn=train.mean_l1), model)[1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: another thread count may sum in another order
    try:
        sequential = [job(0)(), job(1)()]
    finally:
        torch.set_num_threads(threads)
    parallel = train.fit_parallel([job(0), job(1)], torch.device("cpu"))
    for a, b in zip(sequential, parallel):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name
    assert not torch.equal(parallel[0].decoder.features[0].weight, parallel[1].decoder.features[0].weight)


def test_progress_bar_keeps_results_and_order(capsys):
    assert train.fit_parallel([lambda i=i: i for i in range(3)], torch.device("cpu"), desc="runs") == [0, 1, 2]
    assert "runs" in capsys.readouterr().err


def test_a_job_draws_nothing_from_the_global_rng():
    """Jobs side by side share the global torch RNG: training an augmented classifier must not draw from it
    (shuffling and augmentation use the job's generator, the networks have no dropout)."""
    data = TensorData(torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(32) % 10)
    recipe = train.Recipe(epochs=1, lr=3e-3, batch_size=16, augment=AFFINE)
    gen, model = seed_everything(0), Classifier(channels=(4, 8))
    state = torch.get_rng_state()
    train.fit(model, data, data, recipe, gen=gen)
    assert torch.equal(torch.get_rng_state(), state)
