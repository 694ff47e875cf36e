"""Photos of any size <-> the network's fixed size, and pasting a try-on back into the full photo.

`fit` letterboxes a photo and its DensePose map to `height x width` with the aspect ratio kept
(m2e_jax.letterbox: bilinear for the photo, nearest for IUV and parsing, exactly what the
dataset builder does, so the network sees what it was trained on). `unfit` undoes it: crop the
content area, resize to the photo's size. `paste_back` merges the network-size try-on into the
full-resolution person photo: where the feathered garment region R~ is zero the original pixels
are kept bit for bit; inside it the network's output; in between, the network's change added to
the full-resolution photo, so no seam and no blur outside the garment.

The full-resolution path (infer's default) keeps the garment's detail instead: `upsample_maps`
brings the networks' resolution-free maps (TRN's alpha and T_g, PAN's A, FTN's mask and G_img) to
the photo's size, `full_resolution_example` holds both photos at their own sizes, and
models.tryon.full_resolution_tryon recomputes the UV warp, the regions and the two output formulas
there; `keep_person` then copies P's own bytes wherever the full-resolution R~ is 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from m2e_jax import letterbox as transform
from m2e_jax.letterbox import Letterbox


@dataclasses.dataclass(frozen=True)
class Fitted:
    """A photo at network size: image uint8 `[H, W, 3]`, iuv uint8 `[H, W, 3]`, parse uint8 `[H, W]`
    or None, and the Letterbox mapping it back to the photo's own size."""

    image: np.ndarray
    iuv: np.ndarray
    parse: np.ndarray | None
    box: Letterbox


def fit(image: np.ndarray, iuv: np.ndarray, height: int, width: int,
        parse: np.ndarray | None = None, where: str = "photo") -> Fitted:
    """Letterboxes uint8 image `[h, w, 3]`, IUV `[h, w, 3]` (and parse `[h, w]`) to height x width."""
    image, iuv = np.asarray(image), np.asarray(iuv)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{where}: expected a uint8 [H, W, 3] photo, got {image.dtype} {image.shape}")
    if iuv.shape != image.shape:
        raise ValueError(f"{where}: IUV is {iuv.shape[0]}x{iuv.shape[1]} but the photo is "
                         f"{image.shape[0]}x{image.shape[1]}")
    if parse is not None and np.shape(parse) != image.shape[:2]:
        raise ValueError(f"{where}: parsing map is {np.shape(parse)[0]}x{np.shape(parse)[1]} but the "
                         f"photo is {image.shape[0]}x{image.shape[1]}")
    box = transform.letterbox(image.shape[0], image.shape[1], height, width)
    return Fitted(transform.resize_image(image, box), transform.resize_labels(iuv, box),
                  None if parse is None else transform.resize_labels(np.asarray(parse, np.uint8), box), box)


def _resize_float(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """float `[H, W, C]` -> `[h, w, C]` bilinear (PIL mode "F" per channel: no compile per size)."""
    if x.shape[:2] == (h, w):
        return x.astype(np.float32)
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c], np.float32), "F")
                        .resize((w, h), Image.Resampling.BILINEAR)) for c in range(x.shape[-1])]
    return np.stack(chans, axis=-1)


def unfit(x: np.ndarray, box: Letterbox) -> np.ndarray:
    """Network-size float `[H, W, C]` -> the photo's size `[h, w, C]` float32 (crop, bilinear resize)."""
    x = np.asarray(x, np.float32)
    if x.shape[:2] != (box.height, box.width):
        raise ValueError(f"unfit: array is {x.shape[0]}x{x.shape[1]}, letterbox is for "
                         f"{box.height}x{box.width}")
    content = x[box.top: box.top + box.new_h, box.left: box.left + box.new_w]
    return _resize_float(content, box.h, box.w)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] float -> uint8 0..255 (rounded, clipped)."""
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 [-1, 1] (the networks' range; inverse of `to_uint8` on uint8 values)."""
    return np.asarray(x, np.float32) / 127.5 - 1.0


def paste_back(person: np.ndarray, output: np.ndarray, person_net: np.ndarray, soft_region: np.ndarray,
               box: Letterbox) -> np.ndarray:
    """The try-on at the person photo's full resolution, uint8 `[h, w, 3]`.

    Args:
      person: the original photo, uint8 `[h, w, 3]`.
      output: the network's try-on P', float `[H, W, 3]` in [-1, 1] (network size).
      person_net: the letterboxed photo the network saw, float `[H, W, 3]` in [-1, 1].
      soft_region: R~, float `[H, W, 1]` in [0, 1]; P' equals person_net where it is 0.
      box: the person photo's Letterbox.
    Result = unfit(P') + (1 - R~) * (P - unfit(person_net)): inside R~ the network's pixels, outside
    P's own full-resolution pixels, exact where the resized R~ is 0. At the network's own size
    (no scaling) this is P' itself.
    """
    r = unfit(soft_region, box)
    full = to_float(person)
    merged = unfit(output, box) + (1.0 - r) * (full - unfit(person_net, box))
    return np.where(r > 0, to_uint8(merged), person).astype(np.uint8)


def photo_scale(box: Letterbox) -> float:
    """How many photo pixels one network pixel spans (1 / letterbox scale): >1 for large photos."""
    return 1.0 / box.scale


def upsample_maps(maps: dict[str, np.ndarray], box: Letterbox,
                  keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The network-size maps `keys` (float `[H, W, C]`) at the photo's size `[h, w, C]` (`unfit`:
    content crop, bilinear); keys missing from `maps` are skipped."""
    return {k: unfit(maps[k], box) for k in keys if k in maps}


def parse_mask(parse: np.ndarray | None, kind: int, shape: tuple[int, int]) -> np.ndarray:
    """uint8 `[h, w, 1]`: 1 where the parsing map shows garment `kind` (index into
    densepose.GARMENT_KINDS; parsing labels are kind + 1), all 0 without a parsing map."""
    if parse is None:
        return np.zeros(tuple(shape) + (1,), np.uint8)
    return (np.asarray(parse) == kind + 1).astype(np.uint8)[..., None]


def full_resolution_example(model_image: np.ndarray, model_iuv: np.ndarray, model_mask: np.ndarray,
                            person_image: np.ndarray, person_iuv: np.ndarray, person_mask: np.ndarray,
                            garment_kind: int) -> dict[str, np.ndarray]:
    """A one-example batch `{key: [1, ...]}` of the two photos at their own sizes (uint8 images and
    IUV `[h, w, 3]`, masks `[h, w, 1]`; M and P may differ in size), for full_resolution_tryon."""
    fields = dict(model_image=model_image, model_iuv=model_iuv, model_mask=model_mask,
                  person_image=person_image, person_iuv=person_iuv, person_mask=person_mask)
    batch = {k: np.asarray(v, np.uint8)[None] for k, v in fields.items()}
    batch["garment_kind"] = np.full((1,), garment_kind, np.int32)
    return batch


def keep_person(person: np.ndarray, output: np.ndarray, soft_region: np.ndarray) -> np.ndarray:
    """uint8 `[h, w, 3]`: the try-on `output` (float `[h, w, 3]` in [-1, 1], P's size) where the
    full-resolution R~ (`[h, w, 1]`) is > 0, the person photo's own bytes everywhere else."""
    return np.where(np.asarray(soft_region) > 0, to_uint8(output), person).astype(np.uint8)
