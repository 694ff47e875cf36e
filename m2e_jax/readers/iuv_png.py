"""Detectron (Caffe2) DensePose `infer_simple.py` outputs: `NAME_IUV.png` and optional `NAME_INDS.png`.

As DensePose's `detectron/utils/vis.py` (`vis_one_image`) writes them: `NAME_IUV.png` holds [I, U, V]
written by OpenCV (a PIL reader sees [V, U, I]); `NAME_INDS.png` holds, on each person's foreground
(I > 0), that person's rank `i` in ascending detection-score order (`All_inds = CurrentMask * i` over
`np.argsort(scores)`, drawing only scores > 0.65). So the lowest-ranked person drawn may be 0, like
the background: a photo with one person has an all-zero INDS. A person is therefore the pixels with
I > 0 and one INDS value; the highest value is the top scorer. With several people one is kept and
the pixels of the others become background.
"""

from __future__ import annotations

import os

import numpy as np

from m2e_jax.readers import images, selection


def people(iuv: np.ndarray, inds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The people of a Detectron output: INDS values `[n]` ascending (= ascending score) and their
    masks bool `[n, H, W]` (I > 0 and INDS == value)."""
    fg = iuv[..., 0] > 0
    values = np.unique(inds[fg])
    masks = [fg & (inds == v) for v in values]
    return values, np.stack(masks) if masks else np.zeros((0, *fg.shape), bool)


def keep_instance(iuv: np.ndarray, inds: np.ndarray, select: selection.Select = "largest",
                  where: str = "IUV") -> np.ndarray:
    """Zeroes every pixel not on the chosen person.

    Args:
      iuv: uint8 `[H, W, 3]` (I, U, V). inds: int `[H, W]` as vis_one_image writes it (see above).
      select: "largest" (most pixels) | "central" (mask centre nearest the image centre) | "score"
        (highest INDS value: the top-scoring detection) | an INDS value k (0 is a person too).
    Returns uint8 `[H, W, 3]`: all zero when the IUV has no foreground.
    """
    if inds.shape != iuv.shape[:2]:
        raise ValueError(f"{where}: instance map is {inds.shape[0]}x{inds.shape[1]} but IUV is "
                         f"{iuv.shape[0]}x{iuv.shape[1]}")
    selection.check_select(select)
    values, masks = people(iuv, inds)
    if values.size == 0:
        return np.zeros_like(iuv)
    if isinstance(select, int):
        if select not in values:
            raise ValueError(f"{where}: no person with INDS value {select} (values on the body: "
                             f"{values.tolist()})")
        k = int(np.flatnonzero(values == select)[0])
    else:
        areas = masks.reshape(len(values), -1).sum(-1)
        centers = np.array([np.argwhere(m).mean(0) for m in masks])
        k = selection.choose(select, areas=areas, centers=centers, image_hw=inds.shape,
                             scores=values.astype(np.float64))
    return np.where(masks[k][..., None], iuv, 0).astype(np.uint8)


def read_iuv_png(iuv_path: str | os.PathLike, inds_path: str | os.PathLike | None = None,
                 select: selection.Select = "largest", max_pixels: int = images.MAX_PIXELS) -> np.ndarray:
    """Reads a Detectron IUV PNG (and instance map) -> uint8 `[H, W, 3]` (I, U, V), one person."""
    iuv = images.read_iuv_rgb_png(iuv_path, max_pixels)
    if inds_path is None:
        return iuv
    inds = images.read_labels(inds_path, max_pixels)
    try:
        return keep_instance(iuv, inds, select, where=os.fspath(inds_path))
    except ValueError as e:
        raise images.ReadError(str(e)) from None


def inds_path_for(iuv_path: str | os.PathLike) -> str | None:
    """`X_IUV.png` -> `X_INDS.png` when that file exists, else None."""
    p = os.fspath(iuv_path)
    if not p.endswith("_IUV.png"):
        return None
    cand = p[: -len("_IUV.png")] + "_INDS.png"
    return cand if os.path.exists(cand) else None
