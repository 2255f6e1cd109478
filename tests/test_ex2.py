"""ex2's comparisons against hand counts, and the GAP head's shift invariance by construction."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ex2_classifier
from common import stats
from common.models import Classifier, GAPClassifier


def test_gap_head_ignores_where_the_features_are_and_the_fc_head_does_not():
    torch.manual_seed(0)
    feats = torch.rand(2, 128, 4, 4)                      # the encoder's last feature map (B, C, 4, 4)
    moved = feats.roll(1, dims=-1)                        # the same features one cell to the right
    gap, fc = GAPClassifier().encoder.head, Classifier().encoder.head
    assert torch.allclose(gap(feats), gap(moved), atol=1e-6)
    assert not torch.allclose(fc(feats), fc(moved), atol=1e-3)


def fake_runs(accs: list[float], n: int = 100, seed: int = 0) -> list[dict]:
    """Runs as train_seeds returns them: the first round(acc * n) of n test images right, the rest wrong,
    shuffled per seed so that two models disagree on some images."""
    g = np.random.default_rng(seed)
    return [{"seed": s, "history": [{"test_acc": a}], "correct": g.permutation(np.arange(n) < round(a * n))}
            for s, a in enumerate(accs)]


def test_compare_baselines_pairs_seed_by_seed_and_holm_adjusts_only_the_secondaries():
    ours = fake_runs([0.95, 0.96, 0.94])
    base = {"lab_mlp": fake_runs([0.80, 0.82, 0.79], seed=1), "lab2_cnn": fake_runs([0.94, 0.95, 0.95], seed=2),
            "skip_mlp": fake_runs([0.90, 0.91, 0.93], seed=3)}
    c = ex2_classifier.compare_baselines(ours, base)
    assert c["primary"] == "lab2_cnn" and "p_holm" not in c["lab2_cnn"]["paired_t"]
    assert c["lab2_cnn"]["paired_t"]["diffs"] == pytest.approx([0.01, 0.01, -0.01])
    secondary = [c[k]["paired_t"]["p_value"] for k in ("lab_mlp", "skip_mlp")]
    assert [c[k]["paired_t"]["p_holm"] for k in ("lab_mlp", "skip_mlp")] == pytest.approx(stats.holm(secondary))
    m = c["lab_mlp"]["mcnemar"][1]                        # seed 1: ours vs lab_mlp on the same 100 images
    a, b = ours[1]["correct"], base["lab_mlp"][1]["correct"]
    assert (m["a_only"], m["b_only"]) == ((a & ~b).sum(), (~a & b).sum())
    assert m["diff"] == pytest.approx(0.96 - 0.82)
