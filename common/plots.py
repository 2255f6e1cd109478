"""Matplotlib figures shared by the scripts (Agg backend: no display needed), sized for the report's page."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 200  # PNGs (photos, digits) at print resolution
TEXT_WIDTH_IN = 16 / 2.54  # the report places figures at its ~16 cm text width: a figure this wide prints 1:1
PRINT_STYLE = {"font.size": 8, "axes.titlesize": 9, "legend.fontsize": 8}  # ≥ 7 pt even when shrunk a little
matplotlib.rcParams["pdf.fonttype"] = 42  # TrueType fonts in PDFs: the text stays text (searchable, selectable)


def save(fig, path: Path, vector: bool = False) -> Path:
    """Write and close `fig`. vector (curve plots): a PDF of the same stem, without a date; else as named, at DPI."""
    path = Path(path).with_suffix(".pdf") if vector else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"CreationDate": None} if vector else None)
    plt.close(fig)
    return path


def plot_curves(runs: dict[str, list[dict]], path: Path, title: str, *, x: str = "epoch", logy_loss: bool = False,
                metrics=(("loss", "loss"), ("acc", "accuracy")), hlines: dict[str, float] | None = None) -> Path:
    """One panel per metric; per run (name -> rows with train_<m>/test_<m>) a dashed train and a solid test curve, a ±
    std band if rows carry `<m>_std`; hlines: label -> y on the first panel. A vector PDF, legend below the panels."""
    with plt.rc_context(PRINT_STYLE):
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 2.7), squeeze=False)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        xlabel = {"train_time_s": "training time (s)"}.get(x, x)
        for ax, (key, label) in zip(axes[0], metrics):
            for i, (name, hist) in enumerate(runs.items()):
                c = colors[i % len(colors)]
                for split, style in (("train", "--"), ("test", "-")):
                    m = f"{split}_{key}"
                    pts = [(h[x], h[m], h.get(f"{m}_std")) for h in hist if m in h]
                    if not pts:
                        continue
                    xs, ys, sds = zip(*pts)
                    ax.plot(xs, ys, style, c=c, lw=1.3, marker="o" if len(xs) == 1 else None, ms=3)  # one row: a dot
                    if all(sd is not None for sd in sds):
                        ax.fill_between(xs, [y - sd for y, sd in zip(ys, sds)],
                                        [y + sd for y, sd in zip(ys, sds)], color=c, alpha=0.12, lw=0)
            ax.set(xlabel=xlabel, ylabel=label, yscale="log" if key == "loss" and logy_loss else "linear")
            ax.grid(alpha=0.3)
            if x == "epoch":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # no epoch 2.5
            ax.set_title(f"{label} vs {xlabel}" if len(metrics) > 1 else "")  # one panel: the figure title says it
        handles = [Line2D([], [], color=colors[i % len(colors)], lw=2, label=name) for i, name in enumerate(runs)]
        handles += [Line2D([], [], color="k", ls=ls, lw=1.3, label=s) for s, ls in (("train", "--"), ("test", "-"))]
        for j, (label, y) in enumerate((hlines or {}).items()):  # reference lines, e.g. a baseline's loss
            handles.append(axes[0][0].axhline(y, color="k", ls=":" if j else "-.", lw=1, label=label))
        fig.suptitle(title)
        fig.tight_layout()
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 3),
                   frameon=False)
        return save(fig, path, vector=True)


def image_grid(panels: dict[str, torch.Tensor], path: Path, title: str, ncol: int, *, rows: bool = False) -> Path:
    """Images (N, 1, H, W) in [0, 1] as grids of `ncol` columns, side by side under titles or in labelled rows."""
    from torchvision.utils import make_grid
    n = len(panels)
    fig, axes = plt.subplots(n if rows else 1, 1 if rows else n, squeeze=False,
                             figsize=(7.0, 0.62 * n + 0.6) if rows else (2.9 * n, 2.6))
    for ax, (name, imgs) in zip(axes.flat, panels.items()):
        ax.imshow(make_grid(imgs.clamp(0, 1), nrow=ncol, padding=1, pad_value=0.5).permute(1, 2, 0))  # (H', W', 3)
        ax.set(xticks=[], yticks=[])
        if rows:
            ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        else:
            ax.set_title(name, fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def scatter_panels(points: dict, labels: torch.Tensor, path: Path, title: str) -> Path:
    """2-D embeddings (e.g. t-SNE) side by side, coloured by class, one legend; two panels at the text width: ≥ 7 pt."""
    fig, axes = plt.subplots(1, len(points), figsize=(3.9 * len(points), 3.7), squeeze=False)
    for ax, (name, xy) in zip(axes[0], points.items()):
        for c in labels.unique().tolist():
            m = (labels == c).numpy()
            ax.scatter(xy[m, 0], xy[m, 1], s=3, color=f"C{c}", label=str(c))  # C0-C9: the tab10 colours
        ax.set_title(name, fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel("t-SNE 1", fontsize=10), ax.set_ylabel("t-SNE 2", fontsize=10)
    axes[0][-1].legend(title="digit", markerscale=4, fontsize=9, title_fontsize=9, loc="center left",
                       bbox_to_anchor=(1, 0.5))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def shift_curves(curves: dict[str, dict[str, list[dict]]], shifts: list[int], path: Path, title: str) -> Path:
    """Accuracy against the shift of the test digits: one panel per model, one line per direction, each point with
    its 95 % Wilson interval (curves: model -> direction -> one stats.wilson dict per shift); y from 0: a rate."""
    with plt.rc_context(PRINT_STYLE):
        fig, axes = plt.subplots(1, len(curves), figsize=(3.4 * len(curves), 2.7), squeeze=False, sharey=True)
        markers = "os^vD<>"
        for ax, (name, by_dir) in zip(axes[0], curves.items()):
            for i, (direction, pts) in enumerate(by_dir.items()):
                ys = [p["rate"] for p in pts]
                err = [[y - p["ci95"][0] for y, p in zip(ys, pts)], [p["ci95"][1] - y for y, p in zip(ys, pts)]]
                ax.errorbar(shifts, ys, yerr=err, marker=markers[i % len(markers)], ms=3, lw=1.2, capsize=2,
                            label=direction)
            ax.set(title=name, xlabel="shift of the test digits (pixels)", ylim=(0, 1.02), xticks=shifts)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test accuracy")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.suptitle(title)
        fig.tight_layout()
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels), frameon=False)
        return save(fig, path, vector=True)
