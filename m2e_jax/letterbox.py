"""Fitting photos to the dataset size with the aspect ratio kept: scale, then pad (letterbox).

Photos are resampled bilinearly (PIL, antialiased when shrinking, like area averaging); IUV maps,
parsing and masks with nearest neighbour, so labels are never blended.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """Source (h, w) -> target (height, width): content scaled by `scale` to (new_h, new_w), placed at
    (top, left); the rest is zero (black photo, background IUV). Target pixel (y, x) shows source
    pixel ((y - top + 0.5) / scale - 0.5, (x - left + 0.5) / scale - 0.5)."""

    h: int
    w: int
    height: int
    width: int
    scale: float
    new_h: int
    new_w: int
    top: int
    left: int

    def as_array(self) -> np.ndarray:
        """float32 [3]: (scale, top, left), stored with each record."""
        return np.array([self.scale, self.top, self.left], np.float32)


def letterbox(h: int, w: int, height: int, width: int) -> Letterbox:
    if min(h, w, height, width) <= 0:
        raise ValueError(f"letterbox: sizes must be positive, got {h}x{w} -> {height}x{width}")
    scale = min(height / h, width / w)
    new_h, new_w = min(height, max(1, round(h * scale))), min(width, max(1, round(w * scale)))
    return Letterbox(h, w, height, width, scale, new_h, new_w, (height - new_h) // 2, (width - new_w) // 2)


def _pad(arr: np.ndarray, lb: Letterbox) -> np.ndarray:
    out = np.zeros((lb.height, lb.width) + arr.shape[2:], arr.dtype)
    out[lb.top: lb.top + lb.new_h, lb.left: lb.left + lb.new_w] = arr
    return out


def _check(arr: np.ndarray, lb: Letterbox) -> None:
    if arr.shape[:2] != (lb.h, lb.w):
        raise ValueError(f"letterbox: array is {arr.shape[0]}x{arr.shape[1]}, transform is for {lb.h}x{lb.w}")


def resize_image(image: np.ndarray, lb: Letterbox) -> np.ndarray:
    """uint8 `[h, w, 3]` photo -> `[height, width, 3]`, bilinear; exact copy when no scaling."""
    _check(image, lb)
    if (lb.new_h, lb.new_w) != (lb.h, lb.w):
        image = np.asarray(Image.fromarray(image).resize((lb.new_w, lb.new_h), Image.Resampling.BILINEAR))
    return _pad(image, lb)


def resize_labels(labels: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Label-like `[h, w, ...]` (IUV, parsing, masks) -> `[height, width, ...]`, nearest neighbour."""
    _check(labels, lb)
    if (lb.new_h, lb.new_w) != (lb.h, lb.w):
        rows = np.minimum(((np.arange(lb.new_h) + 0.5) * lb.h / lb.new_h).astype(np.int64), lb.h - 1)
        cols = np.minimum(((np.arange(lb.new_w) + 0.5) * lb.w / lb.new_w).astype(np.int64), lb.w - 1)
        labels = labels[rows[:, None], cols[None, :]]
    return _pad(labels, lb)
