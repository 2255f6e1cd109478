"""Class Activation Maps (Zhou et al., CVPR 2016) and Grad-CAM (Selvaraju et al., ICCV 2017): model, maps, figures.
With f_k(x, y) the last conv layer's k-th feature map and w_k^c the fc weight from unit k to class c (Zhou et al.,
Eq. 1-2), M_c(x, y) = sum_k w_k^c f_k(x, y) is each location's share of the logit: S_c = mean_{x,y} M_c + b_c."""
from __future__ import annotations

import textwrap

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.transforms.v2.functional import normalize

from .data import to_float
from .plots import PRINT_STYLE, TEXT_WIDTH_IN, plt, save

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # of ImageNet's RGB pixels in [0, 1]


class CamCNN(nn.Module):
    """LAB01 ex 1.3 configurable CNN with a CAM head:
        input (B, 3, H, W) uint8 or float in [0, 1] -> ImageNet normalisation
        for c in channels:  conv3x3(c) -> BatchNorm -> ReLU -> Dropout(p) -> MaxPool2x2   (H, W halve)
        CAM layer:          conv3x3(cam_channels) -> BatchNorm -> ReLU   = f_k(x, y), (B, K, H/2^n, W/2^n)
        GAP, fc:            mean over (x, y) (B, K) -> Linear(K, num_classes) -> logits (B, num_classes)
    The CAM layer is unpooled (maps at 1/2^n of the input; Zhou et al.: 14 x 14 at 224 px); one fc makes M_c exact."""

    def __init__(self, channels=(32, 64, 128, 256), cam_channels=512, num_classes=10, dropout=0.0):
        super().__init__()
        self.config = dict(kind="CamCNN", channels=list(channels), cam_channels=cam_channels, num_classes=num_classes,
                           dropout=dropout)
        layers = []
        for c_in, c in zip([3, *channels], channels):  # RGB in
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False),  # BatchNorm's shift makes a conv bias redundant
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.MaxPool2d(2)]
        self.blocks = nn.Sequential(*layers)
        self.cam_layer = nn.Sequential(nn.Conv2d(channels[-1], cam_channels, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(cam_channels), nn.ReLU(inplace=True))
        self.fc = nn.Linear(cam_channels, num_classes)
        self.downsample = 2 ** len(channels)  # input size / feature-map size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv feature maps f_k(x, y): (B, K, H/2^n, W/2^n), non-negative (after ReLU)."""
        x = normalize(to_float(x), IMAGENET_MEAN, IMAGENET_STD)
        return self.cam_layer(self.blocks(x.contiguous(memory_format=torch.channels_last)))  # NHWC: faster oneDNN

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(f.mean(dim=(2, 3)))  # GAP (B, K) -> logits (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes)


def class_activation_maps(model: CamCNN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw M_c of every class and the logits: ((B, C, h, w), (B, C)); mean M_c + b_c is the logit (tested)."""
    f = model.features(x)                                                     # (B, K, h, w)
    return torch.einsum("ck,bkhw->bchw", model.fc.weight, f), model.head(f)   # (B, C, h, w), (B, C)


def normalise_map(m: torch.Tensor) -> torch.Tensor:
    """Min-max scale a map (..., H, W) to [0, 1] per map (a constant map becomes all zeros)."""
    lo, hi = (v[..., None, None] for v in m.flatten(-2).aminmax(dim=-1))  # (..., 1, 1) each
    return (m - lo) / (hi - lo).clamp_min(1e-12)


def upsample(m: torch.Tensor, size, normalize: bool = False) -> torch.Tensor:
    """Maps (B, h, w) -> (B, *size), bilinear as Zhou et al. upsample CAMs to the image; min-max scaled if normalize."""
    m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalise_map(m) if normalize else m


def border_share(cams: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass (N, H, W) outside the central square of half the area: objects are mostly central, so
    a correct prediction with most evidence in the border (sky, water) may be right for the wrong reason (check it)."""
    h, w = cams.shape[-2:]
    ch, cw = round(h / 2 ** 0.5), round(w / 2 ** 0.5)  # side x 1/sqrt(2): half of the area
    top, left = (h - ch) // 2, (w - cw) // 2
    return 1 - cams[:, top:top + ch, left:left + cw].sum((1, 2)) / cams.sum((1, 2)).clamp_min(1e-12)


def input_size_cams(model: CamCNN, x: torch.Tensor, classes=None, normalize: bool = True):
    """Batched: logits (B, C), each image's CAM (B, H, W) of classes[i] (default: predicted), min-max if normalize."""
    maps, out = class_activation_maps(model, x)                   # (B, C, h, w), (B, C)
    c = out.argmax(1) if classes is None else classes             # (B,)
    return out, upsample(maps[torch.arange(len(out)), c], x.shape[-2:], normalize)   # (B, H, W)


def grad_cam(model: CamCNN, image: torch.Tensor, class_idx: int | None = None, normalize=True, relu=True):
    """Grad-CAM on the same last feature maps: (map (H, W), class). alpha_k^c = mean_{x,y} dS_c/df_k(x, y),
    L_c = ReLU(sum_k alpha_k^c f_k). With GAP + one linear layer dS_c/df_k(x, y) = w_k^c / (h w), so before the
    ReLU Grad-CAM is CAM divided by h w: the same map up to scale (the ReLU clips negative evidence)."""
    model.eval()
    with torch.enable_grad():
        f = model.features(image[None]).detach().requires_grad_(True)   # (1, K, h, w)
        logits = model.head(f)                                           # (1, C)
        c = int(logits.argmax(1)) if class_idx is None else int(class_idx)
        (grad,) = torch.autograd.grad(logits[0, c], f)                  # (1, K, h, w)
    m = torch.einsum("bk,bkhw->bhw", grad.mean(dim=(2, 3)), f.detach())  # alpha (1, K) -> (1, h, w)
    return upsample(m.clamp_min(0) if relu else m, image.shape[-2:], normalize)[0], c  # (H, W), class


def show(ax, image: torch.Tensor | None = None, cam: torch.Tensor | None = None):
    """Draw image (3, H, W), cam (H, W) in [0, 1] (NaN: none) or the cam over the image on ax; the map's AxesImage."""
    if image is not None:
        ax.imshow(to_float(image).clamp(0, 1).permute(1, 2, 0).cpu().numpy())  # (H, W, 3)
    ax.set(xticks=[], yticks=[])
    if cam is not None:  # over a photo at 45 % opacity: the object stays visible under the colours
        return ax.imshow(cam.cpu().numpy(), cmap="jet", vmin=0, vmax=1, alpha=None if image is None else 0.45)


def map_rows(rows: dict, col_titles, path, title: str, bar_label="normalised map value"):
    """Rows (label -> (image, cam) panels for show()) under col_titles, one colour bar; text width wide: 8-9 pt."""
    side = (TEXT_WIDTH_IN - 1.3) / len(col_titles)  # square panels; 1.3 in for the row labels and the colour bar
    with plt.rc_context(PRINT_STYLE):
        fig, axes = plt.subplots(len(rows), len(col_titles), figsize=(TEXT_WIDTH_IN, side * len(rows) + 0.6),
                                 squeeze=False, layout="constrained")
        for ax_row, (label, row) in zip(axes, rows.items()):
            maps = [show(ax, *panel) for ax, panel in zip(ax_row, row)]
            ax_row[0].set_ylabel(label)
        for ax, t in zip(axes[0], col_titles):
            ax.set_title(textwrap.fill(t, int(side * 16)))  # a 9 pt character is ~1/16 in: no title overlaps
        fig.colorbar(next(m for m in maps if m), ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label=bar_label)
        fig.suptitle(title, fontsize=9)
        return save(fig, path)


def cam_overview_figure(items: list[dict | None], path, title: str, col_titles: list[str]):
    """Rows (one class each) of (original | CAM overlay) pairs under col_titles; item: dict(image (3, H, W), cam
    (H, W), true, pred, conf), None for an empty slot; mistakes in red. The text width wide: 8-9 pt in print."""
    ncol, nrow = len(col_titles), -(-len(items) // len(col_titles))
    pair_h = (TEXT_WIDTH_IN - 0.6) / ncol / 2.3  # in: 0.6 for the row labels; a pair (~2.1 images) and its gap
    with plt.rc_context(PRINT_STYLE):
        fig, axes = plt.subplots(nrow, ncol, figsize=(TEXT_WIDTH_IN, nrow * (pair_h + 0.3) + 0.95), squeeze=False,
                                 subplot_kw=dict(xticks=[], yticks=[], frame_on=False))
        fig.subplots_adjust(0.6 / TEXT_WIDTH_IN, 0, 1, 1 - 0.95 / fig.get_figheight(), hspace=0.3 / pair_h)  # 0.3 in
        for i, (ax, it) in enumerate(zip(axes.flat, items)):
            if it is None:
                ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
                continue
            image, w = to_float(it["image"]).cpu(), it["image"].shape[-1]  # (3, H, W), W
            show(ax, torch.cat([F.pad(image, (0, w // 16), value=1.0), image], 2),  # original, white seam, overlay
                 F.pad(it["cam"].cpu(), (w + w // 16, 0), value=float("nan")))   # (H, 2W + W/16); NaN: no map there
            ax.set_title(f"pred: {it['pred']} ({it['conf']:.0%})", color="k" if it["true"] == it["pred"] else "red")
            axes[i // ncol][0].set_ylabel(f"true:\n{it['true']}")  # a row: one class, even if slots are empty
        for ax, t in zip(axes[0], col_titles):  # bold headers of ≤ 20 characters a line, 22 pt above the pair titles
            ax.annotate(textwrap.fill(t, 20), (0.5, 1), xycoords="axes fraction", xytext=(0, 22),
                        textcoords="offset points", ha="center", va="bottom", fontweight="bold")
        fig.suptitle(title, y=1 - 0.08 / fig.get_figheight(), va="top", fontsize=9)
        return save(fig, path)
