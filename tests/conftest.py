"""Shared test fixtures: where the data is, and how to run a script's --smoke mode."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_default = REPO.parent / "shared" / "data"
DATA_DIR = Path(os.environ.get("DATA_DIR") or _default).resolve()
HAS_MNIST = (DATA_DIR / "MNIST" / "raw").is_dir()

needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason=f"MNIST not found under {DATA_DIR} (set DATA_DIR)")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


def run_script(script: str, out_dir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python <script> --smoke --out-dir <out_dir> ...` from the repo root, as a student would."""
    env = {**os.environ, "DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(REPO / script), "--smoke", "--out-dir", str(out_dir), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def load_result(out_dir: Path, name: str) -> dict:
    return json.loads((out_dir / "results" / f"{name}.json").read_text())


def assert_figure(path: Path, min_width: int = 300, min_height: int = 150) -> None:
    """`path` is a PNG that decodes, is at least min_width x min_height pixels and is not blank (its pixels
    vary); an empty, truncated or all-white file fails."""
    import numpy as np
    from PIL import Image
    with Image.open(path) as im:
        im.load()  # decodes the whole file: a truncated PNG raises here
        assert im.format == "PNG", f"{path}: {im.format}, not a PNG"
        assert im.width >= min_width and im.height >= min_height, f"{path}: only {im.width}x{im.height} px"
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.std() > 1.0, f"{path}: blank image (pixel std {pixels.std():.2f})"
