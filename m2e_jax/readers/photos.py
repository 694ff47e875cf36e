"""One photo with its DensePose (and optional parsing map): where its files are (ImageRef, IuvRef),
and decoding + checking them together (load_photo -> Photo, or RecordError naming the file at fault).

A photo is usable when its file decodes, its DensePose output exists and decodes, the IUV map has
the photo's size, part labels are in 0..24, a person is actually there (check_person: enough I > 0
pixels) and an optional parsing map has the same size and values 0..2.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from m2e_jax import densepose
from m2e_jax.readers import detectron2_dump, images, iuv_png, selection

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_PERSON_FRACTION = 0.01  # of the image area


def stem(name: str) -> str:
    """'dir/a.jpg' -> 'a': the fallback key photos and dump entries are matched on."""
    base = os.path.basename(name.replace("\\", "/"))
    root, ext = os.path.splitext(base)
    return root if ext.lower() in IMAGE_SUFFIXES else base


def _parts(name: str) -> tuple[str, ...]:
    return tuple(x for x in name.replace("\\", "/").split("/") if x not in ("", "."))


def _common_tail(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _few(names: Sequence[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


class DumpIndex:
    """The entries of one detectron2 `apply_net.py dump` file, matched to photos by path.

    A dump's `file_name` is the path as given to apply_net (the file, `os.path.join(dir, name)` for a
    directory, or a glob match: relative to where it ran, or absolute). A photo matches the entry whose
    path ends like the photo's over all of the shorter of the two (the entry's path, the photo's path
    relative to the dataset folder; at least a folder and the name): `img/WOMEN/Dresses/id_1/01_1_front.jpg`
    is `/data/inshop/img/WOMEN/Dresses/id_1/01_1_front.jpg`, not `.../id_2/01_1_front.jpg`. Failing
    that, a photo takes the one entry with its file stem when no other entry or photo shares that
    stem; otherwise its reference carries a one-line problem saying the stem is ambiguous.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.entries = detectron2_dump.load_dump(self.path)
        self._parts = [_parts(e.file_name) for e in self.entries]
        self._by_stem: dict[str, list[int]] = {}
        for k, e in enumerate(self.entries):
            self._by_stem.setdefault(stem(e.file_name), []).append(k)

    def _path_hits(self, image: str, rel: str | None) -> list[int]:
        photo = _parts(os.path.abspath(image))
        within = _parts(rel) if rel is not None else photo
        hits = []
        for k in self._by_stem.get(stem(image), []):
            need = min(len(self._parts[k]), len(within))
            if need >= 2 and _common_tail(self._parts[k], photo) >= need:
                hits.append(k)
        return hits

    def refs(self, photos: Sequence[tuple[str, str | None]]) -> list[IuvRef | None]:
        """For photos given as (path, path relative to the dataset folder or None): each one's IuvRef,
        None when the dump has no entry for it."""
        photos = [(os.fspath(img), None if rel is None else os.fspath(rel)) for img, rel in photos]
        hits = [self._path_hits(img, rel) for img, rel in photos]
        claimed = {h[0] for h in hits if len(h) == 1}
        asking = collections.Counter(stem(img) for (img, _), h in zip(photos, hits) if not h)
        out: list[IuvRef | None] = []
        for (img, rel), h in zip(photos, hits):
            where = rel if rel is not None else img
            if len(h) == 1:
                out.append(IuvRef(dump=self.entries[h[0]], dump_path=self.path))
                continue
            if len(h) > 1:
                out.append(IuvRef(dump_path=self.path, problem=f"{len(h)} entries have the path of {where} "
                                  f"({_few([self.entries[k].file_name for k in h])})"))
                continue
            s = stem(img)
            free = [k for k in self._by_stem.get(s, []) if k not in claimed]
            if not free:
                out.append(None)
            elif len(free) == 1 and asking[s] == 1:
                out.append(IuvRef(dump=self.entries[free[0]], dump_path=self.path))
            else:
                names = _few([self.entries[k].file_name for k in free])
                out.append(IuvRef(dump_path=self.path, problem=(
                    f"ambiguous stem {s!r}: {len(free)} entries ({names})"
                    f" and {asking[s]} photo(s) have it, none matching {where} by path; run apply_net.py "
                    "dump on this folder's paths or give the photos unique names")))
        return out

    def ref(self, image: str | os.PathLike) -> IuvRef | None:
        """The IuvRef of one photo (matched by its absolute path, else its stem), or None."""
        return self.refs([(os.fspath(image), None)])[0]


@dataclasses.dataclass(frozen=True)
class IuvRef:
    """Where one photo's DensePose comes from: a Detectron PNG (+ instance map) or a dump entry."""

    png: str | None = None
    inds: str | None = None
    dump: detectron2_dump.DumpEntry | None = None
    dump_path: str | None = None
    problem: str | None = None  # why the dump's entry cannot be used (one line), e.g. an ambiguous stem

    def describe(self) -> str:
        return self.png if self.png else f"{self.dump_path} [{self.dump.file_name if self.dump else '?'}]"


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """One photo. `name` is unique within its split; `item` groups photos of the same garment/person."""

    name: str
    image: str
    item: str
    iuv: IuvRef | None = None  # None: no DensePose output found (reported by validation)
    parse: str | None = None   # parsing PNG: 0 other, 1 upper garment, 2 lower garment
    garment_kind: int | None = None  # known from the dataset (e.g. DeepFashion category), else None


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

    def __reduce__(self):
        # pickles as (file, reason), so it crosses a process pool unchanged
        return type(self), (self.file, self.reason)


def load_photo(ref: ImageRef, select: selection.Select = "largest", need_iuv: bool = True,
               max_pixels: int = images.MAX_PIXELS) -> Photo:
    """Decodes and checks one photo and its DensePose/parsing files; raises RecordError. Every image
    over `max_pixels` is refused before it is decoded (images.open_image)."""
    try:
        image = images.read_rgb(ref.image, max_pixels)
    except images.ReadError as e:
        raise RecordError(ref.image, str(e).removeprefix(f"{ref.image}: ")) from None
    h, w = image.shape[:2]
    iuv = parse = None
    if need_iuv:
        iuv = _load_iuv(ref, h, w, select, max_pixels)
    if ref.parse is not None:
        try:
            parse = images.read_labels(ref.parse, max_pixels)
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


def _load_iuv(ref: ImageRef, h: int, w: int, select: selection.Select, max_pixels: int) -> np.ndarray:
    if ref.iuv is None:
        base = os.path.splitext(ref.image)[0]
        raise RecordError(ref.image, f"partner file missing: no DensePose output ({base}_IUV.png "
                                     "or a dump entry)")
    where = ref.iuv.describe()
    if ref.iuv.problem is not None:
        raise RecordError(ref.iuv.dump_path or where, ref.iuv.problem)
    if ref.iuv.png is not None:
        try:
            iuv = iuv_png.read_iuv_png(ref.iuv.png, ref.iuv.inds, select, max_pixels)
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
