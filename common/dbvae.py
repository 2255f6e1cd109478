"""The DB-VAE of MIT 6.S191 Lab 2 part 2 (Amini et al., AIES 2019), in PyTorch: a face detector that learns a VAE
of its faces and draws rare ones (low latent density) more often, without race or gender labels. Here: the lab's CNN,
decoder and DB-VAE, its loss (Eq. 5), the resampling probabilities (Algorithm 1) and lab_dbvae.py's batches."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .data import IMAGENETTE_CLASSES, to_float, warp
from .models import convT_output_padding

IMAGE_SHAPE = (3, 64, 64)  # (C, H, W) of the lab's faces (its train_face.h5 and its test faces)
# the lab's encoder: (channels, side) of the input and after each stride-2 conv (kernel k, padding k // 2)
SIZES = [(3, 64), (12, 32), (24, 16), (48, 8), (72, 4)]
KERNELS = (5, 5, 3, 3)
DENSE = 512  # the lab's hidden dense layer
# the detector's non-faces: the Imagenette classes whose photos show no people (wnid -> name)
NONFACE_CLASSES = {w: IMAGENETTE_CLASSES[w] for w in ("n02979186", "n03028079", "n03417042", "n03425413", "n03445777",
                                                      "n03888257")}


class StandardCNN(nn.Module):
    """The lab's classifier: 4 stride-2 convs (12, 24, 48, 72 filters; kernels 5, 5, 3, 3), flatten, dense 512 +
    ReLU, then n_outputs (1 face logit for the standard CNN, 2*latent+1 for the DB-VAE); takes uint8 as stored."""

    def __init__(self, n_outputs: int = 1):
        super().__init__()
        self.config = dict(kind="StandardCNN", n_outputs=n_outputs)
        # stride-2 Conv2d -> ReLU -> BatchNorm2d: the lab's order (Keras Conv2D(activation='relu'), then BN)
        blocks = [nn.Sequential(nn.Conv2d(c_in, c_out, k, 2, k // 2), nn.ReLU(inplace=True), nn.BatchNorm2d(c_out))
                  for (c_in, _), (c_out, _), k in zip(SIZES, SIZES[1:], KERNELS)]
        c, s = SIZES[-1]
        self.net = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(c * s * s, DENSE), nn.ReLU(inplace=True),
                                 nn.Linear(DENSE, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(to_float(x))  # (B, 3, 64, 64) -> (B, n_outputs)


class Decoder(nn.Module):
    """The lab's decoder: dense to the encoder's last feature map (72x4x4), then 4 stride-2 transposed convs
    mirroring the encoder (48@3, 24@3, 12@5, 3@5) back to (B, 3, 64, 64); linear output, as in the lab."""

    def __init__(self, latent_dim: int):
        super().__init__()
        c, s = SIZES[-1]
        self.head = nn.Sequential(nn.Linear(latent_dim, c * s * s), nn.ReLU(inplace=True),
                                  nn.Unflatten(1, (c, s, s)))                # (B, L) -> (B, 72, 4, 4)
        layers = []  # 72x4 -> 48x8 -> 24x16 -> 12x32 -> 3x64
        for (c_out, s_out), (c_in, s_in), k in reversed(list(zip(SIZES, SIZES[1:], KERNELS))):
            op = convT_output_padding(s_in, s_out, k, 2, k // 2)
            layers += [nn.ConvTranspose2d(c_in, c_out, k, 2, k // 2, op), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers[:-1])  # no ReLU after the last: a linear output

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.features(self.head(z))  # (B, L) -> (B, 3, 64, 64)


class DBVAE(nn.Module):
    """Encoder = StandardCNN with 2*latent_dim + 1 outputs (face logit, mu, logsigma); decoder as above. Called
    on images it is a face detector, (B, 1) logits like StandardCNN; training uses encode() and the decoder."""

    def __init__(self, latent_dim: int = 100):
        super().__init__()
        self.config = dict(kind="DBVAE", latent_dim=latent_dim)
        self.encoder = StandardCNN(2 * latent_dim + 1)
        self.decoder = Decoder(latent_dim)

    def encode(self, x: torch.Tensor):
        out, L = self.encoder(x), self.config["latent_dim"]    # (B, 2L+1)
        return out[:, 0], out[:, 1:1 + L], out[:, 1 + L:]       # logit (B,), mu (B, L), logsigma (B, L)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[:, :1]                           # (B, 1) face logit


def kl_latent_loss(mu: torch.Tensor, logsigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logsigma)) || N(0, I)) per example (B,), logsigma a log-*variance* as in the lab:
    0.5 * sum_j (exp(logsigma_j) + mu_j^2 - 1 - logsigma_j)  (Kingma & Welling 2014, App. B)."""
    return 0.5 * (logsigma.exp() + mu.pow(2) - 1.0 - logsigma).sum(dim=1)


def dbvae_loss(model: DBVAE, x: torch.Tensor, y: torch.Tensor, kl_weight: float = 5e-4,
               gen: torch.Generator | None = None):
    """Paper Eq. 5 (the lab's vae_loss_function): the batch mean of BCE(y, logit) + 1[y = face] * (kl_weight * KL +
    mean-L1 reconstruction). x (B, 3, H, W), y (B,) in {0, 1} -> (loss, logit (B,)). The decoder runs on the faces
    only (half the cost, same loss); eps is drawn for the whole batch: the same draws as decoding every example.
    gen (a CPU generator) draws eps apart from the global RNG, so that runs side by side stay reproducible."""
    logit, mu, logsigma = model.encode(x)                                # (B,), (B, L), (B, L)
    face = y == 1                                                        # (B,) indicator
    eps = torch.randn(mu.shape, generator=gen, dtype=mu.dtype).to(mu.device)[face]  # (Bf, L)
    z = mu[face] + torch.exp(0.5 * logsigma[face]) * eps                 # (Bf, L)
    recon = model.decoder(z)                                             # (Bf, 3, H, W)
    cls = F.binary_cross_entropy_with_logits(logit, y, reduction="none")  # (B,)
    vae = (kl_weight * kl_latent_loss(mu[face], logsigma[face])
           + (x[face] - recon).abs().flatten(1).mean(dim=1))             # (Bf,)
    return (cls.sum() + vae.sum()) / len(y), logit


def sampling_probabilities(mu: torch.Tensor, bins: int = 10, alpha: float = 1e-3) -> dict[str, torch.Tensor]:
    """Sampling probability p (N,) float64, summing to 1, of each training face from its latent means mu (N, L)
    (paper Algorithm 1). Per latent dimension j: a histogram of mu[:, j] (np.histogram density) plus alpha,
    renormalised to Q_j; w_j(x) = 1 / Q_j(bin of x) normalised over x. Across dimensions, both rules from the
    same histograms: {'max': the lab's (the dimension where x is rarest decides), 'product': the paper's}."""
    mu, n = mu.detach().double().cpu(), len(mu)
    log_w = torch.full(mu.shape, -math.log(n), dtype=torch.float64)  # (N, L); a constant dimension stays uniform
    for j, col in enumerate(mu.T):
        lo, hi = col.min().item(), col.max().item()
        if hi > lo:
            width = (hi - lo) / bins
            # bin of each x (N,); the maximum goes into the last bin, as in np.histogram
            idx = ((col - lo) / width).floor().clamp(0, bins - 1).long()
            density = torch.bincount(idx, minlength=bins).double() / (n * width)  # np.histogram(density=True)
            smoothed = (density + alpha) / (density + alpha).sum()
            w = 1.0 / smoothed[idx]                                               # (N,)
            log_w[:, j] = (w / w.sum()).log()
    s = log_w.sum(dim=1)  # product in log space, its max subtracted: a product of 100 small numbers underflows
    p = {"max": log_w.max(dim=1).values.exp(), "product": (s - s.max()).exp()}
    return {rule: v / v.sum() for rule, v in p.items()}


def balanced_probabilities(groups: torch.Tensor) -> torch.Tensor:
    """The oracle resampler: p (N,) float64 from the true group labels (N,) ints, each of the G groups present
    getting the same total mass, uniform within it: p_i = 1 / (G * n_{group(i)})."""
    _, group, counts = groups.unique(return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[group].double())


@dataclass(frozen=True)
class Augment:
    """Random affine per image of a float batch (B, C, H, W): shift up to +-max_shift px, zoom in [zoom_lo,
    zoom_hi], rotation up to +-max_deg degrees; reflection outside the image: no black frame to key on."""
    max_shift: float = 6.0
    zoom_lo: float = 0.85
    zoom_hi: float = 1.15
    max_deg: float = 10.0

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        u = torch.rand(b, 4, generator=gen, dtype=torch.float64)                  # (B, 4) in [0, 1)
        theta = (2 * u[:, 0] - 1) * self.max_deg * math.pi / 180                  # (B,) radians
        zoom = self.zoom_lo + (self.zoom_hi - self.zoom_lo) * u[:, 1]             # (B,) > 1 enlarges the content
        # affine_grid maps output to input coordinates in [-1, 1]: a shift of s px is 2 s / size
        tx, ty = (2 * u[:, 2] - 1) * 2 * self.max_shift / w, (2 * u[:, 3] - 1) * 2 * self.max_shift / h
        cos, sin = theta.cos() / zoom, theta.sin() / zoom                          # inverse zoom: sample closer
        mat = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)
        return warp(x, mat, padding="reflection")


AUGMENT = Augment()  # for training and for the lab's jittered test copy


def batch_generators(seed: int) -> tuple[torch.Generator, ...]:
    """(faces, non-faces, augmentation, VAE noise) generators of one seed: every model of a seed then sees the same
    non-faces in the same order with the same augmentation, whatever its face draws consume."""
    base = torch.Generator().manual_seed(seed)
    return tuple(torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=base))) for _ in range(4))


def epoch_batches(faces, negs, batch_size: int, gens, p_faces=None, augment=None, device="cpu"):
    """One epoch of (x (B, 3, H, W) float in [0, 1], y (B,) 1 = face) from uint8 images, as the lab's get_batch: half
    faces, half non-faces, len(faces) // half batches; faces in shuffled passes or drawn from p_faces (Nf,)."""
    face_gen, neg_gen, aug_gen = gens[:3]
    half, steps = batch_size // 2, max(1, len(faces) // (batch_size // 2))

    def passes(n: int, gen: torch.Generator) -> torch.Tensor:  # shuffled passes over n items, >= steps * half
        return torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-steps * half // n))])
    face_order = (passes(len(faces), face_gen) if p_faces is None else
                  torch.multinomial(p_faces.float(), steps * half, replacement=True, generator=face_gen))
    y = torch.cat([torch.ones(half), torch.zeros(half)]).to(device)  # (B,) 1 = face, the same in every batch
    for f_idx, n_idx in zip(face_order[:steps * half].split(half), passes(len(negs), neg_gen).split(half)):
        x = to_float(torch.cat([faces[f_idx], negs[n_idx]]), device)  # (B, 3, H, W)
        yield (x if augment is None else augment(x, aug_gen)), y
