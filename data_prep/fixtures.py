"""Writers of the real input formats from numpy, for tests, benchmarks and users' own checks.

- `write_iuv_png`: a Detectron `NAME_IUV.png` exactly as OpenCV's `cv2.imwrite(path, iuv)` stores an
  [I, U, V] array (channel 0 as Blue). PIL writing the channel-reversed array produces the same
  pixel bytes, so this uses PIL.
- `write_detectron_outputs`: `NAME_IUV.png` + `NAME_INDS.png` of several detections, composed as
  DensePose's `detectron/utils/vis.py` `vis_one_image` composes them (score-rank INDS).
- `write_torch_dump`: a detectron2 `apply_net.py dump` file in torch.save's zip format (protocol 2
  pickle with `torch._utils._rebuild_tensor_v2` globals, storage persistent ids, NEWOBJ + BUILD for
  the chart-result dataclass), written without torch.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from m2e_jax import densepose

_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage",
                  np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage"}


def write_iuv_png(path: str | os.PathLike, iuv: np.ndarray) -> None:
    """Writes uint8 `[H, W, 3]` (I, U, V) as Detectron/OpenCV does."""
    rgb = densepose.iuv_to_png_rgb(np.asarray(iuv, np.uint8))
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(path)


def write_label_png(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Writes an 8-bit single-channel label map (instance indices, parsing)."""
    Image.fromarray(np.asarray(labels, np.uint8), "L").save(path)


def write_detectron_outputs(output_dir: str | os.PathLike, im_name: str, height: int, width: int,
                            boxes: np.ndarray, iuv_fields: Sequence[np.ndarray]) -> tuple[str, str]:
    """Writes `NAME_IUV.png` and `NAME_INDS.png` as DensePose's `vis_one_image` (detectron/utils/vis.py)
    does for one image; returns their paths.

    The same steps as that function: detections in ascending score order (`np.argsort(boxes[:, 4])`),
    each with score > 0.65 drawn at its integer box corner, filling only pixels still zero, and
    `All_inds = CurrentMask * i` with `i` the detection's rank among *all* detections; U, V scaled by
    255, clipped, uint8; both files written by cv2.imwrite (IUV channel 0 stored as Blue).

    Args:
      boxes: float `[n, 5]` (x0, y0, x1, y1, score) in pixels.
      iuv_fields: n float arrays `[3, h, w]` (I in 0..24, U, V in [0, 1]), each the size of its box.
    """
    boxes = np.asarray(boxes, np.float64)
    all_coords = np.zeros((height, width, 3))
    all_inds = np.zeros((height, width))
    for i, ind in enumerate(np.argsort(boxes[:, 4])):
        entry = boxes[ind, :]
        if entry[4] > 0.65:
            x0, y0 = entry[0:4].astype(int)[:2]
            output = np.asarray(iuv_fields[ind], np.float64)
            oh, ow = output.shape[1:]
            old = all_coords[y0: y0 + oh, x0: x0 + ow, :]
            old[old == 0] = output.transpose([1, 2, 0])[old == 0]
            current_mask = (output[0, :, :] > 0).astype(np.float32)
            inds_old = all_inds[y0: y0 + oh, x0: x0 + ow]
            inds_old[inds_old == 0] = current_mask[inds_old == 0] * i
    all_coords[:, :, 1:3] = 255.0 * all_coords[:, :, 1:3]
    all_coords[all_coords > 255] = 255.0
    stem = os.path.basename(im_name).split(".")[0]
    iuv_path, inds_path = (os.path.join(os.fspath(output_dir), f"{stem}_{k}.png") for k in ("IUV", "INDS"))
    write_iuv_png(iuv_path, all_coords.astype(np.uint8))
    write_label_png(inds_path, all_inds.astype(np.uint8))
    return iuv_path, inds_path


def chart_field(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A box-sized DensePose chart output float `[3, h, w]`: I (parts 1..24 in bands, a background
    margin of one pixel), U, V in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = np.zeros((3, h, w))
    out[0, 1:-1, 1:-1] = 1 + (np.arange(h - 2) * densepose.NUM_PARTS // max(h - 2, 1))[:, None]
    out[1:] = rng.random((2, h, w)) * (out[0] > 0)
    return out


def write_rgb(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes uint8 `[H, W, 3]` RGB; the format follows the suffix (.png lossless, .jpg lossy)."""
    Image.fromarray(np.asarray(image, np.uint8), "RGB").save(path)


def write_png_bomb(path: str | os.PathLike, height: int, width: int) -> None:
    """An image bomb: a valid PNG header saying `height` x `width` RGB, followed by a few KB of
    compressed zeros (a real one compresses hundreds of MB of zeros this small). Readers must refuse
    it from the header; decoding it would fail (truncated) after allocating the whole image."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
                + chunk(b"IEND", b""))


def person_iuv(height: int, width: int, box: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """A blocky test person: uint8 IUV `[H, W, 3]` with parts 1..24 in bands inside box (y0, x0, y1, x1)."""
    rng = np.random.default_rng(seed)
    iuv = np.zeros((height, width, 3), np.uint8)
    y0, x0, y1, x1 = box
    rows = np.arange(y1 - y0)
    iuv[y0:y1, x0:x1, 0] = (1 + (rows * densepose.NUM_PARTS) // max(y1 - y0, 1))[:, None]
    iuv[y0:y1, x0:x1, 1:] = rng.integers(0, 256, (y1 - y0, x1 - x0, 2), dtype=np.uint8)
    return iuv


def _global(module: str, name: str) -> type:
    # A class the pickler below writes as GLOBAL `module name` (torch is not importable here).
    return type(name, (), {"_pickle_global": (module, name)})


_REBUILD = _global("torch._utils", "_rebuild_tensor_v2")


class _Storage:
    def __init__(self, key: str, array: np.ndarray, location: str):
        self.key, self.array, self.location = key, array, location
        self.type = _global("torch", _STORAGE_NAMES[array.dtype])


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def __reduce_ex__(self, protocol):
        hooks = collections.OrderedDict()
        return _REBUILD, (self.storage, self.offset, self.shape, self.stride, False, hooks)


class _Pickler(pickle._Pickler):  # the pure-Python pickler lets us write foreign globals
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.type, obj.key, obj.location, obj.array.size)
        return None

    def save_global(self, obj, name=None):
        spec = obj.__dict__.get("_pickle_global") if isinstance(obj, type) else None
        if spec is None:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f"{spec[0]}\n{spec[1]}\n".encode())
        self.memoize(obj)


class _Builder:
    def __init__(self, location: str):
        self.location, self.storages = location, []

    def tensor(self, array: np.ndarray, transpose_storage: bool = False) -> _Tensor:
        a = np.asarray(array)
        key = str(len(self.storages))
        if transpose_storage and a.ndim == 2:  # column-major storage: exercises strides
            st = _Storage(key, np.ascontiguousarray(a.T).reshape(-1), self.location)
            self.storages.append(st)
            return _Tensor(st, 0, a.shape, (1, a.shape[0]))
        # a leading pad element exercises the storage offset
        st = _Storage(key, np.concatenate([np.zeros(1, a.dtype), a.reshape(-1)]), self.location)
        self.storages.append(st)
        strides = tuple(int(np.prod(a.shape[i + 1:])) for i in range(a.ndim))
        return _Tensor(st, 1, a.shape, strides)


def write_torch_dump(path: str | os.PathLike, entries: Sequence[dict[str, Any]], location: str = "cuda:0",
                     result_class: str = "DensePoseChartResultWithConfidences") -> None:
    """Writes an `apply_net.py dump`-format zip.

    Args:
      entries: one dict per image: `file_name` str, `scores` `[n]`, `boxes` `[n, 4]` XYXY, `results`:
        n pairs (labels int `[h, w]`, uv float32 `[2, h, w]`).
      location: the storages' device tag (a reader must ignore it).
      result_class: densepose class name of each result; "DensePoseEmbeddingPredictorOutput" makes a
        CSE-style dump (fields `embedding`, `coarse_segm`) that readers must reject.
    """
    b = _Builder(location)
    cls = _global("densepose.structures.chart_result" if "Chart" in result_class
                  else "densepose.modeling.cse.utils", result_class)
    data = []
    for e in entries:
        results = []
        for labels, uv in e["results"]:
            obj = cls.__new__(cls)
            if "Chart" in result_class:
                obj.__dict__.update(labels=b.tensor(np.asarray(labels, np.int64)),
                                    uv=b.tensor(np.asarray(uv, np.float32)), sigma_1=None, sigma_2=None,
                                    kappa_u=None, kappa_v=None, fine_segm_confidence=None,
                                    coarse_segm_confidence=None)
            else:
                obj.__dict__.update(embedding=b.tensor(np.asarray(uv, np.float32)),
                                    coarse_segm=b.tensor(np.asarray(labels, np.float32)))
            results.append(obj)
        data.append({"file_name": e["file_name"],
                     "scores": b.tensor(np.asarray(e["scores"], np.float32)),
                     "pred_boxes_XYXY": b.tensor(np.asarray(e["boxes"], np.float32), transpose_storage=True),
                     "pred_densepose": results})
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(data)
    root = Path(path).stem
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", buf.getvalue())
        z.writestr(f"{root}/byteorder", "little")
        for st in b.storages:
            z.writestr(f"{root}/data/{st.key}", st.array.astype(st.array.dtype.newbyteorder("<")).tobytes())
        z.writestr(f"{root}/version", "3\n")
