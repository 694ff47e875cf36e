"""Detectron (Caffe2) DensePose `infer_simple.py` outputs: `NAME_IUV.png` and optional `NAME_INDS.png`.

`NAME_IUV.png` holds [I, U, V] written by OpenCV (a PIL reader sees [V, U, I]); `NAME_INDS.png` holds
the instance index per pixel (0 background, 1..n people). With several people, one is kept and the
pixels of the others become background.
"""

from __future__ import annotations

import os

import numpy as np

from m2e_jax.readers import images, selection


def keep_instance(iuv: np.ndarray, inds: np.ndarray, select: selection.Select = "largest",
                  where: str = "IUV") -> np.ndarray:
    """Zeroes every pixel not on the chosen instance.

    Args:
      iuv: uint8 `[H, W, 3]` (I, U, V). inds: int `[H, W]`, 0 background, k > 0 instance k.
      select: "largest" | "central" | instance number k (as written in INDS; 0 is not a person).
    Returns uint8 `[H, W, 3]`; unchanged when there is a single instance.
    """
    if inds.shape != iuv.shape[:2]:
        raise ValueError(f"{where}: instance map is {inds.shape[0]}x{inds.shape[1]} but IUV is "
                         f"{iuv.shape[0]}x{iuv.shape[1]}")
    selection.check_select(select, ("largest", "central"))
    ids = np.unique(inds[inds > 0])
    if ids.size == 0:
        return np.zeros_like(iuv)
    if isinstance(select, int):
        if select not in ids:
            raise ValueError(f"{where}: instance {select} not in the instance map (has {ids.tolist()})")
        chosen = select
    else:
        areas = np.array([(inds == k).sum() for k in ids])
        centers = np.array([np.argwhere(inds == k).mean(0) for k in ids])
        chosen = ids[selection.choose(select, areas=areas, centers=centers, image_hw=inds.shape)]
    return np.where((inds == chosen)[..., None], iuv, 0).astype(np.uint8)


def read_iuv_png(iuv_path: str | os.PathLike, inds_path: str | os.PathLike | None = None,
                 select: selection.Select = "largest") -> np.ndarray:
    """Reads a Detectron IUV PNG (and instance map) -> uint8 `[H, W, 3]` (I, U, V), one person."""
    iuv = images.read_iuv_rgb_png(iuv_path)
    if inds_path is None:
        return iuv
    inds = images.read_labels(inds_path)
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
