"""ex3 (frozen classifier encoder + decoder), ex4 (first 100 examples), ex5 (AE-initialised encoder)."""
from __future__ import annotations

import argparse

import pytest
import torch

import ex3_classifier_decoding as ex3
import ex5_finetune as ex5
from common.data import TensorData
from common.models import AutoEncoder, Classifier
from common.train import aggregate_histories, fit, overfitting_summary
from common.utils import seed_everything
from conftest import load_result, needs_mnist, run_script


def test_ex3_encoder_is_frozen_while_the_decoder_trains():
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
    cls = Classifier(channels=(8, 16))
    cls.train()
    for _ in range(2):  # give BatchNorm non-trivial running statistics
        cls(data.x)
    model = ex3.classifier_decoder(cls, 12, (8, 16))
    enc_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}   # params AND BN buffers
    dec_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    assert not any(p.requires_grad for p in model.encoder.parameters())
    fit(model, data, data, epochs=2, lr=1e-2, batch_size=16, gen=seed_everything(0), device=torch.device("cpu"),
        reconstruct=True, params=model.decoder.parameters(), desc="t")
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, enc_before[k]), f"encoder {k} changed"
    assert any(not torch.equal(v, dec_before[k]) for k, v in model.decoder.state_dict().items())
    assert model.encoder is cls.encoder  # really the classifier's encoder, not a copy


def test_latent_stats_against_hand_computation():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 4.0]])
    y = torch.tensor([0, 0, 1, 1])
    s = ex3.latent_stats(z, y)
    # centroids (1,0) and (10,2); within: class 0 -> 1, class 1 -> 2; between: sqrt(81 + 4)
    assert s["per_class_within"] == pytest.approx([1.0, 2.0])
    assert s["within"] == pytest.approx(1.5)
    assert s["between"] == pytest.approx(85 ** 0.5)


def test_ex5_encoder_starts_equal_to_the_autoencoder_encoder():
    torch.manual_seed(0)
    ae = AutoEncoder(channels=(8, 16))
    for m in ae.modules():  # non-default BN statistics, so the copy of buffers is checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_()
    args = argparse.Namespace(latent_dim=12, channels=(8, 16), hidden=64)
    model = ex5.make_model(args, ae, freeze=False)
    for k, v in ae.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in ex5.make_model(args, ae, freeze=True).encoder.parameters())
    scratch = ex5.make_model(args, None, freeze=False)
    assert not torch.equal(scratch.encoder.features[0].weight, ae.encoder.features[0].weight)


def test_overfitting_summary_and_aggregation():
    h = [{"epoch": 1, "train_loss": 2.0, "train_acc": 0.5, "test_loss": 1.5, "test_acc": 0.4, "train_time_s": 1},
         {"epoch": 2, "train_loss": 1.0, "train_acc": 1.0, "train_time_s": 2},
         {"epoch": 3, "train_loss": 0.1, "train_acc": 1.0, "test_loss": 1.8, "test_acc": 0.6, "train_time_s": 3}]
    o = overfitting_summary(h)
    assert o["epoch_min_test_loss"] == 1 and o["epoch_train_acc_100"] == 2
    assert o["final_gap_acc"] == pytest.approx(0.4) and o["test_loss_rise"] == pytest.approx(0.3)
    h2 = [dict(r, train_loss=r["train_loss"] + 1) for r in h]
    mean = aggregate_histories([h, h2])
    assert [r["train_loss"] for r in mean] == pytest.approx([2.5, 1.5, 0.6])
    assert mean[0]["train_loss_std"] == pytest.approx(2 ** -0.5)  # sample std of {x, x+1}
    assert "test_loss" not in mean[1]


@needs_mnist
def test_ex4_smoke_uses_exactly_the_first_100_examples(tmp_path, data_dir):
    run_script("ex4_few_shot.py", tmp_path)
    r = load_result(tmp_path, "ex4")
    from torchvision.datasets import MNIST
    assert r["train_indices"] == list(range(100)) == torch.arange(100).tolist()
    assert r["train_labels"] == MNIST(str(data_dir), train=True).targets[:100].tolist()
    assert {"mean", "std"} <= r["final_test_acc"].keys() and len(r["seeds"]) >= 2
    assert r["best_epoch_test_loss"] in [row["epoch"] for row in r["mean_history"]]
    assert (tmp_path / "figures" / "ex4_curves.png").exists()


@needs_mnist
def test_ex5_smoke_trains_missing_autoencoder_and_all_variants(tmp_path):
    proc = run_script("ex5_finetune.py", tmp_path)
    assert "not found: training the ex1 conv+FC autoencoder first" in proc.stdout
    r = load_result(tmp_path, "ex5")
    assert set(r["variants"]) == set(ex5.VARIANTS)
    assert all({"mean", "std"} <= v["final_test_acc"].keys() for v in r["variants"].values())
    assert r["train_indices"] == list(range(100))
    assert (tmp_path / "figures" / "ex45_compare.png").exists()


@needs_mnist
def test_ex3_smoke(tmp_path):
    run_script("ex3_classifier_decoding.py", tmp_path)
    r = load_result(tmp_path, "ex3")
    for key in ["silhouette", "within_class", "between_class", "knn_acc"]:
        assert set(r[key]) == {"ae", "cls"}
    assert r["ae_test_l1"] > 0 and r["cls_decoder_test_l1"] > 0
    for f in ["ex3_digits.png", "ex3_tsne.png"]:
        assert (tmp_path / "figures" / f).exists()
