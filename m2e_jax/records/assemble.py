"""One catalog example -> one dataset record: decode, letterbox to the dataset size, masks, PNG bytes.

Records hold PNG bytes (lossless) for photos, IUV maps (stored in (I, U, V) channel order, not
Detectron's flipped one) and masks, so the TFDS Image feature needs no TensorFlow to encode them.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from m2e_jax import densepose, letterbox
from m2e_jax.readers import images, photos, selection
from m2e_jax.readers.photos import ImageRef
from m2e_jax.records.catalog import ExampleRef


def png_bytes(arr: np.ndarray) -> bytes:
    """uint8 `[H, W, 3]` or `[H, W, 1]` -> PNG bytes (fast compression: decode speed is what matters)."""
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def garment_mask(photo: photos.Photo, kind: int) -> np.ndarray:
    """uint8 `[H, W, 1]` 0/1: the parsing map's garment of `kind` (1 upper, 2 lower); without a parsing
    map, the DensePose parts such a garment covers (densepose.GARMENT_PARTS)."""
    if photo.parse is not None:
        return (photo.parse == kind + 1).astype(np.uint8)[..., None]
    return densepose.garment_parts_mask(photo.iuv, densepose.GARMENT_KINDS[kind], np.uint8)


def example_arrays(ex: ExampleRef, refs: dict[str, ImageRef], height: int, width: int,
                   select: selection.Select = "largest",
                   max_pixels: int = images.MAX_PIXELS) -> dict[str, np.ndarray | str]:
    """The data_schema arrays of one example at `height` x `width`, plus ids and letterbox transforms."""
    out: dict[str, np.ndarray | str] = {}
    person_lb = None
    for role in ("model", "person"):
        ref = refs[getattr(ex, role)]
        photo = photos.load_photo(ref, select, max_pixels=max_pixels)
        lb = letterbox.letterbox(*photo.image.shape[:2], height, width)
        out[f"{role}_image"] = letterbox.resize_image(photo.image, lb)
        out[f"{role}_iuv"] = letterbox.resize_labels(photo.iuv, lb)
        out[f"{role}_mask"] = letterbox.resize_labels(garment_mask(photo, ex.garment_kind), lb)
        out[f"{role}_transform"] = lb.as_array()
        out[f"{role}_id"] = ref.name
        person_lb = lb
    if ex.target is None:
        out["target_image"] = np.zeros((height, width, 3), np.uint8)
    else:
        target = photos.load_photo(refs[ex.target], select, need_iuv=False, max_pixels=max_pixels).image
        if target.shape[:2] != (person_lb.h, person_lb.w):
            raise photos.RecordError(refs[ex.target].image, f"target is {target.shape[0]}x{target.shape[1]}"
                                       f" but the person photo is {person_lb.h}x{person_lb.w}")
        out["target_image"] = letterbox.resize_image(target, person_lb)
    out["target_id"] = ex.target or ""
    out["has_target"] = np.int32(ex.target is not None)
    out["paired"] = np.int32(ex.paired)
    out["garment_kind"] = np.int32(ex.garment_kind)
    out["key"] = ex.key
    return out


def encode_record(arrays: dict[str, np.ndarray | str]) -> dict:
    """example_arrays output -> a TFDS feature dict (PNG bytes for every image-like field)."""
    return {k: png_bytes(v) if isinstance(v, np.ndarray) and v.ndim == 3 else v for k, v in arrays.items()}


@dataclasses.dataclass(frozen=True)
class RecordMaker:
    """example_arrays + encode_record at the dataset size, as a picklable callable for the build's worker
    pool: (example, {name: ImageRef}) -> (example, feature dict or the RecordError that stopped it)."""

    height: int
    width: int
    select: selection.Select
    max_pixels: int = images.MAX_PIXELS

    def __call__(self, job: tuple[ExampleRef, dict[str, ImageRef]]
                 ) -> tuple[ExampleRef, dict | photos.RecordError]:
        ex, refs = job
        try:
            return ex, encode_record(example_arrays(ex, refs, self.height, self.width, self.select,
                                                    self.max_pixels))
        except photos.RecordError as e:
            return ex, e
