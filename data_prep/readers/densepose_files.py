"""Finding a photo's DensePose output: `NAME_IUV.png` (+ `NAME_INDS.png`) beside it or in a mirror
tree, or its entry in a detectron2 dump."""

from __future__ import annotations

from pathlib import Path

from data_prep.catalog import Problem
from m2e_jax.readers import detectron2_dump, iuv_png
from m2e_jax.readers.photos import IMAGE_SUFFIXES, DumpIndex, IuvRef

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


def iuv_ref(image: Path, mirror: Path | None = None, rel: Path | None = None,
            dump: DumpIndex | None = None) -> IuvRef | None:
    """DensePose for `image`: `STEM_IUV.png` beside it, else `mirror/rel.parent/STEM_IUV.png`, else the
    dump entry; None when there is none."""
    candidates = [image.with_name(image.stem + "_IUV.png")]
    if mirror is not None and rel is not None:
        candidates.append(mirror / rel.parent / (image.stem + "_IUV.png"))
    for c in candidates:
        if c.is_file():
            return IuvRef(png=str(c), inds=iuv_png.inds_path_for(c))
    return dump.ref(image.name) if dump is not None else None
