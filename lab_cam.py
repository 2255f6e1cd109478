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

from common.cam import (CamCNN, build_results, compare_gradcam, evaluate_val, load_lab_data, random_resized_crop,
                        write_figures)
from common.train import fit, tensorboard_dir
from common.utils import (add_common_args, fraction, nonneg_float, pick_device, positive_int, resolve_output_dirs,
                          run_config, run_main, seed_everything, write_json_atomic)

SMOKE_PER_CLASS = 2  # --smoke: 2 images x 10 classes = 20 per split


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


def main(argv=None) -> dict:
    args = get_args(argv)
    if args.val_size > args.img_size:
        raise SystemExit(f"error: --val-size {args.val_size} > --img-size {args.img_size}")
    fig_dir, res_dir, runs_dir = resolve_output_dirs(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = pick_device(args.device)
    t_start = time.perf_counter()

    # ---- load: every JPEG decoded once (unreadable ones skipped and counted), val = centre crops
    data = load_lab_data(args.data_dir, args.img_size, args.val_size, SMOKE_PER_CLASS if args.smoke else None)
    train, val, names, skipped = data["train"], data["val"], data["names"], data["skipped"]
    if args.smoke:
        args.epochs = 1
    print(f"lab_cam: {len(train)} train / {len(val)} val images decoded in {data['load_time_s']:.1f} s "
          f"(stored {args.img_size} px, train crops {args.train_size} px, val centre {args.val_size} px), "
          f"device={device}, threads={torch.get_num_threads()}"
          + (f"; skipped {len(skipped['train'])} train + {len(skipped['val'])} val unreadable images"
             if skipped["train"] or skipped["val"] else ""))

    # ---- train: random-resized crops + flips, label-smoothed cross-entropy, bf16 autocast steps
    gen = seed_everything(args.seed)
    model = CamCNN(args.channels, args.cam_channels, len(names), args.dropout).to(device)
    model = model.to(memory_format=torch.channels_last)
    model.train_bf16 = args.bf16
    augment = partial(random_resized_crop, out_size=args.train_size, scale=(args.min_scale, 1.0))
    loss_fn = partial(torch.nn.functional.cross_entropy, label_smoothing=args.label_smoothing)
    hist = fit(model, train, val, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, gen=gen,
               device=device, loss_fn=loss_fn, weight_decay=args.weight_decay, augment=augment,
               ckpt_path=runs_dir / "lab_cam.pt", resume=args.resume, desc="lab_cam",
               tb_dir=tensorboard_dir(args, "lab_cam", runs_dir), hparams=run_config(args))
    fit_wall_time_s = time.perf_counter() - t_start - data["load_time_s"]

    # ---- evaluate (float32): predictions and predicted-class CAMs of every val image; CAM vs Grad-CAM
    ev = evaluate_val(model, val, names, device)
    gradcam, rows = compare_gradcam(model, val, args.gradcam_images, names)

    # ---- figures and results
    examples = write_figures(ev, val, names, hist, gradcam, rows, fig_dir)
    results = build_results(args, model, data, hist, ev, gradcam, examples, fit_wall_time_s, device)
    results["wall_time_s"] = time.perf_counter() - t_start
    path = write_json_atomic(res_dir / "lab_cam.json", results)
    print("\n class             | val acc")
    for n, a in ev["per_class_acc"].items():
        print(f" {n:17s} | {a:.3f}")
    print(f"val acc {ev['acc']:.4f}; CAM vs Grad-CAM r = {gradcam['pearson_raw_mean']:.5f} (raw), "
          f"{gradcam['pearson_relu_minmax_mean']:.3f} (ReLU+min-max)")
    print(f"wrote {path} and figures in {fig_dir} ({results['wall_time_s']:.0f} s)")
    return results


if __name__ == "__main__":
    run_main(main)
