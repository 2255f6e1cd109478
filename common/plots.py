"""Matplotlib figures shared by the scripts (Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

DPI = 150


def save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(runs: dict[str, list[dict]], path: Path, title: str, *, x: str = "epoch",
                metrics=(("loss", "loss"), ("acc", "accuracy")), logy_loss: bool = False,
                bands: dict[str, dict] | None = None, hlines: dict[str, float] | None = None) -> Path:
    """One panel per metric; for each run a solid test curve and a dashed train curve.

    runs: name -> history (list of per-epoch dicts with train_<m>/test_<m> keys).
    bands: optional name -> {"<split>_<metric>": (x, lo, hi)} shaded areas (e.g. mean +- std).
    hlines: optional label -> y reference lines drawn on the first panel (e.g. a baseline's loss).
    """
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    xlabel = {"epoch": "epoch", "train_time_s": "training time (s)"}.get(x, x)
    for ax, (key, label) in zip(axes[0], metrics):
        for i, (name, hist) in enumerate(runs.items()):
            c = colors[i % len(colors)]
            for split, style in (("train", "--"), ("test", "-")):
                pts = [(h[x], h[f"{split}_{key}"]) for h in hist if f"{split}_{key}" in h]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, style, color=c, label=f"{name} ({split})", lw=1.5)
                if bands and name in bands and f"{split}_{key}" in bands[name]:
                    bx, lo, hi = bands[name][f"{split}_{key}"]
                    ax.fill_between(bx, lo, hi, color=c, alpha=0.15, lw=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        if key == "loss" and logy_loss:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.set_title(f"{label} vs {xlabel}")
    for j, (label, y) in enumerate((hlines or {}).items()):
        axes[0][0].axhline(y, color="k", ls=":" if j else "-.", lw=1, label=label)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


def image_rows(rows: list[torch.Tensor], labels: list[str], path: Path, title: str,
               col_titles: list[str] | None = None) -> Path:
    """A grid: one row per tensor (N, 1, H, W) in [0, 1], row labels on the left."""
    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(0.75 * n + 1.2, 0.8 * len(rows) + 0.6), squeeze=False)
    for r, (imgs, label) in enumerate(zip(rows, labels)):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(imgs[c, 0].cpu(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
            if r == 0 and col_titles:
                ax.set_title(col_titles[c], fontsize=7)
    fig.suptitle(title)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return save(fig, path)
