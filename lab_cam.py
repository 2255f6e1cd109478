"""LAB01 exercise 2.3: Class Activation Maps (Zhou et al., CVPR 2016) of a CNN trained on Imagenette.

A LAB01 ex 1.3 configurable CNN (blocks conv -> BatchNorm -> ReLU -> Dropout -> MaxPool) ends in
conv -> global average pooling -> Linear(10), so the class-c map M_c(x, y) = sum_k w_k^c f_k(x, y) of
its last feature maps explains the logit exactly (common/cam.py). It is trained on the official
Imagenette v2 train split (160 px files) and evaluated on the official val split ("test" in the
history = val), then its predictions are explained with CAMs and compared with Grad-CAM.

CPU recipe: every JPEG is decoded once into a uint8 tensor at --img-size; training views are batched
random-resized crops + flips at --train-size; validation is the centre --val-size crop, a bit larger
than the training views because random-resized crops make objects look bigger (Touvron et al.,
"Fixing the train-test resolution discrepancy", NeurIPS 2019). OneCycle LR, AdamW, label smoothing.

    DATA_DIR=../shared/data python lab_cam.py   # report/figures/lab_cam_*.png, cam/, results/lab_cam.json
    DATA_DIR=../shared/data python lab_cam.py --smoke    # seconds, 2 images per class, into a temp dir
"""
from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from common.cam import (CamCNN, cam_overview_figure, cam_vs_gradcam_figure, center_crop,
                        class_activation_maps, generate_cam, grad_cam, load_imagenette, normalise_map,
                        random_resized_crop, save_cam_visualization, upsample)
from common.data import DataUnavailableError, TensorData
from common.models import count_parameters
from common.plots import plot_curves
from common.train import fit
from common.utils import (add_common_args, fraction, nonneg_float, pick_device, positive_int, resolve_output_dirs,
                          run_config, run_main, seed_everything, write_json_atomic)

SMOKE_PER_CLASS = 2  # --smoke: 2 images x 10 classes = 20 per split
WRONG_REASON_MIN_CONF = 0.5  # a 'right for the wrong reason' candidate must be at least this confident


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, epochs=20, batch_size=128, lr=4e-3)
    p.add_argument("--channels", type=positive_int, nargs="+", default=[32, 64, 128, 256],
                   help="conv channels of the conv-BN-ReLU-Dropout-MaxPool blocks (default 32 64 128 256)")
    p.add_argument("--cam-channels", type=positive_int, default=512,
                   help="channels K of the last (CAM) conv layer before GAP (default 512)")
    p.add_argument("--dropout", type=fraction, default=0.0,
                   help="dropout probability in every block (default 0: short runs underfit, the crops "
                        "already regularise)")
    p.add_argument("--img-size", type=positive_int, default=96,
                   help="side the 160 px images are decoded to and kept in memory (default 96)")
    p.add_argument("--train-size", type=positive_int, default=64,
                   help="side of the random-resized training crops (default 64)")
    p.add_argument("--val-size", type=positive_int, default=80,
                   help="side of the centre validation crop taken from --img-size (default 80)")
    p.add_argument("--min-scale", type=fraction, default=0.35,
                   help="smallest area fraction of a random-resized crop (default 0.35)")
    p.add_argument("--label-smoothing", type=fraction, default=0.1,
                   help="label smoothing of the cross-entropy (train and val loss; default 0.1)")
    p.add_argument("--weight-decay", type=nonneg_float, default=5e-2, help="AdamW weight decay (default 0.05)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bfloat16 autocast in training steps (evaluation/CAMs stay float32; default on)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--gradcam-images", type=positive_int, default=200,
                   help="val images on which CAM and Grad-CAM are compared (default 200)")
    return p.parse_args(argv)


@torch.inference_mode()
def val_predictions(model: CamCNN, x: torch.Tensor, device, batch_size: int = 256):
    """Logits (N, C) and the predicted-class CAMs upsampled to the image, normalised (N, H, W)."""
    model.eval()
    logits, cams = [], []
    for i in range(0, len(x), batch_size):
        maps, out = class_activation_maps(model, x[i:i + batch_size].to(device))  # (b, C, h, w), (b, C)
        pred = out.argmax(1)
        m = maps[torch.arange(len(pred)), pred]                                   # (b, h, w)
        cams.append(normalise_map(upsample(m, x.shape[-2:])).cpu())               # (b, H, W)
        logits.append(out.cpu())
    return torch.cat(logits), torch.cat(cams)


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


def main(argv=None) -> dict:
    args = get_args(argv)
    if args.val_size > args.img_size:
        raise SystemExit(f"error: --val-size {args.val_size} > --img-size {args.img_size}")
    fig_dir, res_dir, runs_dir = resolve_output_dirs(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = seed_everything(args.seed)
    device = pick_device(args.device)
    t_start = time.perf_counter()

    per_class = SMOKE_PER_CLASS if args.smoke else None
    skipped = {"train": [], "val": []}  # unreadable JPEGs are skipped and counted (data.decode_images)
    train, wnids, names = load_imagenette(args.data_dir, "train", args.img_size, per_class, skipped["train"])
    val_full, val_wnids, _ = load_imagenette(args.data_dir, "val", args.img_size, per_class, skipped["val"])
    if val_wnids != wnids:
        raise DataUnavailableError(f"train/val class folders differ: {wnids} vs {val_wnids}")
    val = TensorData(center_crop(val_full.x, args.val_size), val_full.y)  # (N, 3, V, V) uint8
    data_time = time.perf_counter() - t_start
    if args.smoke:
        args.epochs = 1
    print(f"lab_cam: {len(train)} train / {len(val)} val images decoded in {data_time:.1f} s "
          f"(stored {args.img_size} px, train crops {args.train_size} px, val centre {args.val_size} px), "
          f"device={device}, threads={torch.get_num_threads()}"
          + (f"; skipped {len(skipped['train'])} train + {len(skipped['val'])} val unreadable images"
             if skipped["train"] or skipped["val"] else ""))

    gen = seed_everything(args.seed)
    model = CamCNN(args.channels, args.cam_channels, len(wnids), args.dropout).to(device)
    model = model.to(memory_format=torch.channels_last)
    model.train_bf16 = args.bf16
    augment = partial(random_resized_crop, out_size=args.train_size, scale=(args.min_scale, 1.0))
    loss_fn = partial(torch.nn.functional.cross_entropy, label_smoothing=args.label_smoothing)
    hist = fit(model, train, val, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, gen=gen,
               device=device, loss_fn=loss_fn, weight_decay=args.weight_decay, augment=augment,
               ckpt_path=runs_dir / "lab_cam.pt", resume=args.resume, desc="lab_cam")
    train_done = time.perf_counter()

    # ---- final evaluation (float32) and the CAM of the predicted class of every val image
    logits, cams = val_predictions(model, val.x, device)          # (N, C), (N, V, V)
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    correct = pred == val.y
    per_class_acc = {names[c]: correct[val.y == c].float().mean().item() for c in range(len(names))}
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)
    confusion.index_put_((val.y, pred), torch.ones_like(pred), accumulate=True)

    # ---- figures: per class the most confident correct, the 'wrong reason' candidate, the worst mistake
    share = border_share(cams)
    picks = pick_examples(val.y, pred, conf, share, len(names))
    cam_dir = fig_dir / "cam"
    for old in cam_dir.glob("*_val*.png"):  # picks change between runs: never leave a stale one behind
        old.unlink()
    notes = {"correct": "most confident correct prediction of the class",
             "wrong_reason_candidate": "confident & correct, most CAM mass in the border: 'right for "
                                       "the wrong reason'?",
             "misclassified": "most confident mistake on this class"}
    examples, overview = [], []
    for c, kinds in picks.items():
        for kind, i in kinds.items():
            if i is None:
                overview.append(None)
                continue
            slug = names[c].replace(" ", "_")
            path = save_cam_visualization(val.x[i], cams[i], names[c], names[int(pred[i])], float(conf[i]),
                                          cam_dir / f"{slug}_{kind}_val{i}.png",
                                          note=f"{notes[kind]}; border share {share[i]:.0%}")
            examples.append({"class": names[c], "kind": kind, "val_index": i, "pred": names[int(pred[i])],
                             "confidence": float(conf[i]), "border_share": float(share[i]), "figure": path})
            overview.append({"image": val.x[i], "cam": cams[i], "true": names[c],
                             "pred": names[int(pred[i])], "conf": float(conf[i])})
    cam_overview_figure(overview, fig_dir / "lab_cam_overview.png",
                        f"CAMs of the predicted class on Imagenette val (val acc {correct.float().mean():.1%})",
                        col_titles=["most confident correct",
                                    f"correct (p >= {WRONG_REASON_MIN_CONF:.0%}), CAM most in border",
                                    "most confident mistake"])
    plot_curves({"CAM CNN": hist}, fig_dir / "lab_cam_curves.png",
                "lab_cam: loss (label-smoothed CE) and accuracy per epoch; 'test' = official val split")

    gradcam, rows = compare_gradcam(model, val, args.gradcam_images, names)
    cam_vs_gradcam_figure(rows, fig_dir / "lab_cam_gradcam.png",
                          f"CAM vs Grad-CAM on the same GAP + linear model, {gradcam['images']} val images\n"
                          f"mean Pearson r: raw maps {gradcam['pearson_raw_mean']:.4f}, "
                          f"ReLU + min-max {gradcam['pearson_relu_minmax_mean']:.3f}")

    val_acc = correct.float().mean().item()
    results = {
        "name": "lab_cam", "config": run_config(args), "seed": args.seed,
        "val_acc": val_acc, "val_loss": hist[-1].get("test_loss"),
        "history_note": "test_* = official Imagenette val split; losses are label-smoothed cross-entropy",
        "history": hist, "classes": names, "wnids": wnids,
        "per_class_val_acc": per_class_acc, "confusion_matrix_true_by_pred": confusion,
        "train_images": len(train), "val_images": len(val), "params": count_parameters(model),
        "skipped_images": {k: len(v) for k, v in skipped.items()},
        "skipped_files": {k: [str(p) for p in v] for k, v in skipped.items()},
        "feature_map_size": [args.val_size // model.downsample] * 2, "gradcam_comparison": gradcam,
        "examples": examples,
        "mean_epoch_time_s": sum(h["epoch_time_s"] for h in hist) / len(hist),
        "train_time_s": hist[-1]["train_time_s"], "data_load_time_s": data_time,
        "fit_wall_time_s": train_done - t_start - data_time,
        "threads": torch.get_num_threads(), "device": str(device),
    }
    results["wall_time_s"] = time.perf_counter() - t_start
    path = write_json_atomic(res_dir / "lab_cam.json", results)
    print("\n class             | val acc")
    for n, a in per_class_acc.items():
        print(f" {n:17s} | {a:.3f}")
    print(f"val acc {val_acc:.4f}; CAM vs Grad-CAM r = {gradcam['pearson_raw_mean']:.5f} (raw), "
          f"{gradcam['pearson_relu_minmax_mean']:.3f} (ReLU+min-max)")
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
