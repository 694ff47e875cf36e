"""Reading checkpoints (infer, evaluate, the web page, benchmarks): find a step, load the generators.

The readers' API over the layout of m2e_jax/checkpoints.py (`workdir/checkpoints/<step>/`): the
command-line flags (`add_arguments`: --workdir | --checkpoint, --step, --no_fallback), `find_step`
(the complete steps there) and `load_generators` (the newest one that verifies: SHA256SUMS checked,
or read back in full, and finite values; a damaged newest step is named and an older one used).
Readers never modify the workdir. Paths may be local or a bucket (`gs://bucket/run`): they are
etils.epath paths (m2e_jax/workdir.py), and orbax / tensorstore read them directly.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from m2e_jax import config_schema
from m2e_jax import workdir as workdir_lib
from m2e_jax.checkpoints import (
    COMPLETE_MARKERS,
    CheckpointError,
    DamagedCheckpoint,
    check_hashes,
    complete_steps,
    missing_files,
    non_finite,
    read_back,
    read_error,
)
from m2e_jax.models import tryon as tryon_lib

__all__ = ["CheckpointError", "DamagedCheckpoint", "Located", "add_arguments", "find_step",
           "generator_shapes", "load_generators", "read_generators", "saved_config"]


@dataclasses.dataclass(frozen=True)
class Located:
    """Where a reader's checkpoint lies: `directory` (WORKDIR/checkpoints), `steps` (complete ones,
    ascending), `step` (the one asked for; None: the newest that verifies)."""

    directory: str
    steps: tuple[int, ...]
    step: int | None
    flag: str

    def step_dir(self, step: int) -> str:
        return os.fspath(workdir_lib.path(self.directory) / str(step))

    @property
    def workdir(self) -> str:
        return os.fspath(workdir_lib.path(self.directory).parent)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--workdir | --checkpoint, --step, --no_fallback: how infer, evaluate and the web page pick the
    checkpoint they read (`find_step(args.workdir, args.checkpoint, args.step)`, then
    `load_generators(..., fallback=not args.no_fallback)`)."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="training workdir (its latest checkpoint, or --step)")
    src.add_argument("--checkpoint", help="a checkpoint folder: WORKDIR/checkpoints[/<step>]")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--no_fallback", action="store_true",
                        help="refuse when the newest checkpoint is damaged instead of using an older one")


def find_step(workdir: str | None = None, checkpoint: str | None = None, step: int | None = None) -> Located:
    """The checkpoints a reader may use: `checkpoint` (a `.../checkpoints/<step>` folder, or a
    checkpoints folder) or `workdir/checkpoints`, local or `gs://`; relative paths are made
    absolute here. Raises
    CheckpointError (one line) when there is no complete step, or not `step`."""
    if (workdir is None) == (checkpoint is None):
        raise CheckpointError("give exactly one of --workdir and --checkpoint")
    flag = "--checkpoint" if checkpoint is not None else "--workdir"
    given = checkpoint if checkpoint is not None else workdir
    path = (workdir_lib.path(checkpoint) if checkpoint is not None
            else workdir_lib.path(workdir) / "checkpoints")
    if not path.is_dir():
        raise CheckpointError(f"{flag} {given}: no such checkpoint directory ({path})")
    if path.name.isdigit() and (path / "state").is_dir():  # a step folder itself
        missing = missing_files(path)
        if missing:
            raise CheckpointError(f"{flag} {given}: incomplete checkpoint (missing {', '.join(missing)})")
        if step is not None and step != int(path.name):
            raise CheckpointError(f"{flag} {given} is step {path.name}, but --step {step} was given")
        return Located(os.fspath(path.parent), (int(path.name),), int(path.name), flag)
    steps = complete_steps(path)
    if not steps:
        raise CheckpointError(f"{flag} {given}: no m2e_jax checkpoint there (expected {path}/<step>/ with "
                              f"{', '.join(COMPLETE_MARKERS)}, as training writes)")
    if step is not None and step not in steps:
        raise CheckpointError(f"{flag} {given}: no checkpoint at step {step} (have {steps})")
    return Located(os.fspath(path), tuple(steps), step, flag)


def saved_config(step_dir: str) -> ml_collections.ConfigDict:
    """The resolved config saved beside the checkpoint (else the workdir's config.json), as a current
    config (config_schema.from_saved: fields added since get the behaviour the checkpoint had)."""
    step_dir = workdir_lib.path(step_dir)
    candidates = [("config/metadata", step_dir / "config" / "metadata"),
                  ("../../config.json", step_dir.parent.parent / "config.json")]
    for rel, path in candidates:
        if path.is_file():
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise DamagedCheckpoint(step_dir, rel, f"unreadable saved config ({e})") from None
            try:
                return config_schema.from_saved(raw, str(path))
            except config_schema.ConfigError as e:
                raise CheckpointError(str(e)) from None
    raise CheckpointError(f"{step_dir}: no config saved with this checkpoint; pass --config configs/NAME.py")


def generator_shapes(model_cfg) -> dict:
    """ShapeDtypeStructs of the generator parameters `{"pan", "trn", "ftn"}` for `model_cfg`."""
    net = tryon_lib.make_tryon(model_cfg)
    return jax.eval_shape(net.init, jax.random.key(0), tryon_lib.dummy_inputs(model_cfg))["params"]


def _first_mismatch(want: dict, have: Any, where: str) -> str | None:
    """A one-line description of the first difference between two parameter trees, else None."""
    flat_want = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(want)}
    flat_have = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(have)}
    missing = sorted(set(flat_want) - set(flat_have))
    if missing:
        return f"{where}{missing[0]} is missing from the checkpoint ({len(missing)} parameters missing)"
    extra = sorted(set(flat_have) - set(flat_want))
    if extra:
        return f"{where}{extra[0]} is in the checkpoint but not in the config's networks"
    for key, x in flat_want.items():
        if tuple(flat_have[key].shape) != tuple(x.shape):
            return (f"{where}{key} has shape {tuple(flat_have[key].shape)} in the checkpoint but "
                    f"{tuple(x.shape)} for the config")
    return None


def read_generators(step_dir: str, config: ml_collections.ConfigDict | None = None
                    ) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, generator params `{"pan", "trn", "ftn"}` as host numpy) of one complete step folder.

    Checks SHA256SUMS, then reads only the generator subtrees (orbax partial restore; the EMA copy
    when the checkpoint has one) and checks they are finite (DamagedCheckpoint otherwise).
    `config` overrides the saved one; a checkpoint whose parameters do not fit the config's networks
    is refused (CheckpointError) with the first differing parameter named.
    """
    step_dir = workdir_lib.path(step_dir)
    if not check_hashes(step_dir):
        read_back(step_dir)
    config = config if config is not None else saved_config(step_dir)
    state_dir = step_dir / "state"
    with _quiet_item_metadata():
        return config, _restore_generators(step_dir, state_dir, config)


def _restore_generators(step_dir: Any, state_dir: Any, config: ml_collections.ConfigDict) -> dict:
    """read_generators' orbax part: the generator subtrees of `state_dir`, checked."""
    try:
        meta = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata
        tree = dict(meta.tree if hasattr(meta, "tree") else meta)
    except Exception as e:  # orbax raises many types for unreadable folders
        raise read_error(step_dir, e) from None
    group = "ema" if "ema" in tree else "params"
    if group not in tree or not all(k in tree[group] for k in tryon_lib.NETWORKS):
        raise CheckpointError(f"{state_dir}: not an m2e_jax try-on checkpoint (no {group}.pan/trn/ftn)")
    want = generator_shapes(config.model)
    problem = _first_mismatch(want, {k: tree[group][k] for k in tryon_lib.NETWORKS}, f"{group}")
    if problem:
        raise CheckpointError(f"{step_dir}: checkpoint from another config: {problem}")
    item = {group: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), want)}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    try:
        args = ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
        restored = ocp.PyTreeCheckpointer().restore(state_dir, args=args)
    except Exception as e:
        raise read_error(step_dir, e) from None
    params = jax.tree.map(np.asarray, restored[group])
    bad = non_finite(params)
    if bad:
        raise DamagedCheckpoint(step_dir, f"state {group}{bad}", "non-finite values")
    return params


class _QuietItemMetadata(logging.Filter):
    """Drops orbax's "Metadata file does not exist: .../state/_CHECKPOINT_METADATA" warning: a reader
    opens the `state` item alone, whose step-level metadata file lives one folder up by the
    CheckpointManager's layout, so the warning is about a file that is not meant to be there."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and f"{os.sep}orbax{os.sep}" in record.pathname
                    and record.getMessage().startswith("Metadata file does not exist"))


@contextlib.contextmanager
def _quiet_item_metadata():
    quiet = _QuietItemMetadata()
    log = logging.getLogger("absl")
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


def load_generators(located: Located, config: ml_collections.ConfigDict | None = None, fallback: bool = True,
                    warn: Callable[[str], None] = logging.warning
                    ) -> tuple[ml_collections.ConfigDict, dict, str]:
    """(config, generator params, step folder used) for a reader (infer, evaluate).

    With no step asked for, a damaged newest step is named through `warn` and the newest older step
    that verifies is used (`fallback`; else DamagedCheckpoint). A step asked for must verify. The
    workdir is not modified.
    """
    candidates = [located.step] if located.step is not None else list(reversed(located.steps))
    damaged: list[DamagedCheckpoint] = []
    for step in candidates:
        try:
            config_used, params = read_generators(located.step_dir(step), config)
        except DamagedCheckpoint as e:
            if not fallback or located.step is not None:
                hint = "" if located.step is not None or len(candidates) == 1 else \
                    " (without --no_fallback the newest older checkpoint that verifies is used)"
                raise CheckpointError(f"{e}{hint}") from None
            damaged.append(e)
            continue
        for e in damaged:
            warn(f"{e}; using step {step} instead")
        return config_used, params, located.step_dir(step)
    raise CheckpointError(f"{located.flag}: every checkpoint in {located.directory} is damaged "
                          f"(newest: {damaged[0]})")
