"""LAB01 exercise 2.3: Class Activation Maps (Zhou et al., CVPR 2016) of a GAP + linear CNN (common/cam.py) trained on
Imagenette v2 (160 px files), on the official val split ("test" in the history), compared with Grad-CAM. The val
centre crop is larger than the random-resized training crops, which make objects look bigger (Touvron et al. 2019).

    DATA_DIR=../shared/data python lab_cam.py [--smoke]   # report/figures/lab_cam_*, cam/, results/lab_cam.json"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torchvision.transforms.v2.functional import center_crop
from tqdm.auto import tqdm

from common import cam, utils
from common.data import IMAGENETTE_CLASSES, TensorData, decode_images, imagenette_split, to_float, warp
from common.models import count_parameters
from common.plots import plot_curves
from common.train import EVAL_BATCH, Recipe, fit, predict, resolve_precision, tensorboard_dir
from common.utils import UserError, fraction, number, positive_int


@dataclass(frozen=True)
class CamRecipe(Recipe):
    """The full run's training recipe; a checkpoint of another recipe is refused by --resume."""
    epochs: int = 20
    lr: float = 4e-3
    batch_size: int = 128
    weight_decay: float = 0.05
    label_smoothing: float = 0.1  # of the cross-entropy, train and val loss
    img_size: int = 96            # side the 160 px files are decoded to and kept in memory (uint8)
    train_size: int = 64          # side of the random-resized training crops
    min_scale: float = 0.35       # smallest area fraction of a random-resized crop
    val_size: int = 80            # side of the centre val crop: > train_size, crops make objects look bigger


SMOKE_PER_CLASS, SMOKE_EPOCHS = 2, 1  # --smoke: 2 images x 10 classes per split, one epoch
WRONG_REASON_MIN_CONF = 0.5  # a 'right for the wrong reason' candidate must be at least this confident
OVERVIEW_CLASSES = 5         # classes (rows) per overview figure: 5 rows at the text width fit one page
KIND_TITLES = {"correct": "most confident correct",
               "wrong_reason_candidate": f"correct, p ≥ {WRONG_REASON_MIN_CONF:.0%}, CAM in border",
               "misclassified": "most confident mistake"}


def get_args(argv=None) -> tuple[argparse.Namespace, CamRecipe]:
    """The command line and the recipe its flags of the same names make (with the augmentation in words)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    utils.add_common_args(p, epochs=CamRecipe.epochs, batch_size=CamRecipe.batch_size, lr=CamRecipe.lr)
    p.add_argument("--channels", type=positive_int, nargs="+", default=[32, 64, 128, 256], help="channels per block")
    for flag, kind, default, text in (
            ("--cam-channels", positive_int, 512, "channels K of the last (CAM) conv layer before GAP"),
            ("--dropout", fraction, 0.0, "dropout in every block (short runs underfit, crops regularise)"),
            ("--img-size", positive_int, CamRecipe.img_size, "side the images are decoded to and kept in memory"),
            ("--train-size", positive_int, CamRecipe.train_size, "side of the random-resized training crops"),
            ("--val-size", positive_int, CamRecipe.val_size, "side of the centre val crop, at most --img-size"),
            ("--min-scale", number(float, 0, 1, lo_open=True), CamRecipe.min_scale, "smallest crop area fraction"),
            ("--label-smoothing", fraction, CamRecipe.label_smoothing, "label smoothing of both losses"),
            ("--weight-decay", number(float, 0), CamRecipe.weight_decay, "AdamW weight decay"),
            ("--gradcam-images", positive_int, 200, "val images on which CAM and Grad-CAM are compared")):
        p.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")
    args = p.parse_args(argv)
    if args.val_size > args.img_size:
        p.error(f"--val-size {args.val_size} > --img-size {args.img_size}")
    args.epochs = SMOKE_EPOCHS if args.smoke else args.epochs
    aug = f"random-resized crops of {100 * args.min_scale:g}–100 % of the area to {args.train_size} px, flips"
    return args, CamRecipe(augment=aug, **{k: v for k, v in vars(args).items() if hasattr(CamRecipe, k)})


def load_data(data_dir, recipe: CamRecipe, per_class: int | None = None, chunk: int = 512) -> dict:
    """Imagenette v2 train/val, uint8 (N, 3, S, S), val centre-cropped, classes in torchvision's order (sorted ids)."""
    from torchvision.datasets import ImageFolder
    data, t0 = {"skipped": {}}, time.perf_counter()
    for split in ("train", "val"):
        split_dir = imagenette_split(data_dir, split)
        try:
            ds = ImageFolder(str(split_dir))  # .samples: (path, class) sorted by class
        except FileNotFoundError as e:  # no class folder, or a class folder without images
            raise UserError(f"'{split_dir}' has no usable images ({e}); expects one folder per Imagenette class") from e
        if data.setdefault("wnids", ds.classes) != ds.classes:
            raise UserError(f"train/val class folders differ: {data['wnids']} vs {ds.classes}")
        samples = [s for c in range(len(ds.classes)) for s in [t for t in ds.samples if t[1] == c][:per_class]]
        skipped = data["skipped"][split] = []  # decode_images adds the unreadable files here, leaves them out of x
        with tqdm(total=len(samples), desc=f"decode {split}", unit="img", leave=False) as bar:
            x = torch.cat([decode_images([p for p, _ in samples[i:i + chunk]], recipe.img_size, bar, skipped)
                           for i in range(0, len(samples), chunk)])  # (N, 3, S, S) uint8; chunks bound full-size JPEGs
        y = torch.tensor([label for p, label in samples if p not in skipped], dtype=torch.long)  # (N,)
        if not len(y):
            raise UserError(f"no image under '{split_dir}' could be decoded ({len(skipped)} unreadable)")
        data[split] = TensorData(center_crop(x, [recipe.val_size] * 2).contiguous() if split == "val" else x, y)
    return data | {"names": [IMAGENETTE_CLASSES.get(w, w) for w in ds.classes], "load_time_s": time.perf_counter() - t0}


def random_resized_crop(x, gen: torch.Generator, out_size: int, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), flip=True):
    """Batched RandomResizedCrop + RandomHorizontalFlip: x (B, 3, S, S) uint8/float -> (B, 3, out, out) in [0, 1].
    One affine map per image (a crop of relative width w centred at c: x -> w x + c in [-1, 1]), one grid_sample."""
    r = torch.rand(len(x), 5, generator=gen)                                     # (B, 5) in [0, 1)
    area = scale[0] + (scale[1] - scale[0]) * r[:, 0]                             # (B,) ~ U(scale)
    aspect = (math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * r[:, 1]).exp()  # w / h, log-uniform
    w, h = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)  # relative sides
    cx, cy = (1 - w) * (2 * r[:, 2] - 1), (1 - h) * (2 * r[:, 3] - 1)            # centre keeps crop inside
    sign = torch.where(r[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones_like(w)  # -1: mirror x
    theta = torch.stack([w * sign, torch.zeros_like(w), cx, torch.zeros_like(h), h, cy], 1).view(-1, 2, 3)  # (B, 2, 3)
    return warp(to_float(x), theta, out_size, padding="reflection")


def evaluate_val(model: cam.CamCNN, val: TensorData, names: list[str], device, batch_size: int = EVAL_BATCH) -> dict:
    """fp32 eval of every val image: logits (N, C), pred, conf (N,), CAMs (N, H, W), border share, accuracies."""
    logits, cams = predict(model, val.x, device, batch_size, fn=partial(cam.input_size_cams, model))
    conf, pred = logits.softmax(1).max(1)
    confusion = torch.bincount(val.y * len(names) + pred, minlength=len(names) ** 2).view(len(names), -1)  # true x pred
    return {"logits": logits, "cams": cams, "conf": conf, "pred": pred, "border_share": cam.border_share(cams),
            "acc": (confusion.trace() / confusion.sum()).item(), "confusion": confusion,
            "per_class_acc": dict(zip(names, (confusion.diag() / confusion.sum(1)).tolist()))}


def pick_examples(y, pred, conf, share, num_classes: int) -> dict[int, dict[str, int | None]]:
    """Per true class (all (N,) tensors): most confident correct, 'wrong reason' candidate, worst mistake."""
    picks = {}
    for c in range(num_classes):
        ok, bad = ((y == c) & (pred == c)).nonzero().flatten(), ((y == c) & (pred != c)).nonzero().flatten()
        sure = ok[conf[ok] >= WRONG_REASON_MIN_CONF]
        sure = sure if len(sure) else ok                      # no confident right answer: any right answer
        best = int(ok[conf[ok].argmax()]) if len(ok) else None
        sure = sure[sure != best] if len(sure) > 1 else sure  # another image than the 'correct' pick
        picks[c] = {"correct": best, "wrong_reason_candidate": int(sure[share[sure].argmax()]) if len(sure) else None,
                    "misclassified": int(bad[conf[bad].argmax()]) if len(bad) else None}
    return picks


def compare_gradcam(model: cam.CamCNN, data: TensorData, n: int, names: list[str], path, figure_rows=4) -> dict:
    """CAM vs Grad-CAM on n val images spread evenly over the (class-sorted) data: Pearson r of the raw maps
    (no ReLU, equal up to 1/(h w)) and of min-max CAM vs standard ReLU Grad-CAM, the Grad-CAM/CAM scale; a figure."""
    idx = torch.linspace(0, len(data) - 1, min(n, len(data))).round().long().unique()
    shown = set(idx[torch.linspace(0, len(idx) - 1, figure_rows).round().long()].tolist())
    stats, rows = [], {}  # rows: figure row label -> its (image, map) panels
    for i in idx.tolist():
        g, c = cam.grad_cam(model, data.x[i], normalize=False, relu=False)          # raw Grad-CAM (H, W), predicted c
        m = cam.input_size_cams(model, data.x[i:i + 1], [c], normalize=False)[1][0].detach()  # raw CAM (H, W) of c
        m_n, g_n = cam.normalise_map(m), cam.grad_cam(model, data.x[i], c)[0]       # min-max CAM, ReLU Grad-CAM
        r = [torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1] for u, v in ((m, g), (m_n, g_n))]
        stats.append((*r, g.flatten() @ m.flatten() / (m.flatten() @ m.flatten())))  # least-squares scale: g = s m
        if i in shown:
            rows[f"val #{i}\ntrue: {names[int(data.y[i])]}\npred: {names[c]}"] = [
                (data.x[i], None), (None, m_n), (None, g_n), (None, (m_n - g_n).abs())]
    raw, minmax, scale = (torch.stack(v).nan_to_num(1.0) for v in zip(*stats))  # (n,); NaN r (flat maps): agreement
    cam.map_rows(rows, ["original", "CAM (min-max)", "Grad-CAM (ReLU, min-max)", "|CAM − Grad-CAM|"], path,
                 f"CAM vs Grad-CAM on the same GAP + linear model, {len(raw)} val images\nmean Pearson r: raw maps "
                 f"{raw.mean():.4f}, ReLU + min-max {minmax.mean():.3f}")
    h, w = (s // model.downsample for s in data.x.shape[-2:])
    return {"images": len(raw), "pearson_raw_mean": raw.mean().item(), "pearson_raw_min": raw.min().item(),
            "pearson_relu_minmax_mean": minmax.mean().item(), "pearson_relu_minmax_min": minmax.min().item(),
            "gradcam_over_cam_scale_mean": scale.mean().item(), "expected_scale_1_over_hw": 1.0 / (h * w)}


def write_figures(ev: dict, val: TensorData, names: list[str], hist, fig_dir) -> list:
    """The picks' CAM figures (one per image in cam/, and the overviews of five classes each), the curves; the picks."""
    for stale in [*(fig_dir / "cam").glob("*_val*.png"), *fig_dir.glob("lab_cam_overview_*.png")]:
        stale.unlink()  # the picks change between runs: never leave a stale one behind
    picks = pick_examples(val.y, ev["pred"], ev["conf"], ev["border_share"], len(names))
    examples, overview = [], {}  # overview: (class, kind) -> panel; no entry where no image fits
    for c, kind, i in [(c, kind, i) for c, kinds in picks.items() for kind, i in kinds.items() if i is not None]:
        pred, conf, share = names[int(ev["pred"][i])], float(ev["conf"][i]), float(ev["border_share"][i])
        overview[c, kind] = {"image": val.x[i], "cam": ev["cams"][i], "true": names[c], "pred": pred, "conf": conf}
        path = cam.cam_overview_figure([overview[c, kind]], fig_dir / "cam" / f"{names[c].replace(' ', '_')}_{kind}"
                                       f"_val{i}.png", f"val #{i}; border share {share:.0%}", [KIND_TITLES[kind]])
        examples.append({"class": names[c], "kind": kind, "val_index": i, "pred": pred,
                         "confidence": conf, "border_share": share, "figure": path})
    for k, first in enumerate(range(0, len(names), OVERVIEW_CLASSES), 1):
        last = min(first + OVERVIEW_CLASSES, len(names))
        cam.cam_overview_figure([overview.get((c, kind)) for c in range(first, last) for kind in KIND_TITLES],
                                fig_dir / f"lab_cam_overview_{k}.png",
                                f"CAMs of the predicted class on Imagenette val (val acc {ev['acc']:.1%}), "
                                f"classes {first + 1}–{last} of {len(names)}", list(KIND_TITLES.values()))
    plot_curves({"CAM CNN": hist}, fig_dir / "lab_cam_curves.pdf",
                "CAM CNN: loss (label-smoothed CE) and accuracy per epoch; 'test' = official val split")
    return examples


def main(argv=None) -> dict:
    args, recipe = get_args(argv)
    fig_dir, res_dir, runs_dir, device = utils.setup(args)
    t_start, precision = time.perf_counter(), resolve_precision(args.precision, device, "cam")
    data = load_data(args.data_dir, recipe, SMOKE_PER_CLASS if args.smoke else None)
    train, val, names, skipped = data["train"], data["val"], data["names"], data["skipped"]
    print(f"lab_cam: {len(train)} train + {len(val)} val images in {data['load_time_s']:.1f} s; {device}, {precision}")
    gen = utils.seed_everything(args.seed)
    model = cam.CamCNN(args.channels, args.cam_channels, len(names), args.dropout).to(device)
    hist = fit(model, train, val, recipe, gen=gen, precision=precision,
               loss_fn=partial(torch.nn.functional.cross_entropy, label_smoothing=recipe.label_smoothing),
               augment=partial(random_resized_crop, out_size=recipe.train_size, scale=(recipe.min_scale, 1.0)),
               ckpt_path=runs_dir / "lab_cam.pt", resume=args.resume, tb_dir=tensorboard_dir(args, "lab_cam", runs_dir))
    ev = evaluate_val(model, val, names, device)  # fp32, eval mode: every reported number and map
    gradcam = compare_gradcam(model, val, args.gradcam_images, names, fig_dir / "lab_cam_gradcam.png")
    results = dict(name="lab_cam", recipe=dict(asdict(recipe), precision=precision), val_acc=ev["acc"], history=hist,
                   classes=names, per_class_val_acc=ev["per_class_acc"], confusion_matrix_true_by_pred=ev["confusion"],
                   params=count_parameters(model), gradcam_comparison=gradcam, wnids=data["wnids"],
                   train_images=len(train), val_images=len(val), skipped_images={k: len(v) for k, v in skipped.items()},
                   skipped_files={k: [str(p) for p in v] for k, v in skipped.items()},
                   examples=write_figures(ev, val, names, hist, fig_dir), data_load_time_s=data["load_time_s"],
                   feature_map_size=[recipe.val_size // model.downsample] * 2)
    path = utils.write_results(res_dir / "lab_cam.json", results, args, device, t_start, precision)
    print(f"val acc {ev['acc']:.4f}, CAM vs Grad-CAM r {gradcam['pearson_raw_mean']:.5f}; wrote {path} and figures")
    return results


if __name__ == "__main__":
    utils.run_main(main)
