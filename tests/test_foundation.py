"""Unit tests of common/: models, loss, data, training loop, checkpoints, CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, REPO, assert_figure, load_result, needs_mnist, run_script

from common.data import TensorData, first_n, load_mnist, random_affine, to_float
from common.models import AutoEncoder, Classifier, Decoder, Encoder, Lab2CNN, LabMLP, SkipMLP, convT_output_padding
from common.train import Recipe, fit, mean_l1, predict, save_checkpoint, train_epoch
from common.utils import seed_everything, write_json_atomic


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize("fc", [False, True])
def test_autoencoder_shapes_and_latent_size(fc):
    ae = AutoEncoder(latent_dim=12, fc=fc)
    x = torch.rand(5, 1, 28, 28)
    z = ae.encoder(x)
    assert z.shape == (5, 12)
    assert ae.decoder(z).shape == x.shape
    out = ae(x)
    assert out.min() >= 0 and out.max() <= 1  # sigmoid output, pixels live in [0, 1]
    if not fc:  # conv-only: the conv stack itself ends in exactly 12 numbers, no Linear anywhere
        assert not any(isinstance(m, torch.nn.Linear) for m in ae.encoder.modules())
        assert ae.encoder.head[0](ae.encoder.features(x)).shape == (5, 3, 2, 2)


def test_conv_only_latent_must_tile_the_last_map():
    with pytest.raises(ValueError, match="multiple of 2x2"):
        Encoder(latent_dim=10, fc=False)


def test_output_padding_lands_on_encoder_sizes():
    assert convT_output_padding(4, 7, 3, 2, 1) == 0
    assert convT_output_padding(7, 14, 3, 2, 1) == 1
    with pytest.raises(ValueError):
        convT_output_padding(4, 12, 3, 2, 1)
    # other input sizes and depths also round-trip (sizes are computed, not hard-coded)
    for shape, ch in [((1, 32, 32), (8, 16)), ((3, 20, 20), (8, 16, 32))]:
        x = torch.rand(2, *shape)
        assert Decoder(6, ch, True, shape)(Encoder(6, ch, True, shape)(x)).shape == x.shape


def test_classifier_and_baselines_output_logits():
    x = torch.rand(4, 1, 28, 28)
    for model in [Classifier(), Lab2CNN(), LabMLP(), SkipMLP()]:
        assert model(x).shape == (4, 10)
    assert Classifier().encoder(x).shape == (4, 12)


# ----------------------------------------------------------------------------- loss
def test_mean_l1_matches_manual_computation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 1, 4, 5, generator=g), torch.rand(3, 1, 4, 5, generator=g)
    an, bn = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    manual, count = 0.0, 0
    for i in range(3):
        for r in range(4):
            for c in range(5):
                manual += abs(an[i, 0, r, c] - bn[i, 0, r, c])
                count += 1
    assert mean_l1(a, b).item() == pytest.approx(manual / count, rel=1e-6)
    assert mean_l1(a, b).item() == pytest.approx(torch.nn.functional.l1_loss(a, b).item(), rel=1e-6)


# ----------------------------------------------------------------------------- data
@needs_mnist
def test_mnist_is_byte_exact():
    train = load_mnist(DATA_DIR, train=True)
    test = load_mnist(DATA_DIR, train=False)
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.x.dtype == torch.float32 and 0 <= train.x.min() and train.x.max() <= 1
    assert train.y[:5].tolist() == [5, 0, 4, 1, 9]
    assert train.x.mean().item() == pytest.approx(0.1307, abs=5e-5)
    assert train.x.std().item() == pytest.approx(0.3081, abs=5e-5)
    # reference: the raw IDX bytes (16-byte header), compared pixel by pixel
    raw = np.fromfile(DATA_DIR / "MNIST" / "raw" / "train-images-idx3-ubyte", dtype=np.uint8)[16:]
    back = (train.x * 255).round().to(torch.uint8).flatten()
    assert torch.equal(back, torch.from_numpy(raw.copy()))


@needs_mnist
def test_first_100_subset_is_exactly_indices_0_to_99():
    from torchvision.datasets import MNIST
    from torchvision.transforms.functional import pil_to_tensor
    reference = torch.utils.data.Subset(MNIST(str(DATA_DIR), train=True), torch.arange(100))  # the assignment's
    few = first_n(load_mnist(DATA_DIR, train=True), 100)
    assert torch.equal(few.index, torch.arange(100))
    assert few.y.tolist() == [label for _, label in reference]
    assert torch.equal((few.x * 255).round().to(torch.uint8), torch.stack([pil_to_tensor(im) for im, _ in reference]))


def test_random_affine_identity_and_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(random_affine(x, g, max_shift=0, max_degrees=0), x, atol=1e-5)
    y = random_affine(x, g)
    assert y.shape == x.shape and not torch.allclose(y, x)


# ----------------------------------------------------------------------------- training / checkpoints
def _tiny_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorData(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_fit_decreases_loss_on_a_memorisable_set():
    data = _tiny_data()
    gen = seed_everything(0)
    model = Classifier(channels=(8, 16))
    hist = fit(model, data, data, Recipe(epochs=15, lr=1e-2, batch_size=16), gen=gen)
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    assert hist[-1]["train_time_s"] >= hist[0]["train_time_s"] > 0
    assert {"test_loss", "test_acc", "train_acc", "epoch_time_s"} <= hist[-1].keys()


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """Kill a run in epoch 3 (after epoch 2's checkpoint is on disk), resume: same result as never stopping."""
    import common.train
    data, recipe = _tiny_data(), Recipe(epochs=3, lr=1e-2, batch_size=16)
    gen = seed_everything(1)
    straight = AutoEncoder(channels=(4, 8))
    h1 = fit(straight, data, data, recipe, gen=gen, loss_fn=mean_l1)

    class Killed(Exception):
        pass

    calls, evaluate = [], common.train.evaluate

    def killed_in_epoch_3(*args, **kwargs):  # evaluation runs before that epoch's checkpoint is written
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        return evaluate(*args, **kwargs)

    ckpt = tmp_path / "ae.pt"
    monkeypatch.setattr(common.train, "evaluate", killed_in_epoch_3)
    gen = seed_everything(1)
    with pytest.raises(Killed):
        fit(AutoEncoder(channels=(4, 8)), data, data, recipe, gen=gen, loss_fn=mean_l1, ckpt_path=ckpt)
    monkeypatch.setattr(common.train, "evaluate", evaluate)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2

    gen = seed_everything(123)  # another seed and init: everything must come from the checkpoint
    resumed = AutoEncoder(channels=(4, 8))
    h2 = fit(resumed, data, data, recipe, gen=gen, loss_fn=mean_l1, ckpt_path=ckpt, resume=True)
    assert [r["epoch"] for r in h2] == [1, 2, 3]
    assert h2[-1]["train_loss"] == pytest.approx(h1[-1]["train_loss"], rel=1e-6)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_train_epoch_is_the_plain_loop():
    """train_epoch (what fit runs) = the usual hand-written loop over shuffled index batches: same loss
    (the mean over examples, weighted by batch size), accuracy and weights."""
    data = _tiny_data(20)
    losses = []
    for way in ("train_epoch", "by hand"):
        torch.manual_seed(0)
        model = LabMLP()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(3)
        if way == "train_epoch":
            stats = train_epoch(model, data, torch.nn.functional.cross_entropy, opt, None, gen, batch_size=8)
        else:
            total, right = 0.0, 0
            for idx in torch.randperm(20, generator=gen).split(8):
                out = model(data.x[idx])
                loss = torch.nn.functional.cross_entropy(out, data.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, right = total + loss.item() * len(idx), right + int((out.argmax(1) == data.y[idx]).sum())
            stats = {"loss": total / 20, "acc": right / 20}
        losses.append((stats, [p.detach().clone() for p in model.parameters()]))
    (a, pa), (b, pb) = losses
    assert a["acc"] == b["acc"] and a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))


def test_predict_batches_and_concatenates_tuples():
    x = torch.arange(14.0).view(7, 2)
    out = predict(torch.nn.Identity(), x, torch.device("cpu"), batch_size=3, fn=lambda b: (2 * b, b.sum(1)))
    assert isinstance(out, tuple)
    torch.testing.assert_close(out[0], 2 * x)
    torch.testing.assert_close(out[1], x.sum(1))
    torch.testing.assert_close(predict(torch.nn.Identity(), x, torch.device("cpu"), batch_size=3), x)


def test_to_float_scales_uint8_and_leaves_floats_alone():
    u8 = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    torch.testing.assert_close(to_float(u8, "cpu"), torch.tensor([[0.0, 0.2, 1.0]]))
    assert u8.tolist() == [[0, 51, 255]]                  # the uint8 input is not modified
    f = torch.rand(2, 3)
    assert to_float(f) is f


def test_curve_plots_are_reproducible_vector_pdfs_with_integer_epochs(tmp_path, monkeypatch):
    from common import plots
    hist = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e} for e in (1, 2, 3)]
    paths = [plots.plot_curves({"a": hist}, tmp_path / d / "c.png", "t", metrics=(("loss", "loss"),)) for d in "ab"]
    assert [p.name for p in paths] == ["c.pdf", "c.pdf"]  # the same stem, as a PDF
    a, b = (p.read_bytes() for p in paths)
    assert a.startswith(b"%PDF") and a == b  # no creation date: the same figure gives the same file
    assert b"/FontFile2" in a                 # TrueType embedded: the text stays text in print
    figs = []
    monkeypatch.setattr(plots, "save", lambda fig, path, vector=False: figs.append(fig) or path)
    for rows in (hist, hist[:1]):  # 3 epochs, and a 1-epoch smoke run
        plots.plot_curves({"a": rows}, tmp_path / "c.png", "t", metrics=(("loss", "loss"),))
        ax = figs[-1].axes[0]
        lo, hi = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert shown and all(t == int(t) for t in shown), shown  # no epoch 2.5


def test_write_json_atomic_leaves_no_temp_files(tmp_path):
    p = write_json_atomic(tmp_path / "r.json", {"a": 1.23456789, "t": torch.tensor([1, 2])})
    assert json.loads(p.read_text()) == {"a": 1.234568, "t": [1, 2]}
    assert p.stat().st_mode & 0o777 == 0o644  # an ordinary file, although written through mkstemp (0600)
    assert [f.name for f in tmp_path.iterdir()] == ["r.json"]


# ----------------------------------------------------------------------------- scripts
def _strip_times(obj):
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items() if "time" not in k and k not in ("out_dir", "runs_dir")}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


@needs_mnist
@pytest.mark.slow
def test_ex1_smoke_writes_results_and_figures_deterministically(tmp_path):
    run_script("ex1_autoencoder.py", tmp_path / "a")
    r = load_result(tmp_path / "a", "ex1")
    assert r["latent_dim"] == 12 and set(r["variants"]) == {"conv", "conv_fc"}
    assert all(v["latent_shape"] == [12] for v in r["variants"].values())
    assert r["pca_test_l1"] > 0 and len(r["history"]["conv"]) == 1
    assert_figure(tmp_path / "a" / "figures" / "ex1_reconstructions.png")
    assert (tmp_path / "a" / "figures" / "ex1_loss.pdf").read_bytes().startswith(b"%PDF")  # curves: vector
    run_script("ex1_autoencoder.py", tmp_path / "b")  # same seed on CPU -> identical results JSON
    assert _strip_times(load_result(tmp_path / "b", "ex1")) == _strip_times(r)


@needs_mnist
@pytest.mark.slow
def test_ex1_resume_with_foreign_checkpoint_is_a_clear_error(tmp_path):
    runs = tmp_path / "runs"
    save_checkpoint(runs / "ex1_conv.pt", Classifier())
    env = {"DATA_DIR": str(DATA_DIR), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "ex1_autoencoder.py", "--smoke", "--out-dir", str(tmp_path),
                           "--runs-dir", str(runs), "--resume"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "architecture" in proc.stderr and "Traceback" not in proc.stderr


@needs_mnist
@pytest.mark.slow
def test_ex2_smoke_writes_results_and_figures(tmp_path):
    run_script("ex2_classifier.py", tmp_path)
    r = load_result(tmp_path, "ex2")
    assert 0 <= r["test_acc"]["mean"] <= 1 and set(r["baselines"]) == {"lab2_cnn", "lab_mlp", "skip_mlp"}
    assert all("test_acc" in b for b in r["baselines"].values())
    for f in ["ex2_curves.pdf", "ex2_baselines.pdf", "ex2_shift.pdf"]:  # curve plots: vector
        assert (tmp_path / "figures" / f).read_bytes().startswith(b"%PDF"), f


def test_collapse_detector_flags_constant_and_black_outputs():
    import ex1_autoencoder
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 1, 28, 28, generator=g) > 0.85).float()    # sparse "strokes", mean ~0.15
    assert ex1_autoencoder.is_collapsed(torch.zeros_like(x), x)       # all-black image
    assert ex1_autoencoder.is_collapsed(x.mean(0, keepdim=True).expand_as(x), x)  # same image for all inputs
    assert not ex1_autoencoder.is_collapsed(x, x)                      # perfect reconstruction
    assert not ex1_autoencoder.is_collapsed((x * 0.9 + 0.05), x)       # faithful but imperfect


def test_shift_images_matches_an_explicit_pixel_loop():
    from common.data import shift_images
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 5, 7, generator=g)
    for dx, dy in [(0, 0), (2, 0), (-3, 1), (1, -4), (7, 0), (0, -5)]:
        ref = torch.zeros_like(x)
        for i in range(5):
            for j in range(7):
                if 0 <= i - dy < 5 and 0 <= j - dx < 7:
                    ref[..., i, j] = x[..., i - dy, j - dx]
        assert torch.equal(shift_images(x, dx, dy), ref), (dx, dy)


def test_ex2_shift_test_counts_correct_predictions_per_shift_and_direction():
    """A fake classifier that says 'digit 1' when the image's column of mass is right of the centre and '0'
    otherwise: shifting right keeps every right-leaning image right, shifting left by enough flips it."""
    import ex2_classifier

    class ColumnOfMass(torch.nn.Module):
        def forward(self, x):                                  # x (B, 1, H, W)
            cols = torch.arange(x.shape[-1], dtype=x.dtype)
            com = (x.sum((1, 2)) * cols).sum(1) / x.sum((1, 2, 3)).clamp_min(1e-9)   # (B,)
            right = (com > (x.shape[-1] - 1) / 2).float()
            return torch.stack([1 - right, right], 1)          # (B, 2) logits

    x = torch.zeros(4, 1, 28, 28)
    x[:, :, 10:18, 15:17] = 1.0                                 # a bar just right of the centre
    data = TensorData(x, torch.ones(4, dtype=torch.long))
    r = ex2_classifier.shift_test(ColumnOfMass(), data, [0, 1, 3], torch.device("cpu"))
    assert [p["rate"] for p in r["right"]] == [1.0, 1.0, 1.0]
    assert [p["rate"] for p in r["left"]] == [1.0, 1.0, 0.0]    # 15.5 - 3 = 12.5 < 13.5: now 'left'
    assert [p["rate"] for p in r["up"]] == [1.0, 1.0, 1.0] and r["up"][0]["n"] == 4


def test_affine_words_name_random_affines_own_defaults():
    """Recipe.augment records the augmentation in words; they must be what random_affine does by default."""
    import inspect

    from common.data import AFFINE, random_affine
    d = {k: v.default for k, v in inspect.signature(random_affine).parameters.items()}
    assert AFFINE == f"shifts ≤ {d['max_shift']:g} px, rotations ≤ {d['max_degrees']:g}°"
