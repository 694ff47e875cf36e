"""The checkpoint layout, on a disk or in a bucket: the trainer's manager, hashes, damaged steps.

Layout: `workdir/checkpoints/<step>/` holds the training state (`state/`, an orbax pytree of host
numpy arrays: params, optimizer states, EMA, step), the resolved config as JSON (`config/metadata`)
and `SHA256SUMS` (a hash of every file of the step, `sha256sum -c` format, written after orbax
commits the step). A step is *complete* when orbax's commit marker and both items are there
(`missing_files`); the trainer resumes from, and `infer` / `evaluate` read, the newest complete
step whose files match their hashes and whose values read back finite. Saves are asynchronous (the
loop continues while files are written); `close()` waits and surfaces any write error. The data
position needs no saving: the batch of step s is a pure function of s (input_pipeline.py).
Every path is an epath.Path (workdir.path), as orbax's own: `gs://bucket/run/checkpoints` is a
bucket prefix that every host of a pod sees, and tensorstore writes the arrays there itself.

Damage. orbax and tensorstore do not checksum the arrays they write: OCDBT protects its manifest
and B+tree / version nodes with CRC-32C, zarr v3 only its shard index, and orbax's default (zarr
v2 chunks, zstd level 1) stores no checksum of the data: damage is caught only when it happens to
break a zstd frame. Flipping 4 KiB in the middle of the largest data file of a trainer's checkpoint
restored without any error (the run resumed from it). Hence `SHA256SUMS`: checked before every
restore; steps without it are read back in full, and every restore checks the values are finite.
The trainer (`Checkpointer.restore_latest`) moves a damaged newest step aside to `<step>.corrupt`
(never deleted; on a bucket a copy and a delete) with one warning naming the step and the file,
and resumes from the newest step that verifies. Half-written step folders are moved aside to
`<step>.incomplete`; orbax's temporary folders of a save that never committed are removed when the
next run starts (`cleanup_tmp_directories`). Readers (m2e_jax/checkpointing.py) never modify it.

Process 0 writes the shared files (config.json, SHA256SUMS, moved-aside steps); orbax coordinates
the hosts' array writes. Preemption: `PreemptionFlag` turns SIGTERM into a flag the loop polls;
the loop then saves the current step and exits 0. Multi-host jobs also ask orbax
(`reached_preemption`), so every host stops at the same step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from m2e_jax import storage_clients
from m2e_jax import workdir as workdir_lib

# Written by orbax only after every item of a step is on disk (atomicity.COMMIT_SUCCESS_FILE), then
# the step's items.
COMPLETE_MARKERS = ("commit_success.txt", "state", "config")
HASHES = "SHA256SUMS"
PathLike = str | os.PathLike


class CheckpointError(Exception):
    """A checkpoint cannot be used (none there, another project's, another config's, damaged)."""


class DamagedCheckpoint(CheckpointError):
    """A complete step whose files or values are damaged; `step` and `what` (file or leaf) name it."""

    def __init__(self, step_dir: PathLike, what: str, why: str):
        self.step_dir, self.what, self.why = os.fspath(step_dir), what, why
        super().__init__(f"checkpoint {self.step_dir} is damaged: {what}: {why}")


def state_bytes(state: Any) -> int:
    """Bytes of a host pytree's arrays: what one checkpoint of it needs on disk (before compression)."""
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))


def scheduled_saves(total_steps: int, checkpoint_every: int) -> int:
    """Checkpoints a run of `total_steps` writes: every `checkpoint_every` steps and at the last one
    (train.py's rule), plus one for a stop between them (SIGTERM, max_steps), which the next run's
    check counts among those on disk."""
    return total_steps // checkpoint_every + (1 if total_steps % checkpoint_every else 0) + 1


def kept_checkpoints(keep: int, saves: int | None) -> int:
    """At most how many checkpoints a run keeps on disk: keep, capped by its scheduled saves."""
    return keep if saves is None else min(keep, saves)


def free_space_needed(state: Any, keep: int, on_disk: int, saves: int | None = None) -> int:
    """Free bytes a run needs: checkpoints up to keep + 1 in all (keep, and one being written before
    orbax deletes the oldest), counting the `on_disk` complete ones already there; at least one.
    `saves` (the checkpoints the whole run schedules, when known) caps keep: a run that keeps every
    checkpoint of a 6-save schedule needs room for 6 + 1, not for `keep` + 1."""
    return max(1, kept_checkpoints(keep, saves) + 1 - on_disk) * state_bytes(state)


def missing_files(step_dir: PathLike) -> list[str]:
    """What a complete checkpoint step folder has and this one lacks (empty when complete)."""
    step_dir = workdir_lib.path(step_dir)
    return [name for name in COMPLETE_MARKERS if not (step_dir / name).exists()]


def complete_steps(directory: PathLike) -> list[int]:
    """Steps of `directory` (a workdir's checkpoints folder) that are complete, ascending."""
    directory = workdir_lib.path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(d.name) for d in directory.iterdir() if d.name.isdigit() and not missing_files(d))


def write_hashes(step_dir: PathLike) -> str:
    """Writes `step_dir/SHA256SUMS` (every file below it, `sha256sum -c` format); returns its path."""
    step_dir = workdir_lib.path(step_dir)
    lines = [f"{_sha256(step_dir / rel)}  {rel}\n" for rel in _files(step_dir) if rel != HASHES]
    target = step_dir / HASHES
    workdir_lib.write_atomic(target, "".join(lines).encode())
    return os.fspath(target)


def check_hashes(step_dir: PathLike) -> bool:
    """Raises DamagedCheckpoint naming the first file that is missing or differs from SHA256SUMS;
    True when every file matched, False when the step has no SHA256SUMS (written before hashes
    existed, or killed between orbax's commit and the hashes: then only reading it back checks it).
    """
    step_dir = workdir_lib.path(step_dir)
    sums = step_dir / HASHES
    if not sums.is_file():
        return False
    for line in sums.read_text().splitlines():
        digest, _, rel = line.partition("  ")
        file = step_dir / rel
        if not file.is_file():
            raise DamagedCheckpoint(step_dir, rel, f"missing (listed in {HASHES})")
        if _sha256(file) != digest:
            raise DamagedCheckpoint(step_dir, rel, f"content differs from its hash in {HASHES}")
    return True


def _files(root: Any) -> list[str]:
    """Every file below `root`, relative to it, sorted. (Not epath's walk: over fsspec it yields
    folders without their `gs://`, which then name local paths.)"""
    out = []
    for child in root.iterdir():
        out += [f"{child.name}/{rel}" for rel in _files(child)] if child.is_dir() else [child.name]
    return sorted(out)


def _sha256(file: Any) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        while chunk := f.read(4 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()


def non_finite(tree: Any) -> str | None:
    """keystr of the first floating leaf holding NaN / inf, else None."""
    for p, x in jax.tree_util.tree_leaves_with_path(tree):
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
            return jax.tree_util.keystr(p)
    return None


def read_error(step_dir: PathLike, e: Exception) -> DamagedCheckpoint:
    """A read failure as DamagedCheckpoint naming the array (or file) tensorstore names."""
    step_dir = os.fspath(step_dir)
    text = " ".join(str(e).split())
    key = re.search(r'Error (?:reading|opening) "([^"]+)"', text)
    files = [p for p in re.findall(r'"([^"]+)"', text) if p.startswith(step_dir + "/")]
    what = (f"state array {key.group(1)}" if key else
            files[-1][len(step_dir) + 1:] if files else "state")
    detail = text.rsplit('": ', 1)[-1]  # tensorstore's message ends with the cause
    return DamagedCheckpoint(step_dir, what, f"unreadable ({detail[:160]})")


def read_back(step_dir: PathLike) -> None:
    """Reads every array of the step's state synchronously (tensorstore, outside orbax); raises
    DamagedCheckpoint naming the first that does not read. For steps without SHA256SUMS: a read that
    fails inside orbax's restore leaves tensorstore reads in flight that later hit orbax's closed
    event loop ("RuntimeError: Event loop is closed" tracebacks from its threads), so the damage is
    found here first."""
    import tensorstore as ts

    state = os.fspath(workdir_lib.path(step_dir) / "state")
    base = {"driver": "ocdbt", "base": state if not workdir_lib.is_local(state) else f"file://{state}"}
    try:
        keys = ts.KvStore.open(base).result().list().result()
        for name in sorted({k.decode().rsplit("/", 1)[0] for k in keys if k.endswith(b"/.zarray")}):
            spec = {"driver": "zarr", "kvstore": {**base, "path": f"{name}/"}}
            ts.open(spec, open=True, read=True).result().read().result()
    except Exception as e:  # tensorstore raises ValueError / OSError for damaged data
        raise read_error(step_dir, e) from None


# ---------------------------------------------------------------- the trainer's checkpointer

class Checkpointer:
    """orbax CheckpointManager over `directory` keeping the newest `max_to_keep` steps, with the
    layout above: complete steps only, SHA256SUMS after each commit, verified restores."""

    def __init__(self, directory: PathLike, max_to_keep: int = 3, async_save: bool = True):
        self.path = workdir_lib.path(directory)
        self.directory = os.fspath(self.path)
        self.max_to_keep = max_to_keep
        self.async_save = async_save
        self._unhashed: list[int] = []  # saved steps not yet hashed (their commit may be in flight)
        self._state_bytes: int | None = None  # of the last save: what one more checkpoint needs
        # Steps known complete without listing the workdir: restored from, or saved by, this run.
        self.committed: list[int] = []
        self._quiet = storage_clients.QuietOrbaxErrors()
        logging.getLogger("absl").addFilter(self._quiet)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True)
        with self._translated("opening the checkpoints"):
            self.manager = ocp.CheckpointManager(self.path, options=options)

    @property
    def workdir(self) -> str:
        return os.fspath(self.path.parent)

    def latest_step(self, exclude: frozenset[int] = frozenset()) -> int | None:
        """The newest complete step not in `exclude` (None if there is none); incomplete step folders
        are moved aside.

        orbax lists any folder named like a step, and a partial copy of a workdir (rsync cut short,
        a quota hit mid-copy) leaves such folders without their files: restoring one would crash or
        read garbage, so the resume point is the newest folder holding a commit marker and its items.
        """
        for step in sorted(set(self.manager.all_steps()) - exclude, reverse=True):
            missing = self.missing_files(step)
            if not missing:
                return step
            self._move_aside(step, "incomplete", f"is incomplete (missing {', '.join(missing)})")
        return None

    def _move_aside(self, step: int, suffix: str, why: str) -> str:
        """Renames step folder to `<step>.<suffix>` (never deletes: the resumed run saves this step
        number again) with one warning line; returns the new path. On a bucket, a copy and a delete."""
        src = self.path / str(step)
        aside = self.path / f"{step}.{suffix}"
        if aside.exists():
            aside = self.path / f"{step}.{suffix}.{time.time_ns()}"
        logging.warning("checkpoint step %d (%s) %s: moved aside to %s", step, src, why, aside)
        if jax.process_index() == 0 and src.is_dir():
            workdir_lib.move_tree(src, aside)
        self.manager.reload()
        return os.fspath(aside)

    def missing_files(self, step: int) -> list[str]:
        """What a complete checkpoint of `step` has and this one lacks (empty when complete)."""
        return missing_files(self.path / str(step))

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def check_free_space(self, state: Any, saves: int | None = None) -> None:
        """Raises WorkdirError unless the disk holds one more checkpoint of `state` beyond the complete
        ones already here (up to keep + 1 in all: keep, and one being written before the oldest
        goes; keep capped by `saves`, the checkpoints the run schedules, see free_space_needed). A
        bucket is not checked (workdir.free_bytes says so in one line)."""
        free = workdir_lib.free_bytes(self.path)
        if free is None:
            return
        on_disk = len(complete_steps(self.path))
        need = free_space_needed(state, self.max_to_keep, on_disk, saves)
        if free < need:
            mib = workdir_lib.MiB
            kept = kept_checkpoints(self.max_to_keep, saves)
            raise workdir_lib.WorkdirError(
                f"workdir {self.workdir}: {free / mib:.1f} MiB free, checkpoints need {need / mib:.1f} MiB "
                f"more ({kept} kept + 1 being written, {on_disk} already on disk); free "
                "space and rerun; nothing was trained")

    def save(self, step: int, state: Any, config: ml_collections.ConfigDict) -> None:
        """Saves host `state` (numpy pytree) and the config at `step`; refuses non-finite values."""
        bad = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(state)
               if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.all(np.isfinite(x))]
        if bad:
            raise FloatingPointError(f"checkpoint at step {step}: refusing to save non-finite values "
                                     f"in {bad[:5]}")
        self._finish_pending()
        self._state_bytes = state_bytes(state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  config=ocp.args.JsonSave(config_to_json(config)))
        with self._translated(f"saving checkpoint {step}"):
            self.manager.save(step, args=args, force=True)
        self._unhashed.append(step)  # hashed once committed (a save that raised has nothing to hash)
        if not self.async_save:  # committed when save returns: hashed now, nothing left pending
            self._finish_pending()

    def _finish_pending(self) -> None:
        """Waits for the save in flight, then writes SHA256SUMS of every step committed since."""
        pending, self._unhashed = self._unhashed, []
        with self._translated(f"saving checkpoint {pending[-1] if pending else ''}".strip()):
            self.manager.wait_until_finished()
            self.committed += [s for s in pending if s not in self.committed]
            for s in pending:
                if jax.process_index() == 0 and not self.missing_files(s):
                    write_hashes(self.path / str(s))

    @contextlib.contextmanager
    def _translated(self, doing: str):
        try:
            with workdir_lib.disk_full_is_workdir_error(self.workdir, doing, self._state_bytes):
                yield
        except BaseException:
            storage_clients.quiet_orphaned_futures()
            raise

    def restore(self, step: int, like: Any) -> Any:
        """The state saved at `step`, with the structure, shapes and dtypes of host pytree `like`.

        Raises DamagedCheckpoint when a file differs from SHA256SUMS, the state does not read back,
        or it holds non-finite values.
        """
        step_dir = self.path / str(step)
        if not check_hashes(step_dir):
            read_back(step_dir)
        abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        try:
            restored = jax.tree.map(np.asarray, self.manager.restore(step, args=args)["state"])
        except Exception as e:
            storage_clients.quiet_orphaned_futures()
            raise read_error(step_dir, e) from None
        bad = non_finite(restored)
        if bad:
            raise DamagedCheckpoint(step_dir, f"state{bad}", "non-finite values")
        return restored

    def restore_latest(self, like: Any) -> tuple[int | None, Any]:
        """(step, state) of the newest complete step that verifies, else (None, `like`); damaged
        newer steps are moved aside to `<step>.corrupt`, each with one warning line."""
        damaged: set[int] = set()  # in multi-host runs only process 0 moves folders: skip, not wait
        while (step := self.latest_step(frozenset(damaged))) is not None:
            try:
                restored = self.restore(step, like)
                self.committed.append(step)
                return step, restored
            except DamagedCheckpoint as e:
                self._move_aside(step, "corrupt", f"is damaged ({e.what}: {e.why})")
                damaged.add(step)
        return None, like

    def restore_config(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def reached_preemption(self, step: int) -> bool:
        return jax.process_count() > 1 and self.manager.reached_preemption(step)

    def wait(self) -> None:
        """Waits for the save in flight (and hashes it); a full disk is a WorkdirError."""
        self._finish_pending()

    def close(self) -> None:
        """Waits, then closes orbax's manager even when the wait failed (no threads left running)."""
        try:
            self._finish_pending()
        finally:
            try:
                self.manager.close()
            finally:
                logging.getLogger("absl").removeFilter(self._quiet)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- config and preemption

def config_to_json(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as JSON-safe data (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def write_config(workdir: PathLike, config: ml_collections.ConfigDict) -> str:
    """Writes workdir/config.json (process 0; the others wait for it at a barrier); returns its path."""
    target = workdir_lib.path(workdir) / "config.json"
    if jax.process_index() == 0:
        text = json.dumps(config_to_json(config), indent=2, sort_keys=True)
        workdir_lib.write_atomic(target, text.encode())
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("m2e_jax: config.json written")
    return os.fspath(target)


class PreemptionFlag:
    """Set by SIGTERM (and SIGINT when asked) while installed; the training loop polls `is_set()`."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.event = threading.Event()
        self.signals = signals
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def __enter__(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
