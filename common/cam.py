"""Class Activation Maps (Zhou et al., CVPR 2016) on Imagenette: data, model, CAM / Grad-CAM, figures.

Pieces (used by lab_cam.py and tests/test_cam.py):
    load_imagenette     - the official train/val split decoded once into a uint8 tensor (N, 3, S, S)
    random_resized_crop - batched random-resized-crop + horizontal flip on tensors (one grid_sample)
    center_crop         - the validation crop
    CamCNN              - LAB01 ex 1.3 configurable CNN (conv -> BN -> ReLU -> Dropout -> MaxPool blocks)
                          ending, as CAM needs, in conv -> global average pooling -> Linear(num_classes)
    class_activation_maps / generate_cam / grad_cam - the maps
    save_cam_visualization / cam_overview_figure    - original | CAM | overlay figures
    lab code            - lab_cam.py's experiment: loading both splits, the evaluation (predictions and
                          predicted-class CAMs of every val image), the example picks ('right for the wrong
                          reason' candidates), CAM vs Grad-CAM, the figures and the results dict

CAM in one line (Zhou et al. 2016, Eq. 1-2): with f_k(x, y) the k-th feature map of the last conv
layer and w_k^c the weight of the linear layer from unit k to class c, the class score is
    S_c = sum_k w_k^c * mean_{x,y} f_k(x, y) + b_c = mean_{x,y} M_c(x, y) + b_c,
    M_c(x, y) = sum_k w_k^c f_k(x, y),
so M_c says how much each location contributes to the logit of class c.
"""
from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .data import IMAGENETTE_CLASSES, DataUnavailableError, TensorData, decode_images, imagenette_split, to_float
from .train import predict

# ImageNet RGB statistics of pixels in [0, 1]: the usual input normalisation for ImageNet subsets.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- data
def load_imagenette(data_dir: str | Path, split: str, size: int = 96, per_class: int | None = None,
                    skipped: list | None = None) -> tuple[TensorData, list[str], list[str]]:
    """Imagenette v2 (160 px) `split` as tensors: x (N, 3, size, size) uint8, y (N,) int64.

    Returns (data, wnids, class_names). Classes are the sorted folder WordNet ids (the official order,
    tench ... parachute), as torchvision.datasets.Imagenette / ImageFolder number them. Every image is
    decoded once and kept as uint8 (4x smaller than float32: the 9469 train images at 96 px are
    262 MB), so an epoch never touches a JPEG again. `per_class` keeps only the first n files of each
    class (for --smoke and the tests). With a `skipped` list, unreadable image files are skipped (their
    paths appended to it, their labels dropped) instead of stopping the run; see data.decode_images.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    split_dir = imagenette_split(data_dir, split)  # common.data: one error naming DATA_DIR if it is missing
    try:
        wnids, wnid_to_idx = find_classes(str(split_dir))  # sorted folder names
        samples = make_dataset(str(split_dir), wnid_to_idx, extensions=IMG_EXTENSIONS)  # sorted by class
    except FileNotFoundError as exc:  # no class folder, or a class folder without images
        raise DataUnavailableError(
            f"'{split_dir}' has no usable images ({str(exc).splitlines()[0].rstrip('.')}); it should hold "
            f"one folder per Imagenette class (n01440764 ... n03888257) of JPEG images") from exc
    if per_class is not None:
        seen: dict[int, int] = {}
        kept = []
        for path, label in samples:
            seen[label] = seen.get(label, 0) + 1
            if seen[label] <= per_class:
                kept.append((path, label))
        samples = kept
    chunk = 512  # bounds the memory of decoded-but-not-yet-resized images
    bad: list | None = [] if skipped is not None else None
    x = torch.cat([decode_images([p for p, _ in samples[i:i + chunk]], size, skipped=bad)
                   for i in range(0, len(samples), chunk)])                # (N, 3, S, S) uint8
    if bad:
        skipped.extend(bad)
        bad_set = set(bad)
        samples = [(p, label) for p, label in samples if p not in bad_set]
        if not samples:
            raise DataUnavailableError(f"no image under '{split_dir}' could be decoded ({len(bad)} unreadable)")
    y = torch.tensor([label for _, label in samples], dtype=torch.long)   # (N,)
    names = [IMAGENETTE_CLASSES.get(w, w) for w in wnids]
    return TensorData(x, y), wnids, names


def random_resized_crop(x: torch.Tensor, gen: torch.Generator, out_size: int,
                        scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True) -> torch.Tensor:
    """Batched RandomResizedCrop + RandomHorizontalFlip (Szegedy et al. 2015 style) on tensors.

    x: (B, 3, S, S) uint8 or float. Each image gets a crop of area fraction ~U(scale) of the image and
    aspect ratio log-uniform in `ratio`, at a random position, resampled bilinearly to out_size, and a
    mirror with probability 1/2. All of it is one affine map per image (F.affine_grid works in
    normalised coordinates [-1, 1], where a crop of relative width w centred at c is x -> w x + c), so
    the whole batch is one grid_sample instead of B PIL calls. Returns (B, 3, out, out) float in [0, 1].
    Random numbers come from `gen` (CPU) so runs stay reproducible.
    """
    b = x.shape[0]
    r = torch.rand(b, 5, generator=gen)                                          # (B, 5) in [0, 1)
    area = scale[0] + (scale[1] - scale[0]) * r[:, 0]                             # (B,)
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * r[:, 1]
    aspect = log_ratio.exp()                                                      # width / height
    w = (area * aspect).sqrt().clamp(max=1.0)                                     # relative crop width
    h = (area / aspect).sqrt().clamp(max=1.0)                                     # relative crop height
    cx = (1 - w) * (2 * r[:, 2] - 1)                                              # centre keeps crop inside
    cy = (1 - h) * (2 * r[:, 3] - 1)
    sign = torch.where(r[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones(b)       # -1: mirror x
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([w * sign, zero, cx], 1),
                         torch.stack([zero, h, cy], 1)], 1).to(x.device)          # (B, 2, 3)
    grid = F.affine_grid(theta, [b, x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(to_float(x), grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)                                     # (B, 3, out, out)


def center_crop(x: torch.Tensor, out_size: int) -> torch.Tensor:
    """Central out_size x out_size window of (N, C, S, S) (the validation view; no resampling)."""
    s = x.shape[-1]
    if out_size > s:
        raise ValueError(f"cannot centre-crop {out_size} px out of {s} px images")
    top = (s - out_size) // 2
    return x[..., top:top + out_size, top:top + out_size].contiguous()


# ----------------------------------------------------------------------------- model
class CamCNN(nn.Module):
    """LAB01 ex 1.3 configurable CNN with a CAM head.

        input (B, 3, H, W) uint8 or float in [0, 1] -> ImageNet normalisation
        for c in channels:  conv3x3(c) -> BatchNorm -> ReLU -> Dropout(p) -> MaxPool2x2   (H, W halve)
        CAM layer:          conv3x3(cam_channels) -> BatchNorm -> ReLU   = f_k(x, y), (B, K, H/2^n, W/2^n)
        GAP:                mean over (x, y)                              (B, K)
        fc:                 Linear(K, num_classes)                        (B, num_classes) logits

    The CAM layer is not pooled, so the maps keep 1/2^n of the input resolution (n = len(channels);
    Zhou et al. likewise cut the networks so the last maps are 14 x 14 for 224 px inputs). Nothing
    follows the GAP but one linear layer: that is what makes M_c = sum_k w_k^c f_k exact (module doc).
    """

    def __init__(self, channels=(32, 64, 128, 256), cam_channels: int = 512, num_classes: int = 10,
                 dropout: float = 0.0, in_channels: int = 3):
        super().__init__()
        self.config = dict(kind="CamCNN", channels=list(channels), cam_channels=cam_channels,
                           num_classes=num_classes, dropout=dropout, in_channels=in_channels)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, -1, 1, 1), persistent=False)
        layers, c_in = [], in_channels
        for c in channels:
            # bias=False: BatchNorm's shift makes a conv bias redundant.
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Dropout(dropout), nn.MaxPool2d(2)]
            c_in = c
        self.blocks = nn.Sequential(*layers)
        self.cam_layer = nn.Sequential(nn.Conv2d(c_in, cam_channels, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(cam_channels), nn.ReLU(inplace=True))
        self.fc = nn.Linear(cam_channels, num_classes)
        self.downsample = 2 ** len(channels)  # input size / feature-map size
        self.train_bf16 = False                # a run-time choice, not part of the architecture

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (to_float(x) - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv feature maps f_k(x, y): (B, K, H/2^n, W/2^n), non-negative (after ReLU)."""
        x = self.normalise(x).contiguous(memory_format=torch.channels_last)  # NHWC: faster oneDNN convs
        return self.cam_layer(self.blocks(x))

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(f.mean(dim=(2, 3)))  # GAP (B, K) -> logits (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Optional bfloat16 autocast for *training* steps only (set model.train_bf16 = True): oneDNN's
        # AVX512-BF16 convolutions are ~1.5x faster on CPU; evaluation and CAMs stay in float32, so
        # every reported number and map comes from the exact float32 network.
        bf16 = self.training and self.train_bf16
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self.head(self.features(x))  # (B, num_classes)
        return out.float() if bf16 else out     # the loss in float32


# ----------------------------------------------------------------------------- CAM / Grad-CAM
def class_activation_maps(model: CamCNN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-normalised CAMs of every class and the logits: ((B, C, h, w), (B, C)).

    M_c(x, y) = sum_k w_k^c f_k(x, y) (Zhou et al. 2016, Eq. 2), at feature-map resolution. The bias is
    not part of M_c: mean_{x,y} M_c + b_c equals the logit exactly (tested).
    """
    f = model.features(x)                                        # (B, K, h, w)
    cams = torch.einsum("ck,bkhw->bchw", model.fc.weight, f)     # (B, C, h, w)
    return cams, model.head(f)


def normalise_map(m: torch.Tensor) -> torch.Tensor:
    """Min-max scale a map (..., H, W) to [0, 1] per map (a constant map becomes all zeros)."""
    flat = m.flatten(-2)
    lo, hi = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(m)


def upsample(m: torch.Tensor, size) -> torch.Tensor:
    """(h, w) or (B, h, w) map -> image size, bilinear (as Zhou et al. upsample CAMs to the image)."""
    squeeze = m.dim() == 2
    m = m[None] if squeeze else m
    out = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return out[0] if squeeze else out


@torch.no_grad()
def generate_cam(model: CamCNN, image: torch.Tensor, class_idx: int | None = None,
                 normalize: bool = True) -> tuple[torch.Tensor, int, float]:
    """CAM of one image (3, H, W) -> (cam (H, W), class, confidence).

    class_idx defaults to the predicted class; confidence is the softmax probability of that class.
    The map M_c is upsampled to the image size and, with normalize=True, min-max scaled to [0, 1].
    """
    model.eval()
    cams, logits = class_activation_maps(model, image[None])     # (1, C, h, w), (1, C)
    probs = logits.softmax(1)[0]                                  # (C,)
    c = int(probs.argmax()) if class_idx is None else int(class_idx)
    cam = upsample(cams[0, c], image.shape[-2:])                  # (H, W)
    return (normalise_map(cam) if normalize else cam), c, float(probs[c])


def grad_cam(model: CamCNN, image: torch.Tensor, class_idx: int | None = None,
             normalize: bool = True, relu: bool = True) -> tuple[torch.Tensor, int]:
    """Grad-CAM (Selvaraju et al., ICCV 2017) on the same last feature maps: (map (H, W), class).

    alpha_k^c = mean_{x,y} dS_c/df_k(x, y); L_c = ReLU(sum_k alpha_k^c f_k). With GAP + one linear
    layer dS_c/df_k(x, y) = w_k^c / (h w), so alpha_k^c = w_k^c / (h w) and, before the ReLU, Grad-CAM
    is CAM divided by h w: the same map up to scale (and the ReLU clips negative evidence).
    """
    model.eval()
    with torch.enable_grad():
        f = model.features(image[None]).detach().requires_grad_(True)   # (1, K, h, w)
        logits = model.head(f)                                           # (1, C)
        c = int(logits.argmax(1)) if class_idx is None else int(class_idx)
        (grad,) = torch.autograd.grad(logits[0, c], f)                  # (1, K, h, w)
    alpha = grad.mean(dim=(2, 3))                                        # (1, K)
    m = torch.einsum("bk,bkhw->bhw", alpha, f.detach())[0]               # (h, w)
    if relu:
        m = m.clamp_min(0)
    m = upsample(m, image.shape[-2:])
    return (normalise_map(m) if normalize else m), c


# ----------------------------------------------------------------------------- figures
def _img_np(image: torch.Tensor):
    return to_float(image).clamp(0, 1).permute(1, 2, 0).cpu().numpy()  # (H, W, 3)


def _show_triplet(axes, image, cam, cmap: str = "jet", alpha: float = 0.45):
    """original | CAM | overlay on three axes; returns the CAM image (for a colour bar)."""
    img = _img_np(image)
    axes[0].imshow(img)
    im = axes[1].imshow(cam.cpu().numpy(), cmap=cmap, vmin=0, vmax=1)
    axes[2].imshow(img)
    axes[2].imshow(cam.cpu().numpy(), cmap=cmap, vmin=0, vmax=1, alpha=alpha)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    return im


def save_cam_visualization(image: torch.Tensor, cam: torch.Tensor, true_name: str, pred_name: str,
                           confidence: float, path: Path, note: str = "") -> Path:
    """One figure: original | CAM (of the predicted class) | overlay, titled with true/pred/confidence."""
    from .plots import plt, save

    fig, axes = plt.subplots(1, 3, figsize=(8.4, 3.3), layout="constrained")
    im = _show_triplet(axes, image, cam)
    for ax, t in zip(axes, ("original", f"CAM of '{pred_name}'", "overlay")):
        ax.set_title(t, fontsize=9)
    fig.colorbar(im, ax=axes.tolist(), fraction=0.03, pad=0.02, label="normalised CAM")
    mark = "correct" if true_name == pred_name else "WRONG"
    fig.suptitle(f"true: {true_name} | predicted: {pred_name} ({confidence:.0%}, {mark})"
                 + (f"\n{note}" if note else ""), fontsize=9)
    return save(fig, path)


OVERVIEW_CLASSES = 5  # classes (rows) per overview figure: 5 rows at the text width fit one page


def cam_overview_figure(items: list[dict | None], path: Path, title: str,
                        col_titles: list[str] | None = None) -> Path:
    """Grid of (original, CAM overlay) pairs, len(col_titles) pairs per row (default 3).

    item: dict(image (3, H, W), cam (H, W) in [0, 1], true, pred, conf), or None for an empty slot.
    The true class labels each row (rows are meant to hold one class); wrong predictions are red.
    About 8.7 in wide for three pairs, placed at the text width (~6.7 in, scale 0.77): the 9.5 pt labels
    print at ~7.3 pt, the 10-11 pt headers at ~8 pt.
    """
    from .plots import plt, save

    ncol_pairs = len(col_titles) if col_titles else 3
    nrow = -(-len(items) // ncol_pairs)
    fig, axes = plt.subplots(nrow, 2 * ncol_pairs, figsize=(2 * ncol_pairs * 1.45, nrow * 1.75 + 0.9),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
    for i, it in enumerate(items):
        r, c = divmod(i, ncol_pairs)
        a0, a1 = axes[r][2 * c], axes[r][2 * c + 1]
        if it is None:
            a0.text(0.5, 0.5, "none", ha="center", va="center", fontsize=9, transform=a0.transAxes)
            continue
        img = _img_np(it["image"])
        a0.imshow(img)
        a1.imshow(img)
        a1.imshow(it["cam"].cpu().numpy(), cmap="jet", vmin=0, vmax=1, alpha=0.45)
        ok = it["true"] == it["pred"]
        a0.set_title(f"pred: {it['pred']}", fontsize=9.5, color="k" if ok else "red")
        a1.set_title(f"p = {it['conf']:.0%}", fontsize=9.5, color="k" if ok else "red")
        if c == 0:
            a0.set_ylabel(f"true:\n{it['true']}", fontsize=9.5)
    fig.subplots_adjust(wspace=0.05, hspace=0.32, top=1 - 0.9 / fig.get_figheight())
    if col_titles:
        for c, t in enumerate(col_titles):
            # a header over each (original, overlay) pair, just above the row titles
            left, right = axes[0][2 * c].get_position(), axes[0][2 * c + 1].get_position()
            fig.text((left.x0 + right.x1) / 2, left.y1 + 0.25 / fig.get_figheight(), t, ha="center",
                     va="bottom", fontsize=10, fontweight="bold")
    fig.suptitle(title, fontsize=11, y=1 - 0.15 / fig.get_figheight(), va="top")
    return save(fig, path)


def cam_vs_gradcam_figure(rows: list[dict], path: Path, title: str) -> Path:
    """Per row: original | CAM | Grad-CAM | |difference|; row item: image, cam, gradcam, label."""
    from .plots import plt, save

    fig, axes = plt.subplots(len(rows), 4, figsize=(8.6, 2.2 * len(rows) + 0.5), squeeze=False,
                             layout="constrained")
    for r, it in enumerate(rows):
        a = axes[r]
        a[0].imshow(_img_np(it["image"]))
        im = a[1].imshow(it["cam"].numpy(), cmap="jet", vmin=0, vmax=1)
        a[2].imshow(it["gradcam"].numpy(), cmap="jet", vmin=0, vmax=1)
        a[3].imshow((it["cam"] - it["gradcam"]).abs().numpy(), cmap="jet", vmin=0, vmax=1)
        for ax in a:
            ax.set_xticks([]), ax.set_yticks([])
        a[0].set_ylabel(it["label"], fontsize=7)
        if r == 0:
            for ax, t in zip(a, ("original", "CAM (min-max)", "Grad-CAM (ReLU, min-max)", "|CAM - Grad-CAM|")):
                ax.set_title(t, fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label="normalised map value")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


# ============================================================================ lab code (lab_cam.py)
# The experiment of lab_cam.py, kept here so that the script's main() reads load -> train -> evaluate ->
# figures -> write.
WRONG_REASON_MIN_CONF = 0.5  # a 'right for the wrong reason' candidate must be at least this confident
EXAMPLE_NOTES = {"correct": "most confident correct prediction of the class",
                 "wrong_reason_candidate": "confident & correct, most CAM mass in the border: 'right for "
                                           "the wrong reason'?",
                 "misclassified": "most confident mistake on this class"}


def load_lab_data(data_dir, img_size: int, val_size: int, per_class: int | None = None) -> dict:
    """Both official splits decoded once at img_size (uint8), the val images centre-cropped to val_size.

    Returns {"train", "val": TensorData, "wnids", "names", "skipped": {split: [unreadable files]},
    "load_time_s"}; unreadable JPEGs are skipped and counted (data.decode_images), not fatal.
    """
    t0 = time.perf_counter()
    skipped = {"train": [], "val": []}
    train, wnids, names = load_imagenette(data_dir, "train", img_size, per_class, skipped["train"])
    val_full, val_wnids, _ = load_imagenette(data_dir, "val", img_size, per_class, skipped["val"])
    if val_wnids != wnids:
        raise DataUnavailableError(f"train/val class folders differ: {wnids} vs {val_wnids}")
    val = TensorData(center_crop(val_full.x, val_size), val_full.y)  # (N, 3, V, V) uint8
    return {"train": train, "val": val, "wnids": wnids, "names": names, "skipped": skipped,
            "load_time_s": time.perf_counter() - t0}


def predicted_class_cams(model: CamCNN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a batch x (B, 3, H, W): the logits (B, C) and the CAM of the predicted class, upsampled to the
    image and min-max normalised (B, H, W)."""
    maps, out = class_activation_maps(model, x)                                   # (B, C, h, w), (B, C)
    pred = out.argmax(1)
    m = maps[torch.arange(len(pred)), pred]                                       # (B, h, w)
    return out, normalise_map(upsample(m, x.shape[-2:]))                          # (B, C), (B, H, W)


def border_share(cams: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass (N, H, W in [0, 1]) outside the central square of half the area.

    A heuristic for 'right for the wrong reason' candidates: Imagenette objects are mostly near the
    centre, so a correct prediction whose evidence lies mainly in the border (sky, water, grass) is
    worth a look. It needs a human check: no boxes are available to decide it automatically.
    """
    h, w = cams.shape[-2:]
    ch, cw = round(h / 2 ** 0.5), round(w / 2 ** 0.5)  # side x 1/sqrt(2): half of the area
    top, left = (h - ch) // 2, (w - cw) // 2
    total = cams.sum((1, 2)).clamp_min(1e-12)
    centre = cams[:, top:top + ch, left:left + cw].sum((1, 2))
    return 1 - centre / total


def evaluate_val(model: CamCNN, val: TensorData, names: list[str], device, batch_size: int = 256) -> dict:
    """The final evaluation (float32, eval mode) of every val image: logits, predicted class and its
    softmax confidence, the predicted-class CAM and its border share, accuracy overall and per class,
    and the confusion matrix (rows: true class, columns: predicted)."""
    logits, cams = predict(model, val.x, device, batch_size, fn=partial(predicted_class_cams, model))
    conf, pred = logits.softmax(1).max(1)
    correct = pred == val.y
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)
    confusion.index_put_((val.y, pred), torch.ones_like(pred), accumulate=True)
    return {"logits": logits, "cams": cams, "conf": conf, "pred": pred, "correct": correct,
            "acc": correct.float().mean().item(), "border_share": border_share(cams), "confusion": confusion,
            "per_class_acc": {names[c]: correct[val.y == c].float().mean().item() for c in range(len(names))}}


def pick_examples(y: torch.Tensor, pred: torch.Tensor, conf: torch.Tensor, share: torch.Tensor,
                  num_classes: int) -> dict[int, dict[str, int | None]]:
    """Per true class: most confident correct, 'wrong reason' candidate, most confident mistake."""
    picks = {}
    for c in range(num_classes):
        ok = ((y == c) & (pred == c)).nonzero().flatten()
        bad = ((y == c) & (pred != c)).nonzero().flatten()
        # 'right for the wrong reason' needs a confident right answer; fall back to any right answer
        sure = ok[conf[ok] >= WRONG_REASON_MIN_CONF] if (conf[ok] >= WRONG_REASON_MIN_CONF).any() else ok
        best = int(ok[conf[ok].argmax()]) if len(ok) else None
        sure = sure[sure != best] if len(sure) > 1 else sure  # another image than the 'correct' pick
        picks[c] = {
            "correct": best,
            "wrong_reason_candidate": int(sure[share[sure].argmax()]) if len(sure) else None,
            "misclassified": int(bad[conf[bad].argmax()]) if len(bad) else None,
        }
    return picks


def compare_gradcam(model: CamCNN, data: TensorData, n: int, names: list[str]) -> tuple[dict, list[dict]]:
    """CAM vs Grad-CAM on n val images evenly spread over x: correlations and the Grad-CAM/CAM scale."""
    x = data.x
    raw_corr, std_corr, scales, rows = [], [], [], []
    idx = torch.linspace(0, len(x) - 1, min(n, len(x))).round().long().unique()  # spread over the classes
    show = set(idx[torch.linspace(0, len(idx) - 1, 4).round().long()].tolist())   # 4 figure rows
    for i in idx.tolist():
        img = x[i]
        cam_raw, c, _ = generate_cam(model, img, normalize=False)                 # (H, W)
        gc_raw, _ = grad_cam(model, img, c, normalize=False, relu=False)          # (H, W)
        raw_corr.append(torch.corrcoef(torch.stack([cam_raw.flatten(), gc_raw.flatten()]))[0, 1])
        scales.append((gc_raw.flatten() @ cam_raw.flatten()) / (cam_raw.flatten() @ cam_raw.flatten()))
        cam_n, _, _ = generate_cam(model, img, c)                                  # min-max CAM
        gc_n, _ = grad_cam(model, img, c)                                          # standard (ReLU) Grad-CAM
        std_corr.append(torch.corrcoef(torch.stack([cam_n.flatten(), gc_n.flatten()]))[0, 1])
        if i in show and len(rows) < 4:
            rows.append({"image": img, "cam": cam_n, "gradcam": gc_n,
                         "label": f"val #{i}\ntrue: {names[int(data.y[i])]}\npred: {names[c]}"})
    raw_corr, std_corr, scales = map(lambda v: torch.stack(v).nan_to_num(1.0), (raw_corr, std_corr, scales))
    h, w = (s // model.downsample for s in x.shape[-2:])
    return {"images": len(raw_corr),
            "pearson_raw_mean": raw_corr.mean().item(), "pearson_raw_min": raw_corr.min().item(),
            "pearson_relu_minmax_mean": std_corr.mean().item(), "pearson_relu_minmax_min": std_corr.min().item(),
            "gradcam_over_cam_scale_mean": scales.mean().item(), "expected_scale_1_over_hw": 1.0 / (h * w),
            "note": "raw = un-normalised maps without ReLU (identical up to the scale 1/(h w)); "
                    "relu_minmax = standard Grad-CAM (ReLU) vs min-max normalised CAM"}, rows


def write_figures(ev: dict, val: TensorData, names: list[str], hist: list[dict], gradcam: dict, rows: list[dict],
                  fig_dir: Path) -> list[dict]:
    """lab_cam's figures: per class the most confident correct prediction, the 'wrong reason' candidate and
    the worst mistake (one file each in cam/, and the overview grid), the training curves, and CAM vs
    Grad-CAM. Returns the examples shown, for the results."""
    from .plots import plot_curves
    picks = pick_examples(val.y, ev["pred"], ev["conf"], ev["border_share"], len(names))
    cam_dir = fig_dir / "cam"
    for old in cam_dir.glob("*_val*.png"):  # picks change between runs: never leave a stale one behind
        old.unlink()
    examples, overview = [], []
    for c, kinds in picks.items():
        for kind, i in kinds.items():
            if i is None:
                overview.append(None)
                continue
            pred, conf, share = names[int(ev["pred"][i])], float(ev["conf"][i]), float(ev["border_share"][i])
            path = save_cam_visualization(val.x[i], ev["cams"][i], names[c], pred, conf,
                                          cam_dir / f"{names[c].replace(' ', '_')}_{kind}_val{i}.png",
                                          note=f"{EXAMPLE_NOTES[kind]}; border share {share:.0%}")
            examples.append({"class": names[c], "kind": kind, "val_index": i, "pred": pred,
                             "confidence": conf, "border_share": share, "figure": path})
            overview.append({"image": val.x[i], "cam": ev["cams"][i], "true": names[c], "pred": pred, "conf": conf})
    # Several figures of OVERVIEW_CLASSES rows each: one tall figure of all classes had to be shrunk to half
    # size to fit a page, its labels to ~3 pt (issue 12); a part fits a page at the text width.
    for stale in [fig_dir / "lab_cam_overview.png", *fig_dir.glob("lab_cam_overview_*.png")]:
        stale.unlink(missing_ok=True)
    kinds_per_class = len(overview) // max(len(picks), 1)
    n_parts = -(-len(picks) // OVERVIEW_CLASSES)
    for k in range(n_parts):
        first, last = k * OVERVIEW_CLASSES, min((k + 1) * OVERVIEW_CLASSES, len(picks))
        cam_overview_figure(overview[first * kinds_per_class:last * kinds_per_class],
                            fig_dir / f"lab_cam_overview_{k + 1}.png",
                            f"CAMs of the predicted class on Imagenette val (val acc {ev['acc']:.1%}), "
                            f"classes {first + 1}–{last} of {len(picks)}",
                            col_titles=["most confident correct",
                                        f"correct (p ≥ {WRONG_REASON_MIN_CONF:.0%}), CAM most in border",
                                        "most confident mistake"])
    plot_curves({"CAM CNN": hist}, fig_dir / "lab_cam_curves.png",
                "lab_cam: loss (label-smoothed CE) and accuracy per epoch; 'test' = official val split")
    cam_vs_gradcam_figure(rows, fig_dir / "lab_cam_gradcam.png",
                          f"CAM vs Grad-CAM on the same GAP + linear model, {gradcam['images']} val images\n"
                          f"mean Pearson r: raw maps {gradcam['pearson_raw_mean']:.4f}, "
                          f"ReLU + min-max {gradcam['pearson_relu_minmax_mean']:.3f}")
    return examples


def build_results(args, model: CamCNN, data: dict, hist: list[dict], ev: dict, gradcam: dict,
                  examples: list[dict], fit_wall_time_s: float, device) -> dict:
    """The lab_cam.json dict (wall_time_s is added by the script when everything is written)."""
    from .models import count_parameters
    from .utils import run_config
    skipped = data["skipped"]
    return {
        "name": "lab_cam", "config": run_config(args), "seed": args.seed,
        "val_acc": ev["acc"], "val_loss": hist[-1].get("test_loss"),
        "history_note": "test_* = official Imagenette val split; losses are label-smoothed cross-entropy",
        "history": hist, "classes": data["names"], "wnids": data["wnids"],
        "per_class_val_acc": ev["per_class_acc"], "confusion_matrix_true_by_pred": ev["confusion"],
        "train_images": len(data["train"]), "val_images": len(data["val"]), "params": count_parameters(model),
        "skipped_images": {k: len(v) for k, v in skipped.items()},
        "skipped_files": {k: [str(p) for p in v] for k, v in skipped.items()},
        "feature_map_size": [args.val_size // model.downsample] * 2, "gradcam_comparison": gradcam,
        "examples": examples,
        "mean_epoch_time_s": sum(h["epoch_time_s"] for h in hist) / len(hist),
        "train_time_s": hist[-1]["train_time_s"], "data_load_time_s": data["load_time_s"],
        "fit_wall_time_s": fit_wall_time_s,
        "threads": torch.get_num_threads(), "device": str(device),
    }
