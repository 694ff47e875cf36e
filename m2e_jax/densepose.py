"""DensePose conventions shared by every module: part labels, IUV decoding, garment regions.

An IUV map is `[..., H, W, 3]` in DensePose's channel order (I, U, V):
- uint8 form (what DensePose writes): I in 0..24, U and V in 0..255 (= value * 255).
- float form (what networks see): I as a float index 0..24, U and V in [0, 1].

Detectron's `infer_simple.py` writes the [I, U, V] array with OpenCV, which stores channel 0 as
Blue: a PIL/RGB reader sees [V, U, I]. `iuv_from_png_rgb` / `iuv_to_png_rgb` are the only places
that handle that flip (see ../shared/design/densepose.md).

Functions accept numpy or JAX arrays and return the same kind, so data preparation stays in numpy
while the same code runs inside jitted train steps.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

NUM_PARTS = 24
NUM_LABELS = NUM_PARTS + 1  # 0 is background.

PART_NAMES: dict[int, str] = {
    1: "torso_back", 2: "torso_front",
    3: "hand_right", 4: "hand_left",
    5: "foot_left", 6: "foot_right",
    7: "upper_leg_right_back", 8: "upper_leg_left_back",
    9: "upper_leg_right_front", 10: "upper_leg_left_front",
    11: "lower_leg_right_back", 12: "lower_leg_left_back",
    13: "lower_leg_right_front", 14: "lower_leg_left_front",
    15: "upper_arm_left_inside", 16: "upper_arm_right_inside",
    17: "upper_arm_left_outside", 18: "upper_arm_right_outside",
    19: "lower_arm_left_inside", 20: "lower_arm_right_inside",
    21: "lower_arm_left_outside", 22: "lower_arm_right_outside",
    23: "head_right", 24: "head_left",
}

TORSO = (1, 2)
HANDS = (3, 4)
FEET = (5, 6)
UPPER_LEGS = (7, 8, 9, 10)
LOWER_LEGS = (11, 12, 13, 14)
UPPER_ARMS = (15, 16, 17, 18)
LOWER_ARMS = (19, 20, 21, 22)
HEAD = (23, 24)

# Parts a garment of each kind may cover (the region of interest R_P of method.md).
GARMENT_KINDS = ("upper", "lower")
GARMENT_PARTS: dict[str, tuple[int, ...]] = {
    "upper": TORSO + UPPER_ARMS + LOWER_ARMS,
    "lower": UPPER_LEGS + LOWER_LEGS,
}



def _xp(x: Any):
    return jnp if isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer) else np


def split_iuv(iuv):
    """Splits an IUV map into (I, U, V).

    Args:
      iuv: `[..., H, W, 3]`, uint8 (DensePose encoding) or float (I index, U, V in [0, 1]).

    Returns:
      I as int32 `[..., H, W]` in 0..24; U and V as float32 `[..., H, W]` in [0, 1].
    """
    xp = _xp(iuv)
    if iuv.dtype == np.uint8:
        i = iuv[..., 0].astype(np.int32)
        uv = iuv[..., 1:].astype(np.float32) / 255.0
    else:
        i = xp.round(iuv[..., 0].astype(np.float32)).astype(np.int32)
        uv = iuv[..., 1:].astype(np.float32)
    return i, uv[..., 0], uv[..., 1]


def iuv_to_float(iuv):
    """uint8 or float IUV `[..., H, W, 3]` -> float32 (I index, U, V in [0, 1])."""
    xp = _xp(iuv)
    i, u, v = split_iuv(iuv)
    return xp.stack([i.astype(np.float32), u, v], axis=-1)


def iuv_to_uint8(iuv):
    """float IUV (I index, U, V in [0, 1]) `[..., H, W, 3]` -> DensePose's uint8 encoding."""
    xp = _xp(iuv)
    if iuv.dtype == np.uint8:
        return iuv
    i, u, v = split_iuv(iuv)
    uv = xp.clip(xp.round(xp.stack([u, v], axis=-1) * 255.0), 0, 255)
    return xp.concatenate([i[..., None].astype(np.float32), uv], axis=-1).astype(np.uint8)


def iuv_from_png_rgb(rgb):
    """IUV from the pixels of a Detectron `*_IUV.png` read in RGB order (PIL): [V, U, I] -> [I, U, V]."""
    return rgb[..., ::-1]


def iuv_to_png_rgb(iuv):
    """The RGB pixels a PIL writer must store so the PNG matches what OpenCV writes for [I, U, V]."""
    return iuv[..., ::-1]


def encode_iuv(iuv, dtype=jnp.float32):
    """Network encoding of an IUV map (enc(IUV) in method.md): one-hot of the 25 labels, then U, V
    zeroed on background.

    Args:
      iuv: `[..., H, W, 3]` uint8 or float IUV.

    Returns:
      `[..., H, W, 27]` in [0, 1].
    """
    i, u, v = split_iuv(iuv)
    xp = _xp(iuv)
    fg = (i > 0).astype(dtype)
    onehot = (i[..., None] == xp.arange(NUM_LABELS)).astype(dtype)
    return xp.concatenate([onehot, (u * fg)[..., None].astype(dtype), (v * fg)[..., None].astype(dtype)],
                          axis=-1)


def parts_mask(iuv, parts: tuple[int, ...], dtype=np.float32):
    """1 where the pixel's part label is in `parts`. `[..., H, W, 3]` -> `[..., H, W, 1]`."""
    xp = _xp(iuv)
    i, _, _ = split_iuv(iuv)
    hit = (i[..., None] == xp.asarray(parts, dtype=np.int32)).any(axis=-1)
    return hit[..., None].astype(dtype)


def garment_parts_mask(iuv, kind: str = "upper", dtype=np.float32):
    """Body parts a garment of `kind` ("upper" / "lower") can cover. -> `[..., H, W, 1]`."""
    if kind not in GARMENT_PARTS:
        raise ValueError(f"unknown garment kind {kind!r}; expected one of {GARMENT_KINDS}")
    return parts_mask(iuv, GARMENT_PARTS[kind], dtype)


def dilate(mask, radius: int):
    """Max filter with a (2r+1)^2 square window. `[B, H, W, C]` float -> same shape."""
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    xp = _xp(mask)
    if xp is np:
        return np.asarray(dilate(jnp.asarray(mask), radius))
    return jax.lax.reduce_window(mask, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, 1, 1, 1), "SAME")


def box_blur(mask, radius: int):
    """Mean filter with a (2r+1)^2 window, zero padded. `[B, H, W, C]` -> same shape."""
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    xp = _xp(mask)
    if xp is np:
        return np.asarray(box_blur(jnp.asarray(mask), radius))
    total = jax.lax.reduce_window(mask, 0.0, jax.lax.add, (1, k, k, 1), (1, 1, 1, 1), "SAME")
    return total / (k * k)


def garment_region(iuv, kind: str = "upper", dilation: int = 2, garment_mask=None):
    """Region of interest R_P `[B, H, W, 1]` float in {0, 1}.

    The DensePose parts of the garment kind, dilated by `dilation` pixels (DensePose masks run a
    little inside loose clothes). When a parsing/garment mask `[B, H, W, 1]` is given it is joined
    in (a garment may extend beyond the body parts it covers, e.g. a skirt between the legs).
    """
    region = dilate(garment_parts_mask(iuv, kind), dilation)
    if garment_mask is not None:
        xp = _xp(region)
        region = xp.maximum(region, garment_mask.astype(region.dtype))
    return region


def soft_region(region, dilation: int = 3, feather: int = 2):
    """R~ of method.md: the region dilated, then feathered to a soft [0, 1] blend mask."""
    return box_blur(dilate(region, dilation), feather)


def check_iuv(iuv: Any, name: str = "IUV map") -> None:
    """Raises ValueError with a readable message when `iuv` is not a valid IUV map.

    Runs on host (numpy) values; call it outside jit. `name` names the file or argument.
    """
    arr = np.asarray(iuv)
    if arr.ndim < 3 or arr.shape[-1] != 3:
        raise ValueError(f"{name}: expected an IUV map of shape [..., H, W, 3], got {arr.shape}")
    if arr.dtype == np.uint8:
        i = arr[..., 0]
        if i.max(initial=0) > NUM_PARTS:
            raise ValueError(f"{name}: part index I up to {int(i.max())}, DensePose has 0..{NUM_PARTS}"
                             " (is the channel order [V, U, I]? see densepose.iuv_from_png_rgb)")
        return
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name}: IUV dtype must be uint8 or float, got {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: IUV map contains NaN or Inf")
    i = arr[..., 0]
    if i.min(initial=0) < 0 or i.max(initial=0) > NUM_PARTS or not np.allclose(i, np.round(i)):
        raise ValueError(f"{name}: part index I must be an integer in 0..{NUM_PARTS}, "
                         f"got values in [{i.min():.3g}, {i.max():.3g}]")
    uv = arr[..., 1:]
    if uv.min(initial=0) < 0 or uv.max(initial=0) > 1:
        raise ValueError(f"{name}: float U, V must lie in [0, 1], got [{uv.min():.3g}, {uv.max():.3g}]"
                         " (uint8 maps hold 0..255; pass them as uint8)")
