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
    loop    - batch drawing (the batch sampler FaceBatches), the loss callables and the accuracy of
              common.train.train_epoch (the one training loop), batched scores and latent means
    lab     - code of lab_dbvae.py's experiment (issue 11): the UTKFace/Imagenette split, the random
              shift/zoom/rotation augmentation and the fixed jittered test copy, the batch sampler and loss
              callables of the training loop, the metrics (99 %-rejection threshold, AUC, group variance,
              dark gap), the paired seed comparison, the results dict and the figures

Image sizes are 64x64 RGB as in the lab; every layer size below is derived from IMAGE_SHAPE.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
import torch
from torch import nn
from torch.nn import functional as F

from .data import IMAGENETTE_CLASSES, imagenette_split, index_batches, to_float
from .models import conv_out, convT_output_padding
from .train import predict

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
# lab_dbvae trains with common.train.train_epoch, the loop every script uses, given a batch sampler and a
# loss callable:  for x, y in FaceBatches(...):  loss, logit = loss_fn(model, x, y);  loss.backward(); opt.step()
def epoch_batches(n_faces: int, n_neg: int, batch_size: int, gen: torch.Generator,
                  p_faces: torch.Tensor | None = None, neg_gen: torch.Generator | None = None):
    """Index pairs (face_idx, neg_idx) for one epoch, as the lab's get_batch: each batch is half faces,
    half non-faces; one epoch = n_faces // (batch_size // 2) batches (every face drawn once on average).

    Faces: a shuffled pass (randperm) when p_faces is None (standard CNN), else drawn from p_faces
    with replacement (DB-VAE). Non-faces: uniform, shuffled passes (index_batches), repeated as needed,
    drawn from `neg_gen` (default `gen`): with its own generator the non-face order is the same for both
    models of a seed whatever the face draws consume.
    """
    neg_gen = gen if neg_gen is None else neg_gen
    half = batch_size // 2
    steps = max(1, n_faces // half)
    if p_faces is None:
        face_order = torch.cat([torch.randperm(n_faces, generator=gen) for _ in range(-(-steps * half // n_faces))])
    else:
        face_order = torch.multinomial(p_faces.float(), steps * half, replacement=True, generator=gen)
    neg_order = torch.cat([torch.cat(list(index_batches(n_neg, n_neg, neg_gen)))
                           for _ in range(-(-steps * half // n_neg))])
    for s in range(steps):
        yield face_order[s * half:(s + 1) * half], neg_order[s * half:(s + 1) * half]


class FaceBatches:
    """The batch sampler: iterating it gives one epoch of (x (B, 3, H, W) float in [0, 1], y (B,) 1 = face).

    faces / negs: uint8 (N, 3, H, W). Three generators derived from `seed` (faces, non-faces,
    augmentation), so both models of a seed see the same non-faces in the same order with the same
    augmentation draws; only the face draws differ (uniform passes vs the DB-VAE's p_faces).
    `p_faces` (Nf,) is set by the DB-VAE before each epoch (Algorithm 1); None = uniform.
    """

    def __init__(self, faces: torch.Tensor, negs: torch.Tensor, batch_size: int, seed: int, device,
                 augment: "Augment | None" = None):
        self.faces, self.negs, self.batch_size, self.device, self.augment = faces, negs, batch_size, device, augment
        base = torch.Generator().manual_seed(seed)
        self.face_gen, self.neg_gen, self.aug_gen = (torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=base)))
                                                     for _ in range(3))
        self.p_faces: torch.Tensor | None = None

    def __len__(self) -> int:
        return max(1, len(self.faces) // (self.batch_size // 2))

    def __iter__(self):
        for f_idx, n_idx in epoch_batches(len(self.faces), len(self.negs), self.batch_size, self.face_gen,
                                          self.p_faces, self.neg_gen):
            x = to_float(torch.cat([self.faces[f_idx], self.negs[n_idx]]), self.device)   # (B, 3, H, W)
            if self.augment is not None:
                x = self.augment(x, self.aug_gen)
            y = torch.cat([torch.ones(len(f_idx)), torch.zeros(len(n_idx))]).to(self.device)  # (B,)
            yield x, y


def classifier_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The standard CNN's loss callable: mean BCE of the face logit. Returns (loss, logit (B,))."""
    logit = model(x)[:, 0]
    return F.binary_cross_entropy_with_logits(logit, y), logit


class DBVAELoss:
    """The DB-VAE's loss callable: dbvae_loss (paper Eq. 5), mean over the batch of
    BCE + 1[face] * VAE loss. Returns (loss, logit (B,)).

    The decoder runs on the faces only: the face indicator zeroes the non-faces' VAE term, so decoding
    them (as the lab does) costs time and changes nothing. eps is drawn for the whole batch and then
    restricted to the faces, so with the same generator the loss equals dbvae_loss(x, y, *model(x))
    exactly (tested); this halves the decoder's cost, the DB-VAE's largest.
    """

    def __init__(self, kl_weight: float = 5e-4, generator: torch.Generator | None = None):
        self.kl_weight, self.generator = kl_weight, generator

    def __call__(self, model: "DBVAE", x: torch.Tensor, y: torch.Tensor):
        logit, mu, logsigma = model.encode(x)                                # (B,), (B, L), (B, L)
        face = y == 1                                                        # (B,) indicator
        eps = torch.randn(mu.shape, generator=self.generator, device=mu.device, dtype=mu.dtype)[face]
        z = mu[face] + torch.exp(0.5 * logsigma[face]) * eps                 # (Bf, L), reparameterised
        recon = model.decoder(z)                                             # (Bf, 3, H, W)
        cls = F.binary_cross_entropy_with_logits(logit, y, reduction="none")  # (B,)
        vae = vae_loss(x[face], recon, mu[face], logsigma[face], self.kl_weight)  # (Bf,)
        return (cls.sum() + vae.sum()) / len(y), logit


def binary_correct(logit: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How many face logits (B,) are on the side of their label y (B,) in {0, 1} (logit > 0: face); the
    training accuracy train_epoch records (on the drawn batches: a diagnostic only)."""
    return ((logit > 0).float() == y).sum()


EVAL_BATCH = 500  # images per batch when scoring uint8 images (common.train.predict)


def latent_means(model: DBVAE, x: torch.Tensor, device) -> torch.Tensor:
    """mu (N, L) of the DB-VAE's encoder for uint8 images x (eval mode)."""
    return predict(model, x, device, EVAL_BATCH, fn=lambda b: model.encode(to_float(b))[1])


def face_scores(model: nn.Module, x: torch.Tensor, device) -> torch.Tensor:
    """Face logits (N,) float64 of uint8 images x (N, 3, H, W), eval mode."""
    return predict(model, x, device, EVAL_BATCH, fn=lambda b: face_logit(model, to_float(b))).double()


# ============================================================================ lab code (lab_dbvae.py)
# Everything below is the experiment of lab_dbvae.py (issue 11), kept here so the script's main() reads
# load -> train -> evaluate -> figures -> write. Groups: skin tone (UTKFace race 0 White = light,
# 1 Black = dark; annotator labels, not skin type) x gender.
GROUPS = ("LF", "LM", "DF", "DM")
GROUP_NAMES = {"LF": "light female", "LM": "light male", "DF": "dark female", "DM": "dark male"}
# (race, gender) of each group in UTKFace file names: race 0 White / 1 Black, gender 0 male / 1 female
GROUP_LABELS = {"LF": (0, 1), "LM": (0, 0), "DF": (1, 1), "DM": (1, 0)}
LIGHT, DARK = 0, 1
LIGHT_GROUPS, DARK_GROUPS = ("LF", "LM"), ("DF", "DM")
# Imagenette classes that show no people (see $DATA_DIR/README.md): the non-faces, {wnid: name}
NEG_CLASSES = {w: IMAGENETTE_CLASSES[w] for w in ("n02979186", "n03028079", "n03417042", "n03425413",
                                                  "n03445777", "n03888257")}
# The three models of one seed: the lab's two, and the standard CNN without any dark training face
MODELS = ("standard", "dbvae", "standard_nodark")
MODEL_NAMES = {"standard": "standard CNN", "dbvae": "DB-VAE", "standard_nodark": "standard CNN, 0 % dark faces"}
TEST_SETS = ("aligned", "jittered", "mit")
TEST_SET_NAMES = {"aligned": "UTKFace held-out, aligned", "jittered": "UTKFace held-out, jittered",
                  "mit": "MIT 6.S191 test faces"}
PRIMARY_ENDPOINT = ("group variance (%^2, population variance of 100 x the four group detection rates at the "
                    "threshold rejecting 99 % of held-out non-faces) on the jittered UTKFace test")
REJECT = 0.99          # the detection threshold rejects this share of held-out non-faces
ALPHA_TEST = 0.05      # significance level of the paired comparisons


@dataclass(frozen=True)
class Augment:
    """Random affine per image (callable on a float batch (B, C, H, W) with a CPU generator):
    shift up to +-max_shift px in x and y, zoom in [zoom_lo, zoom_hi] (> 1 enlarges the content),
    rotation up to +-max_deg degrees. Bilinear resampling, reflection outside the image (no black frame
    that a detector could key on). Defaults: the jittered test of issue 11 (+-6 px, 0.85-1.15, +-10 deg)."""
    max_shift: float = 6.0
    zoom_lo: float = 0.85
    zoom_hi: float = 1.15
    max_deg: float = 10.0

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        u = torch.rand(b, 4, generator=gen, dtype=torch.float64)                  # (B, 4) in [0, 1)
        theta = (2 * u[:, 0] - 1) * self.max_deg * math.pi / 180                  # (B,) radians
        zoom = self.zoom_lo + (self.zoom_hi - self.zoom_lo) * u[:, 1]             # (B,)
        # affine_grid maps output to input coordinates in [-1, 1]: a shift of s px is 2 s / size
        tx = (2 * u[:, 2] - 1) * 2 * self.max_shift / w
        ty = (2 * u[:, 3] - 1) * 2 * self.max_shift / h
        cos, sin = theta.cos() / zoom, theta.sin() / zoom                          # inverse zoom: sample closer
        mat = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(mat.to(x.dtype).to(x.device), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def jittered_copy(x: torch.Tensor, augment: Augment, seed: int, chunk: int = 500) -> torch.Tensor:
    """A fixed random affine copy of uint8 images x (N, 3, H, W) -> uint8 (N, 3, H, W); same seed, same copy."""
    gen = torch.Generator().manual_seed(seed)
    out = [augment(x[i:i + chunk].float().div(255), gen).mul(255).round().clamp(0, 255).to(torch.uint8)
           for i in range(0, len(x), chunk)]
    return torch.cat(out) if out else x.clone()


def utkface_split(root: Path, *, test_per_group: int, n_light: int, n_dark: int, split_seed: int) -> dict:
    """File lists: balanced held-out test faces per group (test_per_group each, or as many as there are)
    and training pools. Returns {"test": {group: [files]}, "light": [n_light + n_dark files],
    "dark": [n_dark files]}; the extra n_dark light faces replace the dark ones in the 0 %-dark control.
    Depends only on `split_seed`: every training seed sees the same faces and the same test."""
    from .data import require_images
    from .utils import UserError
    by = {key: [] for key in GROUP_LABELS.values()}
    # a missing or empty folder stops the run with one line naming it (common.data.require_images)
    for f in require_images(root, "*.jpg", "UTKFace face photos named age_gender_race_date.jpg.chip.jpg"):
        _, gender, race = parse_utkface_name(f.name)
        if (race, gender) in by:
            by[(race, gender)].append(f)
    gen = torch.Generator().manual_seed(split_seed)
    test, rest = {}, {LIGHT: [], DARK: []}
    for grp, key in GROUP_LABELS.items():
        pool = [by[key][i] for i in torch.randperm(len(by[key]), generator=gen).tolist()]
        test[grp], rest[key[0]] = pool[:test_per_group], rest[key[0]] + pool[test_per_group:]
    for race in rest:  # shuffle the leftovers (light = LF + LM, dark = DF + DM)
        rest[race] = [rest[race][i] for i in torch.randperm(len(rest[race]), generator=gen).tolist()]
    if n_light + n_dark > len(rest[LIGHT]) or n_dark > len(rest[DARK]) or min(len(v) for v in test.values()) == 0:
        raise UserError(f"UTKFace in {root}: asked for {n_light} light + {n_dark} dark training faces (and {n_dark} "
                        f"more light ones for the control) and test faces of every group; only "
                        f"{len(rest[LIGHT])} + {len(rest[DARK])} are left after the test split "
                        f"({', '.join(f'{g} {len(v)}' for g, v in test.items())})")
    return {"test": test, "light": rest[LIGHT][:n_light + n_dark], "dark": rest[DARK][:n_dark]}


def imagenette_files(root: Path, split: str) -> list[Path]:
    """The JPEG files of the non-face classes in one Imagenette split, by class then name."""
    base = imagenette_split(root, split)
    return [f for c in sorted(NEG_CLASSES) for f in sorted((base / c).glob("*.JPEG"))]


def load_lab_data(data_dir, *, train_faces: int, dark_fraction: float, test_per_group: int, split_seed: int,
                  jitter_seed: int, augment: Augment, smoke: bool = False, h5: Path | None = None) -> dict:
    """Decode every image once (uint8) and build the training sets and the three test sets.

    Returns {"train": {model: faces (N, 3, 64, 64)}, "train_negs", "race" (N,) of the skewed set (None with
    --h5), "tests": {test_set: {"faces": {group: x}, "negs": x}}, "counts", "fractions", "decode_time_s"}.
    """
    from tqdm.auto import tqdm

    from .data import decode_images
    root = Path(data_dir).expanduser()
    if smoke:
        train_faces, test_per_group = 64, 8
    n_dark = round(dark_fraction * train_faces)
    if smoke:
        n_dark = max(n_dark, 4)  # keep a few dark faces, so every code path runs
    split = utkface_split(root / "UTKFace", test_per_group=test_per_group, n_light=train_faces - n_dark,
                          n_dark=n_dark, split_seed=split_seed)
    neg_train, neg_test = imagenette_files(root, "train"), imagenette_files(root, "val")
    mit_dir = root / "mit_test_faces"
    mit = {g: sorted((mit_dir / g).glob("*.png")) for g in GROUPS} if mit_dir.is_dir() else {}
    if smoke:
        neg_train, neg_test = neg_train[::len(neg_train) // 64][:64], neg_test[::len(neg_test) // 32][:32]
        mit = {g: f[:4] for g, f in mit.items()}
    lists = {"light": split["light"], "dark": split["dark"], "train_negs": neg_train, "test_negs": neg_test,
             **{f"test_{g}": f for g, f in split["test"].items()}, **{f"mit_{g}": f for g, f in mit.items()}}
    total = sum(len(v) for v in lists.values())
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc="decode images", unit="img", mininterval=1.0, dynamic_ncols=True, leave=False)
    x = {k: decode_images(v, IMAGE_SHAPE[1], bar=bar) for k, v in lists.items()}
    bar.close()
    n_light = train_faces - n_dark
    skewed = torch.cat([x["light"][:n_light], x["dark"]])                 # (train_faces, 3, 64, 64)
    race = torch.tensor([LIGHT] * n_light + [DARK] * n_dark)               # (train_faces,) for reports only
    train = {"standard": skewed, "dbvae": skewed, "standard_nodark": x["light"][:n_light + n_dark]}
    negs = x["train_negs"]
    if h5 is not None:  # the lab's train_face.h5 replaces the training images (no race labels: no control)
        xh, yh = load_h5(h5)
        faces, negs = xh[yh == 1], xh[yh != 1]
        if smoke:
            faces, negs = faces[:64], negs[:64]
        train, race = {"standard": faces, "dbvae": faces}, None
    aligned = {g: x[f"test_{g}"] for g in GROUPS}
    tests = {"aligned": {"faces": aligned, "negs": x["test_negs"]},
             # one fixed jittered copy of the held-out faces and non-faces (the same for every seed/model)
             "jittered": {"faces": {g: jittered_copy(v, augment, jitter_seed + i) for i, (g, v) in enumerate(aligned.items())},
                          "negs": jittered_copy(x["test_negs"], augment, jitter_seed + len(GROUPS))}}
    if mit:  # as they are (not re-aligned): the threshold comes from the aligned non-faces
        tests["mit"] = {"faces": {g: x[f"mit_{g}"] for g in GROUPS}, "negs": x["test_negs"]}
    counts = {"train_faces": {m: len(v) for m, v in train.items()}, "train_nonfaces": len(negs),
              "test_nonfaces": len(x["test_negs"]),
              **{f"{t}_{g}": len(tests[t]["faces"][g]) for t in tests for g in GROUPS}}
    fractions = ({"standard": n_dark / train_faces, "dbvae": n_dark / train_faces, "standard_nodark": 0.0}
                 if race is not None else None)
    return {"train": train, "train_negs": negs, "race": race, "tests": tests, "counts": counts,
            "fractions": fractions, "decode_time_s": time.perf_counter() - t0, "decoded_images": total}


# ---------------------------------------------------------------------------- metrics
def rejection_threshold(neg_scores: torch.Tensor, reject: float = REJECT) -> float:
    """The score t with at least `reject` of the non-faces at or below it: the ceil(reject * n)-th smallest
    non-face score. A face is detected when its score is > t (so exactly that many non-faces are rejected
    when the scores have no ties)."""
    s = torch.sort(neg_scores.double().flatten()).values
    k = max(1, math.ceil(reject * len(s) - 1e-9))   # -1e-9: 0.99 * 200 is 198.00000000000003 in floating point
    return s[k - 1].item()


def group_variance(rates: dict) -> float:
    """Population variance of 100 x the four group rates, in %^2 (the paper's unit: 28.84 -> 9.43)."""
    return (100 * torch.tensor([rates[g] for g in GROUPS], dtype=torch.float64)).var(unbiased=False).item()


def dark_gap(rates: dict) -> float:
    """Mean of the light groups minus the worst dark group, in percentage points (> 0: dark faces worse)."""
    return 100 * (sum(rates[g] for g in LIGHT_GROUPS) / len(LIGHT_GROUPS) - min(rates[g] for g in DARK_GROUPS))


def group_metrics(face_scores: dict, neg_scores: torch.Tensor, reject: float = REJECT) -> dict:
    """Per group: detection rate at the threshold rejecting `reject` of the non-faces, AUC of the group's
    faces against the non-faces (sklearn.metrics.roc_auc_score), mean p(face); plus group variance and gap.
    face_scores: {group: logits (n_g,)}; neg_scores: logits (n_neg,)."""
    from sklearn.metrics import roc_auc_score
    t = rejection_threshold(neg_scores, reject)
    out = {"threshold": t, "nonface_rejected": (neg_scores <= t).double().mean().item(),
           "detect": {}, "detected": {}, "n": {}, "auc": {}, "mean_p_face": {}}
    neg = neg_scores.double().numpy()
    for g in GROUPS:
        s = face_scores[g].double()
        k = int((s > t).sum())
        out["detected"][g], out["n"][g], out["detect"][g] = k, len(s), k / len(s)
        labels = [1] * len(s) + [0] * len(neg)
        out["auc"][g] = float(roc_auc_score(labels, list(s.numpy()) + list(neg)))
        out["mean_p_face"][g] = torch.sigmoid(s).mean().item()
    out["group_var"], out["dark_gap"] = group_variance(out["detect"]), dark_gap(out["detect"])
    return out


def evaluate_model(model: nn.Module, tests: dict, device, reject: float = REJECT) -> dict:
    """group_metrics on every test set {name: {"faces": {group: uint8}, "negs": uint8}}."""
    out, neg_cache = {}, {}
    for name, ts in tests.items():
        key = id(ts["negs"])  # the MIT faces share the aligned non-faces: score them once
        if key not in neg_cache:
            neg_cache[key] = face_scores(model, ts["negs"], device)
        neg = neg_cache[key]
        out[name] = group_metrics({g: face_scores(model, x, device) for g, x in ts["faces"].items()}, neg, reject)
    return out


# ---------------------------------------------------------------------------- statistics over seeds
def compare_paired(a, b, endpoint: str, names=("standard", "dbvae")) -> dict:
    """Paired comparison over seeds of b - a (e.g. DB-VAE minus standard CNN): bootstrap 95 % CI (BCa) and
    exact sign-flip permutation p of the mean difference (common.stats). The verdict needs both: a
    direction ("lower"/"higher") only if p < 0.05 and the CI excludes 0, else "no significant difference"."""
    from . import stats
    a, b = [float(v) for v in a], [float(v) for v in b]
    d = [y - x for x, y in zip(a, b)]
    ci = stats.bootstrap_ci(d)
    p = stats.sign_flip_p_value(d)
    verdict = stats.verdict(*ci) if p < ALPHA_TEST else "no significant difference"
    return {"endpoint": endpoint, "difference": f"{names[1]} - {names[0]}", "n_seeds": len(d),
            names[0]: stats.summarize(a), names[1]: stats.summarize(b), "mean_diff": sum(d) / len(d),
            "ci95": ci, "ci_method": "bootstrap BCa (scipy.stats.bootstrap), 10,000 resamples",
            "p_value": p, "test": "paired sign-flip permutation test, two-sided (exact for <= 14 seeds)",
            "alpha": ALPHA_TEST, "verdict": verdict, "per_seed_diff": d}


def summarize_model(per_seed: list[dict]) -> dict:
    """{test_set: {"detect"/"auc"/"mean_p_face": {group: summarize}, "group_var"/"dark_gap"/"threshold": summarize,
    and for the MIT faces "wilson": {group: Wilson 95 % interval at the seed-mean count of n}}}."""
    from . import stats
    out = {}
    for t in per_seed[0]:
        rows = [s[t] for s in per_seed]
        o = {key: {g: stats.summarize([r[key][g] for r in rows]) for g in GROUPS}
             for key in ("detect", "auc", "mean_p_face")}
        for key in ("group_var", "dark_gap", "threshold", "nonface_rejected"):
            o[key] = stats.summarize([r[key] for r in rows])
        o["detected_per_seed"] = {g: [r["detected"][g] for r in rows] for g in GROUPS}
        o["n"] = rows[0]["n"]
        if t == "mit":  # n = 15 per group: binomial intervals (the seed spread is not the uncertainty here)
            o["wilson"] = {g: stats.wilson(round(sum(o["detected_per_seed"][g]) / len(rows)), o["n"][g])
                           for g in GROUPS}
        out[t] = o
    return out


def sampling_summary(histories: dict, fraction: float, epochs: int) -> dict:
    """The dark faces' share of the DB-VAE's sampling mass per epoch (mean over seeds) vs their share of the
    training faces. histories: {seed: [epoch rows with dark_sampling_mass, dark_mean_p_rank]}."""
    from . import stats
    per_epoch = []
    for e in range(epochs):
        mass = [h[e]["dark_sampling_mass"] for h in histories.values()]
        rank = [h[e]["dark_mean_p_percentile"] for h in histories.values()]
        other = {k: stats.summarize([h[e][k] for h in histories.values()])
                 for k in histories[next(iter(histories))][e] if k.startswith("dark_sampling_mass_if_")}
        per_epoch.append({"epoch": e + 1, "dark_mass": stats.summarize(mass), **other,
                          "mass_over_share": sum(mass) / len(mass) / fraction if fraction > 0 else None,
                          "dark_mean_p_percentile": stats.summarize(rank)})
    return {"dark_share_of_faces": fraction, "per_epoch": per_epoch,
            "note": "dark_mass: sum of the resampling probabilities of the dark training faces (the share of "
                    "draws they get); mass_over_share: that divided by their share of the faces (1 = no "
                    "targeting); dark_mean_p_percentile: mean percentile of the dark faces' p among all faces "
                    "(50 = average); dark_sampling_mass_if_<rule>: the same share had p been computed with the other "
                    "combination rule from the same latent means (not used for drawing). Race labels are used for "
                    "these diagnostics only, never in training."}


def build_results(args, data: dict, runs: dict, wall_time_s: float) -> dict:
    """The lab_dbvae.json dict. runs: {model: {seed: {"history", "metrics", "params"}}}."""
    from . import stats
    seeds = list(args.seeds)
    models = [m for m in MODELS if m in runs]
    metrics = {m: summarize_model([runs[m][s]["metrics"] for s in seeds]) for m in models}
    tests = list(metrics["standard"])
    comparison = {t: compare_paired([runs["standard"][s]["metrics"][t]["group_var"] for s in seeds],
                                    [runs["dbvae"][s]["metrics"][t]["group_var"] for s in seeds],
                                    f"group variance (%^2) of the detection rate, {TEST_SET_NAMES[t]}")
                  for t in tests} if len(seeds) > 1 else {}
    secondary = {}
    if len(seeds) > 1:
        secondary["dark_gap"] = {t: compare_paired(
            [runs["standard"][s]["metrics"][t]["dark_gap"] for s in seeds],
            [runs["dbvae"][s]["metrics"][t]["dark_gap"] for s in seeds],
            f"dark gap (points): mean light detection - worst dark group, {TEST_SET_NAMES[t]}") for t in tests}
        if "standard_nodark" in runs:
            secondary["control_vs_standard"] = {t: compare_paired(
                [runs["standard_nodark"][s]["metrics"][t]["group_var"] for s in seeds],
                [runs["standard"][s]["metrics"][t]["group_var"] for s in seeds],
                f"group variance (%^2), {TEST_SET_NAMES[t]}: standard CNN with the skewed set minus without "
                f"dark faces", names=("standard_nodark", "standard")) for t in tests}
    gap = [runs["standard"][s]["metrics"]["jittered"]["dark_gap"] for s in seeds]
    gap_ci = stats.bootstrap_ci(gap) if len(seeds) > 1 else [gap[0], gap[0]]
    std_gap = {**stats.summarize(gap), "bootstrap_ci95": gap_ci, "measurable": bool(gap_ci[0] > 0),
               "definition": "standard CNN, jittered test: mean light detection - worst dark group (points)"}
    sampling = (sampling_summary({s: runs["dbvae"][s]["history"] for s in seeds}, data["fractions"]["dbvae"],
                                 args.epochs) if data["race"] is not None else None)
    return {
        "name": "lab_dbvae", "config": run_config_of(args), "seeds": seeds, "groups": list(GROUPS),
        "models": {m: MODEL_NAMES[m] for m in models}, "test_sets": {t: TEST_SET_NAMES[t] for t in tests},
        "primary_endpoint": {"name": "jittered_group_var", "definition": PRIMARY_ENDPOINT,
                             "chosen": "before the run (fixed in common/dbvae.py, issue 11)",
                             "comparison": "comparison.jittered", "also": "dark gap (secondary.dark_gap)"},
        "data": {"counts": data["counts"], "dark_fractions": data["fractions"],
                 "source": "h5" if args.h5 else "UTKFace+Imagenette",
                 "races_used": "0 (White) as light, 1 (Black) as dark; races 2-4 excluded",
                 "negative_classes": NEG_CLASSES, "decode_time_s": data["decode_time_s"],
                 "decoded_images": data["decoded_images"],
                 "augmentation": {"train": vars_of(data["augment"]), "jittered_test": vars_of(data["augment"]),
                                  "jitter_seed": args.jitter_seed, "padding": "reflection",
                                  "applied_to": "training faces and non-faces of every model; the jittered test "
                                                "copy of the held-out faces and non-faces (one fixed draw)"},
                 "mit_alignment": "as they are (not re-aligned); threshold from the aligned held-out non-faces"},
        "threshold_definition": f"per model, seed and test set: the ceil({REJECT} n)-th smallest face logit of the "
                                f"n held-out non-faces; a face is detected when its logit is above it",
        "metrics": metrics, "comparison": comparison, "secondary": secondary, "standard_gap_jittered": std_gap,
        "sampling": sampling,
        "per_seed": {m: {str(s): runs[m][s]["metrics"] for s in seeds} for m in models},
        "history": {m: {str(s): runs[m][s]["history"] for s in seeds} for m in models},
        "params": {m: runs[m][seeds[0]]["params"] for m in models},
        # The paper's table could not be checked against its text here, so no number of it is quoted.
        "paper_reference": {"source": "Amini et al., AIES 2019", "benchmark": "Pilot Parliaments Benchmark"},
        "wall_time_s": wall_time_s,
    }


def run_config_of(args) -> dict:
    from .utils import run_config
    return run_config(args)


def vars_of(obj) -> dict:
    from dataclasses import asdict
    return asdict(obj)


# ---------------------------------------------------------------------------- figures
FIG_WIDTH = 8.0   # inches: placed at the report's 17 cm text width this is a 0.84 scale, so 9 pt -> 7.5 pt
FONT = 9          # smallest font in the figures (pt, before scaling)


def plot_groups(results: dict, path: Path) -> None:
    """Detection rate per group, per model and test set; bars = mean over seeds with t 95 % CIs
    (UTKFace) or the Wilson 95 % interval for 15 faces (MIT). y-axis from 0."""
    from .plots import plt, save
    m = results["metrics"]
    models = list(m)
    tests = list(m[models[0]])
    fig, axes = plt.subplots(1, len(tests), figsize=(FIG_WIDTH, 3.0), sharey=True, squeeze=False)
    width = 0.8 / len(models)
    for ax, t in zip(axes[0], tests):
        for i, model in enumerate(models):
            xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(GROUPS))]
            if t == "mit":
                w = m[model][t]["wilson"]
                mean = [m[model][t]["detect"][g]["mean"] for g in GROUPS]
                lo = [w[g]["ci95"][0] for g in GROUPS]
                hi = [w[g]["ci95"][1] for g in GROUPS]
            else:
                d = m[model][t]["detect"]
                mean = [d[g]["mean"] for g in GROUPS]
                lo = [d[g]["ci95"][0] for g in GROUPS]
                hi = [d[g]["ci95"][1] for g in GROUPS]
            err = [[max(0.0, a - b) for a, b in zip(mean, lo)], [max(0.0, b - a) for a, b in zip(mean, hi)]]
            ax.bar(xs, mean, width, yerr=err, capsize=2, label=MODEL_NAMES[model], error_kw={"lw": 0.8})
        ax.set_xticks(range(len(GROUPS)), list(GROUPS), fontsize=FONT)
        ax.set_ylim(0, 1.05)
        ax.set_title(TEST_SET_NAMES[t], fontsize=FONT + 1)
        ax.tick_params(labelsize=FONT)
        ax.grid(axis="y", alpha=0.3)
    axes[0][len(tests) // 2].set_xlabel("group (L/D: light/dark skin, F/M: female/male)", fontsize=FONT)
    axes[0][0].set_ylabel(f"faces detected at {REJECT:.0%}\nnon-face rejection", fontsize=FONT)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(models), fontsize=FONT,
               frameon=False)
    fig.suptitle(f"Detection rate per group: mean over {len(results['seeds'])} seeds, 95 % CI "
                 f"(MIT: Wilson, 15 faces)", fontsize=FONT + 1)
    fig.tight_layout()
    save(fig, path)


def plot_paired(results: dict, path: Path) -> None:
    """(a) the primary endpoint per seed, paired lines standard -> DB-VAE (and the 0 %-dark control);
    (b) the dark faces' share of the DB-VAE's sampling mass per epoch vs their share of the faces."""
    from .plots import plt, save
    fig, axes = plt.subplots(1, 2, figsize=(FIG_WIDTH, 3.0))
    ax = axes[0]
    per = results["per_seed"]
    models = [m for m in MODELS if m in per]
    seeds = [str(s) for s in results["seeds"]]
    for s in seeds:
        ax.plot(range(len(models)), [per[m][s]["jittered"]["group_var"] for m in models], "o-", color="0.6",
                lw=0.8, ms=3)
    means = [results["metrics"][m]["jittered"]["group_var"]["mean"] for m in models]
    ax.plot(range(len(models)), means, "s-", color="C3", lw=2, label="mean over seeds")
    ax.set_xticks(range(len(models)), [MODEL_NAMES[m].replace(", ", ",\n") for m in models], fontsize=FONT)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("group variance (%²)\non the jittered test", fontsize=FONT)
    ax.set_title("(a) primary endpoint, one line per seed", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT, loc="upper left", bbox_to_anchor=(0.0, -0.34), frameon=False)
    ax = axes[1]
    samp = results.get("sampling")
    if samp:
        ep = [r["epoch"] for r in samp["per_epoch"]]
        for s in seeds:
            ax.plot(ep, [100 * h["dark_sampling_mass"] for h in results["history"]["dbvae"][s]], "o-",
                    color="0.6", lw=0.8, ms=3)
        ax.plot(ep, [100 * r["dark_mass"]["mean"] for r in samp["per_epoch"]], "s-", color="C1", lw=2,
                label="dark faces' share of the sampling mass (mean)")
        for key in [k for k in samp["per_epoch"][0] if k.startswith("dark_sampling_mass_if_")]:
            ax.plot(ep, [100 * r[key]["mean"] for r in samp["per_epoch"]], "^:", color="C4", lw=1.5,
                    label=f"the same had p used the {key.rsplit('_', 1)[-1]} rule (not used)")
        ax.axhline(100 * samp["dark_share_of_faces"], color="k", ls="--", lw=1, label="their share of the faces")
        ax.set_xticks(ep)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=FONT, loc="upper left", bbox_to_anchor=(-0.1, -0.3), frameon=False)
    ax.set_xlabel("epoch (p re-estimated at its start)", fontsize=FONT)
    ax.set_ylabel("% of draws", fontsize=FONT)
    ax.set_title("(b) DB-VAE resampling of dark faces", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    fig.tight_layout()
    save(fig, path)


def plot_sampling_faces(faces: torch.Tensor, p: torch.Tensor, race: torch.Tensor | None, path: Path,
                        title: str, n_show: int = 8) -> None:
    """Training faces (uint8 (N, 3, H, W)) with the highest and lowest resampling probability p (N,)."""
    from .plots import plt, save
    n_show = min(n_show, len(p) // 2)
    order = torch.argsort(p, descending=True, stable=True)
    rows = [("highest p", order[:n_show]), ("lowest p", order[-n_show:].flip(0))]
    fig, axes = plt.subplots(2, n_show, figsize=(FIG_WIDTH, 3.6), squeeze=False)
    for r, (label, idx) in enumerate(rows):
        for c, i in enumerate(idx.tolist()):
            ax = axes[r][c]
            ax.imshow(faces[i].permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            tag = ("dark" if race[i] == DARK else "light") + "\n" if race is not None else ""
            ax.set_title(f"{tag}{p[i] * len(p):.1f}× unif.", fontsize=FONT)
            if c == 0:
                ax.set_ylabel(label, fontsize=FONT)
    fig.suptitle(title, fontsize=FONT + 1)
    fig.tight_layout()
    save(fig, path)
