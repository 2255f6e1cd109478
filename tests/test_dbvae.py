"""Acceptance tests for the DB-VAE lab (common/dbvae.py, lab_dbvae.py).

Every check compares against an independent reference (torch.distributions, empirical moments, a
hand-built latent distribution, a hand computation) and fails if the implementation is wrong, e.g. if
logsigma were treated as a log-std, if the face indicator were applied after the mean, or if the
resampling weights were proportional to the density instead of its inverse.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, load_result, run_script
from torch.distributions import Normal
from torch.nn import functional as F

from common.dbvae import (
    DBVAE,
    IMAGE_SHAPE,
    Augment,
    StandardCNN,
    balanced_probabilities,
    batch_generators,
    dbvae_loss,
    epoch_batches,
    kl_latent_loss,
    sampling_probabilities,
)
from common.stats import sign_flip_p_value
from lab_dbvae import (
    ALPHAS,
    BIN_COUNTS,
    EXPOSURE,
    PRIMARY,
    SEEDS,
    SMOKE_MIN_RARE,
    Recipe,
    arm_seeds,
    endpoints,
    get_args,
    group_metrics,
    jittered_copy,
    latent_diagnostics,
    make_arms,
    mde80,
    parse_utkface_name,
    rejection_threshold,
    sampling_summary,
    share_of_oracle,
    training_faces,
    underexpose,
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
    assert r["groups"] == ["LF", "LM", "DF", "DM"] and min(map(len, r["seeds"].values())) >= 2
    assert set(r["metrics"]) == set(r["arms"]) == set(make_arms(get_args(["--smoke"])[1]))
    assert r["test_sets"] == ["jittered", "dim", "mit"]
    assert set(r["primary"]) == {"dose", "dbvae", "oracle", "rare"}
    for name, e in r["endpoints"].items():
        assert {"metric", "a", "b", "mean_diff", "ci95", "p_value", "mde80", "diffs", "verdict"} <= set(e)
        assert e["verdict"] in ("lower", "higher", "no significant difference")
        assert ("p_holm" in e) == (name not in r["primary"].values())  # secondary endpoints only
    for arm, m in r["metrics"].items():
        assert set(m["jittered"]["detect"]) == set(r["groups"])
        assert -100 <= m["jittered"]["dark_gap"]["mean"] <= 100 and -100 <= m["dim"]["dim_gap"]["mean"] <= 100
    assert r["dose"]["arms"][0] == "standard_dark0" and r["dose"]["fractions"][-1] == 0.5
    assert r["sampling"]["oracle"]["per_epoch"][0]["mass"]["mean"] == pytest.approx(0.5)  # the oracle's half
    grid = r["mass_grid"]["dbvae_dim"]["dim"]
    assert len(grid["max"]["mean"]) == len(r["mass_grid"]["alphas"]) and len(grid["product"]["mean"][0]) == 4
    assert 0 <= grid["probe_auc"]["mean"] <= 1
    for name in ("dose", "oracle", "rare", "mass"):
        path = tmp_path / "figures" / f"lab_dbvae_{name}.pdf"
        assert path.read_bytes()[:5] == b"%PDF-" and path.stat().st_size > 5000, path


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
    """Detection rate, AUC and the dark gap on a tiny example, computed by hand."""
    neg = torch.arange(100.0)                         # threshold at 99 %: the 99th smallest = 98
    faces = {"LF": torch.tensor([99.0, 120.0, 0.5, 200.0]),     # 3 of 4 above 98 -> 0.75
             "LM": torch.tensor([150.0, 150.0, 150.0, 150.0]),  # 1.0
             "DF": torch.tensor([10.0, 99.5, 20.0, 30.0]),      # 0.25
             "DM": torch.tensor([98.0, 97.0, 99.0, 101.0])}     # 98 is not > 98: 0.5
    m = group_metrics(faces, neg, 0.99)
    assert m["threshold"] == 98.0 and m["nonface_rejected"] == 0.99
    assert m["detect"] == {"LF": 0.75, "LM": 1.0, "DF": 0.25, "DM": 0.5}
    assert m["dark_gap"] == pytest.approx((75 + 100) / 2 - (25 + 50) / 2)             # 50 points
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


def test_mde80_and_share_of_oracle():
    """MDE at 80 % power from printed t-table values; the DB-VAE's share of the oracle's reduction."""
    d = [1.0, -1.0] * 4  # n = 8, sample std sqrt(8/7)
    # t_{0.975, 7} = 2.365, t_{0.80, 7} = 0.896 (t table)
    assert mde80(d) == pytest.approx((2.365 + 0.896) * math.sqrt(8 / 7) / math.sqrt(8), rel=1e-3)
    oracle = [10.0, 12.0, 8.0, 11.0, 9.0, 10.0, 13.0, 7.0]
    s = share_of_oracle([v / 2 for v in oracle], oracle)  # half of the oracle's reduction on every seed
    assert s["pct"] == pytest.approx(50.0) and s["ci95"] == pytest.approx([50.0, 50.0])
    db = [1.0, 9.0, 2.0, 8.0, 0.0, 6.0, 3.0, 1.0]
    s = share_of_oracle(db, oracle)
    assert s["pct"] == pytest.approx(100 * sum(db) / sum(oracle))
    assert s["ci95"][0] < s["pct"] < s["ci95"][1]


def test_latent_diagnostics_find_a_far_cluster():
    """8 of 400 faces far out in one latent dimension: a linear probe finds them, Algorithm 1 draws them well above
    their 2 % share at the lab's alpha and 10 bins, and less so as alpha smooths p towards uniform."""
    mu = torch.randn(400, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rare = torch.zeros(400, dtype=torch.bool)
    rare[:8] = True
    mu[rare, 0] += 8.0
    d = latent_diagnostics(mu, {"far": rare, "none": torch.zeros(400, dtype=torch.bool)})
    assert set(d) == {"far"}  # a group without faces is left out
    assert d["far"]["probe_auc"] > 0.95
    grid = torch.tensor(d["far"]["max"])  # (alphas, bins)
    assert grid.shape == (len(ALPHAS), len(BIN_COUNTS))
    assert grid[ALPHAS.index(1e-3), BIN_COUNTS.index(10)] > 5 * 8 / 400
    assert (grid[-1] < grid[0]).all()


def test_balanced_probabilities_closed_form():
    """The oracle: 20 rare of 2,000 faces -> each rare face 0.5 / 20, each common one 0.5 / 1980."""
    rare = torch.zeros(2000, dtype=torch.long)
    rare[torch.randperm(2000, generator=torch.Generator().manual_seed(0))[:20]] = 1
    p = balanced_probabilities(rare)
    assert p.dtype == torch.float64 and p.shape == (2000,)
    torch.testing.assert_close(p[rare == 1], torch.full((20,), 0.5 / 20, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(p[rare == 0], torch.full((1980,), 0.5 / 1980, dtype=torch.float64), rtol=1e-12, atol=0)
    assert p[rare == 1].sum().item() == pytest.approx(0.5, abs=1e-12) == p[rare == 0].sum().item()
    # three groups of 1, 2 and 7: a third each; one group alone: uniform
    p3 = balanced_probabilities(torch.tensor([2, 0, 0, 1, 1, 1, 1, 1, 1, 1]))
    assert p3.tolist() == pytest.approx([1 / 3] + [1 / 6] * 2 + [1 / 21] * 7)
    assert balanced_probabilities(torch.zeros(4, dtype=torch.long)).tolist() == [0.25] * 4


def test_underexpose_hand_computed():
    """Every pixel value times EXPOSURE = 1/4, rounded: 255 -> 63.75 -> 64, 101 -> 25.25 -> 25, 3 -> 0.75 -> 1."""
    assert EXPOSURE == 0.25
    x = torch.tensor([255, 101, 3, 0], dtype=torch.uint8).view(1, 1, 2, 2).expand(2, 3, 2, 2)
    d = underexpose(x)
    assert d.dtype == torch.uint8 and d.shape == x.shape
    assert d[0, 0].flatten().tolist() == [64, 25, 1, 0] and torch.equal(d[1, 2], d[0, 0])


def test_arms_and_training_faces():
    """The rare-feature transform: exactly round(f * N) light faces of the dim arms are underexposed versions of the
    standard arm's faces, the others identical; the dose sets are nested prefixes of the pools."""
    r = get_args([])[1]
    arms = make_arms(r)
    assert list(arms) == ["standard_dark0", "standard", "standard_dark0.1", "standard_dark0.5", "dbvae", "oracle",
                          "standard_dim", "dbvae_dim", "oracle_dim"]
    used = {arm for _, a, b in endpoints(r).values() for arm in (a, b) if arm}
    assert used <= set(arms) and set(PRIMARY.values()) <= set(endpoints(r))
    r = replace(r, train_faces=200)
    g = torch.Generator().manual_seed(0)
    data = SimpleNamespace(light=torch.randint(0, 256, (200, *IMAGE_SHAPE), dtype=torch.uint8, generator=g),
                           dark=torch.randint(0, 256, (100, *IMAGE_SHAPE), dtype=torch.uint8, generator=g))
    faces, dark, dim = training_faces(data, arms["standard"], r)
    assert dark.sum() == 2 and dim.sum() == 0 and torch.equal(faces[-2:], data.dark[:2])
    faces_d, dark_d, dim_d = training_faces(data, arms["dbvae_dim"], r)
    assert torch.equal(dark_d, dark) and dim_d.sum() == 2 and not (dim_d & dark_d).any()
    assert torch.equal(faces_d[~dim_d], faces[~dim_d]) and torch.equal(faces_d[dim_d], underexpose(faces[dim_d]))
    assert not torch.equal(faces_d[dim_d], faces[dim_d])
    half, d_half, _ = training_faces(data, arms["standard_dark0.5"], r)
    assert d_half.sum() == 100 and torch.equal(half[:100], data.light[:100]) and torch.equal(half[100:], data.dark)


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
    assert same["dark_gap"] == 0.0
    rates = {"LF": 9, "LM": 7, "DF": 5, "DM": 6}  # detected of 10: light mean 80 %, dark mean 55 %
    m = group_metrics({g: torch.tensor([200.0] * k + [0.0] * (10 - k)) for g, k in rates.items()}, neg, 0.99)
    assert m["dark_gap"] == pytest.approx(25.0)
    hist = [[{"epoch": 1, "rare_sampling_mass": 0.02}], [{"epoch": 1, "rare_sampling_mass": 0.04}]]  # per seed
    s = sampling_summary(hist, 0.01)
    assert s["per_epoch"][0]["mass"]["mean"] == pytest.approx(0.03)
    assert s["per_epoch"][0]["mass_over_share"] == pytest.approx(3.0)


def test_cli_refuses_bad_numbers():
    for bad in (["--train-faces", "-5"], ["--dark-fraction", "1.5"], ["--alpha", "0"], ["--seeds", "-1"],
                ["--test-per-group", "0"], ["--kl-weight", "-1"], ["--split-seed", "-1"], ["--lr", "0"],
                ["--dose-fractions", "0.1", "2"], ["--dim-fraction", "0.5", "--dark-fraction", "0.6"]):
        with pytest.raises(SystemExit):
            get_args(bad)
    a, recipe = get_args([])
    assert a.seeds == list(range(SEEDS["dim"])) and a.train_faces == 2000 and a.dark_fraction == 0.01
    arms = make_arms(recipe)  # the dark-face arms on the first SEEDS["dark"] seeds, the dim-face arms on all
    assert arm_seeds(arms["oracle"], a.seeds) == list(range(SEEDS["dark"])) and SEEDS["dark"] >= 8
    assert arm_seeds(arms["dbvae_dim"], a.seeds) == arm_seeds(arms["standard_dim"], a.seeds) == a.seeds
    assert arm_seeds(arms["oracle_dim"], a.seeds) == list(range(SEEDS["oracle_dim"])) and SEEDS["dim"] > SEEDS["dark"]
    assert arm_seeds(arms["dbvae_dim"], [7, 9]) == arm_seeds(arms["standard"], [7, 9]) == [7, 9]
    assert max(SEEDS.values()) == SEEDS["dim"]  # the default seeds are the dim arms' ones
    assert recipe == Recipe()  # the command line's defaults are the recipe at the top of the script
    assert get_args(["--seed", "3"])[0].seeds == list(range(3, 3 + SEEDS["dim"]))  # --seed: the first paired seed
    assert get_args(["--seed", "3", "--seeds", "5"])[0].seeds == [5]  # --seeds wins
    assert get_args(["--smoke", "--seed", "3"])[0].seeds == [3, 4]
    q, rq = get_args(["--quick"])
    assert len(q.seeds) == 3 and rq.epochs == 1 and rq.train_faces == 1000 and q.out_dir.name == "lab_dbvae_quick"
    assert get_args(["--dose-fractions", "0.2", "0.3"])[1].dose_fractions == (0.2, 0.3)


def test_smoke_recipe_keeps_dark_faces():
    """--smoke trains on 64 faces with at least SMOKE_MIN_RARE dark (and dim) ones; the fraction stays exact."""
    r = get_args(["--smoke"])[1]
    assert r.smoke and r.epochs == 1 and r.train_faces == 64
    assert round(r.dark_fraction * r.train_faces) == SMOKE_MIN_RARE == round(r.dim_fraction * r.train_faces)
    r = get_args(["--smoke", "--dark-fraction", "0.5"])[1]
    assert round(r.dark_fraction * r.train_faces) == 32
