"""Finding a photo's DensePose output: `NAME_IUV.png` (+ `NAME_INDS.png`) beside it or in a mirror
tree, or its entry in a detectron2 dump."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from m2e_jax.readers import detectron2_dump, iuv_png
from m2e_jax.readers.photos import IMAGE_SUFFIXES, DumpIndex, IuvRef
from m2e_jax.records.catalog import Problem

# Files beside the photos that are DensePose/parsing outputs, not photos.
AUX_SUFFIXES = ("_IUV", "_INDS", "_parse")
DUMP_NAMES = ("densepose.pkl", "results.pkl", "dump.pkl")


def is_photo(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.stem.endswith(AUX_SUFFIXES)


def open_dump(*dirs: Path) -> tuple[DumpIndex | None, Problem | None]:
    """The dump in `dirs` (if any), or the one-line problem that makes it unusable: its photos are then
    reported one by one as lacking DensePose, and the rest of the dataset still builds."""
    path = find_dump(*dirs)
    if path is None:
        return None, None
    try:
        return DumpIndex(path), None
    except detectron2_dump.DumpError as e:
        return None, Problem(str(path), str(e).removeprefix(f"{path}: "))


def find_dump(*dirs: Path) -> Path | None:
    """The first dump file with a known name in `dirs`."""
    for d in dirs:
        for n in DUMP_NAMES:
            if (d / n).is_file():
                return d / n
    return None


def iuv_refs(photos: Sequence[tuple[Path, Path | None]], mirror: Path | None = None,
             dump: DumpIndex | None = None) -> list[IuvRef | None]:
    """DensePose for each photo, given as (path, path relative to the dataset folder or None):
    `STEM_IUV.png` beside it, else `mirror/rel.parent/STEM_IUV.png`, else its dump entry (matched by
    path, see DumpIndex); None when there is none. Photos are matched to the dump together, so a stem
    two photos share is never given to either by stem alone."""
    out: list[IuvRef | None] = []
    for image, rel in photos:
        candidates = [image.with_name(image.stem + "_IUV.png")]
        if mirror is not None and rel is not None:
            candidates.append(mirror / rel.parent / (image.stem + "_IUV.png"))
        png = next((c for c in candidates if c.is_file()), None)
        out.append(IuvRef(png=str(png), inds=iuv_png.inds_path_for(png)) if png is not None else None)
    if dump is not None:
        need = [i for i, r in enumerate(out) if r is None]
        for i, ref in zip(need, dump.refs([(str(photos[i][0]), photos[i][1]) for i in need])):
            out[i] = ref
    return out
