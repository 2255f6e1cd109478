"""Class Activation Maps (common/cam.py, lab_cam.py): the CAM identities, the lab's data, precision and picks,
a smoke run."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA_DIR, assert_figure, load_result, run_script
from torch.nn import functional as F

import lab_cam
from common.cam import CamCNN, border_share, class_activation_maps, grad_cam, input_size_cams, normalise_map
from common.data import IMAGENETTE_DIR, TensorData
from common.train import resolve_precision
from common.utils import UserError
from lab_cam import CamRecipe, evaluate_val, load_data, pick_examples, random_resized_crop

HAS_IMAGENETTE = (DATA_DIR / IMAGENETTE_DIR / "val").is_dir()
needs_imagenette = pytest.mark.skipif(not HAS_IMAGENETTE,
                                      reason=f"imagenette2-160 not found under {DATA_DIR} (set DATA_DIR)")

OFFICIAL = [("n01440764", "tench"), ("n02102040", "English springer"), ("n02979186", "cassette player"),
            ("n03000684", "chain saw"), ("n03028079", "church"), ("n03394916", "French horn"),
            ("n03417042", "garbage truck"), ("n03425413", "gas pump"), ("n03445777", "golf ball"),
            ("n03888257", "parachute")]


@pytest.fixture
def model_and_input():
    torch.manual_seed(0)
    model = CamCNN(channels=(4, 8), cam_channels=6, num_classes=5).double().eval()
    # Non-trivial BatchNorm statistics and a non-zero bias, so the identities are not satisfied by accident.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.nn.init.uniform_(model.fc.bias, -1, 1)
    x = torch.rand(3, 3, 24, 32, dtype=torch.float64)  # non-square on purpose: (B, 3, H, W)
    return model, x


def test_cam_is_the_weighted_sum_of_the_last_feature_maps(model_and_input):
    model, x = model_and_input
    cams, _ = class_activation_maps(model, x)                  # (B, C, h, w)
    f = model.features(x)                                      # (B, K, h, w)
    w = model.fc.weight                                        # (C, K)
    expected = torch.zeros_like(cams)
    for c in range(w.shape[0]):                                # M_c(x, y) = sum_k w_k^c f_k(x, y), by hand
        for k in range(w.shape[1]):
            expected[:, c] += w[c, k] * f[:, k]
    assert cams.shape == (3, 5, 24 // 4, 32 // 4)
    torch.testing.assert_close(cams, expected)

    # input_size_cams: each image's map of its predicted class (or of a chosen class), upsampled to the image size
    def upsampled(classes):  # the hand-computed maps of these classes (B,), bilinear to (B, H, W)
        return F.interpolate(expected[torch.arange(3), classes][:, None], size=x.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]
    logits, cam = input_size_cams(model, x, normalize=False)
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(cam, upsampled(model(x).argmax(1)))
    chosen = torch.tensor([4, 0, 2])
    torch.testing.assert_close(input_size_cams(model, x, chosen, normalize=False)[1], upsampled(chosen))
    cam_n = input_size_cams(model, x[:1])[1][0].detach()
    assert cam_n.shape == x.shape[-2:] and cam_n.min() == 0 and cam_n.max() == pytest.approx(1.0)


def test_spatial_mean_of_cam_plus_bias_is_the_logit(model_and_input):
    model, x = model_and_input
    cams, _ = class_activation_maps(model, x)
    logits = model(x)                                          # the ordinary forward pass, (B, C)
    torch.testing.assert_close(cams.mean(dim=(2, 3)) + model.fc.bias, logits)


def test_gradcam_is_cam_up_to_scale_for_a_gap_linear_head(model_and_input):
    model, x = model_and_input
    logits, cam = input_size_cams(model, x[1:2], normalize=False)
    c, cam = int(logits.argmax()), cam[0]
    gc, c2 = grad_cam(model, x[1], normalize=False, relu=False)    # default class: the predicted one
    h, w = (s // model.downsample for s in x.shape[-2:])
    assert c2 == c
    torch.testing.assert_close(gc, cam / (h * w))              # alpha_k^c = w_k^c / (h w)
    gc_n, _ = grad_cam(model, x[1], c)                          # standard: ReLU, min-max
    torch.testing.assert_close(gc_n, normalise_map(cam.clamp_min(0)))


def test_lab_evaluation_matches_per_image_maps(model_and_input):
    """evaluate_val (batched through common.train.predict, batches of 2 for 3 images) gives each image's
    logits and the min-max CAM of its predicted class, as input_size_cams computes them one image at a time."""
    model, x = model_and_input
    y = torch.tensor([0, 1, 2])
    names = ["a", "b", "c", "d", "e"]
    ev = evaluate_val(model, TensorData(x, y), names, "cpu", batch_size=2)
    torch.testing.assert_close(ev["logits"], model(x).detach())
    for i in range(3):
        logits, cam = input_size_cams(model, x[i:i + 1])
        probs = logits.detach().softmax(1)[0]
        assert int(ev["pred"][i]) == int(probs.argmax()) and float(ev["conf"][i]) == pytest.approx(float(probs.max()))
        torch.testing.assert_close(ev["cams"][i], cam[0])
    assert ev["acc"] == pytest.approx((ev["pred"] == y).float().mean().item())
    assert ev["confusion"].sum() == 3 and all(ev["confusion"][int(y[i]), int(ev["pred"][i])] >= 1 for i in range(3))


def test_border_share_and_example_picks_hand_computed():
    maps = torch.zeros(3, 8, 8)
    maps[0, 3:5, 3:5] = 1.0      # all mass in the centre
    maps[1, 0, 0] = 1.0          # all mass in a corner
    maps[2] = 1.0                # uniform: the central square of side round(8 / sqrt 2) = 6 holds 36 of 64
    torch.testing.assert_close(border_share(maps), torch.tensor([0.0, 1.0, 1 - 36 / 64]))
    # class 0: images 0, 1, 2 right (confidence 0.9, 0.6, 0.3), image 3 wrong (0.8); class 1: image 4 wrong
    y = torch.tensor([0, 0, 0, 0, 1])
    pred = torch.tensor([0, 0, 0, 1, 0])
    conf = torch.tensor([0.9, 0.6, 0.3, 0.8, 0.7])
    share = torch.tensor([0.1, 0.5, 0.9, 0.2, 0.3])
    picks = pick_examples(y, pred, conf, share, 2)
    # correct: the most confident right answer (0); wrong reason: of the other confident (>= 0.5) right
    # answers the one with most border mass (1, not the unconfident 2); mistake: the most confident (3)
    assert picks[0] == {"correct": 0, "wrong_reason_candidate": 1, "misclassified": 3}
    assert picks[1] == {"correct": None, "wrong_reason_candidate": None, "misclassified": 4}


def test_random_resized_crop_full_view_is_identity_or_mirror():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    out = random_resized_crop(x, gen, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True)
    xf = x.float() / 255
    same = [torch.allclose(o, xf[i], atol=1e-5) for i, o in enumerate(out)]
    mirrored = [torch.allclose(o, xf[i].flip(-1), atol=1e-5) for i, o in enumerate(out)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)
    # random crops: right shape and range, reproducible from the generator
    a = random_resized_crop(x, torch.Generator().manual_seed(1), 12)
    b = random_resized_crop(x, torch.Generator().manual_seed(1), 12)
    assert a.shape == (8, 3, 12, 12) and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b)


def test_missing_or_empty_data_is_one_clear_error(tmp_path):
    small = CamRecipe(img_size=32, val_size=32)
    with pytest.raises(UserError, match="Imagenette"):
        load_data(tmp_path, small)
    (tmp_path / "imagenette2-160" / "train" / "n01440764").mkdir(parents=True)  # a class folder without images
    with pytest.raises(UserError, match="train' has no usable images.*one folder per Imagenette class"):
        load_data(tmp_path, small)


def test_precision_auto_is_bf16_only_with_native_bf16_and_a_bench_that_says_it_pays(monkeypatch, tmp_path):
    from common import train
    from common.utils import machine
    cpu = torch.device("cpu")
    assert [resolve_precision(p, cpu, "cam") for p in ("fp32", "bf16")] == ["fp32", "bf16"]  # explicit: as asked
    bench = tmp_path / "bench.json"
    monkeypatch.setattr(train, "BENCH_JSON", bench)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's native-bf16 probes
    for probe in probes:
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    measured = {"provenance": {"cpu": machine()["cpu"]}, "cam": {"pays": True}, "ae": {"pays": False}}
    bench.write_text(json.dumps(measured))
    assert resolve_precision("auto", cpu, "cam") == "fp32"   # AVX2 or AVX512 without BF16: emulated, ~10x slower
    monkeypatch.setattr(torch.cpu, probes[0], lambda: True, raising=False)
    assert resolve_precision("auto", cpu, "cam") == "bf16"   # native kernels, and measured to pay for this model
    assert resolve_precision("auto", cpu, "ae") == "fp32"    # native, but measured not to pay for this one
    assert resolve_precision("auto", cpu) == "fp32"          # no model named: no measurement to go by
    bench.write_text(json.dumps({"provenance": {"cpu": "another CPU"}, "cam": {"pays": True}}))
    assert resolve_precision("auto", cpu, "cam") == "fp32"   # measured on another CPU model: not evidence here
    bench.unlink()
    assert resolve_precision("auto", cpu, "cam") == "fp32"   # never measured


def test_flags_make_the_recipe():
    args, recipe = lab_cam.get_args(["--min-scale", "0.5", "--train-size", "48", "--label-smoothing", "0",
                                     "--epochs", "3"])
    assert (recipe.min_scale, recipe.train_size, recipe.label_smoothing, recipe.epochs) == (0.5, 48, 0.0, 3)
    assert (recipe.img_size, recipe.val_size, recipe.weight_decay) == (96, 80, 0.05)  # the defaults
    assert "50–100 %" in recipe.augment and "48 px" in recipe.augment and args.precision == "auto"
    args, recipe = lab_cam.get_args(["--smoke", "--epochs", "9"])
    assert args.epochs == recipe.epochs == lab_cam.SMOKE_EPOCHS
    for bad in (["--val-size", "97"], ["--min-scale", "0"], ["--bf16"], ["--precision", "fp16"]):
        with pytest.raises(SystemExit):
            lab_cam.get_args(bad)


@needs_imagenette
def test_loader_returns_the_official_classes_in_order():
    from torchvision.datasets import Imagenette

    one = load_data(DATA_DIR, CamRecipe(img_size=32, val_size=32), per_class=1)
    assert one["wnids"] == [w for w, _ in OFFICIAL] and one["skipped"] == {"train": [], "val": []}
    assert one["val"].x.shape == (10, 3, 32, 32) and one["val"].x.dtype == torch.uint8
    assert one["train"].y.tolist() == one["val"].y.tolist() == list(range(10))
    both = load_data(DATA_DIR, CamRecipe(img_size=40, val_size=30), per_class=2)
    assert both["names"] == [n for _, n in OFFICIAL] and both["train"].x.shape == (20, 3, 40, 40)
    uncropped = load_data(DATA_DIR, CamRecipe(img_size=40, val_size=40), per_class=2)["val"].x
    torch.testing.assert_close(both["val"].x, uncropped[..., 5:35, 5:35])
    assert Imagenette(str(DATA_DIR), split="val", size="160px").wnids == one["wnids"]  # torchvision agrees


@needs_imagenette
@pytest.mark.slow
def test_smoke_run(tmp_path):
    run_script("lab_cam.py", tmp_path, "--gradcam-images", "5", timeout=120)
    res = load_result(tmp_path, "lab_cam")
    assert res["classes"] == [n for _, n in OFFICIAL]
    assert 0.0 <= res["val_acc"] <= 1.0 and len(res["history"]) == 1
    assert {"train_loss", "train_acc", "test_loss", "test_acc"} <= set(res["history"][0])
    assert set(res["per_class_val_acc"]) == set(res["classes"])
    assert res["train_images"] == res["val_images"] == 20
    assert res["gradcam_comparison"]["pearson_raw_mean"] > 0.999
    figs = tmp_path / "figures"
    parts = -(-len(res["classes"]) // lab_cam.OVERVIEW_CLASSES)
    overviews = [f"lab_cam_overview_{k}.png" for k in range(1, parts + 1)]
    for name in [*overviews, "lab_cam_gradcam.png"]:
        assert_figure(figs / name)
    assert (figs / "lab_cam_curves.pdf").read_bytes().startswith(b"%PDF")  # curves: vector
    assert not (figs / f"lab_cam_overview_{parts + 1}.png").exists()
    examples = sorted((figs / "cam").glob("*.png"))
    assert len(examples) == len(res["examples"]) > 0  # one file per example recorded, no stale ones
    for f in examples:
        assert_figure(f)
