"""Data as in-memory tensors: MNIST (checked byte for byte), batched augmentations, and the labs' photos (uint8).

MNIST's 60000 x 784 floats (188 MB) are converted once and batches sliced with an index tensor: no per-sample
PIL -> ToTensor work and DataLoader collation, which dominate the step time of small models on a CPU."""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .utils import UserError

# SHA-256 of the uncompressed IDX files (course data README): a present but differing file is corrupted, not missing.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def describe_exception(exc: BaseException) -> str:
    """'Type: first non-empty line of the message', or just 'Type' (some exceptions carry no text)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def missing_data_message(what: str, root: Path, cause: BaseException | None = None) -> str:
    """One line (run_main prints it after 'error: '), saying where to point the scripts."""
    why = f" and it could not be downloaded ({describe_exception(cause)})" if cause is not None else ""
    return (f"{what} not found under '{root}'{why}. "
            f"Point the scripts at a copy: set DATA_DIR=/path/to/data or pass --data-dir /path/to/data "
            f"(in this course's sandbox, from the repository root: DATA_DIR=../shared/data).")


@dataclass
class TensorData:
    """Images (N, C, H, W), integer labels (N,) and, for a subset, its examples' indices (N,) in the full data set."""
    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: torch.Tensor) -> "TensorData":
        source = self.index[idx] if self.index is not None else idx  # compose: indices into the original
        return TensorData(self.x[idx], self.y[idx], source)


def load_mnist(data_dir: str | Path, train: bool) -> TensorData:
    """The byte-exact MNIST split: x (N, 1, 28, 28) in [0, 1], y (N,) int64; a missing or damaged file is one line."""
    from torchvision.datasets import MNIST  # lazy: importing torchvision costs ~1 s

    root = Path(data_dir).expanduser()
    raw = root / "MNIST" / "raw"
    split = [n for n in MNIST_SHA256 if n.startswith("train" if train else "t10k")]
    if not all((raw / n).is_file() for n in MNIST_SHA256):  # torchvision needs all four to skip downloading
        # MNIST(download=True) creates <root>/MNIST/raw before failing offline: a failed load removes what it created
        created = next((d for d in (root, root / "MNIST", raw) if not d.exists()), None)
        try:
            MNIST(root=str(root), train=train, download=True)
        except Exception as exc:  # torchvision raises RuntimeError/URLError variants when offline
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise UserError(missing_data_message("MNIST", root, exc)) from None
    for name in split:  # checked before parsing: a damaged header must not become a parser traceback
        got = hashlib.sha256((raw / name).read_bytes()).hexdigest()  # 47 MB at most: read at once
        if got != MNIST_SHA256[name]:
            raise UserError(f"corrupted: {raw / name}, expected sha256 {MNIST_SHA256[name]}, got {got}; delete "
                            f"it and download MNIST again, or point --data-dir / DATA_DIR at an intact copy")
    ds = MNIST(root=str(root), train=train, download=False)
    x = ds.data.unsqueeze(1).float().div_(255.0)  # (N, 1, 28, 28); uint8 -> [0, 1] once
    return TensorData(x, ds.targets.long())


SMOKE_TRAIN = 1024  # --smoke: the first 1024 training images (seconds per epoch)


def load_mnist_splits(args, smoke_test: int = 256) -> tuple[TensorData, TensorData]:
    """(train, test) from args.data_dir; --smoke keeps the first SMOKE_TRAIN and `smoke_test` of them."""
    train, test = load_mnist(args.data_dir, train=True), load_mnist(args.data_dir, train=False)
    return (first_n(train, SMOKE_TRAIN), first_n(test, smoke_test)) if args.smoke else (train, test)


def first_n(data: TensorData, n: int) -> TensorData:
    """The first n examples (as Subset(train, torch.arange(n))), data.index recording them; also --smoke's slices."""
    return data.subset(torch.arange(min(n, len(data))))


MAX_SHIFT_PX, MAX_DEGREES = 2.0, 10.0  # light: a shifted or tilted digit is still the same digit
AFFINE = f"shifts ≤ {MAX_SHIFT_PX:g} px, rotations ≤ {MAX_DEGREES:g}°"  # Recipe.augment's name for it


def random_affine(x: torch.Tensor, gen: torch.Generator, max_shift=MAX_SHIFT_PX, max_degrees=MAX_DEGREES):
    """x (B, C, H, W), each image shifted (pixels) and rotated (degrees) at random by warp, zeros outside; by `gen`."""
    b, _, h, w = x.shape
    rand = torch.rand(b, 3, generator=gen).to(x.device) * 2 - 1           # (B, 3) in [-1, 1]
    theta = rand[:, 0] * max_degrees * torch.pi / 180                       # (B,)
    tx, ty = rand[:, 1] * 2 * max_shift / w, rand[:, 2] * 2 * max_shift / h  # s pixels: 2s/size in [-1, 1] units
    cos, sin = theta.cos(), theta.sin()
    return warp(x, torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1))


def warp(x: torch.Tensor, theta: torch.Tensor, size: int | None = None, padding: str = "zeros") -> torch.Tensor:
    """Float images x (B, C, H, W), each resampled (bilinear) through its own affine map theta (B, 2, 3) from output
    to input coordinates in [-1, 1] (F.affine_grid) -> (B, C, size, size): every batched augmentation here."""
    size = size or x.shape[-1]
    grid = torch.nn.functional.affine_grid(theta.to(x), [len(x), x.shape[1], size, size], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def shift_images(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """x (N, C, H, W) moved dx pixels right and dy pixels down (negative: left / up), zeros shifted in:
    out[..., i, j] = x[..., i - dy, j - dx] where that pixel exists, else 0 (ex2's shift test, Q2(d))."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def to_float(x: torch.Tensor, device=None) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> float32 in [0, 1], moved to `device` first (photos stay uint8 until batched)."""
    if device is not None:
        x = x.to(device, non_blocking=True)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


IMAGENETTE_DIR = "imagenette2-160"  # Imagenette v2, 160 px files: <data dir>/imagenette2-160/{train,val}/<wnid>/
# The ten classes, WordNet id -> name, in the official order (sorted ids, as torchvision.datasets.Imagenette).
IMAGENETTE_CLASSES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player", "n03000684": "chain saw",
    "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck", "n03425413": "gas pump",
    "n03445777": "golf ball", "n03888257": "parachute"}


def imagenette_split(data_dir: str | Path, split: str) -> Path:
    """The folder of one Imagenette split ('train' or 'val'); a missing one is one clear line."""
    root = Path(data_dir).expanduser() / IMAGENETTE_DIR
    if not (root / split).is_dir():
        raise UserError(missing_data_message(f"Imagenette ({IMAGENETTE_DIR})", root))
    return root / split


def require_images(folder: str | Path, pattern: str, what: str) -> list[Path]:
    """The files in `folder` matching `pattern`, sorted; no folder or no match is one line naming `what` it holds."""
    folder = Path(folder).expanduser()
    files = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if not files:
        raise UserError(missing_data_message(what, folder))
    return files


def decode_images(paths, size: int, bar=None, skipped: list | None = None) -> torch.Tensor:
    """Image files -> uint8 (N, 3, size, size): shorter side resized to `size` (antialiased), centre crop. An unreadable
    file is appended to `skipped` and left out (the caller drops its label); without `skipped` it is one error line."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms.v2.functional import center_crop, resize

    imgs, bad = [], []
    for p in paths:
        try:
            with Image.open(p) as im:
                imgs.append(np.asarray(im.convert("RGB")))                  # (h, w, 3) uint8
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # truncated: OSError
            if skipped is None:
                raise UserError(f"corrupted image: {p} ({describe_exception(exc)}); delete or replace it") from None
            bad.append((p, exc))
        if bar is not None:
            bar.update(1)
    if bad:
        skipped.extend(p for p, _ in bad)
        print(f"warning: skipped {len(bad)} unreadable image(s) of {len(imgs) + len(bad)}, first {bad[0][0]} "
              f"({describe_exception(bad[0][1])})")
    out = torch.empty(len(imgs), 3, size, size, dtype=torch.uint8)
    by_shape: dict[tuple, list[int]] = {}  # images of one shape are resized as one batch (torchvision's uint8 path)
    for i, img in enumerate(imgs):
        by_shape.setdefault(img.shape, []).append(i)
    for (h, w, _), idx in by_shape.items():
        batch = torch.from_numpy(np.stack([imgs[i] for i in idx])).permute(0, 3, 1, 2)  # (n, 3, h, w)
        if min(h, w) != size:
            batch = resize(batch, [size], antialias=True)                    # shorter side -> size
        out[idx] = center_crop(batch, [size, size])                          # no-op when square
    return out
