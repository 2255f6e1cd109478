"""Bad input never ends in a traceback or a wrong result (issue 15).

Fast, in-process unit tests first (checksums, image skipping, validators, checkpoints, non-finite
losses); then the `slow` table: each bad input runs a script as a user would (smoke-sized subprocess)
and must exit non-zero with one `error:` line (or argparse's usage + one error line), no traceback,
and no result file written.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import DATA_DIR, HAS_MNIST, REPO, needs_mnist

from common import utils
from common.data import (MNIST_SHA256, DataCorruptedError, DataUnavailableError, ImageDecodeError, TensorData,
                         decode_images, load_mnist, missing_data_message, require_images, verify_mnist_files)
from common.models import AutoEncoder, Classifier
from common.train import (CheckpointError, CheckpointMismatchError, NonFiniteLossError, check_finite, fit,
                          fit_recipe, load_checkpoint, load_or_train, mean_l1, save_checkpoint)

RAW = DATA_DIR / "MNIST" / "raw"
HAS_IMAGENETTE = (DATA_DIR / "imagenette2-160" / "train").is_dir()
HAS_LAB_DATA = HAS_IMAGENETTE and (DATA_DIR / "UTKFace").is_dir()


# ----------------------------------------------------------------------------- helpers
def mnist_copy(root: Path, damage: dict[str, callable] | None = None) -> Path:
    """<root>/MNIST/raw with the real files symlinked, except `damage`d ones: copies passed through a
    bytes -> bytes function."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_SHA256:
        if damage and name in damage:
            (raw / name).write_bytes(damage[name]((RAW / name).read_bytes()))
        else:
            (raw / name).symlink_to(RAW / name)
    return root


def flip(offsets):
    def f(data: bytes) -> bytes:
        b = bytearray(data)
        for i in offsets:
            b[i] ^= 0xFF
        return bytes(b)
    return f


def set_byte(offset: int, value: int):
    def f(data: bytes) -> bytes:
        b = bytearray(data)
        b[offset] = value
        return bytes(b)
    return f


def truncate(data: bytes) -> bytes:
    return data[:len(data) // 2]


def a_jpeg() -> Path:
    return next((DATA_DIR / "imagenette2-160" / "train" / "n01440764").glob("*.JPEG"))


# ----------------------------------------------------------------------------- data: unit tests
def test_missing_data_message_survives_an_exception_without_text():
    msg = missing_data_message("MNIST", Path("/nowhere"), RuntimeError())
    assert "RuntimeError" in msg and "\n" not in msg and "DATA_DIR" in msg


def test_checksum_mismatch_is_corrupted_not_missing(tmp_path):
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00" * 100)
    with pytest.raises(DataCorruptedError, match=r"corrupted: .*t10k-labels-idx1-ubyte, expected sha256 ff7bcfd4"):
        verify_mnist_files(tmp_path, ["t10k-labels-idx1-ubyte"])


@needs_mnist
def test_truncated_mnist_file_is_corrupted(tmp_path):
    root = mnist_copy(tmp_path / "d", {"t10k-labels-idx1-ubyte": truncate})
    with pytest.raises(DataCorruptedError, match="corrupted:") as err:
        load_mnist(root, train=False)
    assert "not found" not in str(err.value)


@needs_mnist
def test_labels_outside_0_to_9_are_rejected(tmp_path, monkeypatch):
    damage = set_byte(8, 200)  # the first label (IDX header: 8 bytes)
    root = mnist_copy(tmp_path / "d", {"t10k-labels-idx1-ubyte": damage})
    # pretend the damaged file were the reference one: the label check stands on its own
    import common.data
    from common.data import sha256_file
    monkeypatch.setitem(common.data.MNIST_SHA256, "t10k-labels-idx1-ubyte",
                        sha256_file(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"))
    with pytest.raises(DataCorruptedError, match="label 200 at index 0 is outside 0..9"):
        load_mnist(root, train=False)


def test_failed_load_creates_no_folder_under_the_data_dir(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(self):
        os.makedirs(self.raw_folder, exist_ok=True)  # what torchvision does before downloading
        raise RuntimeError()                           # an exception without text, too
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    (tmp_path / "data").mkdir()
    with pytest.raises(DataUnavailableError, match="not found"):
        load_mnist(tmp_path / "data", train=True)
    assert list((tmp_path / "data").iterdir()) == []
    with pytest.raises(DataUnavailableError):
        load_mnist(tmp_path / "absent", train=True)
    assert not (tmp_path / "absent").exists()


@pytest.mark.skipif(not HAS_IMAGENETTE, reason="Imagenette not found")
def test_decode_images_skips_and_counts_unreadable_files(tmp_path, capsys):
    good = a_jpeg()
    (tmp_path / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[:2000])
    paths = [good, tmp_path / "corrupt.jpg", good, tmp_path / "truncated.jpg"]
    skipped = []
    x = decode_images(paths, 32, skipped=skipped)
    assert x.shape == (2, 3, 32, 32) and skipped == paths[1::2]
    assert "skipped 2 unreadable image(s) of 4" in capsys.readouterr().out
    # a caller that passes no list cannot re-align its labels: one clear error naming the file
    with pytest.raises(ImageDecodeError, match="corrupt.jpg"):
        decode_images(paths, 32)


def test_require_images_names_an_empty_folder(tmp_path):
    (tmp_path / "UTKFace").mkdir()
    with pytest.raises(DataUnavailableError, match=r"UTKFace' holds no \*\.jpg files; it should hold UTKFace faces"):
        require_images(tmp_path / "UTKFace", "*.jpg", "UTKFace faces")
    with pytest.raises(DataUnavailableError, match="not found"):
        require_images(tmp_path / "absent", "*.jpg", "UTKFace faces")
    (tmp_path / "UTKFace" / "1_0_0_x.jpg").write_bytes(b"")
    assert require_images(tmp_path / "UTKFace", "*.jpg", "faces") == [tmp_path / "UTKFace" / "1_0_0_x.jpg"]


def test_empty_imagenette_split_is_one_clear_error(tmp_path):
    from common.cam import load_imagenette
    (tmp_path / "imagenette2-160" / "train").mkdir(parents=True)
    with pytest.raises(DataUnavailableError, match="train' has no usable images.*one folder per Imagenette class"):
        load_imagenette(tmp_path, "train")
    (tmp_path / "imagenette2-160" / "train" / "n01440764").mkdir()
    with pytest.raises(DataUnavailableError, match="has no usable images"):
        load_imagenette(tmp_path, "train")


# ----------------------------------------------------------------------------- CLI validators
@pytest.mark.parametrize("validator, text", [
    (utils.positive_int, "0"), (utils.positive_int, "-3"), (utils.positive_int, "1.5"),
    (utils.nonneg_int, "-1"), (utils.positive_float, "0"), (utils.positive_float, "nan"),
    (utils.nonneg_float, "nan"), (utils.nonneg_float, "-1e-3"), (utils.nonneg_float, "inf"),
    (utils.learning_rate, "inf"), (utils.learning_rate, "1e9"), (utils.learning_rate, "-1"),
    (utils.learning_rate, "nan"), (utils.fraction, "1.5"), (utils.fraction, "nan"),
])
def test_validators_reject(validator, text):
    with pytest.raises(argparse.ArgumentTypeError):
        validator(text)


# ----------------------------------------------------------------------------- non-finite training
@pytest.mark.parametrize("loss", [float("nan"), float("inf"), [0.5, float("nan")]])
def test_check_finite_stops_a_diverged_run(loss):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.25)
    with pytest.raises(NonFiniteLossError, match=r"epoch 3 \(peak lr 0.25\)"):
        check_finite({"loss": loss}, 3, opt)
    check_finite({"loss": 0.5}, 3, opt)
    check_finite({"loss": [0.5, 0.25]}, 3, opt)


def _tiny_data(n=32):
    g = torch.Generator().manual_seed(0)
    return TensorData(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_nan_loss_in_fit_raises_before_the_checkpoint_is_written(tmp_path):
    def nan_loss(out, target):
        return mean_l1(out, target) * float("nan")
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        fit(AutoEncoder(channels=(4, 8)), _tiny_data(), _tiny_data(), epochs=2, lr=1e-2, batch_size=16,
            gen=torch.Generator().manual_seed(0), device=torch.device("cpu"), reconstruct=True,
            loss_fn=nan_loss, ckpt_path=tmp_path / "ae.pt", desc="t")
    assert not (tmp_path / "ae.pt").exists()


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("content", [b"", os.urandom(4096), b"PK\x03\x04 half a zip"])
def test_unreadable_checkpoint_is_one_clear_error(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*x.pt.*delete it") as err:
        load_checkpoint(path, AutoEncoder())
    assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"model": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "evil.pt", AutoEncoder())


def test_checkpoints_and_results_are_mode_0644(tmp_path):
    save_checkpoint(tmp_path / "c.pt", AutoEncoder(channels=(4, 8)))
    utils.write_json_atomic(tmp_path / "r.json", {"a": 1})
    for f in ("c.pt", "r.json"):
        assert (tmp_path / f).stat().st_mode & 0o777 == 0o644
    assert sorted(f.name for f in tmp_path.iterdir()) == ["c.pt", "r.json"]


def test_resume_with_another_epoch_count_is_refused(tmp_path):
    kw = dict(lr=1e-2, batch_size=16, device=torch.device("cpu"), reconstruct=True, desc="t",
              ckpt_path=tmp_path / "ae.pt")
    fit(AutoEncoder(channels=(4, 8)), _tiny_data(), _tiny_data(), epochs=1, gen=torch.Generator(), **kw)
    with pytest.raises(CheckpointMismatchError, match=r"cannot resume from .*ae.pt: it was trained with epochs 1 \(this run: 3\)"):
        fit(AutoEncoder(channels=(4, 8)), _tiny_data(), _tiny_data(), epochs=3, gen=torch.Generator(),
            resume=True, **kw)


def test_load_or_train_refuses_unfinished_and_foreign_recipes(tmp_path):
    want = fit_recipe(epochs=15, lr=3e-3, batch_size=128, train_size=60000, loss_fn=mean_l1)
    path = tmp_path / "ex1_conv_fc.pt"
    never = lambda model: pytest.fail("must not retrain over the user's checkpoint")  # noqa: E731
    save_checkpoint(path, AutoEncoder(), recipe=want, epoch=3)
    with pytest.raises(CheckpointMismatchError, match="unfinished run of the AE .epoch 3 of 15"):
        load_or_train(path, AutoEncoder(), never, "the AE", want)
    save_checkpoint(path, AutoEncoder(), recipe={**want, "epochs": 2, "train_size": 1024}, epoch=2)
    with pytest.raises(CheckpointMismatchError, match=r"trained with epochs 2 \(this run: 15\); train_size 1024"):
        load_or_train(path, AutoEncoder(), never, "the AE", want)
    save_checkpoint(path, AutoEncoder(), recipe=want, epoch=15)
    load_or_train(path, AutoEncoder(), never, "the AE", want)


# ----------------------------------------------------------------------------- polish
def test_ctrl_c_is_one_line_and_status_130(capsys):
    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as exit_:
        utils.run_main(interrupted)
    assert exit_.value.code == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "interrupted; resume with --resume" in err[0]


def test_smoke_output_dir_is_removed_at_exit():
    code = "from common.utils import smoke_output_dir; d = smoke_output_dir(); (d / 'f').write_text('x'); print(d)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    folder = Path(proc.stdout.splitlines()[0])
    assert proc.returncode == 0 and not folder.exists() and "--out-dir" in proc.stdout


# ----------------------------------------------------------------------------- the table (subprocesses)
TQDM_BAR = re.compile(r"\d+%\|.*\| *\d+/\d+ ")  # a progress bar left behind by an interrupted loop


def error_lines(stderr: str) -> list[str]:
    """Non-empty stderr lines as a terminal shows them (a progress bar redraws with '\\r'), progress
    bars left out: they are not messages."""
    lines = (line.split("\r")[-1].rstrip() for line in stderr.splitlines())
    return [seg for seg in lines if seg.strip() and not TQDM_BAR.search(seg)]


def assert_one_line_failure(proc: subprocess.CompletedProcess, out: Path, expect: str) -> None:
    where = f"\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode != 0, where
    assert "Traceback" not in proc.stderr, where
    lines = error_lines(proc.stderr)
    if proc.returncode == 2:  # argparse: the usage (first line + indented continuations), then one error line
        assert lines and ": error: " in lines[-1], where
        assert lines[0].startswith("usage:") and all(l.startswith(" ") for l in lines[1:-1]), where
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), where
    assert expect in lines[-1], where
    results = out / "results"
    assert not results.exists() or not any(results.iterdir()), f"results written: {list(results.iterdir())}"


def run(args: list[str], out: Path, data_dir: Path = DATA_DIR, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    script = ["-m", "common.bench"] if args[0] == "bench" else [str(REPO / args[0])]
    cmd = [sys.executable, *script, "--smoke", "--out-dir", str(out), "--data-dir", str(data_dir), *args[1:]]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_in_process(args: list[str], out: Path, data_dir: Path = DATA_DIR) -> subprocess.CompletedProcess:
    """The same run as `run`, but in this process (no interpreter and torch start-up: ~0.1 s instead of ~5 s).

    Used for the command-line rows, which fail while parsing or choosing the device. It goes through the
    scripts' own entry point (common.utils.run_main) and turns SystemExit into an exit status and stderr
    text exactly as the interpreter would; any other exception is reported as a traceback, which the
    assertions then reject.
    """
    import contextlib
    import importlib.util
    import io
    import traceback

    from common.utils import run_main
    if args[0] == "bench":
        import common.bench as module
    else:
        spec = importlib.util.spec_from_file_location(Path(args[0]).stem, REPO / args[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    argv = ["--smoke", "--out-dir", str(out), "--data-dir", str(data_dir), *args[1:]]
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    threads = torch.get_num_threads()  # a script may set its own (lab_dbvae: --threads); restore it after
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            run_main(lambda: module.main(argv))
        except SystemExit as e:  # what the interpreter does with it at exit
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
                code = 1
            else:
                code = e.code or 0
        except BaseException:  # noqa: BLE001 - a traceback is what the test must catch
            traceback.print_exc(file=sys.stderr)
            code = 1
    torch.set_num_threads(threads)
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def _smoke_ckpt(runs: Path, name: str, model, recipe: dict, epoch: int, resumable: bool = False) -> None:
    extra = dict(optimizer={}, scheduler=None, history=[], gen_state=torch.Generator().get_state(),
                 rng_state=torch.get_rng_state()) if resumable else {}
    save_checkpoint(runs / name, model, recipe=recipe, epoch=epoch, **extra)


def _random_bytes_ckpt(tmp: Path) -> list[str]:
    (tmp / "runs").mkdir()
    (tmp / "runs" / "ex1_conv.pt").write_bytes(os.urandom(2048))
    return ["--runs-dir", str(tmp / "runs"), "--resume"]


def _empty_ckpt(tmp: Path) -> list[str]:
    (tmp / "runs").mkdir()
    (tmp / "runs" / "ex1_conv.pt").write_bytes(b"")
    return ["--runs-dir", str(tmp / "runs"), "--resume"]


def _finished_2_epoch_ckpt(tmp: Path) -> list[str]:
    # what `ex1 --smoke --epochs 2` would leave (ex1 --smoke trains 1024 images); the rerun asks for 1 epoch
    recipe = fit_recipe(epochs=2, lr=3e-3, batch_size=128, train_size=1024, loss_fn=mean_l1)
    _smoke_ckpt(tmp / "runs", "ex1_conv.pt", AutoEncoder(12, (32, 64, 128), fc=False), recipe, 2, resumable=True)
    return ["--runs-dir", str(tmp / "runs"), "--resume", "--variants", "conv"]


def _ex3_prerequisite(unfinished: bool):
    def make(tmp: Path) -> list[str]:
        from common.data import random_affine
        from common.train import cross_entropy
        # ex3 --smoke expects 1-epoch prerequisites on 1024 images
        if unfinished:
            recipe = fit_recipe(epochs=1, lr=3e-3, batch_size=128, train_size=1024, loss_fn=cross_entropy,
                                augment=random_affine)
            epoch = 0
        else:  # a finished run of another recipe (the full data, 2 epochs)
            recipe = fit_recipe(epochs=2, lr=3e-3, batch_size=128, train_size=60000, loss_fn=cross_entropy,
                                augment=random_affine)
            epoch = 2
        _smoke_ckpt(tmp / "runs", "ex2_classifier.pt", Classifier(12, (32, 64, 128), fc=True, hidden=64), recipe, epoch)
        return ["--runs-dir", str(tmp / "runs")]
    return make


def _ex5_autoencoder_of_another_recipe(tmp: Path) -> list[str]:
    """A finished 2-epoch ex1 autoencoder on the full data: ex5 --smoke expects 1 epoch on 1024 images."""
    from common.models import AutoEncoder
    from common.train import mean_l1
    recipe = fit_recipe(epochs=2, lr=3e-3, batch_size=128, train_size=60000, loss_fn=mean_l1)
    _smoke_ckpt(tmp / "runs", "ex1_conv_fc.pt", AutoEncoder(12, (32, 64, 128), fc=True), recipe, 2)
    return ["--runs-dir", str(tmp / "runs")]


def _mnist(damage: dict):
    def make(tmp: Path) -> Path:
        return mnist_copy(tmp / "data", damage)
    return make


def _empty_imagenette_train(tmp: Path) -> Path:
    root = tmp / "data"
    (root / "imagenette2-160" / "train").mkdir(parents=True)
    (root / "imagenette2-160" / "val").symlink_to(DATA_DIR / "imagenette2-160" / "val")
    return root


def _lab_data(utkface: str):
    """A data dir for lab_dbvae: the real Imagenette and MIT faces, and a UTKFace folder that is empty
    or holds only unreadable files (empty files with real names)."""
    def make(tmp: Path) -> Path:
        root = tmp / "data"
        root.mkdir()
        for name in ("imagenette2-160", "mit_test_faces"):
            (root / name).symlink_to(DATA_DIR / name)
        (root / "UTKFace").mkdir()
        if utkface == "corrupt":
            for f in os.listdir(DATA_DIR / "UTKFace"):
                (root / "UTKFace" / f).touch()
        return root
    return make


# id, command (script + flags; every run adds --smoke --out-dir --data-dir), setup, expected text in the
# error line. setup(tmp) returns extra flags (list) or a data dir (Path).
CASES = [
    # data integrity
    ("mnist-magic-bytes-flipped", ["ex1_autoencoder.py"], _mnist({"t10k-images-idx3-ubyte": flip([2, 3])}),
     "corrupted: "),
    ("mnist-label-200", ["ex1_autoencoder.py"], _mnist({"train-labels-idx1-ubyte": set_byte(8 + 7, 200)}),
     "train-labels-idx1-ubyte, expected sha256"),
    ("mnist-pixels-flipped", ["ex1_autoencoder.py"], _mnist({"t10k-images-idx3-ubyte": flip(range(5000, 5010))}),
     "t10k-images-idx3-ubyte, expected sha256 0fa7898d"),
    ("mnist-truncated", ["ex1_autoencoder.py"], _mnist({"t10k-labels-idx1-ubyte": truncate}), "corrupted: "),
    ("mnist-missing", ["ex1_autoencoder.py"], lambda tmp: tmp / "nothing-here", "not found"),
    ("imagenette-empty-train", ["lab_cam.py"], _empty_imagenette_train, "has no usable images"),
    ("utkface-empty", ["lab_dbvae.py"], _lab_data("empty"), "UTKFace"),
    # checkpoints
    ("ckpt-random-bytes", ["ex1_autoencoder.py"], _random_bytes_ckpt, "cannot read checkpoint"),
    ("ckpt-empty", ["ex1_autoencoder.py"], _empty_ckpt, "cannot read checkpoint"),
    ("ckpt-resume-other-epochs", ["ex1_autoencoder.py"], _finished_2_epoch_ckpt, "epochs 2 (this run: 1)"),
    ("ckpt-prerequisite-unfinished", ["ex3_classifier_decoding.py"], _ex3_prerequisite(True), "unfinished"),
    ("ckpt-prerequisite-other-recipe", ["ex3_classifier_decoding.py"], _ex3_prerequisite(False), "trained with"),
    ("ckpt-ex5-autoencoder-other-recipe", ["ex5_finetune.py"], _ex5_autoencoder_of_another_recipe, "trained with"),
    # CLI values
    ("lr-inf", ["ex1_autoencoder.py", "--lr", "inf"], None, "--lr"),
    ("lr-1e9", ["ex1_autoencoder.py", "--lr", "1e9"], None, "--lr"),
    ("seed-negative", ["ex1_autoencoder.py", "--seed", "-1"], None, "--seed"),
    ("device-mps", ["ex1_autoencoder.py", "--device", "mps"], None, "MPS"),
    ("ex2-hidden-0", ["ex2_classifier.py", "--hidden", "0"], None, "--hidden"),
    ("ex3-knn-0", ["ex3_classifier_decoding.py", "--knn", "0"], None, "--knn"),
    ("cam-weight-decay-nan", ["lab_cam.py", "--weight-decay", "nan"], None, "--weight-decay"),
    ("cam-dropout-2", ["lab_cam.py", "--dropout", "2"], None, "--dropout"),
    ("bench-seed-negative", ["bench", "--seed", "-1"], None, "--seed"),
    ("ex4-n-train-70000", ["ex4_few_shot.py", "--n-train", "70000"], None, "--n-train"),
    ("ex4-seed-negative", ["ex4_few_shot.py", "--seed", "-1"], None, "--seed"),
    ("ex4-seeds-negative", ["ex4_few_shot.py", "--seeds", "-1"], None, "--seeds"),
    ("ex4-device-mps", ["ex4_few_shot.py", "--device", "mps"], None, "MPS"),
    ("ex4-weight-decay-nan", ["ex4_few_shot.py", "--weight-decay", "nan"], None, "--weight-decay"),
    ("ex5-encoder-lr-ratio-negative", ["ex5_finetune.py", "--encoder-lr-ratio", "-1"], None, "--encoder-lr-ratio"),
    ("ex5-round-lr-nan", ["ex5_finetune.py", "--round-lr", "nan"], None, "--round-lr"),
    ("ex5-seeds-duplicate", ["ex5_finetune.py", "--seeds", "1", "1"], None, "duplicates"),
    ("dbvae-train-faces-negative", ["lab_dbvae.py", "--train-faces", "-5"], None, "--train-faces"),
]


REAL_PROCESS_ROWS = {"mnist-truncated", "mnist-missing", "ckpt-random-bytes", "imagenette-empty-train", "lr-inf"}

CASES = [pytest.param(*c.values, marks=c.marks, id=c.values[0]) if hasattr(c, "marks") else pytest.param(*c, id=c[0])
         for c in CASES]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MNIST, reason=f"MNIST not found under {DATA_DIR}")
@pytest.mark.parametrize("name, command, setup, expect", CASES)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, name, command, setup, expect):
    if "mps" in name and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    if command[0].startswith("lab_") and not HAS_LAB_DATA:
        pytest.skip("lab data not found")
    data_dir, extra = DATA_DIR, []
    made = setup(tmp_path) if setup is not None else None
    if isinstance(made, Path):
        data_dir = made
    elif made:
        extra = made
    out = tmp_path / "out"
    # Most rows run in-process through the scripts' own entry point (~0.5 s instead of ~6 s of interpreter
    # and torch start-up, which keeps the whole suite inside CI's budget); a few representative rows
    # run as a real process, so what the interpreter itself prints is checked too.
    proc = (run if name in REAL_PROCESS_ROWS else run_in_process)([*command, *extra], out, data_dir)
    assert_one_line_failure(proc, out, expect)
    if name == "mnist-missing":  # a failed load leaves the data dir as it was
        assert not data_dir.exists()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_IMAGENETTE, reason="Imagenette not found")
def test_lab_cam_skips_and_records_a_truncated_jpeg(tmp_path):
    """Skip-and-count: a truncated image costs one image, is printed and recorded, and the run goes on."""
    src, root = DATA_DIR / "imagenette2-160", tmp_path / "data" / "imagenette2-160"
    for split in ("train", "val"):
        for cls in sorted(p.name for p in (src / split).iterdir()):
            (root / split / cls).mkdir(parents=True)
            for f in sorted((src / split / cls).glob("*.JPEG"))[:2]:
                (root / split / cls / f.name).symlink_to(f)
    victim = sorted((root / "train" / "n01440764").iterdir())[0]
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data[:len(data) // 3])
    out = tmp_path / "out"
    proc = run(["lab_cam.py", "--gradcam-images", "2", "--channels", "8", "16", "--cam-channels", "16"], out,
               tmp_path / "data", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped 1 unreadable image(s)" in proc.stdout and "Traceback" not in proc.stderr
    r = json.loads((out / "results" / "lab_cam.json").read_text())
    assert r["skipped_images"] == {"train": 1, "val": 0} and r["train_images"] == 19
    assert r["skipped_files"]["train"] == [str(victim)]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LAB_DATA, reason="lab data not found")
def test_lab_dbvae_corrupt_faces_never_end_in_a_traceback(tmp_path):
    """Every UTKFace file unreadable: either one error line naming a file, or a printed skip count."""
    root = _lab_data("corrupt")(tmp_path)
    out = tmp_path / "out"
    proc = run(["lab_dbvae.py"], out, root)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if proc.returncode == 0:
        assert "skipped" in proc.stdout
    else:
        assert_one_line_failure(proc, out, "UTKFace")


@pytest.mark.slow
@needs_mnist
def test_ctrl_c_during_training_ends_with_one_line(tmp_path):
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
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and "interrupted; resume with --resume" in lines[0]
    assert not (tmp_path / "out" / "results" / "ex1.json").exists()


@pytest.mark.slow
def test_report_build_is_reproducible_and_leaves_files_alone(tmp_path, monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location("report_build", REPO / "report" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    results, figures = REPO / "report" / "results", REPO / "report" / "figures"
    first = build.build(tmp_path / "a.pdf", results, figures, quiet=True)
    mtime = (tmp_path / "a.pdf").stat().st_mtime_ns
    second = build.build(tmp_path / "a.pdf", results, figures, quiet=True)
    assert first["changed"] and not second["changed"]
    assert (tmp_path / "a.pdf").stat().st_mtime_ns == mtime
    # README: rewritten only when the generated table differs
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{build.MARK_START}\nold\n{build.MARK_END}\ny\n")
    monkeypatch.setattr(build, "README", readme)
    assert build.update_readme(results) is True
    text, mtime = readme.read_text(), readme.stat().st_mtime_ns
    assert build.update_readme(results) is False
    assert readme.read_text() == text and readme.stat().st_mtime_ns == mtime
