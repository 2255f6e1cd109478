"""Debiasing variational autoencoder (DB-VAE) of MIT 6.S191 Lab 2 part 2, in PyTorch.

Amini, Soleimany, Schwarting, Bhatia, Rus: "Uncovering and Mitigating Algorithmic Bias through Learned
Latent Structure", AIES 2019. A face detector (face vs. not face) that, while it trains, learns a latent
space of the training faces with a VAE and re-samples rare faces (regions of low latent density) more
often, without any race or gender label.

Contents (used by lab_dbvae.py and tests/test_dbvae.py):
    data    - UTKFace file-name labels, JPEG folders -> uint8 tensors, the lab's train_face.h5
    models  - the lab's standard CNN, its decoder, the DB-VAE
    losses  - KL latent loss, mean-L1 reconstruction, the per-example DB-VAE loss
    sampling- the adaptive resampling probabilities (paper Algorithm 1 / the lab's version)
    loop    - batch drawing, one training epoch, evaluation

Image sizes are 64x64 RGB as in the lab; every layer size below is derived from IMAGE_SHAPE.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .data import index_batches
from .models import conv_out, convT_output_padding

IMAGE_SHAPE = (3, 64, 64)  # (C, H, W) of the lab's train_face.h5 and of its test faces
N_FILTERS = 12             # the lab's base width: conv layers have 1x, 2x, 4x, 6x this many filters
# (filters multiplier, kernel) per stride-2 conv, as in the lab: 12@5, 24@5, 48@3, 72@3
CONV_SPEC = ((1, 5), (2, 5), (4, 3), (6, 3))
DENSE = 512                # the lab's hidden dense layer


# ============================================================================ data
def parse_utkface_name(name: str) -> tuple[int, int, int]:
    """'age_gender_race_datetime.jpg.chip.jpg' -> (age, gender, race); gender 0 male 1 female,
    race 0 White 1 Black 2 Asian 3 Indian 4 Other (see $DATA_DIR/README.md)."""
    age, gender, race = name.split("_")[:3]
    return int(age), int(gender), int(race)


def load_h5(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The lab's train_face.h5: datasets `images` (N, 64, 64, 3) uint8 and `labels` (N, 1) (1 = face).

    The lab's loader reads the images as ``images[..., ::-1]``: the file stores BGR; we flip to RGB.
    Returns x (N, 3, 64, 64) uint8 RGB and y (N,) float32 in {0, 1}.
    """
    import h5py

    with h5py.File(path, "r") as f:
        images = torch.from_numpy(f["images"][:])           # (N, H, W, 3) BGR
        labels = torch.from_numpy(f["labels"][:]).float()    # (N, 1) or (N,)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: expected images of shape (N, H, W, 3), got {tuple(images.shape)}")
    x = images.flip(-1).permute(0, 3, 1, 2).contiguous()    # BGR -> RGB, (N, 3, H, W)
    if x.dtype != torch.uint8:  # a float copy in [0, 1]: store as uint8 like everything else
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return x, labels.reshape(len(labels), -1)[:, 0]


def to_float(x: torch.Tensor, device) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 in [0, 1] on `device`."""
    return x.to(device, non_blocking=True).float().div_(255.0)


# ============================================================================ models
class ConvBlock(nn.Sequential):
    """Conv2d -> ReLU -> BatchNorm2d: the lab's order (Keras Conv2D(activation='relu') then BN)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 2):
        super().__init__(nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2),
                         nn.ReLU(inplace=True), nn.BatchNorm2d(c_out))


def feature_sizes(in_shape=IMAGE_SHAPE, n_filters: int = N_FILTERS) -> list[tuple[int, int]]:
    """[(channels, spatial size)] after the input and each conv: [(3,64), (12,32), (24,16), (48,8), (72,4)]."""
    sizes = [(in_shape[0], in_shape[1])]
    for mult, k in CONV_SPEC:
        sizes.append((mult * n_filters, conv_out(sizes[-1][1], k, 2, k // 2)))
    return sizes


class StandardCNN(nn.Module):
    """The lab's classifier: 4 stride-2 convs (12, 24, 48, 72 filters; kernels 5, 5, 3, 3), flatten,
    dense 512 + ReLU, then n_outputs (1 face logit for the standard CNN, 2*latent+1 for the DB-VAE)."""

    def __init__(self, n_outputs: int = 1, n_filters: int = N_FILTERS, in_shape=IMAGE_SHAPE):
        super().__init__()
        self.config = dict(kind="StandardCNN", n_outputs=n_outputs, n_filters=n_filters,
                           in_shape=list(in_shape))
        sizes = feature_sizes(in_shape, n_filters)
        blocks = [ConvBlock(sizes[i][0], sizes[i + 1][0], k) for i, (_, k) in enumerate(CONV_SPEC)]
        c, s = sizes[-1]
        self.net = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(c * s * s, DENSE), nn.ReLU(inplace=True),
                                 nn.Linear(DENSE, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, n_outputs)


class Decoder(nn.Module):
    """The lab's decoder: dense to the encoder's last feature map (72x4x4), then 4 stride-2 transposed
    convs mirroring the encoder (48@3, 24@3, 12@5, 3@5) back to (B, 3, 64, 64). As in the lab the last
    layer is linear (no sigmoid); figures clamp to [0, 1]."""

    def __init__(self, latent_dim: int, n_filters: int = N_FILTERS, in_shape=IMAGE_SHAPE):
        super().__init__()
        sizes = feature_sizes(in_shape, n_filters)  # [(3,64), (12,32), (24,16), (48,8), (72,4)]
        c, s = sizes[-1]
        self.head = nn.Sequential(nn.Linear(latent_dim, c * s * s), nn.ReLU(inplace=True),
                                  nn.Unflatten(1, (c, s, s)))
        layers = []
        for i in range(len(CONV_SPEC), 0, -1):  # 72x4 -> 48x8 -> 24x16 -> 12x32 -> 3x64
            k = CONV_SPEC[i - 1][1]
            (c_in, s_in), (c_out, s_out) = sizes[i], sizes[i - 1]
            op = convT_output_padding(s_in, s_out, k, 2, k // 2)
            layers.append(nn.ConvTranspose2d(c_in, c_out, k, 2, k // 2, op))
            if i > 1:
                layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.features(self.head(z))  # (B, 3, 64, 64)


def reparameterize(mu: torch.Tensor, logsigma: torch.Tensor, generator: torch.Generator | None = None):
    """z = mu + sigma * eps, eps ~ N(0, I). The lab's `logsigma` is a log-*variance*: sigma = exp(logsigma/2)."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logsigma) * eps  # (B, latent_dim)


class DBVAE(nn.Module):
    """Encoder = StandardCNN with 2*latent_dim + 1 outputs (face logit, mu, logsigma); decoder as above."""

    def __init__(self, latent_dim: int = 100, n_filters: int = N_FILTERS, in_shape=IMAGE_SHAPE):
        super().__init__()
        self.latent_dim = latent_dim
        self.config = dict(kind="DBVAE", latent_dim=latent_dim, n_filters=n_filters, in_shape=list(in_shape))
        self.encoder = StandardCNN(2 * latent_dim + 1, n_filters, in_shape)
        self.decoder = Decoder(latent_dim, n_filters, in_shape)

    def encode(self, x: torch.Tensor):
        out = self.encoder(x)                                   # (B, 2L+1)
        L = self.latent_dim
        return out[:, 0], out[:, 1:1 + L], out[:, 1 + L:]       # logit (B,), mu (B, L), logsigma (B, L)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        logit, mu, logsigma = self.encode(x)
        z = reparameterize(mu, logsigma, generator)
        return logit, mu, logsigma, self.decoder(z)             # ..., recon (B, 3, 64, 64)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Face logit only (B,): at test time the DB-VAE is just its encoder's classification head."""
        return self.encoder(x)[:, 0]


def face_logit(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B,) face logits of either model."""
    return model.predict(x) if isinstance(model, DBVAE) else model(x)[:, 0]


# ============================================================================ losses
def kl_latent_loss(mu: torch.Tensor, logsigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logsigma)) || N(0, I)) per example (B,), logsigma a log-variance:
    0.5 * sum_j (exp(logsigma_j) + mu_j^2 - 1 - logsigma_j)  (Kingma & Welling 2014, App. B)."""
    return 0.5 * (logsigma.exp() + mu.pow(2) - 1.0 - logsigma).sum(dim=1)


def recon_l1(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per example (B,): mean over (C, H, W), as the lab."""
    return (x - recon).abs().flatten(1).mean(dim=1)


def vae_loss(x, recon, mu, logsigma, kl_weight: float = 5e-4) -> torch.Tensor:
    """Per example (B,): kl_weight * KL + mean-L1 reconstruction (the lab's vae_loss_function)."""
    return kl_weight * kl_latent_loss(mu, logsigma) + recon_l1(x, recon)


def dbvae_loss(x, y, logit, mu, logsigma, recon, kl_weight: float = 5e-4) -> torch.Tensor:
    """Mean over the batch of  BCE(y, logit) + 1[y = face] * VAE loss  (paper Eq. 5).

    The VAE term is multiplied by the face indicator *per example before* the mean, so non-faces
    contribute nothing to the decoder/latent (a VAE of faces only). x (B,3,H,W), y (B,) in {0,1}.
    """
    cls = F.binary_cross_entropy_with_logits(logit, y, reduction="none")   # (B,)
    face = (y == 1).to(cls.dtype)                                           # (B,) indicator
    return (cls + face * vae_loss(x, recon, mu, logsigma, kl_weight)).mean()


# ============================================================================ adaptive resampling
def sampling_probabilities(mu: torch.Tensor, bins: int = 10, alpha: float = 1e-3,
                           combine: str = "max") -> torch.Tensor:
    """Sampling probability of each training face from its latent means mu (N, L).

    For every latent dimension j: a histogram of mu[:, j] with `bins` bins (np.histogram density),
    smoothed by adding alpha and renormalised, then w_j(x) = 1 / Q_j(bin of x) normalised over x.
    Combination across dimensions:
      'max'     - the lab's: p(x) = max_j w_j(x)   (the dimension where x is rarest decides)
      'product' - the paper's Algorithm 1: p(x) ~ prod_j 1/(Q_j + alpha) (computed in log space)
    Returns p (N,) float64, non-negative, summing to 1.
    """
    mu = mu.detach().double().cpu()
    n, L = mu.shape
    log_w = torch.empty(n, L, dtype=torch.float64)
    for j in range(L):
        col = mu[:, j]
        lo, hi = col.min().item(), col.max().item()
        if hi <= lo:  # a constant dimension carries no information: uniform weights
            log_w[:, j] = -torch.log(torch.tensor(float(n), dtype=torch.float64))
            continue
        width = (hi - lo) / bins
        # bin of each x (N,); the maximum goes into the last bin, as in np.histogram
        idx = ((col - lo) / width).floor().clamp(0, bins - 1).long()
        counts = torch.bincount(idx, minlength=bins).double()                    # (bins,)
        density = counts / (n * width)                                           # np.histogram(density=True)
        smoothed = density + alpha
        smoothed = smoothed / smoothed.sum()
        w = 1.0 / smoothed[idx]                                                  # (N,)
        log_w[:, j] = (w / w.sum()).log()
    if combine == "max":
        p = log_w.max(dim=1).values.exp()
    elif combine == "product":
        s = log_w.sum(dim=1)
        p = (s - s.max()).exp()  # subtract the max: prod of 100 small numbers underflows otherwise
    else:
        raise ValueError(f"unknown combine {combine!r}")
    return p / p.sum()


# ============================================================================ training loop
def epoch_batches(n_faces: int, n_neg: int, batch_size: int, gen: torch.Generator,
                  p_faces: torch.Tensor | None = None):
    """Index pairs (face_idx, neg_idx) for one epoch, as the lab's get_batch: each batch is half faces,
    half non-faces; one epoch = n_faces // (batch_size // 2) batches (every face drawn once on average).

    Faces: a shuffled pass (randperm) when p_faces is None (standard CNN), else drawn from p_faces
    with replacement (DB-VAE). Non-faces: uniform, shuffled passes (index_batches), repeated as needed.
    """
    half = batch_size // 2
    steps = max(1, n_faces // half)
    if p_faces is None:
        face_order = torch.cat([torch.randperm(n_faces, generator=gen) for _ in range(-(-steps * half // n_faces))])
    else:
        face_order = torch.multinomial(p_faces.float(), steps * half, replacement=True, generator=gen)
    neg_order = torch.cat([torch.cat(list(index_batches(n_neg, n_neg, gen)))
                           for _ in range(-(-steps * half // n_neg))])
    for s in range(steps):
        yield face_order[s * half:(s + 1) * half], neg_order[s * half:(s + 1) * half]


def train_epoch(model: nn.Module, faces: torch.Tensor, negs: torch.Tensor, opt: torch.optim.Optimizer,
                batch_size: int, gen: torch.Generator, device, *, p_faces: torch.Tensor | None = None,
                kl_weight: float = 5e-4, bar=None) -> dict:
    """One epoch. faces (Nf, 3, H, W) and negs (Nn, 3, H, W) uint8. Standard CNN: BCE; DB-VAE: dbvae_loss.
    Returns the mean loss and the training accuracy on the drawn batches (diagnostic only)."""
    model.train()
    is_vae = isinstance(model, DBVAE)
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct, seen = 0, 0
    for f_idx, n_idx in epoch_batches(len(faces), len(negs), batch_size, gen, p_faces):
        x = to_float(torch.cat([faces[f_idx], negs[n_idx]]), device)              # (B, 3, H, W)
        y = torch.cat([torch.ones(len(f_idx)), torch.zeros(len(n_idx))]).to(device)  # (B,)
        if is_vae:
            logit, mu, logsigma, recon = model(x)
            loss = dbvae_loss(x, y, logit, mu, logsigma, recon, kl_weight)
        else:
            logit = model(x)[:, 0]
            loss = F.binary_cross_entropy_with_logits(logit, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach().double().cpu() * len(y)
        correct += ((logit.detach() > 0).float() == y).sum().item()
        seen += len(y)
        if bar is not None:
            bar.update(1)
    return {"loss": loss_sum.item() / seen, "acc": correct / seen}


@torch.inference_mode()
def batched(model: nn.Module, x: torch.Tensor, fn: Callable, device, batch_size: int = 500) -> torch.Tensor:
    """fn(model, float batch) over uint8 x in eval mode; concatenated result on CPU."""
    model.eval()
    return torch.cat([fn(model, to_float(x[i:i + batch_size], device)).cpu()
                      for i in range(0, len(x), batch_size)])


def latent_means(model: DBVAE, x: torch.Tensor, device) -> torch.Tensor:
    """mu (N, L) of the DB-VAE's encoder for uint8 images x (eval mode)."""
    return batched(model, x, lambda m, b: m.encode(b)[1], device)


def evaluate(model: nn.Module, test_sets: dict[str, tuple[torch.Tensor, float]], device) -> dict:
    """Accuracy of the face detector per named held-out set: {name: (uint8 images, label 1/0)}.
    For a face set accuracy = fraction detected (logit > 0, i.e. p(face) > 0.5); for non-faces the
    fraction rejected. Also the mean p(face) (the lab's MIT-faces metric)."""
    out = {}
    for name, (x, label) in test_sets.items():
        t0 = time.perf_counter()
        logit = batched(model, x, face_logit, device)          # (N,)
        pred = (logit > 0).float()
        out[name] = {"acc": (pred == label).float().mean().item(),
                     "mean_prob_face": torch.sigmoid(logit).mean().item(), "n": len(x),
                     "eval_time_s": time.perf_counter() - t0}
    return out
