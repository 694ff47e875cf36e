"""Training and evaluation batches: random-access sources -> per-host numpy batches -> device arrays.

Sources (config.dataset.source); both read records through tfds_source.load_source, the
array_record TFDS data source (`__len__`, `__getitem__` -> data_schema dict):
  "tfds"       records already built (`python -m data_prep.build`) in dataset.data_dir;
               tfds_config "" means "<dataset.name>_<height>x<width>" (data_prep's names).
  "synthetic"  the synthetic world of dataset.{num_train, num_test, paired_fraction, garment_kind,
               world}, written as a folder dataset and built into records under dataset.data_dir on
               first use by the same builder (m2e_jax/synthetic/records.py); later runs reuse them.

Order: the train examples are split into a paired and an unpaired stream (schedule.py says which
one each step draws from); each stream walks an epoch-wise permutation seeded by (config.seed,
stream, epoch). The batch of step s is a pure function of s, so a run resumed at step s sees the
same batches as an uninterrupted one, with no iterator state to checkpoint. Each process loads only
its slice of the global batch (rows [i * B / n, (i + 1) * B / n) for process i of n). A dataset
without unpaired examples (real pairs only) gets its unpaired stream from M and P of two different
pairs, with no target.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from m2e_jax import data_schema, schedule

MODEL_KEYS = ("model_image", "model_iuv", "model_mask")
# A split whose decoded examples fit in this many bytes is decoded once and kept in memory: the
# synthetic demo's 512 train examples (64x48) take 27 MB and are read 19 times each, and decoding 7 PNGs
# per example costs CPU its training step needs; a paper-scale dataset is far larger and streams.
CACHE_MAX_BYTES = 512 * 2**20


def stack_examples(examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """A list of data_schema examples -> `{key: [N, ...]}` with the schema's dtypes."""
    return {k: np.stack([np.asarray(ex[k]) for ex in examples]).astype(dtype)
            for k, (_, dtype) in data_schema.spec(*np.asarray(examples[0]["model_image"]).shape[:2]).items()}


def open_source(config: Any, split: str):
    """The random-access source of `split` chosen by config.dataset.source."""
    from m2e_jax import tfds_source  # local: only reading data imports tensorflow_datasets

    d = config.dataset
    if d.source == "synthetic":
        from m2e_jax.synthetic import records

        spec = records.spec_from_config(config)
        return tfds_source.load_source(records.ensure_records(d.data_dir, spec), records.config_name(spec),
                                       split, cache_max_bytes=CACHE_MAX_BYTES)
    if d.source == "tfds":
        name = d.tfds_config or f"{d.name}_{config.model.height}x{config.model.width}"
        return tfds_source.load_source(d.data_dir, name, split, cache_max_bytes=CACHE_MAX_BYTES)
    raise ValueError(f"config.dataset.source: unknown source {d.source!r}")


def paired_flags(source) -> np.ndarray:
    """[N] bool: which examples are paired (sources may offer this without decoding images)."""
    if hasattr(source, "paired_flags"):
        return np.asarray(source.paired_flags(), bool)
    return np.array([bool(np.asarray(source[i]["paired"])) for i in range(len(source))])


@functools.lru_cache(maxsize=16)
def permutation(seed: int, stream: str, epoch: int, n: int) -> np.ndarray:
    tag = int.from_bytes(hashlib.sha1(stream.encode()).digest()[:4], "little")
    return np.random.default_rng([seed, tag, epoch]).permutation(n)


class TrainData:
    """Per-step training batches (this process's rows) for a source, following config.schedule."""

    def __init__(self, source, config: Any, process_index: int = 0, process_count: int = 1):
        self.source, self.seed, self.sched = source, config.seed, config.schedule
        self.batch_size = config.batch_size
        self.parse_dropout = float(config.model.parse_dropout)
        self.person_parse_dropout = float(config.model.person_parse_dropout)
        if self.batch_size % process_count:
            raise ValueError(f"config.batch_size={self.batch_size} not divisible by "
                             f"{process_count} processes")
        self.local_size = self.batch_size // process_count
        self.row0 = process_index * self.local_size
        flags = paired_flags(source)
        self.paired_idx = np.flatnonzero(flags)
        self.unpaired_idx = np.flatnonzero(~flags)
        if len(self.paired_idx) == 0:
            raise ValueError("training data: no paired examples; stages 1-3 need same-person pairs")
        self.combine_unpaired = len(self.unpaired_idx) == 0
        if self.combine_unpaired and len(self.paired_idx) < 2 and schedule.uses_unpaired(self.sched):
            raise ValueError("training data: need >= 2 pairs to form unpaired (M, P) combinations")

    def _positions(self, batch_position: int) -> np.ndarray:
        start = batch_position * self.batch_size + self.row0
        return np.arange(start, start + self.local_size)

    def _draw(self, indices: np.ndarray, stream: str, pos: int) -> int:
        """Source index at position `pos` of a stream walking epoch-wise permutations of `indices`."""
        epoch, i = divmod(int(pos), len(indices))
        return int(indices[permutation(self.seed, stream, epoch, len(indices))[i]])

    def _paired_example(self, pos: int) -> dict:
        return self.source[self._draw(self.paired_idx, "paired", pos)]

    def _unpaired_example(self, pos: int) -> dict:
        if not self.combine_unpaired:
            return self.source[self._draw(self.unpaired_idx, "unpaired", pos)]
        # M from one pair, P from another: a rotated copy of one permutation never pairs an
        # example with itself and uses every pair once per epoch on each side.
        n = len(self.paired_idx)
        epoch, i = divmod(int(pos), n)
        perm = permutation(self.seed, "unpaired_from_pairs", epoch, n)
        shift = 1 + epoch % (n - 1)
        a, b = int(self.paired_idx[perm[i]]), int(self.paired_idx[perm[(i + shift) % n]])
        ex = dict(self.source[b])
        model = self.source[a]
        ex.update({k: model[k] for k in MODEL_KEYS})
        ex["target_image"] = np.zeros_like(np.asarray(ex["target_image"]))
        ex["has_target"] = np.int32(0)
        ex["paired"] = np.int32(0)
        return ex

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the global batch of `step`, `{key: [B_local, ...]}` numpy."""
        p = schedule.plan(step, self.sched)
        get = self._paired_example if p.paired else self._unpaired_example
        batch = stack_examples([get(pos) for pos in self._positions(p.position)])
        rows = slice(self.row0, self.row0 + self.local_size)
        if self.parse_dropout > 0:
            batch = drop_parsing(batch, parse_dropout_rows(self.seed, step, self.batch_size,
                                                           self.parse_dropout)[rows])
        if self.person_parse_dropout > 0:
            batch = drop_parsing(batch, parse_dropout_rows(self.seed, step, self.batch_size,
                                                           self.person_parse_dropout, person_only=True)[rows],
                                 keys=("person_mask",))
        return batch

    def iterate(self, start_step: int, end_step: int, put: Callable = lambda b: b,
                prefetch: int = 2, threads: int = 1) -> Iterator[tuple[int, Any]]:
        """(step, put(batch(step))) for start_step <= step < end_step, loaded `prefetch` steps ahead
        by `threads` threads, each assembling whole batches (PNG decoding and zlib release the GIL,
        so k threads decode ~k times as fast: RESULTS.md 11). The order and the batches are the same
        for any number of threads: batch(step) is a pure function of the step."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
            pending: dict[int, concurrent.futures.Future] = {}
            for step in range(start_step, end_step):
                for s in range(step, min(step + 1 + prefetch, end_step)):
                    if s not in pending:
                        pending[s] = pool.submit(lambda s=s: put(self.batch(s)))
                yield step, pending.pop(step).result()


_PARSE_DROPOUT_TAG = 1_000_005
_PERSON_PARSE_DROPOUT_TAG = 1_000_006


def parse_dropout_rows(seed: int, step: int, batch_size: int, rate: float,
                       person_only: bool = False) -> np.ndarray:
    """`[batch_size]` bool: which rows of step `step`'s global batch lose their parsing masks
    (config.model.parse_dropout; with `person_only`, P's mask alone: model.person_parse_dropout, its
    own random stream); a pure function of (seed, step), so resumed runs and every host agree."""
    tag = _PERSON_PARSE_DROPOUT_TAG if person_only else _PARSE_DROPOUT_TAG
    return np.random.default_rng([seed, tag, step]).random(batch_size) < rate


def drop_parsing(batch: dict[str, np.ndarray], rows: np.ndarray,
                 keys: tuple[str, ...] = data_schema.MASK_KEYS) -> dict[str, np.ndarray]:
    """The batch with the parsing masks `keys` (default both) zeroed on `rows` (`[B]` bool): with
    both gone those examples look like photos with DensePose alone, which models.tryon.replace_region
    answers with R_P itself; with P's alone gone, models.tryon.paint_region's case of M's map only."""
    out = dict(batch)
    for key in keys:
        out[key] = np.where(rows[:, None, None, None], np.zeros_like(batch[key]), batch[key])
    return out


def eval_batches(source, batch_size: int, num: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """The first `num` examples (all when num <= 0 or more than there are), in order.

    Yields (this process's rows of each global batch, their weights [B_local] float32): the last
    batch is padded with empty examples of weight 0, so every batch has the same shape.
    """
    if batch_size % process_count:
        raise ValueError(f"config.eval_batch_size={batch_size} not divisible by {process_count} processes")
    total = len(source) if num <= 0 else min(num, len(source))
    local = batch_size // process_count
    first = source[0]
    h, w = np.asarray(first["model_image"]).shape[:2]
    for start in range(0, total, batch_size):
        rows = range(start + process_index * local, start + (process_index + 1) * local)
        examples = [source[i] if i < total else data_schema.empty_example(h, w) for i in rows]
        yield stack_examples(examples), np.array([i < total for i in rows], np.float32)
