"""Reading a built M2E TFDS dataset: `load_source`, the random-access reader the trainer uses.

Reading needs neither TensorFlow nor the builder class (data_prep/m2e_dataset): the version folder
is self-describing (dataset_info.json + features.json), opened with `tfds.builder_from_directory`
and read through `.as_data_source(split)`, which needs the array_record file format (the one
`python -m data_prep.build` and `tfds build data_prep/m2e_dataset` write by default).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from m2e_jax import data_schema

NAME = "m2e_dataset"
VERSION = "1.0.0"
META_KEYS = ("key", "model_id", "person_id", "target_id", "model_transform", "person_transform")


def dataset_dir(data_dir: str | os.PathLike, config_name: str, version: str = VERSION) -> str:
    """Where a built config lives: DATA_DIR/m2e_dataset/<config>/<version>."""
    return os.path.join(os.fspath(data_dir), NAME, config_name, version)


class M2ESource(Sequence):
    """Random access to one split: `len(src)`, `src[i]` -> a data_schema dict of numpy arrays.

    Records are in storage order (a hash of their keys: fixed for a given dataset, so index i always
    means the same example); shuffle in the input pipeline (e.g. grain with a seed).
    With `with_meta`, records also carry `key`, `model_id`, `person_id`, `target_id` (str) and the
    letterbox `model_transform` / `person_transform` (float32 [3]: scale, top, left).
    With `cache`, each record is decoded once and kept (read-only arrays): for splits small enough
    to hold decoded, where decoding 7 PNGs per example every epoch would cost CPU the training step
    needs (the synthetic demo reads its 512 examples 19 times).
    """

    def __init__(self, source: Any, height: int, width: int, with_meta: bool = False,
                 undecoded: Any = None, cache: bool = False):
        self._source, self.height, self.width, self.with_meta = source, height, width, with_meta
        # The same records with images left as PNG bytes: scalar fields without decoding 7 images.
        self._undecoded = undecoded
        self._cache: dict[int, dict[str, Any]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self._source)

    def _convert(self, rec: dict) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, (shape, dtype) in data_schema.spec(self.height, self.width).items():
            out[k] = np.asarray(rec[k], dtype).reshape(shape)
        if self.with_meta:
            for k in META_KEYS:
                v = rec[k]
                out[k] = v.decode() if isinstance(v, bytes) else v
        return out

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a split of {n} records")
        i %= n
        if self._cache is None:
            return self._convert(self._source[i])
        if i not in self._cache:
            ex = self._convert(self._source[i])
            for v in ex.values():
                if isinstance(v, np.ndarray):
                    v.flags.writeable = False  # shared by every later read
            self._cache[i] = ex
        return dict(self._cache[i])

    def paired_flags(self, chunk: int = 1024) -> np.ndarray:
        """[N] bool: which records are paired examples, read without decoding any image."""
        src = self._undecoded if self._undecoded is not None else self._source
        flags = np.zeros(len(self), bool)
        for start in range(0, len(self), chunk):
            idx = list(range(start, min(start + chunk, len(self))))
            flags[idx] = [bool(np.asarray(r["paired"])) for r in src.__getitems__(idx)]
        return flags

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        # grain batches reads through this when present
        return [self._convert(r) for r in self._source.__getitems__(list(indices))]


def decoded_bytes(height: int, width: int) -> int:
    """Bytes of one decoded example (data_schema arrays) at `height` x `width`."""
    return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize
               for shape, dtype in data_schema.spec(height, width).values())


def load_source(data_dir: str | os.PathLike, config_name: str, split: str,
                with_meta: bool = False, cache_max_bytes: int = 0) -> M2ESource:
    """Opens a built split for reading, e.g. `load_source("~/data", "synthetic_128x96", "train")`;
    a `gs://` data_dir is copied to this host's disk first (workdir.staged), once.

    The split keeps its decoded examples (M2ESource `cache`) when they fit in `cache_max_bytes`."""
    import tensorflow_datasets as tfds  # local: keeps `import m2e_jax.tfds_source` light

    from m2e_jax import workdir  # array_record opens local files: a gs:// dataset is copied first

    path = workdir.staged(dataset_dir(os.path.expanduser(os.fspath(data_dir)), config_name))
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
        raise FileNotFoundError(f"no built dataset at {path}; build it with "
                                f"`python -m data_prep.build` (config {config_name!r})")
    builder = tfds.builder_from_directory(path)
    formats = {f.value for f in builder.info.available_file_formats()} or {"tfrecord"}
    if "array_record" not in formats:
        raise ValueError(f"{path}: records are {sorted(formats)}, random access needs array_record; rebuild "
                         "with `python -m data_prep.build` or `tfds build --file_format=array_record`")
    if split not in builder.info.splits:
        raise ValueError(f"{path}: no split {split!r}; it has {sorted(builder.info.splits)}")
    shape = builder.info.features["model_image"].shape
    images = [k for k, f in builder.info.features.items() if isinstance(f, tfds.features.Image)]
    undecoded = builder.as_data_source(split, decoders={k: tfds.decode.SkipDecoding() for k in images})
    source = builder.as_data_source(split)
    cache = len(source) * decoded_bytes(shape[0], shape[1]) <= cache_max_bytes
    return M2ESource(source, shape[0], shape[1], with_meta, undecoded, cache)
