"""The one example format every data source yields and the input pipeline consumes.

A try-on example is a model photo M (wearing the garment), a person photo P, and, where the world
knows it, the target: P wearing M's garment. Paired examples (same person and garment, two poses)
have target == P; the synthetic world's unpaired triplets carry the exact ground truth P*; real
unpaired examples have no target (has_target = 0, target_image all zeros).

Per-example arrays (numpy, before batching):
  model_image   uint8 [H, W, 3]   RGB
  model_iuv     uint8 [H, W, 3]   DensePose (I, U, V), I in 0..24, U, V in 0..255
  model_mask    uint8 [H, W, 1]   1 on the garment being transferred (parsing mask), else 0
  person_image  uint8 [H, W, 3]
  person_iuv    uint8 [H, W, 3]
  person_mask   uint8 [H, W, 1]   1 on the person's garment of the same kind (to be replaced)
  target_image  uint8 [H, W, 3]   ground truth try-on, zeros when unknown
  has_target    int32 []          1 when target_image is real ground truth
  paired        int32 []          1 for a same-person/same-garment pair
  garment_kind  int32 []          index into densepose.GARMENT_KINDS (0 upper, 1 lower)

On disk, every dataset folder (the synthetic world writes this; users' own photos use it too) is:
  DIR/<split>/images/NAME.png          the photo (PNG or JPEG)
  DIR/<split>/images/NAME_IUV.png      Detectron-style IUV, written as OpenCV writes [I, U, V]
  DIR/<split>/images/NAME_parse.png    optional parsing: 0 other, 1 upper garment, 2 lower garment
  DIR/<split>/pairs.csv                header `source,target`: paired examples (names)
  DIR/<split>/triplets.csv             header `model,person,target`: unpaired with ground truth
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

IMAGE_KEYS = ("model_image", "person_image", "target_image")
IUV_KEYS = ("model_iuv", "person_iuv")
MASK_KEYS = ("model_mask", "person_mask")
SCALAR_KEYS = ("has_target", "paired", "garment_kind")
ARRAY_KEYS = IMAGE_KEYS + IUV_KEYS + MASK_KEYS
KEYS = ARRAY_KEYS + SCALAR_KEYS


def spec(height: int, width: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Shape and dtype of every field for images of `height` x `width`."""
    out: dict[str, tuple[tuple[int, ...], Any]] = {}
    for k in IMAGE_KEYS + IUV_KEYS:
        out[k] = ((height, width, 3), np.uint8)
    for k in MASK_KEYS:
        out[k] = ((height, width, 1), np.uint8)
    for k in SCALAR_KEYS:
        out[k] = ((), np.int32)
    return out


def validate_example(ex: Mapping[str, Any], height: int, width: int, where: str = "example") -> None:
    """Raises ValueError naming `where` and the field when `ex` does not follow the format."""
    from m2e_jax import densepose  # local: keeps this module importable without jax.

    for key, (shape, dtype) in spec(height, width).items():
        if key not in ex:
            raise ValueError(f"{where}: missing field {key!r}")
        arr = np.asarray(ex[key])
        if arr.shape != shape:
            raise ValueError(f"{where}: field {key!r} has shape {arr.shape}, expected {shape}")
        if arr.dtype != dtype:
            raise ValueError(f"{where}: field {key!r} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
    for key in IUV_KEYS:
        densepose.check_iuv(ex[key], f"{where}: {key}")
    for key in MASK_KEYS:
        if np.asarray(ex[key]).max(initial=0) > 1:
            raise ValueError(f"{where}: field {key!r} must hold 0/1 values")
    kind = int(np.asarray(ex["garment_kind"]))
    if not 0 <= kind < len(densepose.GARMENT_KINDS):
        raise ValueError(f"{where}: garment_kind {kind} not in 0..{len(densepose.GARMENT_KINDS) - 1}")


def empty_example(height: int, width: int) -> dict[str, np.ndarray]:
    """An all-zero example (used to pad the last batch at inference)."""
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in spec(height, width).items()}
