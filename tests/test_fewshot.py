"""ex3 (frozen classifier encoder + decoder), ex4 (first 100 examples), ex5 (AE-initialised encoder)."""
from __future__ import annotations

import argparse

import pytest
import torch
from conftest import load_result, needs_mnist, run_script

import ex3_classifier_decoding as ex3
import ex4_few_shot as ex4
import ex5_finetune as ex5
from common import fewshot
from common.data import TensorData, first_n
from common.models import AutoEncoder, Classifier
from common.train import Recipe, cross_entropy, evaluate, fit, mean_l1, predict
from common.utils import UserError, seed_everything


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
    fit(model, data, data, Recipe(epochs=2, lr=1e-2, batch_size=16), gen=seed_everything(0), loss_fn=mean_l1)
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
    args = argparse.Namespace(latent_dim=12, channels=(8, 16), hidden=64, dropout=0.0)
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
    o = fewshot.overfitting_summary(h)
    assert o["epoch_min_test_loss"] == 1 and o["epoch_train_acc_100"] == 2
    assert o["final_gap_acc"] == pytest.approx(0.4) and o["test_loss_rise"] == pytest.approx(0.3)
    h2 = [dict(r, train_loss=r["train_loss"] + 1) for r in h]
    mean = fewshot.aggregate_histories([h, h2])
    assert [r["train_loss"] for r in mean] == pytest.approx([2.5, 1.5, 0.6])
    assert mean[0]["train_loss_std"] == pytest.approx(2 ** -0.5)  # sample std of {x, x+1}
    assert "test_loss" not in mean[1]


def _untimed(history):
    return [{k: v for k, v in row.items() if not k.endswith("time_s")} for row in history]


def _few_label_problem(n_total=96, n_labelled=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_total, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n_total,), generator=g)
    full = TensorData(x, y)
    return full, first_n(full, n_labelled)


def test_first_n_records_exactly_the_indices_it_took():
    full, few = _few_label_problem(n_labelled=20)
    assert torch.equal(few.index, torch.arange(20))
    assert torch.equal(few.x, full.x[:20]) and torch.equal(few.y, full.y[:20])
    # composition: a subset of a subset still records indices into the original
    assert torch.equal(few.subset(torch.tensor([3, 5])).index, torch.tensor([3, 5]))
    assert torch.equal(full.subset(torch.tensor([7, 9])).subset(torch.tensor([1])).index, torch.tensor([9]))


def test_a_seed_gives_the_same_result_alone_as_among_other_seeds():
    """fit_seeds reseeds before every model: seed 1's run must not depend on seed 0 having run first."""
    full, few = _few_label_problem()
    curve, recipe = full.subset(torch.arange(40)), Recipe(epochs=3, lr=1e-2, batch_size=8, schedule="constant")

    def train_one(gen):
        model = Classifier(channels=(4, 8), hidden=16)
        return model, fit(model, few, curve, recipe, gen=gen)
    both = fewshot.fit_seeds(train_one, [0, 1], desc="t")
    alone = fewshot.fit_seeds(train_one, [1], desc="t")
    assert _untimed(both["history"]["1"]) == _untimed(alone["history"]["1"])
    assert both["final_test_acc"]["values"][1] == alone["final_test_acc"]["values"][0]
    assert _untimed(both["history"]["0"]) != _untimed(both["history"]["1"])  # and the seeds really differ


def test_final_numbers_are_the_curves_last_point_on_the_same_test_images():
    full, few = _few_label_problem()
    test, recipe = fewshot.fixed_subset(full, 30), Recipe(epochs=3, lr=1e-2, batch_size=10, schedule="constant",
                                                         eval_every=2)
    models = []

    def train_one(gen):
        models.append(Classifier(channels=(4, 8), hidden=16))
        return models[-1], fit(models[-1], few, test, recipe, gen=gen)
    r = fewshot.fit_seeds(train_one, [0, 1, 2], desc="t")
    acc = r["final_test_acc"]
    for model, h, v in zip(models, r["history"].values(), acc["values"]):
        assert [row["epoch"] for row in h if "test_acc" in row] == [2, 3]      # the curve ends at the last epoch
        assert v == h[-1]["test_acc"] == evaluate(model, test, cross_entropy)["acc"]  # ... on these images
    assert acc["mean"] == pytest.approx(sum(acc["values"]) / 3)
    assert acc["ci95"][0] <= acc["mean"] <= acc["ci95"][1]
    assert r["epoch_min_test_loss"]["values"] == [o["epoch_min_test_loss"] for o in r["overfitting_per_seed"]]


def test_fixed_subset_is_one_fair_sample_whatever_the_seed():
    full, _ = _few_label_problem(n_total=200)
    torch.manual_seed(1)
    a = fewshot.fixed_subset(full, 50)
    torch.manual_seed(2)
    b = fewshot.fixed_subset(full, 50)
    assert torch.equal(a.index, b.index) and torch.equal(a.x, b.x)            # global seed does not matter
    assert len(a.index.unique()) == 50 and torch.equal(a.index, a.index.sort().values)
    assert not torch.equal(a.index, torch.arange(50)) and a.index.max() > 150  # not the first 50
    assert torch.equal(a.y, full.y[a.index])
    assert torch.equal(fewshot.fixed_subset(full, 500).index, torch.arange(200))  # n >= len: all of them


def test_confident_per_class_against_a_hand_computation():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    # class 0 rows (0, 1, 2) by confidence: 0 (0.9), 2 (0.8), 1 (0.6); class 1 rows: 3 (0.7), 4 (0.55)
    assert ex5.confident_per_class(probs, 2 / 3).tolist() == [0, 2, 3]  # round(2/3*3)=2, round(2/3*2)=1
    assert ex5.confident_per_class(probs, 1.0).tolist() == [0, 1, 2, 3, 4]


def test_label_spreading_labels_two_separated_clusters_from_one_label_each():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 2, generator=g) * 0.1
    b = torch.randn(30, 2, generator=g) * 0.1 + torch.tensor([5.0, 5.0])
    z_lab, y_lab = torch.stack([a[0], b[0]]), torch.tensor([3, 7])
    probs = ex5.label_spreading(z_lab, y_lab, torch.cat([a[1:], b[1:]]), n_neighbors=5)
    assert probs.shape == (58, 10) and torch.allclose(probs.sum(1), torch.ones(58))
    truth = torch.tensor([3] * 29 + [7] * 29)
    # points whose directed 5-NN paths never reach a labelled point know nothing: uniform, never a
    # confident wrong class (sklearn's transduction_ would call them class 3 = classes_[0])
    reached = probs.max(1).values > 0.1 + 1e-6
    assert torch.equal(probs.argmax(1)[reached], truth[reached])
    assert torch.allclose(probs[~reached], torch.full((int((~reached).sum()), 10), 0.1))
    assert reached[:29].any() and reached[29:].any()


def test_selftrain_never_reads_a_label_beyond_the_labelled_set():
    """The unlabelled images reach self-training with their labels removed: scrambling every label
    beyond index n_labelled - 1 must leave the result bit-identical."""
    full, few = _few_label_problem(n_total=120, n_labelled=20)
    scrambled = TensorData(full.x, torch.cat([full.y[:20], (full.y[20:] + 3) % 10]))
    args = argparse.Namespace(latent_dim=12, channels=(4, 8), hidden=16, dropout=0.0, neighbours=5,
                              rounds=[0.5, 1.0], smoke=False, round_epochs=1, round_lr=1e-2, round_batch_size=32)
    torch.manual_seed(0)
    ae = AutoEncoder(channels=(4, 8))
    out = []
    for f in (full, scrambled):
        data = fewshot.FewLabelData(full_train=f, train=first_n(f, 20), test=few)
        model, hist = ex5.selftrain_fn(args, ae, data, torch.device("cpu"))(seed_everything(0))
        out.append((hist, predict(model, full.x, torch.device("cpu"))))
    assert _untimed(out[0][0]) == _untimed(out[1][0])
    assert torch.equal(out[0][1], out[1][1])
    assert [r["round"] for r in out[0][0]] == [0, 1]


@pytest.mark.slow
@needs_mnist
def test_ex4_smoke_uses_exactly_the_first_100_examples(tmp_path, data_dir):
    run_script("ex4_few_shot.py", tmp_path)
    r = load_result(tmp_path, "ex4")
    from torchvision.datasets import MNIST
    assert torch.equal(torch.tensor(r["train_indices"]), torch.arange(100))  # what the run recorded using
    assert r["train_labels"] == MNIST(str(data_dir), train=True).targets[:100].tolist()
    assert sum(r["train_class_counts"]) == 100
    for key in ("final_test_acc", "final_test_loss"):
        assert {"mean", "std", "ci95", "values"} <= r[key].keys() and len(r[key]["values"]) == len(r["seeds"])
    assert len(r["seeds"]) >= 2
    assert r["overfitting"]["epoch_min_test_loss"] in [row["epoch"] for row in r["mean_history"]]
    assert (tmp_path / "figures" / "ex4_curves.pdf").exists()


@pytest.mark.slow
@needs_mnist
def test_ex5_smoke_trains_missing_autoencoder_and_all_variants(tmp_path):
    proc = run_script("ex5_finetune.py", tmp_path)
    assert "not found: training the ex1 conv+FC autoencoder first" in proc.stdout
    r = load_result(tmp_path, "ex5")
    assert set(r["variants"]) == set(ex5.DEFAULT)
    for name, v in r["variants"].items():
        assert {"mean", "std", "ci95", "values"} <= v["final_test_acc"].keys()
        if name != "scratch":
            assert {"mean_diff", "ci95", "p_value"} <= v["vs_scratch"].keys()
    assert r["train_indices"] == list(range(100))
    assert (tmp_path / "figures" / "ex45_compare.pdf").exists()


@pytest.mark.slow
@needs_mnist
def test_ex3_smoke(tmp_path):
    run_script("ex3_classifier_decoding.py", tmp_path)
    r = load_result(tmp_path, "ex3")
    for key in ["silhouette", "within_class", "between_class", "knn_acc"]:
        assert set(r[key]) == {"ae", "cls"}
    assert r["ae_test_l1"] > 0 and r["cls_decoder_test_l1"] > 0
    for f in ["ex3_digits.png", "ex3_tsne.png"]:
        assert (tmp_path / "figures" / f).exists()


def test_seed_flags_mean_what_they_say():
    def ns(**kw):
        return argparse.Namespace(**{"seed": 0, "n_seeds": 10, "seeds": None, **kw})
    assert fewshot.resolve_seeds(ns()) == list(range(10))
    assert fewshot.resolve_seeds(ns(seed=7, n_seeds=3)) == [7, 8, 9]   # --seed is the first seed
    assert fewshot.resolve_seeds(ns(seeds=[11, 12])) == [11, 12]
    assert fewshot.resolve_seeds(ns(n_seeds=None)) == list(range(10))    # no --n-seeds: the script's default
    assert fewshot.resolve_seeds(ns(seed=100, n_seeds=None), 3) == [100, 101, 102]
    with pytest.raises(UserError, match="duplicates"):
        fewshot.resolve_seeds(ns(seeds=[1, 1]))


def test_ex5_scratch_is_ex4s_recipe():
    """ex5's `scratch` variant is ex4's run, so every ex5-vs-scratch comparison is paired: same recipe."""
    assert ex5.RECIPE == ex4.RECIPE
    assert vars(ex4.get_args([])) == {k: v for k, v in vars(ex5.get_args([])).items() if k in vars(ex4.get_args([]))}
