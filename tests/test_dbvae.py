"""Acceptance tests for the DB-VAE lab (common/dbvae.py, lab_dbvae.py).

Every check compares against an independent reference (torch.distributions, empirical moments, a
hand-built latent distribution) and fails if the implementation is wrong, e.g. if logsigma were
treated as a log-std, if the face indicator were applied after the mean, or if the resampling
weights were proportional to the density instead of its inverse.
"""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
from torch.distributions import Normal

from common.dbvae import (DBVAE, IMAGE_SHAPE, StandardCNN, dbvae_loss, epoch_batches, kl_latent_loss, load_h5,
                          parse_utkface_name, reparameterize, sampling_probabilities)
from conftest import DATA_DIR, load_result, run_script

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
    mu = torch.tensor([[-1.0, 0.5, 2.0]]).expand(200_000, 3)
    logsigma = torch.tensor([[0.0, math.log(4.0), math.log(0.25)]]).expand(200_000, 3)  # variances 1, 4, 0.25
    z = reparameterize(mu, logsigma, torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 2.0, 0.5]), atol=0.02, rtol=0)


def _batch(n: int, label: float):
    torch.manual_seed(0)
    return torch.rand(n, *IMAGE_SHAPE), torch.full((n,), label)


def test_vae_term_ignored_for_non_faces():
    model = DBVAE(latent_dim=8)
    x, y = _batch(6, 0.0)
    logit, mu, logsigma, recon = model(x)
    loss = dbvae_loss(x, y, logit, mu, logsigma, recon)
    model.zero_grad()
    loss.backward()
    dec = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None for g in dec)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in dec), "decoder got a gradient from non-faces"
    # the loss is then exactly the classification loss
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
    torch.testing.assert_close(loss, bce, atol=0, rtol=0)
    # ... and for faces the decoder does learn (the test above cannot pass by a dead decoder)
    x, y = _batch(6, 1.0)
    model.zero_grad()
    dbvae_loss(x, y, *model(x)).backward()
    assert any(p.grad.abs().sum() > 0 for p in model.decoder.parameters())


def test_dbvae_loss_is_per_example_mean():
    """Mixed batch: mean_i [ BCE_i + 1[face_i] * VAE_i ], checked against a hand computation."""
    model = DBVAE(latent_dim=4)
    torch.manual_seed(0)
    x, y = torch.rand(4, *IMAGE_SHAPE), torch.tensor([1.0, 0.0, 1.0, 0.0])
    logit, mu, logsigma, recon = model(x)
    kw = 0.1
    ref = []
    for i in range(4):
        bce = -(y[i] * torch.log(torch.sigmoid(logit[i])) + (1 - y[i]) * torch.log(1 - torch.sigmoid(logit[i])))
        kl = 0.5 * (logsigma[i].exp() + mu[i] ** 2 - 1 - logsigma[i]).sum()
        vae = kw * kl + (x[i] - recon[i]).abs().mean()
        ref.append(bce + (vae if y[i] == 1 else 0.0))
    torch.testing.assert_close(dbvae_loss(x, y, logit, mu, logsigma, recon, kw), torch.stack(ref).mean(),
                               rtol=1e-5, atol=1e-6)


def test_model_shapes():
    x = torch.rand(2, *IMAGE_SHAPE)
    assert StandardCNN()(x).shape == (2, 1)
    logit, mu, logsigma, recon = DBVAE(latent_dim=7)(x)
    assert logit.shape == (2,) and mu.shape == logsigma.shape == (2, 7) and recon.shape == x.shape
    # the lab's layer widths: 12, 24, 48, 72 filters, dense 512
    convs = [m.out_channels for m in StandardCNN().modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [12, 24, 48, 72]


@pytest.mark.parametrize("combine", ["max", "product"])
def test_sampling_probabilities(combine):
    """A distribution, and a rare cluster (5% of faces, far from the rest) gets higher probability."""
    g = torch.Generator().manual_seed(0)
    common = torch.randn(950, 5, generator=g)
    rare = torch.randn(50, 5, generator=g) * 0.3 + 6.0
    p = sampling_probabilities(torch.cat([common, rare]), bins=10, alpha=1e-3, combine=combine)
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
    np.testing.assert_allclose(sampling_probabilities(mu, 10, 1e-3, "max").numpy(), ref, rtol=1e-9)


def test_epoch_batches_follow_p():
    """Batches are half faces, half non-faces; faces are drawn from p_faces."""
    p = torch.zeros(100, dtype=torch.float64)
    p[:10] = 0.1
    gen = torch.Generator().manual_seed(0)
    batches = list(epoch_batches(100, 37, 16, gen, p))
    assert len(batches) == 100 // 8
    assert all(len(f) == 8 and len(n) == 8 for f, n in batches)
    faces = torch.cat([f for f, _ in batches])
    assert faces.max() < 10 and len(faces.unique()) > 5
    negs = torch.cat([n for _, n in batches])
    assert negs.min() >= 0 and negs.max() < 37


def test_parse_utkface_name():
    assert parse_utkface_name("26_1_1_20170116232731300.jpg.chip.jpg") == (26, 1, 1)


def test_load_h5(tmp_path):
    """The lab's train_face.h5 layout: images (N, 64, 64, 3) uint8 BGR, labels (N, 1)."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    labels = np.array([[1], [0], [1], [1], [0]], dtype=np.float32)
    path = tmp_path / "train_face.h5"
    with h5py.File(path, "w") as f:
        f["images"], f["labels"] = imgs, labels
    x, y = load_h5(path)
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.uint8
    assert torch.equal(y, torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0]))
    # channel 0 of ours (R) is channel 2 of the file (B of BGR)
    assert torch.equal(x[2, 0], torch.from_numpy(imgs[2, :, :, 2]))


@needs_faces
def test_smoke_run(tmp_path):
    run_script("lab_dbvae.py", tmp_path, "--threads", "1", timeout=240)
    r = load_result(tmp_path, "lab_dbvae")
    assert r["groups"] == ["LF", "LM", "DF", "DM"] and len(r["seeds"]) >= 2
    for kind in ("standard", "dbvae"):
        assert set(r[kind]["group_acc"]) == set(r["groups"])
        assert 0 <= r[kind]["group_var"] <= 50 ** 2  # percent^2: at most (100/2)^2
        assert len(r[kind]["per_seed"]) == len(r["seeds"])
    assert r["data"]["counts"]["train_dark_faces"] > 0
    for name in ("groups", "sampling", "recon"):
        assert (tmp_path / "figures" / f"lab_dbvae_{name}.png").stat().st_size > 10_000


@needs_faces
def test_smoke_run_h5(tmp_path):
    """--h5 path end to end with a tiny synthetic file (training from it, testing on held-out data)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "train_face.h5"
    with h5py.File(path, "w") as f:
        f["images"] = rng.integers(0, 256, (48, 64, 64, 3), dtype=np.uint8)
        f["labels"] = (np.arange(48) % 2).astype(np.float32)[:, None]
    out = tmp_path / "out"
    run_script("lab_dbvae.py", out, "--h5", str(path), "--seeds", "0", "--threads", "1", timeout=240)
    r = load_result(out, "lab_dbvae")
    assert r["data"]["source"] == "h5" and r["data"]["counts"]["train_faces"] == 24
