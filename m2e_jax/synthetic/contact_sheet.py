"""A PNG grid of a few synthetic examples, for a person to look at.

One row per example: M, IUV(M), mask(M) | P, IUV(P), mask(P) | target. IUV is shown as
(I * 10, U, V) in RGB; masks in grey. Rows are labelled paired / unpaired.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLUMNS = ("M", "IUV M", "mask M", "P", "IUV P", "mask P", "target")
_GAP = 2
_HEADER = 12


def iuv_to_rgb(iuv: np.ndarray) -> np.ndarray:
    """uint8 IUV `[H, W, 3]` -> a viewable uint8 RGB image (I scaled to 0..240 in red)."""
    out = iuv.astype(np.int32)
    out[..., 0] *= 10
    return np.clip(out, 0, 255).astype(np.uint8)


def _mask_rgb(mask: np.ndarray) -> np.ndarray:
    return np.repeat(mask.reshape(mask.shape[0], mask.shape[1], 1) * 255, 3, axis=-1).astype(np.uint8)


def example_row(ex: dict[str, Any]) -> list[np.ndarray]:
    """The row's tiles, uint8 `[H, W, 3]` each, in COLUMNS order."""
    target = ex["target_image"] if int(ex["has_target"]) else np.zeros_like(ex["person_image"])
    return [ex["model_image"], iuv_to_rgb(ex["model_iuv"]), _mask_rgb(ex["model_mask"]),
            ex["person_image"], iuv_to_rgb(ex["person_iuv"]), _mask_rgb(ex["person_mask"]), target]


def contact_sheet(examples: Sequence[dict[str, Any]], path: str | os.PathLike, max_rows: int = 6,
                  zoom: int = 2) -> np.ndarray:
    """Writes a PNG grid of up to `max_rows` examples to `path`; returns the grid uint8 `[h, w, 3]`."""
    if not examples:
        raise ValueError("contact_sheet: no examples given")
    rows = [example_row(ex) for ex in examples[:max_rows]]
    h, w = rows[0][0].shape[:2]
    th, tw = h * zoom, w * zoom
    sheet = np.full((_HEADER + len(rows) * (th + _GAP), 60 + len(COLUMNS) * (tw + _GAP), 3), 255, np.uint8)
    for r, tiles in enumerate(rows):
        y = _HEADER + r * (th + _GAP)
        for c, tile in enumerate(tiles):
            x = 60 + c * (tw + _GAP)
            sheet[y:y + th, x:x + tw] = np.repeat(np.repeat(tile, zoom, axis=0), zoom, axis=1)
    img = Image.fromarray(sheet)
    draw = ImageDraw.Draw(img)
    for c, name in enumerate(COLUMNS):
        draw.text((62 + c * (tw + _GAP), 0), name, fill=(0, 0, 0))
    for r, ex in enumerate(examples[:max_rows]):
        label = "paired" if int(ex["paired"]) else "unpaired"
        draw.text((2, _HEADER + r * (th + _GAP) + th // 2), label, fill=(0, 0, 0))
    img.save(path)
    return np.asarray(img)
