"""--tensorboard: the event file read back holds exactly the history that the results JSON records."""
from __future__ import annotations

import argparse

import pytest
import torch
from conftest import load_result, needs_mnist, run_script

from common.data import TensorData
from common.models import Classifier
from common.train import Recipe, TensorBoardLog, fit, tensorboard_dir
from common.utils import seed_everything


def _read_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_logged_scalars_equal_the_history(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.rand(48, 1, 28, 28, generator=g), torch.randint(0, 10, (48,), generator=g))
    gen = seed_everything(0)
    recipe = Recipe(epochs=3, lr=1e-2, batch_size=16, eval_every=2)
    hist = fit(Classifier(channels=(4, 8), hidden=16), data, data, recipe, gen=gen, tb_dir=tmp_path / "tb")
    got = _read_scalars(tmp_path / "tb")
    for key, tag in [("train_loss", "loss/train"), ("train_acc", "acc/train"), ("test_loss", "loss/test"),
                     ("test_acc", "acc/test"), ("lr", "lr")]:
        want = [(r["epoch"], r[key]) for r in hist if key in r]
        assert [s for s, _ in got[tag]] == [s for s, _ in want], tag      # the epochs it was logged at
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want], rel=1e-6), tag  # float32 in the file
    assert [s for s, _ in got["loss/test"]] == [2, 3]  # evaluated every 2 epochs and at the end


def test_tag_names_and_the_flag():
    assert TensorBoardLog.tag("train_loss") == "loss/train" and TensorBoardLog.tag("test_acc") == "acc/test"
    assert TensorBoardLog.tag("train_time_s") == "train_time_s" and TensorBoardLog.tag("lr") == "lr"
    assert tensorboard_dir(argparse.Namespace(tensorboard=False), "ex1") is None
    d = tensorboard_dir(argparse.Namespace(tensorboard=True, runs_dir=None), "ex4")
    assert d.parts[-3:-1] == ("tb", "ex4")


@pytest.mark.slow
@needs_mnist
def test_ex4_smoke_with_tensorboard_logs_each_seed_as_in_its_json(tmp_path):
    run_script("ex4_few_shot.py", tmp_path, "--tensorboard")
    r = load_result(tmp_path, "ex4")
    assert r["config"]["tensorboard"] is True
    for seed in r["seeds"]:
        (run_dir,) = (tmp_path / "runs" / "tb" / "ex4").iterdir()   # one time-stamped run, one folder per seed
        got = _read_scalars(run_dir / f"seed{seed}")
        hist = r["history"][str(seed)]
        assert [v for _, v in got["loss/train"]] == pytest.approx([row["train_loss"] for row in hist], abs=1e-6)
        assert [s for s, _ in got["acc/test"]] == [row["epoch"] for row in hist if "test_acc" in row]
