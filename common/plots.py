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
                hlines: dict[str, float] | None = None) -> Path:
    """One panel per metric; for each run a solid test curve and a dashed train curve.

    runs: name -> history (list of per-epoch dicts with train_<m>/test_<m> keys).
    Rows that carry `<split>_<metric>_std` (see train.aggregate_histories) get a mean +- std band.
    hlines: optional label -> y reference lines drawn on the first panel (e.g. a baseline's loss).
    Sized for a full text width (~17 cm) at 1:1, so 8 pt text stays 8 pt in the PDF; one legend entry
    per run (its colour) plus one per line style, below the panels, outside the data.
    """
    from matplotlib.lines import Line2D

    with plt.rc_context({"font.size": 8, "axes.titlesize": 9, "legend.fontsize": 8}):
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 2.7), squeeze=False)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        xlabel = {"epoch": "epoch", "train_time_s": "training time (s)"}.get(x, x)
        for ax, (key, label) in zip(axes[0], metrics):
            for i, (name, hist) in enumerate(runs.items()):
                c = colors[i % len(colors)]
                for split, style in (("train", "--"), ("test", "-")):
                    m = f"{split}_{key}"
                    pts = [(h[x], h[m], h.get(f"{m}_std")) for h in hist if m in h]
                    if not pts:
                        continue
                    xs, ys, sds = zip(*pts)
                    ax.plot(xs, ys, style, color=c, lw=1.3)
                    if all(sd is not None for sd in sds):
                        ax.fill_between(xs, [y - sd for y, sd in zip(ys, sds)],
                                        [y + sd for y, sd in zip(ys, sds)], color=c, alpha=0.12, lw=0)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            if key == "loss" and logy_loss:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            if len(metrics) > 1:  # one panel: the figure title says it all (no doubled title)
                ax.set_title(f"{label} vs {xlabel}")
        handles = [Line2D([], [], color=colors[i % len(colors)], lw=2, label=name) for i, name in enumerate(runs)]
        handles += [Line2D([], [], color="k", ls="--", lw=1.3, label="train"),
                    Line2D([], [], color="k", ls="-", lw=1.3, label="test")]
        for j, (label, y) in enumerate((hlines or {}).items()):
            ls = ":" if j else "-."
            axes[0][0].axhline(y, color="k", ls=ls, lw=1)
            handles.append(Line2D([], [], color="k", ls=ls, lw=1, label=label))
        fig.suptitle(title)
        fig.tight_layout()
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 3),
                   frameon=False)
        return save(fig, path)


def image_grid(panels: dict[str, torch.Tensor], path: Path, title: str, ncol: int, *, rows: bool = False) -> Path:
    """Panels of images (N, 1, H, W) in [0, 1], each a grid of `ncol` columns (same order in each): side by
    side with titles above, or one under the other with labels on the left (rows=True). Sized for the
    report's 17 cm text width, where the labels print at 7.5-9 pt."""
    from torchvision.utils import make_grid
    n = len(panels)
    fig, axes = plt.subplots(n if rows else 1, 1 if rows else n, squeeze=False,
                             figsize=(7.0, 0.62 * n + 0.6) if rows else (2.9 * n, 2.6))
    for ax, (name, imgs) in zip(axes.flat, panels.items()):
        ax.imshow(make_grid(imgs.clamp(0, 1), nrow=ncol, padding=1, pad_value=0.5).permute(1, 2, 0))  # (H', W', 3)
        ax.set_xticks([])
        ax.set_yticks([])
        if rows:
            ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        else:
            ax.set_title(name, fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def scatter_panels(points: dict, labels: torch.Tensor, path: Path, title: str) -> Path:
    """2-D embeddings (e.g. t-SNE) side by side, coloured by class, one shared legend.

    Sized so that two panels and the legend placed at the full text width (~6.7 in) print their text at >= 7 pt.
    """
    fig, axes = plt.subplots(1, len(points), figsize=(3.9 * len(points), 3.7), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (name, xy) in zip(axes[0], points.items()):
        for c in labels.unique().tolist():
            m = (labels == c).numpy()
            ax.scatter(xy[m, 0], xy[m, 1], s=3, color=cmap(c), label=str(c))
        ax.set_title(name, fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel("t-SNE 1", fontsize=10), ax.set_ylabel("t-SNE 2", fontsize=10)
    axes[0][-1].legend(title="digit", markerscale=4, fontsize=9, title_fontsize=9, loc="center left",
                       bbox_to_anchor=(1, 0.5))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def shift_curves(curves: dict[str, dict[str, list[dict]]], shifts: list[int], path: Path, title: str) -> Path:
    """Accuracy against the shift of the test digits: one panel per model, one line per direction, each
    point with its 95 % Wilson interval as an error bar.

    curves: model name -> direction -> one {"rate", "ci95"} per shift (stats.wilson). The y axis starts
    at 0 because it shows a rate. Sized for a full text width (~17 cm) at 1:1, 8 pt text.
    """
    with plt.rc_context({"font.size": 8, "axes.titlesize": 9, "legend.fontsize": 8}):
        fig, axes = plt.subplots(1, len(curves), figsize=(3.4 * len(curves), 2.7), squeeze=False, sharey=True)
        markers = "os^vD<>"
        for ax, (name, by_dir) in zip(axes[0], curves.items()):
            for i, (direction, pts) in enumerate(by_dir.items()):
                ys = [p["rate"] for p in pts]
                err = [[y - p["ci95"][0] for y, p in zip(ys, pts)], [p["ci95"][1] - y for y, p in zip(ys, pts)]]
                ax.errorbar(shifts, ys, yerr=err, marker=markers[i % len(markers)], ms=3, lw=1.2, capsize=2,
                            label=direction)
            ax.set_title(name)
            ax.set_xlabel("shift of the test digits (pixels)")
            ax.set_ylim(0, 1.02)
            ax.set_xticks(shifts)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test accuracy")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.suptitle(title)
        fig.tight_layout()
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels), frameon=False)
        return save(fig, path)
