"""Decoding photos, label maps and Detectron IUV PNGs into numpy, with errors that name the file."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from m2e_jax import densepose


class ReadError(ValueError):
    """A file that cannot be used; the message names the file and the problem (one line)."""


def _open(path: str | os.PathLike) -> Image.Image:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ReadError(f"{path}: file not found")
    try:
        img = Image.open(path)
        img.load()  # PIL decodes lazily: force it so truncated files fail here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ReadError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    return img


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """A photo (PNG/JPEG, any PIL mode) -> uint8 `[H, W, 3]` RGB."""
    img = _open(path)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """A single-channel label map (parsing, instance indices; 8 or 16 bit) -> int32 `[H, W]`."""
    img = _open(path)
    if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise ReadError(f"{os.fspath(path)}: expected a single-channel label PNG, got PIL mode {img.mode}")
    return np.asarray(img).astype(np.int32)


def read_iuv_rgb_png(path: str | os.PathLike) -> np.ndarray:
    """A Detectron `*_IUV.png` -> uint8 `[H, W, 3]` in DensePose order (I, U, V).

    Detectron writes the [I, U, V] array with OpenCV (channel 0 stored as Blue), so PIL's RGB pixels
    are [V, U, I]; `densepose.iuv_from_png_rgb` undoes that.
    """
    img = _open(path)
    if img.mode != "RGB":
        raise ReadError(f"{os.fspath(path)}: expected a 3-channel IUV PNG, got PIL mode {img.mode}")
    return np.ascontiguousarray(densepose.iuv_from_png_rgb(np.asarray(img, dtype=np.uint8)))
