"""MNIST as in-memory tensors, batched by index.

The whole MNIST training set is 60000 x 784 floats = 188 MB: it fits in memory, so we convert it
once and slice mini-batches with an index tensor. This avoids the per-sample PIL -> ToTensor work and
the collation of a DataLoader, which dominate the step time of small models on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .utils import UserError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # of the training pixels in [0, 1]; tested in tests/


class DataUnavailableError(UserError):
    """The data set is not on disk and could not be downloaded."""


def missing_data_message(what: str, root: Path, cause: BaseException | None = None) -> str:
    why = f" ({type(cause).__name__}: {str(cause).splitlines()[0]})" if cause else ""
    return (f"{what} not found under '{root}' and it could not be downloaded{why}.\n"
            f"Point the scripts at a copy: set DATA_DIR=/path/to/data or pass --data-dir /path/to/data "
            f"(in this course's sandbox: DATA_DIR=../shared/data).")


@dataclass
class TensorData:
    """Images (N, C, H, W) float32 in [0, 1] and integer labels (N,)."""
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: torch.Tensor) -> "TensorData":
        return TensorData(self.x[idx], self.y[idx])

    def to(self, device) -> "TensorData":
        return TensorData(self.x.to(device), self.y.to(device))


def load_mnist(data_dir: str | Path, train: bool, download: bool = True) -> TensorData:
    """The byte-exact MNIST split as tensors: x (N, 1, 28, 28) in [0, 1], y (N,) int64."""
    from torchvision.datasets import MNIST  # lazy: importing torchvision costs ~1 s

    root = Path(data_dir).expanduser()
    try:
        ds = MNIST(root=str(root), train=train, download=download)
    except Exception as exc:  # torchvision raises RuntimeError/URLError variants when offline
        raise DataUnavailableError(missing_data_message("MNIST", root, exc)) from exc
    x = ds.data.unsqueeze(1).float().div_(255.0)  # (N, 1, 28, 28); uint8 -> [0, 1] once
    return TensorData(x, ds.targets.long())


def first_n_subset(dataset, n: int):
    """The exercise's few-label set: exactly the first n training examples, indices 0..n-1.

    Works on a torch Dataset (returns torch.utils.data.Subset) and on TensorData (returns the slice);
    both pick the same examples as ``Subset(train, torch.arange(n))``.
    """
    if n > len(dataset):
        raise ValueError(f"asked for the first {n} examples of a data set of {len(dataset)}")
    idx = torch.arange(n)
    if isinstance(dataset, TensorData):
        return dataset.subset(idx)
    return torch.utils.data.Subset(dataset, idx)


def smoke_slice(data: TensorData, n: int) -> TensorData:
    """A class-balanced-ish tiny slice for --smoke runs: the first n examples."""
    return data.subset(torch.arange(min(n, len(data))))


def index_batches(n: int, batch_size: int, generator: torch.Generator | None = None,
                  shuffle: bool = True):
    """Yield index tensors covering range(n) once; the last batch may be smaller."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from order.split(batch_size)


def random_affine(x: torch.Tensor, gen: torch.Generator, max_shift: float = 2.0,
                  max_degrees: float = 10.0) -> torch.Tensor:
    """Light augmentation for a whole batch at once: random shifts (pixels) and rotations (degrees).

    x: (B, C, H, W). One affine grid per image (F.affine_grid), bilinear resampling, zeros outside.
    Random numbers come from `gen` (on CPU) so runs stay reproducible.
    """
    b, _, h, w = x.shape
    rand = torch.rand(b, 3, generator=gen).to(x.device) * 2 - 1           # (B, 3) in [-1, 1]
    theta = rand[:, 0] * max_degrees * torch.pi / 180                       # (B,)
    # affine_grid works in normalised coordinates [-1, 1]: a shift of s pixels is 2s/size.
    tx, ty = rand[:, 1] * 2 * max_shift / w, rand[:, 2] * 2 * max_shift / h
    cos, sin = theta.cos(), theta.sin()
    mat = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)
    grid = torch.nn.functional.affine_grid(mat, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def decode_images(paths, size: int, bar=None) -> torch.Tensor:
    """Image files (JPEG/PNG) -> one uint8 tensor (N, 3, size, size), for the labs' photo data sets.

    Shorter side resized to `size` (antialiased), then a centre crop: no distortion. Decoded with Pillow
    (torchvision.io's decoders are deprecated since torchvision 0.29). Images of one shape are resized as
    one batch, which uses torchvision's fast uint8 path; square inputs already at `size` are copied.
    Kept uint8 (12 KB per 64x64 image) and converted to float per batch.
    """
    import numpy as np
    from PIL import Image
    from torchvision.transforms.v2.functional import center_crop, resize

    imgs = []
    for p in paths:
        with Image.open(p) as im:
            imgs.append(np.asarray(im.convert("RGB")))                     # (h, w, 3) uint8
        if bar is not None:
            bar.update(1)
    out = torch.empty(len(imgs), 3, size, size, dtype=torch.uint8)
    by_shape: dict[tuple, list[int]] = {}
    for i, img in enumerate(imgs):
        by_shape.setdefault(img.shape, []).append(i)
    for (h, w, _), idx in by_shape.items():
        batch = torch.from_numpy(np.stack([imgs[i] for i in idx])).permute(0, 3, 1, 2)  # (n, 3, h, w)
        if min(h, w) != size:
            batch = resize(batch, [size], antialias=True)                   # shorter side -> size
        out[idx] = center_crop(batch, [size, size])                         # no-op when square
    return out
