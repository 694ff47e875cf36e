"""The synthetic world on the users' road: written as a folder dataset, built into TFDS records by the
builder `python -m data_prep.build` runs (m2e_jax.records.builder), read through m2e_jax.tfds_source.

`ensure_records` is what the trainer (and evaluate, infer, the web page) call for
config.dataset.source == "synthetic": under DATA_DIR it keeps one folder per world setting,

    DATA_DIR/synthetic_<world>_<H>x<W>_<digest>/photos/         the folder layout (data_schema.py):
                                  <split>/images/NAME.png, NAME_IUV.png, NAME_parse.png,
                                  <split>/pairs.csv, <split>/triplets.csv, meta.json
    DATA_DIR/synthetic_<world>_<H>x<W>_<digest>/m2e_dataset/synthetic_<H>x<W>/1.0.0/   the records

(<digest>: a hash of every setting the pixels depend on, so another world, size or count never
reuses these). Both steps are cached: a second call finds them and returns at once. Both are
atomic (the folder is written under a temporary name and renamed; TFDS builds into `incomplete.*`
and renames), so a killed build is never taken for a finished one: the next call removes what it
left and builds again. A lock file serialises processes that share DATA_DIR (multi-host runs).
Deterministic: the same settings give the same records (the world is seeded per example; the
builder orders records by a hash of their keys).

The records hold the world's pixels losslessly (PNG): every example equals make_examples' except
that a paired example's target is P's photo as given (JPEG'd where the world compresses P), the
same photo as its input, as in any real paired dataset (make_examples keeps P's clean render).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from m2e_jax import tfds_source
from m2e_jax.synthetic import dataset, effects

SOURCE = "synthetic"


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """Everything the synthetic dataset's pixels depend on (config.dataset + seed + model size)."""

    seed: int
    height: int
    width: int
    num_train: int
    num_test: int
    paired_fraction: float = 0.5
    garment_kind: str = "upper"
    world: str = "easy"

    def folder_name(self) -> str:
        key = dict(dataclasses.asdict(self), writer=dataset.VERSION, tfds_version=tfds_source.VERSION,
                   world=dataclasses.asdict(effects.preset(self.world)))
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
        return f"synthetic_{self.world}_{self.height}x{self.width}_{digest}"


def spec_from_config(config) -> WorldSpec:
    """The WorldSpec of a training config (config.dataset's synthetic fields, seed, model size)."""
    d = config.dataset
    return WorldSpec(int(config.seed), int(config.model.height), int(config.model.width), int(d.num_train),
                     int(d.num_test), float(d.paired_fraction), str(d.garment_kind), str(d.world))


def config_name(spec: WorldSpec) -> str:
    """The TFDS builder config of these records: synthetic_<H>x<W>."""
    return f"{SOURCE}_{spec.height}x{spec.width}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_leftovers(root: Path) -> None:
    """What a killed build left under `root`: the writer's `.photos.partial-*` / `.photos.old-*` folders
    and TFDS's `incomplete.*` ones. Only called under the lock, so no live build owns them."""
    stale = list(root.glob(".photos.partial-*")) + list(root.glob(".photos.old-*"))
    stale += list((root / tfds_source.NAME).glob("*/incomplete.*"))
    for path in stale:
        logging.info("Removing %s, left by a build that did not finish", path)
        shutil.rmtree(path, ignore_errors=True)


def ensure_records(data_dir: str | os.PathLike, spec: WorldSpec) -> str:
    """Writes and builds the synthetic dataset of `spec` under `data_dir` unless already there.

    Returns the TFDS data_dir to read it from (tfds_source.load_source(it, config_name(spec), split)).
    """
    from m2e_jax.records import builder  # local: imports TFDS's builder machinery

    root = Path(data_dir).expanduser() / spec.folder_name()
    records = Path(tfds_source.dataset_dir(root, config_name(spec)))
    if (records / "dataset_info.json").is_file():
        return os.fspath(root)
    with _locked(root.with_name(root.name + ".lock")):
        if (records / "dataset_info.json").is_file():  # another process built it while this one waited
            return os.fspath(root)
        _remove_leftovers(root)
        photos = root / "photos"
        if not (photos / "meta.json").is_file():  # meta.json is written last, before the rename
            logging.info("Writing the synthetic world (%s, %d train + %d test examples, %dx%d) to %s",
                         spec.world, spec.num_train, spec.num_test, spec.height, spec.width, photos)
            dataset.write_dataset(photos, spec.seed, spec.height, spec.width, spec.num_train, spec.num_test,
                                  spec.paired_fraction, spec.garment_kind, overwrite=photos.exists(),
                                  world_cfg=spec.world)
        logging.info("Building TFDS records from %s into %s", photos, records)
        # workers=0: the records of a small world build in seconds in this process; spawned
        # workers would each pay for importing the builder again.
        builder.build(SOURCE, photos, root, spec.height, spec.width,
                      builder.BuildOptions(seed=spec.seed, strict=True, garment_kind=spec.garment_kind))
    return os.fspath(root)
