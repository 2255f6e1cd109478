"""Acceptance tests for the DB-VAE lab (common/dbvae.py, lab_dbvae.py).

Every check compares against an independent reference (torch.distributions, empirical moments, a
hand-built latent distribution, a hand computation) and fails if the implementation is wrong, e.g. if
logsigma were treated as a log-std, if the face indicator were applied after the mean, or if the
resampling weights were proportional to the density instead of its inverse.
"""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, assert_figure, load_result, run_script
from torch.distributions import Normal
from torch.nn import functional as F

from common.dbvae import (
    DBVAE,
    IMAGE_SHAPE,
    Augment,
    StandardCNN,
    batch_generators,
    dbvae_loss,
    epoch_batches,
    kl_latent_loss,
    sampling_probabilities,
)
from common.stats import sign_flip_p_value
from lab_dbvae import (
    SMOKE_MIN_DARK,
    Recipe,
    compare_paired,
    get_args,
    group_metrics,
    jittered_copy,
    parse_utkface_name,
    rejection_threshold,
    sampling_summary,
)

HAS_FACES = (DATA_DIR / "UTKFace").is_dir() and (DATA_DIR / "imagenette2-160").is_dir()
needs_faces = pytest.mark.skipif(not HAS_FACES, reason=f"UTKFace/imagenette2-160 not found under {DATA_DIR}")


def test_kl_matches_monte_carlo():
    """Closed-form KL(q || N(0, I)) vs the mean of log q(z) - log p(z) over z ~ q (logsigma = log-variance)."""
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 6, generator=g, dtype=torch.float64)
    logsigma = torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.5
    q = Normal(mu, torch.exp(0.5 * logsigma))            # std = exp(logvar / 2)
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.manual_seed(1)
    z = q.sample((200_000,))                             # (S, B, L)
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)  # (B,)
    kl = kl_latent_loss(mu, logsigma)                     # (B,)
    # MC standard error of the mean is ~ sqrt(Var/S) ~ 0.01 here; 0.05 is >4 s.e. and far below the
    # error of treating logsigma as a log-std (> 0.5 for these values).
    torch.testing.assert_close(kl, mc, atol=0.05, rtol=0.0)
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(q, p).sum(-1), atol=1e-10, rtol=0)


def test_reparameterisation_moments():
    """z of the training loss has mean mu and std exp(logsigma / 2) (logsigma a log-variance): the decoder is
    replaced by a probe that records z, the encoder by fixed (logit, mu, logsigma)."""
    n = 200_000
    mu = torch.tensor([[-1.0, 0.5, 2.0]]).expand(n, 3)
    logsigma = torch.tensor([[0.0, math.log(4.0), math.log(0.25)]]).expand(n, 3)  # variances 1, 4, 0.25
    seen = {}

    def probe(z):
        seen["z"] = z
        return torch.zeros(len(z), 1)
    model = SimpleNamespace(encode=lambda x: (torch.zeros(n), mu, logsigma), decoder=probe)
    torch.manual_seed(0)
    dbvae_loss(model, torch.zeros(n, 1), torch.ones(n))
    z = seen["z"]
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 2.0, 0.5]), atol=0.02, rtol=0)


def _batch(n: int, label: float):
    torch.manual_seed(0)
    return torch.rand(n, *IMAGE_SHAPE), torch.full((n,), label)


def test_vae_term_ignored_for_non_faces():
    model = DBVAE(latent_dim=8)
    x, y = _batch(6, 0.0)
    loss, logit = dbvae_loss(model, x, y)
    model.zero_grad()
    loss.backward()
    dec = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None for g in dec)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in dec), "decoder got a gradient from non-faces"
    # the loss is then exactly the classification loss
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logit, y), atol=0, rtol=0)
    # ... and for faces the decoder does learn (the test above cannot pass by a dead decoder)
    x, y = _batch(6, 1.0)
    model.zero_grad()
    dbvae_loss(model, x, y)[0].backward()
    assert any(p.grad.abs().sum() > 0 for p in model.decoder.parameters())


def test_dbvae_loss_is_per_example_mean():
    """Mixed batch: mean_i [ BCE_i + 1[face_i] * VAE_i ] (paper Eq. 5), checked against a hand computation
    with the same reparameterisation noise (drawn for the whole batch from the global generator)."""
    model = DBVAE(latent_dim=4)
    torch.manual_seed(0)
    x, y = torch.rand(4, *IMAGE_SHAPE), torch.tensor([1.0, 0.0, 1.0, 0.0])
    kw = 0.1
    torch.manual_seed(5)
    loss, _ = dbvae_loss(model, x, y, kw)
    torch.manual_seed(5)
    eps = torch.randn(4, 4)
    logit, mu, logsigma = model.encode(x)
    ref = []
    for i in range(4):
        bce = -(y[i] * torch.log(torch.sigmoid(logit[i])) + (1 - y[i]) * torch.log(1 - torch.sigmoid(logit[i])))
        kl = 0.5 * (logsigma[i].exp() + mu[i] ** 2 - 1 - logsigma[i]).sum()
        recon = model.decoder((mu[i] + (0.5 * logsigma[i]).exp() * eps[i])[None])[0]
        vae = kw * kl + (x[i] - recon).abs().mean()
        ref.append(bce + (vae if y[i] == 1 else 0.0))
    torch.testing.assert_close(loss, torch.stack(ref).mean(), rtol=1e-5, atol=1e-6)


def eq5_full_batch(model, x, y, kl_weight, eps):
    """Reference: paper Eq. 5 as written, decoding every example and zeroing the non-faces' VAE term
    by the face indicator before the batch mean."""
    logit, mu, logsigma = model.encode(x)
    recon = model.decoder(mu + torch.exp(0.5 * logsigma) * eps)
    cls = F.binary_cross_entropy_with_logits(logit, y, reduction="none")
    vae = kl_weight * kl_latent_loss(mu, logsigma) + (x - recon).abs().flatten(1).mean(dim=1)
    return (cls + (y == 1).to(cls.dtype) * vae).mean()


def test_faces_only_decoding_equals_full_batch_eq5():
    """The training loss (decoder on faces only) equals Eq. 5 decoding the whole batch, given the same
    reparameterisation noise, and gives the same gradients."""
    torch.manual_seed(0)
    model = DBVAE(latent_dim=8)
    x, y = torch.rand(6, *IMAGE_SHAPE), torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    torch.manual_seed(5)
    loss, _ = dbvae_loss(model, x, y, 0.1)
    torch.manual_seed(5)
    ref = eq5_full_batch(model, x, y, 0.1, torch.randn(6, 8))
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    g1 = torch.autograd.grad(loss, list(model.parameters()))
    g2 = torch.autograd.grad(ref, list(model.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_model_shapes():
    x = torch.rand(2, *IMAGE_SHAPE)
    assert StandardCNN()(x).shape == (2, 1)
    model = DBVAE(latent_dim=7)
    logit, mu, logsigma = model.encode(x)
    assert logit.shape == (2,) and mu.shape == logsigma.shape == (2, 7) and model.decoder(mu).shape == x.shape
    torch.testing.assert_close(model(x)[:, 0], logit)  # called on images: the face logit, like StandardCNN
    # the lab's layer widths: 12, 24, 48, 72 filters, dense 512
    convs = [m.out_channels for m in StandardCNN().modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [12, 24, 48, 72]
    # the lab's layer order (Keras Conv2D(activation='relu'), then BatchNorm) and a linear decoder output
    assert [type(m) for m in StandardCNN().net[0]] == [torch.nn.Conv2d, torch.nn.ReLU, torch.nn.BatchNorm2d]
    assert isinstance(model.decoder.features[-1], torch.nn.ConvTranspose2d)


@pytest.mark.parametrize("combine", ["max", "product"])
def test_sampling_probabilities(combine):
    """A distribution, and a rare cluster (5% of faces, far from the rest) gets higher probability."""
    g = torch.Generator().manual_seed(0)
    common = torch.randn(950, 5, generator=g)
    rare = torch.randn(50, 5, generator=g) * 0.3 + 6.0
    p = sampling_probabilities(torch.cat([common, rare]), bins=10, alpha=1e-3)[combine]
    assert p.shape == (1000,)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=p.dtype), atol=1e-12, rtol=0)
    p_rare, p_common = p[950:], p[:950]
    # every rare face is drawn more often than a typical common face (the common cluster's own
    # Gaussian tails are rare too, so with the lab's max some tail points can score as high)
    assert p_rare.min() > p_common.median()
    assert p_rare.mean() > 3 * p_common.mean()
    # the rare cluster's share of draws rises well above its 5% share of the data (measured: max 0.16,
    # product 0.996); density-proportional weights would push it below 5%
    assert p_rare.sum() > (0.12 if combine == "max" else 0.9)
    if combine == "product":
        assert p_rare.min() > p_common.max()


def test_sampling_probabilities_match_lab_numpy():
    """Same numbers as the lab's numpy implementation (np.histogram + np.digitize, combined by max)."""
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(300, 4, generator=g, dtype=torch.float64)
    ref = np.zeros(300)
    for i in range(4):
        d = mu[:, i].numpy()
        dens, edges = np.histogram(d, density=True, bins=10)
        edges[0], edges[-1] = -np.inf, np.inf
        idx = np.digitize(d, edges)
        s = dens + 1e-3
        s = s / s.sum()
        w = 1.0 / s[idx - 1]
        ref = np.maximum(w / w.sum(), ref)
    ref /= ref.sum()
    np.testing.assert_allclose(sampling_probabilities(mu, 10, 1e-3)["max"].numpy(), ref, rtol=1e-9)


def _indexed(n: int) -> torch.Tensor:
    """n one-pixel uint8 images whose value is their index, so a batch tells which images it drew."""
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)


def _drawn(x: torch.Tensor) -> torch.Tensor:
    return (x.flatten() * 255).round().long()


def test_epoch_batches_follow_p():
    """Batches are half faces, half non-faces; faces are drawn from p_faces."""
    p = torch.zeros(100, dtype=torch.float64)
    p[:10] = 0.1
    batches = list(epoch_batches(_indexed(100), _indexed(37), 16, batch_generators(0), p))
    assert len(batches) == 100 // 8
    assert all(y.tolist() == [1.0] * 8 + [0.0] * 8 for _, y in batches)
    faces = torch.cat([_drawn(x[:8]) for x, _ in batches])
    assert faces.max() < 10 and len(faces.unique()) > 5
    negs = torch.cat([_drawn(x[8:]) for x, _ in batches])
    assert negs.min() >= 0 and negs.max() < 37
    # without p: shuffled passes, every face exactly once per epoch
    uniform = torch.cat([_drawn(x[:8]) for x, _ in epoch_batches(_indexed(100), _indexed(37), 16, batch_generators(0))])
    assert len(uniform) == len(uniform.unique()) == 96


def test_parse_utkface_name():
    assert parse_utkface_name("26_1_1_20170116232731300.jpg.chip.jpg") == (26, 1, 1)


@pytest.mark.slow
@needs_faces
def test_smoke_run(tmp_path):
    run_script("lab_dbvae.py", tmp_path, "--threads", "1", timeout=240)
    r = load_result(tmp_path, "lab_dbvae")
    assert r["groups"] == ["LF", "LM", "DF", "DM"] and len(r["seeds"]) >= 2
    assert set(r["metrics"]) == {"standard", "dbvae", "standard_nodark"}
    assert set(r["comparison"]) == {"aligned", "jittered", "mit"}
    for t, c in r["comparison"].items():
        assert {"endpoint", "standard", "dbvae", "mean_diff", "ci95", "p_value", "verdict"} <= set(c)
        assert c["verdict"] in ("lower", "higher", "no significant difference")
    for kind, m in r["metrics"].items():
        for t in ("aligned", "jittered", "mit"):
            assert set(m[t]["detect"]) == set(r["groups"])
            assert 0 <= m[t]["group_var"]["mean"] <= 50 ** 2  # percent^2: at most (100/2)^2
    assert r["data"]["dark_fractions"]["standard_nodark"] == 0.0 and r["data"]["dark_fractions"]["standard"] > 0
    assert r["primary_endpoint"]["name"] == "jittered_group_var"
    assert len(r["sampling"]["per_epoch"]) == r["recipe"]["epochs"] == 1
    for name in ("groups", "paired", "sampling"):
        assert_figure(tmp_path / "figures" / f"lab_dbvae_{name}.png")


# ----------------------------------------------------------------------------- metrics and statistics
def test_rejection_threshold_hand_computed():
    """200 non-faces with scores 0..199 (shuffled): 99 % rejection = the 198th smallest = 197; faces above it
    are detected, and exactly 198 of 200 non-faces (99 %) are at or below it."""
    neg = torch.randperm(200, generator=torch.Generator().manual_seed(0)).double()
    t = rejection_threshold(neg, 0.99)
    assert t == 197.0
    assert (neg <= t).sum().item() == 198
    # 10 non-faces 1..10: ceil(9.9) = 10 -> the largest; 90 % -> the 9th smallest = 9
    neg10 = torch.arange(1.0, 11.0)
    assert rejection_threshold(neg10, 0.99) == 10.0 and rejection_threshold(neg10, 0.9) == 9.0
    # a wrong implementation (e.g. torch.quantile's interpolation) would give 197.01 here
    assert rejection_threshold(neg, 0.99) != torch.quantile(neg, 0.99).item()


def test_group_metrics_hand_computed():
    """Detection rate, AUC, group variance and dark gap on a tiny example, computed by hand."""
    neg = torch.arange(100.0)                         # threshold at 99 %: the 99th smallest = 98
    faces = {"LF": torch.tensor([99.0, 120.0, 0.5, 200.0]),     # 3 of 4 above 98 -> 0.75
             "LM": torch.tensor([150.0, 150.0, 150.0, 150.0]),  # 1.0
             "DF": torch.tensor([10.0, 99.5, 20.0, 30.0]),      # 0.25
             "DM": torch.tensor([98.0, 97.0, 99.0, 101.0])}     # 98 is not > 98: 0.5
    m = group_metrics(faces, neg, 0.99)
    assert m["threshold"] == 98.0 and m["nonface_rejected"] == 0.99
    assert m["detect"] == {"LF": 0.75, "LM": 1.0, "DF": 0.25, "DM": 0.5}
    rates = [75.0, 100.0, 25.0, 50.0]
    mean = sum(rates) / 4
    assert m["group_var"] == pytest.approx(sum((r - mean) ** 2 for r in rates) / 4)   # 781.25 %^2
    assert m["group_var"] == pytest.approx(781.25)
    assert m["dark_gap"] == pytest.approx((75 + 100) / 2 - 25)                        # 62.5 points
    # AUC of LM (all above every non-face) is 1; of DF: pairs (face > neg) + 0.5 ties over 4 * 100
    assert m["auc"]["LM"] == 1.0
    wins = sum(float((f > neg).sum() + 0.5 * (f == neg).sum()) for f in faces["DF"])
    assert m["auc"]["DF"] == pytest.approx(wins / 400)
    assert m["mean_p_face"]["LM"] == pytest.approx(torch.sigmoid(torch.tensor(150.0)).item())


def test_sign_flip_permutation_hand_computed():
    """Exact two-sided sign-flip test on 4 paired differences, by enumerating the 16 sign patterns by hand."""
    d = [1.0, 2.0, 3.0, 4.0]
    obs = abs(sum(d) / 4)
    patterns = [[s * x for s, x in zip(signs, d)] for signs in itertools.product((1, -1), repeat=4)]
    p_hand = sum(abs(sum(p) / 4) >= obs - 1e-12 for p in patterns) / len(patterns)    # 2 / 16
    assert p_hand == 0.125
    assert sign_flip_p_value(d) == pytest.approx(p_hand)
    # a mixed example: d = (3, -1, 2, -2), |mean| = 0.5. By hand: a flipped sum 3a - b + 2c - 2d is even, and
    # only the patterns (+, -, -, +) and (-, +, +, -) give 0 < 2, so 14 of 16 patterns are as extreme: p = 14/16
    d2 = [3.0, -1.0, 2.0, -2.0]
    obs2 = abs(sum(d2) / 4)
    p2 = sum(abs(sum(s * x for s, x in zip(signs, d2)) / 4) >= obs2 - 1e-12
             for signs in itertools.product((1, -1), repeat=4)) / 16
    assert sign_flip_p_value(d2) == pytest.approx(p2)
    assert p2 == 14 / 16


def test_compare_paired_verdict():
    """DB-VAE lower on all 8 seeds by a clear margin -> "lower" (exact p = 2/256); mixed -> no difference."""
    std = [10.0, 12.0, 9.0, 11.0, 14.0, 10.5, 13.0, 12.5]
    db = [s - 5.0 - 0.1 * i for i, s in enumerate(std)]
    c = compare_paired(std, db, "x")
    assert c["mean_diff"] == pytest.approx(sum(b - a for a, b in zip(std, db)) / 8)
    assert c["p_value"] == pytest.approx(2 / 256)
    assert c["ci95"][1] < 0 and c["verdict"] == "lower"
    assert compare_paired(db, std, "x")["verdict"] == "higher"
    mixed = [s + (1.0 if i % 2 else -1.0) for i, s in enumerate(std)]
    assert compare_paired(std, mixed, "x")["verdict"] == "no significant difference"


def test_augment_and_jittered_copy():
    """Identity settings leave images unchanged; the jittered copy is reproducible and moves the content."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, *IMAGE_SHAPE, generator=g)
    same = Augment(0.0, 1.0, 1.0, 0.0)(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    u8 = (x * 255).round().to(torch.uint8)
    a, b = jittered_copy(u8, 7), jittered_copy(u8, 7, chunk=2)  # chunks change nothing
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == u8.shape
    assert not torch.equal(a, jittered_copy(u8, 8))
    assert (a.float() - u8.float()).abs().mean() > 5


def test_face_batches_pair_models():
    """Same seed -> same non-faces and augmentation for both models; half faces, half non-faces."""
    faces = torch.randint(0, 256, (40, *IMAGE_SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    negs = torch.randint(0, 256, (30, *IMAGE_SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    p = torch.full((40,), 1 / 40, dtype=torch.float64)
    ba = list(epoch_batches(faces, negs, 8, batch_generators(3), None, Augment()))
    bb = list(epoch_batches(faces, negs, 8, batch_generators(3), p, Augment()))
    assert len(ba) == len(bb) == 40 // 4
    for (xa, ya), (xb, yb) in zip(ba, bb):
        assert xa.shape == (8, *IMAGE_SHAPE) and ya.tolist() == [1.0] * 4 + [0.0] * 4
        torch.testing.assert_close(xa[4:], xb[4:])          # the same non-faces in the same order
    assert not torch.equal(ba[0][0][:4], bb[0][0][:4])       # ... while the face draws differ


def test_sampling_summary_and_group_helpers():
    neg = torch.arange(100.0)  # threshold 98: a face scores 200 (detected) or 0 (not)
    same = group_metrics({g: torch.full((10,), 200.0) for g in ("LF", "LM", "DF", "DM")}, neg, 0.99)
    assert same["group_var"] == 0.0 and same["dark_gap"] == 0.0
    rates = {"LF": 9, "LM": 7, "DF": 5, "DM": 6}  # detected of 10: light mean 80 %, worst dark 50 %
    m = group_metrics({g: torch.tensor([200.0] * k + [0.0] * (10 - k)) for g, k in rates.items()}, neg, 0.99)
    assert m["dark_gap"] == pytest.approx(30.0)
    hist = [[{"epoch": 1, "dark_sampling_mass": 0.02, "dark_mean_p_percentile": 60.0}],  # one history per seed
            [{"epoch": 1, "dark_sampling_mass": 0.04, "dark_mean_p_percentile": 70.0}]]
    s = sampling_summary(hist, 0.01)
    assert s["per_epoch"][0]["dark_mass"]["mean"] == pytest.approx(0.03)
    assert s["per_epoch"][0]["mass_over_share"] == pytest.approx(3.0)


def test_cli_refuses_bad_numbers():
    for bad in (["--train-faces", "-5"], ["--dark-fraction", "1.5"], ["--alpha", "0"], ["--seeds", "-1"],
                ["--test-per-group", "0"], ["--kl-weight", "-1"], ["--split-seed", "-1"], ["--lr", "0"]):
        with pytest.raises(SystemExit):
            get_args(bad)
    a, recipe = get_args([])
    assert a.seeds == list(range(8)) and a.train_faces == 2000 and a.dark_fraction == 0.01
    assert recipe == Recipe()  # the command line's defaults are the recipe at the top of the script
    assert get_args(["--seed", "3"])[0].seeds == list(range(3, 11))  # --seed: the first of the 8 paired seeds
    assert get_args(["--seed", "3", "--seeds", "5"])[0].seeds == [5]  # --seeds wins
    assert get_args(["--smoke", "--seed", "3"])[0].seeds == [3, 4]


def test_smoke_recipe_keeps_dark_faces():
    """--smoke trains on 64 faces with at least SMOKE_MIN_DARK dark ones; the fraction stays exact."""
    r = get_args(["--smoke"])[1]
    assert r.smoke and r.epochs == 1 and r.train_faces == 64
    assert round(r.dark_fraction * r.train_faces) == SMOKE_MIN_DARK
    r = get_args(["--smoke", "--dark-fraction", "0.5"])[1]
    assert round(r.dark_fraction * r.train_faces) == 32
