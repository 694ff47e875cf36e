"""Per-record checks run on every photo before it enters a dataset, and the bad-record report.

A photo is usable when its file decodes, its DensePose output exists and decodes, the IUV map has
the photo's size, part labels are in 0..24, a person is actually there (enough I > 0 pixels) and an
optional parsing map has the same size and values 0..2.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from data_prep.catalog import ImageRef, Problem
from data_prep.readers import detectron2_dump, images, iuv_png, selection
from m2e_jax import densepose

MIN_PERSON_FRACTION = 0.01  # of the image area


@dataclasses.dataclass(frozen=True)
class Photo:
    """A decoded photo: image uint8 `[H, W, 3]`, iuv uint8 `[H, W, 3]` (I, U, V) or None, parse uint8
    `[H, W]` or None."""

    image: np.ndarray
    iuv: np.ndarray | None
    parse: np.ndarray | None


class RecordError(ValueError):
    """A record that fails a check: `file` is at fault, `reason` is one line."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


def load_photo(ref: ImageRef, select: selection.Select = "largest", need_iuv: bool = True) -> Photo:
    """Decodes and checks one photo and its DensePose/parsing files; raises RecordError."""
    try:
        image = images.read_rgb(ref.image)
    except images.ReadError as e:
        raise RecordError(ref.image, str(e).removeprefix(f"{ref.image}: ")) from None
    h, w = image.shape[:2]
    iuv = parse = None
    if need_iuv:
        iuv = _load_iuv(ref, h, w, select)
    if ref.parse is not None:
        try:
            parse = images.read_labels(ref.parse)
        except images.ReadError as e:
            raise RecordError(ref.parse, str(e).removeprefix(f"{ref.parse}: ")) from None
        if parse.shape != (h, w):
            raise RecordError(ref.parse,
                              f"parsing map is {parse.shape[0]}x{parse.shape[1]}, photo is {h}x{w}")
        if parse.max(initial=0) > 2 or parse.min(initial=0) < 0:
            raise RecordError(ref.parse,
                              f"parsing values up to {parse.max()}, expected 0 other, 1 upper, 2 lower")
        parse = parse.astype(np.uint8)
    return Photo(image, iuv, parse)


def _load_iuv(ref: ImageRef, h: int, w: int, select: selection.Select) -> np.ndarray:
    if ref.iuv is None:
        stem = os.path.splitext(ref.image)[0]
        raise RecordError(ref.image, f"partner file missing: no DensePose output ({stem}_IUV.png "
                                     "or a dump entry)")
    where = ref.iuv.describe()
    if ref.iuv.png is not None:
        try:
            # PNG outputs carry no scores: "score" falls back to the largest person
            iuv = iuv_png.read_iuv_png(ref.iuv.png, ref.iuv.inds, "largest" if select == "score" else select)
        except images.ReadError as e:
            raise RecordError(ref.iuv.png, str(e).removeprefix(f"{ref.iuv.png}: ")) from None
        if iuv.shape[:2] != (h, w):
            raise RecordError(where, f"IUV is {iuv.shape[0]}x{iuv.shape[1]} but the photo is {h}x{w}")
    else:
        try:
            iuv = detectron2_dump.entry_to_iuv(ref.iuv.dump, h, w, select)
        except ValueError as e:
            raise RecordError(where, str(e)) from None
    try:
        densepose.check_iuv(iuv, "IUV")
    except ValueError as e:
        raise RecordError(where, str(e).removeprefix("IUV: ")) from None
    return iuv


def check_person(iuv: np.ndarray, where: str, min_fraction: float = MIN_PERSON_FRACTION) -> None:
    """Raises RecordError when fewer than `min_fraction` of the pixels have a body part (I > 0)."""
    found = float((iuv[..., 0] > 0).mean())
    if found < min_fraction:
        raise RecordError(where, f"no person found: {found:.2%} of pixels have a body part "
                                 f"(need {min_fraction:.2%})")


def validate_photo(ref: ImageRef, select: selection.Select = "largest", need_iuv: bool = True,
                   min_person_fraction: float = MIN_PERSON_FRACTION) -> tuple[int, int] | RecordError:
    """(H, W) of a usable photo, or the RecordError saying why it is not."""
    try:
        photo = load_photo(ref, select, need_iuv)
        if photo.iuv is not None:
            check_person(photo.iuv, ref.iuv.describe(), min_person_fraction)
        return photo.image.shape[:2]
    except RecordError as e:
        return e


def write_report(directory: str | os.PathLike, problems: Sequence[Problem], counts: dict) -> str:
    """Writes `build_report.json` and `build_report.txt` (one `split: file: reason` line each)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "build_report.json")
    with open(path, "w") as f:
        json.dump({"counts": counts, "skipped": [dataclasses.asdict(p) for p in problems]}, f, indent=1)
    with open(os.path.join(directory, "build_report.txt"), "w") as f:
        f.write(f"{len(problems)} record(s) skipped; counts: {json.dumps(counts, sort_keys=True)}\n")
        f.writelines(p.line() + "\n" for p in problems)
    return path
