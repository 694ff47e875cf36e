"""detectron2 DensePose `apply_net.py dump` files, read without torch or detectron2.

The dump is a `torch.save` zip: `<root>/data.pkl` (a pickle of a list with one dict per image:
`file_name`, `scores` [n], `pred_boxes_XYXY` [n, 4], `pred_densepose`: n chart results with
`labels` [h, w] and `uv` [2, h, w], each the size of its box) and one raw little-endian storage per
tensor under `<root>/data/<key>`. A restricted unpickler maps the few globals such a file uses to
numpy stand-ins and refuses anything else, so an untrusted file cannot run code. The storages'
`location` (often `cuda:0`) is ignored.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import zipfile
from typing import Any

import numpy as np

from m2e_jax.readers import selection

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
CHART_RESULT_CLASSES = ("DensePoseChartResult", "DensePoseChartResultWithConfidences")
_CSE_CLASSES = ("DensePoseEmbeddingPredictorOutput",)


class DumpError(ValueError):
    """A dump file that cannot be used; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class ChartResult:
    """One person's box-relative chart output: labels `[h, w]` int 0..24, uv `[2, h, w]` in [0, 1]."""

    labels: np.ndarray
    uv: np.ndarray


@dataclasses.dataclass(frozen=True)
class DumpEntry:
    """The dump's record of one image: n detections with scores `[n]`, boxes `[n, 4]` XYXY pixels."""

    file_name: str
    scores: np.ndarray
    boxes_xyxy: np.ndarray
    results: tuple[ChartResult, ...]


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: Any


class _ChartRecord:
    """Stand-in for densepose's chart-result dataclasses: NEWOBJ makes it, BUILD fills `__dict__`."""


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    last = storage_offset + sum((n - 1) * st for n, st in zip(size, stride))
    if storage_offset < 0 or last >= storage.size or any(st < 0 for st in stride):
        raise DumpError(f"tensor of size {size} at offset {storage_offset} runs past its storage of "
                        f"{storage.size} elements (truncated file?)")
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=[st * storage.itemsize for st in stride])
    return np.array(view)


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(data))
        self._archive, self._root, self._storages = archive, root, {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module.startswith("densepose") and name in CHART_RESULT_CLASSES:
            return _ChartRecord
        if module.startswith("densepose") and name in _CSE_CLASSES:
            raise DumpError(f"holds {module}.{name}: a continuous-surface-embedding (CSE) model's output, "
                            "which has no IUV; run apply_net.py dump with a chart-based DensePose model")
        raise DumpError(f"refusing to unpickle {module}.{name}: not a tensor, storage or DensePose chart "
                        "result (only those are allowed in a DensePose dump)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise DumpError(f"unexpected persistent id {pid!r} (not a torch storage)")
        stype, key = pid[1], str(pid[2])
        if key not in self._storages:
            name = f"{self._root}/data/{key}"
            try:
                raw = self._archive.read(name)
            except KeyError:
                raise DumpError(f"storage {name} missing from the archive (truncated file?)") from None
            itemsize = np.dtype(stype.dtype).itemsize
            if len(raw) % itemsize:
                raise DumpError(f"storage {name} has {len(raw)} bytes, not a whole number of "
                                f"{stype.name} elements")
            self._storages[key] = np.frombuffer(raw, dtype=np.dtype(stype.dtype).newbyteorder("<"))
        return self._storages[key]


def _archive_root(archive: zipfile.ZipFile) -> str:
    roots = [n[: -len("/data.pkl")] for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(roots) != 1:
        raise DumpError(f"expected one <root>/data.pkl in the torch zip, found {len(roots)}")
    return roots[0]


def _array(x: Any, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise DumpError(f"{what} is a {type(x).__name__}, expected a tensor")
    return x


def _entry(raw: Any, k: int) -> DumpEntry:
    if not isinstance(raw, dict):
        raise DumpError(f"entry {k} is a {type(raw).__name__}, expected a dict")
    for key in ("file_name", "scores", "pred_boxes_XYXY"):
        if key not in raw:
            raise DumpError(f"entry {k} has no {key!r} (keys: {sorted(raw)})")
    if "pred_densepose" not in raw:
        raise DumpError(f"entry {k} ({raw['file_name']}) has no 'pred_densepose': not a DensePose dump")
    scores = _array(raw["scores"], f"entry {k} scores").astype(np.float32).reshape(-1)
    boxes = _array(raw["pred_boxes_XYXY"], f"entry {k} boxes").astype(np.float32).reshape(-1, 4)
    results = []
    for j, r in enumerate(raw["pred_densepose"]):
        if not isinstance(r, _ChartRecord):
            raise DumpError(f"entry {k} result {j} is a {type(r).__name__}, expected a chart result")
        labels = _array(r.__dict__.get("labels"), f"entry {k} result {j} labels")
        uv = _array(r.__dict__.get("uv"), f"entry {k} result {j} uv")
        if labels.ndim != 2 or uv.shape != (2, *labels.shape):
            raise DumpError(f"entry {k} result {j}: labels {labels.shape} and uv {uv.shape} do not match")
        results.append(ChartResult(labels.astype(np.int32), uv.astype(np.float32)))
    if not (len(scores) == len(boxes) == len(results)):
        raise DumpError(f"entry {k}: {len(scores)} scores, {len(boxes)} boxes, {len(results)} results")
    return DumpEntry(str(raw["file_name"]), scores, boxes, tuple(results))


def load_dump(path: str | os.PathLike) -> list[DumpEntry]:
    """Reads an `apply_net.py dump` file (torch.save zip) into one DumpEntry per image."""
    path = os.fspath(path)
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                head = f.read(2)
            if head[:1] == b"\x80":
                raise DumpError("legacy (PyTorch < 1.6, non-zip) torch.save format is unsupported; "
                                "re-save it with a current torch: torch.save(torch.load(f), f)")
            raise DumpError("not a torch.save zip archive (truncated, or not an apply_net dump)")
        with zipfile.ZipFile(path) as archive:
            root = _archive_root(archive)
            data = _Unpickler(archive.read(f"{root}/data.pkl"), archive, root).load()
    except DumpError as e:
        raise DumpError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise DumpError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, OSError, ValueError, TypeError,
            AttributeError, IndexError, KeyError) as e:
        raise DumpError(f"{path}: corrupt or truncated dump ({type(e).__name__}: {e})") from None
    if not isinstance(data, list):
        raise DumpError(f"{path}: expected a list of per-image dicts, got {type(data).__name__}")
    try:
        return [_entry(raw, k) for k, raw in enumerate(data)]
    except DumpError as e:
        raise DumpError(f"{path}: {e}") from None


def box_xywh(box_xyxy: np.ndarray) -> tuple[int, int, int, int]:
    """detectron2's integer box: x, y, w, h truncated from XYXY floats, w and h at least 1."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    return int(x0), int(y0), max(int(x1 - x0), 1), max(int(y1 - y0), 1)


def paste(result: ChartResult, box_xyxy: np.ndarray, height: int, width: int) -> np.ndarray:
    """One box-relative chart result pasted into a full-image uint8 IUV `[height, width, 3]`.

    Pixels outside the image are clipped; U, V are zero where the label is background.
    """
    x, y, _, _ = box_xywh(box_xyxy)
    h, w = result.labels.shape  # the result's own size is authoritative (== the box for real dumps)
    out = np.zeros((height, width, 3), np.uint8)
    r0, r1, c0, c1 = max(y, 0), min(y + h, height), max(x, 0), min(x + w, width)
    if r0 >= r1 or c0 >= c1:
        return out
    labels = result.labels[r0 - y: r1 - y, c0 - x: c1 - x]
    uv = result.uv[:, r0 - y: r1 - y, c0 - x: c1 - x]
    uv8 = np.clip(np.round(uv * 255.0), 0, 255).astype(np.uint8) * (labels > 0)
    out[r0:r1, c0:c1, 0] = np.clip(labels, 0, 255).astype(np.uint8)
    out[r0:r1, c0:c1, 1:] = np.moveaxis(uv8, 0, -1)
    return out


def entry_to_iuv(entry: DumpEntry, height: int, width: int,
                 select: selection.Select = "score") -> np.ndarray:
    """The chosen person of one image as a full-image uint8 IUV `[height, width, 3]` (I, U, V).

    select: "score" | "largest" (most foreground pixels) | "central" (box centre) | detection index.
    An entry with no detections gives an all-background map (validation reports "no person").
    """
    selection.check_select(select)
    if not entry.results:
        return np.zeros((height, width, 3), np.uint8)
    areas = np.array([(r.labels > 0).sum() for r in entry.results])
    b = entry.boxes_xyxy
    centers = np.stack([(b[:, 1] + b[:, 3]) / 2, (b[:, 0] + b[:, 2]) / 2], axis=-1)
    k = selection.choose(select, areas=areas, centers=centers, image_hw=(height, width),
                         scores=entry.scores)
    return paste(entry.results[k], entry.boxes_xyxy[k], height, width)
