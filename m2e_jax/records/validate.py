"""Per-record checks run on every photo before it enters a dataset (m2e_jax.readers.photos decodes
and checks), and the bad-record report."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

from m2e_jax.readers import images, selection
from m2e_jax.readers.photos import MIN_PERSON_FRACTION, ImageRef, RecordError, check_person, load_photo
from m2e_jax.records.catalog import Problem


def validate_photo(ref: ImageRef, select: selection.Select = "largest", need_iuv: bool = True,
                   min_person_fraction: float = MIN_PERSON_FRACTION,
                   max_pixels: int = images.MAX_PIXELS) -> tuple[int, int] | RecordError:
    """(H, W) of a usable photo, or the RecordError saying why it is not."""
    try:
        photo = load_photo(ref, select, need_iuv, max_pixels)
        if photo.iuv is not None:
            check_person(photo.iuv, ref.iuv.describe(), min_person_fraction)
        return photo.image.shape[:2]
    except RecordError as e:
        return e


@dataclasses.dataclass(frozen=True)
class PhotoCheck:
    """validate_photo with the build's options, as a picklable callable for the build's worker pool
    (a module of m2e_jax.records, so workers import it by this name however the builder was loaded)."""

    select: selection.Select
    min_person_fraction: float
    max_pixels: int = images.MAX_PIXELS

    def __call__(self, job: tuple[ImageRef, bool]) -> tuple[int, int] | RecordError:
        ref, need_iuv = job
        return validate_photo(ref, self.select, need_iuv, self.min_person_fraction, self.max_pixels)


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
