"""Bad input ends in one line, never a traceback or a wrong result (defences in proportion).

One case per distinct failure path. Most run in-process: a script's main() through its own entry point
(common.utils.run_main), or the common/ function that rejects the input. The `slow` ones run a real
interpreter, as a new user would: an output folder that is a file, a one-seed ex5 run, Ctrl-C.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR, REPO, load_result, needs_mnist, run_script

from common import utils
from common.data import MNIST_SHA256, TensorData, decode_images, require_images
from common.models import AutoEncoder, Classifier
from common.train import Recipe, fit, load_checkpoint, mean_l1, save_checkpoint
from common.utils import UserError

TINY = dict(channels=(4, 8))  # a small AutoEncoder / Classifier: checkpoints of a few KB, epochs of ms


# ----------------------------------------------------------------------------- helpers
def one_line(msg: str, *expect: str) -> str:
    assert "\n" not in msg and "Traceback" not in msg, msg
    for text in expect:
        assert text in msg, f"{text!r} not in {msg!r}"
    return msg


def run_in_process(script: str, out: Path, *argv: str, data_dir: Path = DATA_DIR) -> str:
    """`python <script> --smoke --out-dir <out> --data-dir <data_dir> ...` in this process, through the script's
    own entry point; returns the one line it exits with. Any other exception (a traceback) fails the test."""
    module = importlib.import_module(Path(script).stem)
    args = ["--smoke", "--out-dir", str(out), "--data-dir", str(data_dir), *argv]
    with pytest.raises(SystemExit) as exit_:
        utils.run_main(lambda: module.main(args))
    msg = exit_.value.code
    assert isinstance(msg, str) and msg.startswith("error: "), f"exit status {msg!r}, not one error line"
    assert not any((out / "results").glob("*")), "results written"
    return one_line(msg)


def stderr_lines(stderr: str) -> list[str]:
    """Non-empty stderr lines as a terminal shows them ('\\r' redraws), tqdm progress bars left out."""
    lines = (line.split("\r")[-1].rstrip() for line in stderr.splitlines())
    return [line for line in lines if line.strip() and not re.search(r"\d+%\|", line)]


def tiny_data(n: int = 32) -> TensorData:
    g = torch.Generator().manual_seed(0)
    return TensorData(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


# ----------------------------------------------------------------------------- data
def test_missing_data_names_data_dir_and_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(self):  # what torchvision does offline: create the raw folder, then fail (here: without text)
        os.makedirs(self.raw_folder, exist_ok=True)
        raise RuntimeError()
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    (tmp_path / "empty").mkdir()
    for data_dir in (tmp_path / "absent", tmp_path / "empty"):
        msg = run_in_process("ex1_autoencoder.py", tmp_path / "out", data_dir=data_dir)
        one_line(msg, f"error: MNIST not found under '{data_dir}'", "(RuntimeError)", "DATA_DIR=", "--data-dir")
    assert not (tmp_path / "absent").exists() and not any((tmp_path / "empty").iterdir())
    # the labs' photo folders (common.data.require_images): missing, or without a matching file
    for folder in (tmp_path / "absent" / "UTKFace", tmp_path / "empty"):
        err = pytest.raises(UserError, require_images, folder, "*.jpg", "UTKFace faces").value
        one_line(str(err), f"UTKFace faces not found under '{folder}'", "DATA_DIR=", "--data-dir")


@needs_mnist
def test_mnist_checksum_mismatch_is_one_line_and_the_file_is_left_alone(tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"  # the real files, one of them with one label byte flipped
    raw.mkdir(parents=True)
    for name in MNIST_SHA256:
        (raw / name).symlink_to(DATA_DIR / "MNIST" / "raw" / name)
    damaged = bytearray((raw / "train-labels-idx1-ubyte").read_bytes())
    damaged[8 + 7] ^= 0xFF  # the IDX header is 8 bytes
    (raw / "train-labels-idx1-ubyte").unlink()
    (raw / "train-labels-idx1-ubyte").write_bytes(damaged)
    msg = run_in_process("ex1_autoencoder.py", tmp_path / "out", data_dir=tmp_path / "data")
    one_line(msg, f"error: corrupted: {raw / 'train-labels-idx1-ubyte'}, expected sha256 65a50cbb",
             "delete it and download MNIST again")
    assert (raw / "train-labels-idx1-ubyte").read_bytes() == damaged  # the user's file is left alone


def test_unreadable_image_is_skipped_and_counted_or_one_line(tmp_path, capsys):
    import numpy as np
    from PIL import Image
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(good)
    (tmp_path / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    paths = [good, tmp_path / "corrupt.jpg", good, tmp_path / "truncated.jpg"]
    skipped = []
    assert decode_images(paths, 32, skipped=skipped).shape == (2, 3, 32, 32) and skipped == paths[1::2]
    assert f"warning: skipped 2 unreadable image(s) of 4, first {paths[1]}" in capsys.readouterr().out
    # without a `skipped` list the caller cannot re-align its labels: the first bad file stops the run
    err = pytest.raises(UserError, decode_images, paths, 32).value
    one_line(str(err), f"corrupted image: {paths[1]} (UnidentifiedImageError", "delete or replace it")


# ----------------------------------------------------------------------------- command line
@pytest.mark.parametrize("script, flag, value, expect", [
    ("ex1_autoencoder.py", "--lr", "inf", "argument --lr: must be in (0, 1], got inf"),
    ("ex1_autoencoder.py", "--lr", "1e9", "argument --lr: must be in (0, 1], got 1e9"),
    ("ex1_autoencoder.py", "--lr", "0", "argument --lr: must be in (0, 1], got 0"),
    ("ex1_autoencoder.py", "--seed", "-1", "argument --seed: must be in [0, inf], got -1"),
    ("ex1_autoencoder.py", "--epochs", "1.5", "argument --epochs: expected an integer, got '1.5'"),
    ("ex2_classifier.py", "--hidden", "0", "argument --hidden: must be in [1, inf], got 0"),
    ("ex4_few_shot.py", "--weight-decay", "inf", "argument --weight-decay: must be in [0, inf], got inf"),
    ("ex5_finetune.py", "--encoder-lr-ratio", "nan", "argument --encoder-lr-ratio: must be in [0, 1], got nan"),
    ("ex4_few_shot.py", "--n-train", "100", "unrecognized arguments: --n-train 100"),  # an unknown flag
])
def test_flag_value_out_of_range_is_argparse_usage_and_one_line(capsys, script, flag, value, expect):
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(Path(script).stem).get_args([flag, value])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and lines[0].startswith("usage:") and "Traceback" not in err, err
    assert ": error: " in lines[-1] and expect in lines[-1], err


UNAVAILABLE = next((d for d, ok in [("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available())]
                    if not ok), None)


@pytest.mark.parametrize("script, argv, expect", [
    pytest.param("ex1_autoencoder.py", ["--device", UNAVAILABLE or "cpu"], f"--device {UNAVAILABLE} requested but "
                 "it is not available", marks=pytest.mark.skipif(UNAVAILABLE is None, reason="cuda and mps here")),
    pytest.param("ex5_finetune.py", ["--seeds", "1", "1"], "--seeds has duplicates: [1, 1]", marks=needs_mnist),
    pytest.param("ex4_few_shot.py", ["--train-images", "70000"],
                 "--train-images 70000 is more than the 60000 MNIST training images", marks=needs_mnist),
])
def test_flags_the_run_cannot_honour_are_one_line(tmp_path, script, argv, expect):
    one_line(run_in_process(script, tmp_path / "out", *argv), f"error: {expect}")


# ----------------------------------------------------------------------------- checkpoints and training
class RunsCode:
    """A pickle that would call os.mkdir when loaded: weights_only=True must refuse it."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


@pytest.mark.parametrize("make, expect", [
    (lambda p: p.write_bytes(b""), "cannot read checkpoint"),
    (lambda p: p.write_bytes(bytes(range(256)) * 16), "cannot read checkpoint"),
    (lambda p: p.write_bytes(b"PK\x03\x04 half a zip"), "cannot read checkpoint"),
    (lambda p: torch.save({"model": {}, "x": RunsCode(p.parent / "pwned")}, p), "cannot read checkpoint"),
    (lambda p: torch.save([1, 2, 3], p), "is not a checkpoint of this project"),
    (lambda p: save_checkpoint(p, AutoEncoder(**TINY)), "was saved for architecture"),
], ids=["empty", "random-bytes", "half-a-zip", "runs-code", "not-a-dict", "other-architecture"])
def test_checkpoint_that_cannot_be_used_is_one_line(tmp_path, make, expect):
    path = tmp_path / "x.pt"
    make(path)
    err = pytest.raises(UserError, load_checkpoint, path, AutoEncoder()).value
    one_line(str(err), expect, str(path))
    assert "delete" in str(err).lower()  # and what to do about it
    assert not (tmp_path / "pwned").exists() and "weights_only=False" not in str(err)


def test_resume_with_another_recipe_is_refused_and_the_checkpoint_kept(tmp_path):
    path = tmp_path / "ae.pt"
    fit(AutoEncoder(**TINY), tiny_data(), tiny_data(), Recipe(epochs=1, lr=1e-2, batch_size=16),
        gen=torch.Generator(), loss_fn=mean_l1, ckpt_path=path)
    saved = path.read_bytes()
    err = pytest.raises(UserError, fit, AutoEncoder(**TINY), tiny_data(), tiny_data(),
                        Recipe(epochs=3, lr=1e-2, batch_size=16), gen=torch.Generator(), loss_fn=mean_l1,
                        ckpt_path=path, resume=True).value
    one_line(str(err), f"cannot resume from {path}: it was trained with epochs 1 (this run: 3)")
    assert path.read_bytes() == saved


def test_load_or_fit_refuses_an_unfinished_run_or_another_recipe(tmp_path, monkeypatch):
    import common.train
    want, path = Recipe(epochs=15, lr=3e-3, batch_size=128), tmp_path / "ex1_conv_fc.pt"
    monkeypatch.setattr(common.train, "fit", lambda *a, **k: pytest.fail("must not train over the user's checkpoint"))
    full = TensorData(torch.empty(60000, 0), torch.empty(60000))  # only its size is read

    def load():
        return common.train.load_or_fit(path, AutoEncoder(**TINY), "the AE", want, full, full, seed=0)
    save_checkpoint(path, AutoEncoder(**TINY), recipe=asdict(want), train_size=60000, epoch=3)
    one_line(str(pytest.raises(UserError, load).value),
             "holds an unfinished run of the AE (epoch 3 of 15); finish it with its script's --resume")
    save_checkpoint(path, AutoEncoder(**TINY), recipe={**asdict(want), "lr": 0.01}, train_size=1024, epoch=15)
    one_line(str(pytest.raises(UserError, load).value),
             "holds the AE trained with lr 0.01 (this run: 0.003); train_size 1024 (this run: 60000)")
    save_checkpoint(path, AutoEncoder(**TINY), recipe=asdict(want), train_size=60000, epoch=15)
    load()  # the matching one is used


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_the_run_before_anything_is_written(tmp_path, bad):
    def diverged(out, y):
        return torch.nn.functional.cross_entropy(out, y) * bad
    err = pytest.raises(UserError, fit, Classifier(**TINY, hidden=8), tiny_data(), tiny_data(),
                        Recipe(epochs=2, lr=1e-2, batch_size=32), gen=torch.Generator(), loss_fn=diverged,
                        ckpt_path=tmp_path / "c.pt").value
    one_line(str(err), f"training loss is {bad} in epoch 1 (lr 0.01): training diverged; lower --lr")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = utils.write_json_atomic(tmp_path / "r.json", {"a": 1})

    def half_then_crash(tmp: Path):
        tmp.write_text('{"a": 2, "b"')
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        utils.atomic_write(path, half_then_crash)
    assert json.loads(path.read_text()) == {"a": 1} and list(tmp_path.iterdir()) == [path]


# ----------------------------------------------------------------------------- real processes
def run_real(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--out-dir", "--runs-dir"])
def test_output_folder_that_is_a_file_is_one_line(tmp_path, flag):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("the user's notes\n")
    args = ["--out-dir", str(a_file)] if flag == "--out-dir" else ["--out-dir", str(tmp_path), flag, str(a_file)]
    proc = run_real("ex1_autoencoder.py", "--smoke", *args)
    lines = stderr_lines(proc.stderr)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    one_line(lines[0], f"error: cannot create the folder {a_file}", "(a file is in the way); pass another --out-dir")
    assert a_file.read_text() == "the user's notes\n"


@pytest.mark.slow
@needs_mnist
def test_ex5_with_one_seed_writes_its_results_without_a_paired_test(tmp_path):
    run_script("ex5_finetune.py", tmp_path, "--seeds", "30", "--variants", "finetune")
    r = load_result(tmp_path, "ex5")
    assert r["seeds"] == [30] and set(r["variants"]) == {"scratch", "finetune"} and r["comparisons"] == {}
    for v in r["variants"].values():
        assert v["final_test_acc"]["n"] == 1 and 0 <= v["final_test_acc"]["mean"] <= 1
        assert "vs_scratch" not in v and "vs_scratch_loss" not in v


@pytest.mark.slow
@needs_mnist
def test_ctrl_c_during_training_is_one_line_and_status_130(tmp_path):
    env = {**os.environ, "DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1"}
    # a full-data run (not --smoke, which can finish before the signal arrives) that is interrupted anyway
    proc = subprocess.Popen([sys.executable, str(REPO / "ex1_autoencoder.py"), "--variants", "conv", "--out-dir",
                             str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a background job (`pytest &` without job control) inherits SIGINT ignored, and
                            # Python then never installs its Ctrl-C handler: give the child the default back
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = proc.stdout.readline()
    while line and not line.startswith("ex1:"):  # data loaded: training starts
        line = proc.stdout.readline()
    time.sleep(1.5)  # inside the first epoch (an epoch of the full data takes ~30 s)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    lines = stderr_lines(stderr)
    assert proc.returncode == 130 and "Traceback" not in stderr and len(lines) == 1, stderr[-3000:]
    one_line(lines[0], "interrupted; resume with --resume")
    assert not (tmp_path / "out" / "results" / "ex1.json").exists()
