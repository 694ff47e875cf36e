"""The workdir and its checkpoints: the one home of the checkpoint layout, for writers and readers.

Layout: `workdir/checkpoints/<step>/` holds the training state (`state/`, an orbax pytree of host
numpy arrays: params, optimizer states, EMA, step), the resolved config as JSON (`config/metadata`)
and `SHA256SUMS` (a hash of every file of the step, `sha256sum -c` format, written after orbax
commits the step). A step is *complete* when orbax's commit marker and both items are there
(`missing_files`); the trainer resumes from, and `infer` / `evaluate` read, the newest complete
step whose files match their hashes and whose values read back finite. Saves are asynchronous (the
loop continues while files are written); `close()` waits and surfaces any write error. The data
position needs no saving: the batch of step s is a pure function of s (input_pipeline.py).

Damage. orbax and tensorstore do not checksum the arrays they write: OCDBT protects its manifest
and B+tree / version nodes with CRC-32C, zarr v3 only its shard index, and orbax's default (zarr
v2 chunks, zstd level 1) stores no checksum of the data: damage is caught only when it happens to
break a zstd frame. Flipping 4 KiB in the middle of the largest data file of a trainer's checkpoint
restored without any error (the run resumed from it). Hence `SHA256SUMS`: checked before every
restore; steps without it are read back in full, and every restore checks the values are finite.

- Trainer (`Checkpointer.restore_latest`): a damaged newest step is moved aside to
  `<step>.corrupt` (never deleted) with one warning naming the step and the file, and training
  resumes from the newest step that verifies. Half-written step folders (a partial copy of a
  workdir) are moved aside to `<step>.incomplete`; orbax's temporary folders of a save that never
  committed (`<step>.orbax-checkpoint-tmp*`, e.g. after a full disk) are removed when the next run
  starts, as orbax's `cleanup_tmp_directories` does: they hold no step that could be restored.
- Readers (`find_step`, `load_generators`): never modify the workdir; a damaged newest step is
  named and the newest older one that verifies is used instead (or refused, `fallback=False`).

The workdir: `check_workdir` (writable), `Checkpointer.check_free_space` (room for one more
checkpoint beyond those on disk, up to keep + 1 in all), `WorkdirLock` (one trainer per workdir).
Problems are `WorkdirError` / `CheckpointError`, whose messages are one line for the user.

Preemption: `PreemptionFlag` turns SIGTERM into a flag the loop polls; the loop then saves the
current step and exits 0. Multi-host jobs also ask orbax (`reached_preemption`), so every host
stops at the same step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from m2e_jax import config_schema
from m2e_jax.models import tryon as tryon_lib

# Written by orbax only after every item of a step is on disk (atomicity.COMMIT_SUCCESS_FILE), then
# the step's items.
COMPLETE_MARKERS = ("commit_success.txt", "state", "config")
HASHES = "SHA256SUMS"
_TMP_MARK = ".orbax-checkpoint-tmp"
MiB = 2**20


class WorkdirError(OSError):
    """The workdir cannot hold the run (unwritable, too little free space, in use by another run)."""


class CheckpointError(Exception):
    """A checkpoint cannot be used (none there, another project's, another config's, damaged)."""


class DamagedCheckpoint(CheckpointError):
    """A complete step whose files or values are damaged; `step` and `what` (file or leaf) name it."""

    def __init__(self, step_dir: str, what: str, why: str):
        self.step_dir, self.what, self.why = step_dir, what, why
        super().__init__(f"checkpoint {step_dir} is damaged: {what}: {why}")


# ---------------------------------------------------------------- the workdir

def check_workdir(workdir: str) -> None:
    """Raises WorkdirError when `workdir` cannot be created or written (a probe file is written)."""
    probe = os.path.join(workdir, f".write_probe.{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
        os.remove(probe)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(probe)
        if is_disk_full(e):
            raise WorkdirError(f"workdir {workdir}: disk full ({shutil.disk_usage(workdir).free / MiB:.1f} "
                               "MiB free); free space and rerun; nothing was trained") from None
        raise WorkdirError(f"workdir {workdir}: not writable ({e.strerror or e}); nothing was "
                           "trained") from None


def state_bytes(state: Any) -> int:
    """Bytes of a host pytree's arrays: what one checkpoint of it needs on disk (before compression)."""
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))


def free_space_needed(state: Any, keep: int, on_disk: int) -> int:
    """Free bytes a run needs: checkpoints up to keep + 1 in all (keep, and one being written before
    orbax deletes the oldest), counting the `on_disk` complete ones already there; at least one."""
    return max(1, keep + 1 - on_disk) * state_bytes(state)


def is_disk_full(e: BaseException) -> bool:
    """An error of a write that ran out of space (OSError ENOSPC, or tensorstore's RESOURCE_EXHAUSTED
    with os_error_code 28, which orbax re-raises as ValueError)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or "os_error_code='28'" in text or "Disk quota exceeded" in text


@contextlib.contextmanager
def disk_full_is_workdir_error(workdir: str, doing: str, checkpoint_bytes: int | None = None):
    """A full disk during `doing` becomes one WorkdirError line naming the workdir, the free space,
    what one checkpoint needs and which checkpoints are intact; other errors pass unchanged."""
    try:
        yield
    except WorkdirError:
        raise
    except Exception as e:
        if not is_disk_full(e):
            raise
        directory = os.path.join(workdir, "checkpoints")
        try:
            free = f"{shutil.disk_usage(workdir).free / MiB:.1f} MiB free"
        except OSError:
            free = "free space unknown"
        size = f"; one checkpoint needs {checkpoint_bytes / MiB:.1f} MiB" if checkpoint_bytes else ""
        kept = complete_steps(directory)
        intact = f"checkpoints {', '.join(map(str, kept))} are intact" if kept else "no checkpoint yet"
        raise WorkdirError(f"workdir {workdir}: disk full while {doing} ({free}{size}); {intact}; free "
                           "space and rerun the same command to resume") from None


class WorkdirLock:
    """One trainer per workdir: an exclusive `flock` on `workdir/train.lock` while a run holds it.

    The lock file records "pid N on HOST"; a second run refuses in one line naming that process. The
    kernel drops the lock when its process dies (even by SIGKILL), so a lock left by a dead process
    is taken over. Where the filesystem has no flock (some network mounts), the recorded pid is
    checked instead (same host: alive or not). Multi-host jobs lock one file per process index.
    """

    def __init__(self, workdir: str, process_index: int = 0, process_count: int = 1):
        name = "train.lock" if process_count == 1 else f"train.lock.{process_index}"
        self.path = os.path.join(os.path.abspath(workdir), name)
        self.workdir = workdir
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip()
        except OSError:
            return ""

    def _refuse(self, holder: str) -> None:
        raise WorkdirError(f"workdir {self.workdir}: in use by another training run "
                           f"({holder or 'a process'}, lock {self.path}); wait for it to finish or stop "
                           "it, or use another --workdir")

    def acquire(self) -> WorkdirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._refuse(self._holder())
        except OSError as e:  # no flock here (ENOLCK, EOPNOTSUPP): judge by the recorded pid
            if not _recorded_holder_alive(self._holder()):
                logging.warning("workdir lock %s: no flock (%s); judged by the recorded pid", self.path, e)
            else:
                os.close(fd)
                self._refuse(self._holder())
        previous = self._holder()
        if previous:
            logging.warning("workdir %s: taking over the lock left by %s, which is no longer running",
                            self.workdir, previous)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty lock file: released cleanly, nobody to take over from
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _recorded_holder_alive(holder: str) -> bool:
    m = re.fullmatch(r"pid (\d+) on (\S+)", holder)
    if not m:
        return False
    if m.group(2) != socket.gethostname():
        return True  # another machine's process: assume it runs
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- the step layout (read side)

def missing_files(step_dir: str) -> list[str]:
    """What a complete checkpoint step folder has and this one lacks (empty when complete)."""
    return [name for name in COMPLETE_MARKERS if not os.path.exists(os.path.join(step_dir, name))]


def complete_steps(directory: str) -> list[int]:
    """Steps of `directory` (a workdir's checkpoints folder) that are complete, ascending."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory)
                  if d.isdigit() and not missing_files(os.path.join(directory, d)))


def write_hashes(step_dir: str) -> str:
    """Writes `step_dir/SHA256SUMS` (every file below it, `sha256sum -c` format); returns its path."""
    lines = [f"{_sha256(os.path.join(step_dir, rel))}  {rel}\n" for rel in _files(step_dir) if rel != HASHES]
    path = os.path.join(step_dir, HASHES)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def check_hashes(step_dir: str) -> bool:
    """Raises DamagedCheckpoint naming the first file that is missing or differs from SHA256SUMS;
    True when every file matched, False when the step has no SHA256SUMS (written before hashes
    existed, or killed between orbax's commit and the hashes: then only reading it back checks it).
    """
    path = os.path.join(step_dir, HASHES)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        for line in f:
            digest, _, rel = line.rstrip("\n").partition("  ")
            file = os.path.join(step_dir, rel)
            if not os.path.isfile(file):
                raise DamagedCheckpoint(step_dir, rel, f"missing (listed in {HASHES})")
            if _sha256(file) != digest:
                raise DamagedCheckpoint(step_dir, rel, f"content differs from its hash in {HASHES}")
    return True


def _files(root: str) -> list[str]:
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root) for n in names]
    return sorted(out)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclasses.dataclass(frozen=True)
class Located:
    """Where a reader's checkpoint lies: `directory` (WORKDIR/checkpoints), `steps` (complete ones,
    ascending), `step` (the one asked for; None: the newest that verifies)."""

    directory: str
    steps: tuple[int, ...]
    step: int | None
    flag: str

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    @property
    def workdir(self) -> str:
        return os.path.dirname(self.directory)


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
    checkpoints folder) or `workdir/checkpoints`; relative paths are made absolute here. Raises
    CheckpointError (one line) when there is no complete step, or not `step`."""
    if (workdir is None) == (checkpoint is None):
        raise CheckpointError("give exactly one of --workdir and --checkpoint")
    flag = "--checkpoint" if checkpoint is not None else "--workdir"
    given = checkpoint if checkpoint is not None else workdir
    path = os.path.abspath(checkpoint if checkpoint is not None else os.path.join(workdir, "checkpoints"))
    if not os.path.isdir(path):
        raise CheckpointError(f"{flag} {given}: no such checkpoint directory ({path})")
    name = os.path.basename(path)
    if name.isdigit() and os.path.isdir(os.path.join(path, "state")):  # a step folder itself
        missing = missing_files(path)
        if missing:
            raise CheckpointError(f"{flag} {given}: incomplete checkpoint (missing {', '.join(missing)})")
        if step is not None and step != int(name):
            raise CheckpointError(f"{flag} {given} is step {name}, but --step {step} was given")
        return Located(os.path.dirname(path), (int(name),), int(name), flag)
    steps = complete_steps(path)
    if not steps:
        raise CheckpointError(f"{flag} {given}: no m2e_jax checkpoint there (expected {path}/<step>/ with "
                              f"{', '.join(COMPLETE_MARKERS)}, as training writes)")
    if step is not None and step not in steps:
        raise CheckpointError(f"{flag} {given}: no checkpoint at step {step} (have {steps})")
    return Located(path, tuple(steps), step, flag)


def saved_config(step_dir: str) -> ml_collections.ConfigDict:
    """The resolved config saved beside the checkpoint (else the workdir's config.json), as a current
    config (config_schema.from_saved: fields added since get the behaviour the checkpoint had)."""
    step_dir = os.path.abspath(step_dir)
    candidates = [os.path.join(step_dir, "config", "metadata"),
                  os.path.join(os.path.dirname(os.path.dirname(step_dir)), "config.json")]
    for path in candidates:
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    raw = json.load(f)
            except (OSError, ValueError) as e:
                raise DamagedCheckpoint(step_dir, os.path.relpath(path, step_dir),
                                        f"unreadable saved config ({e})") from None
            try:
                return config_schema.from_saved(raw, path)
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


def _non_finite(tree: Any) -> str | None:
    """keystr of the first floating leaf holding NaN / inf, else None."""
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
            return jax.tree_util.keystr(path)
    return None


def _read_error(step_dir: str, e: Exception) -> DamagedCheckpoint:
    """A read failure as DamagedCheckpoint naming the array (or file) tensorstore names."""
    text = " ".join(str(e).split())
    key = re.search(r'Error (?:reading|opening) "([^"]+)"', text)
    files = [p for p in re.findall(r'"(/[^"]+)"', text) if p.startswith(step_dir)]
    what = (f"state array {key.group(1)}" if key else
            os.path.relpath(files[-1], step_dir) if files else "state")
    detail = text.rsplit('": ', 1)[-1]  # tensorstore's message ends with the cause
    return DamagedCheckpoint(step_dir, what, f"unreadable ({detail[:160]})")


def read_back(step_dir: str) -> None:
    """Reads every array of the step's state synchronously (tensorstore, outside orbax); raises
    DamagedCheckpoint naming the first that does not read. For steps without SHA256SUMS: a read that
    fails inside orbax's restore leaves tensorstore reads in flight that later hit orbax's closed
    event loop ("RuntimeError: Event loop is closed" tracebacks from its threads), so the damage is
    found here first."""
    import tensorstore as ts

    base = {"driver": "ocdbt", "base": f"file://{os.path.join(step_dir, 'state')}"}
    try:
        keys = ts.KvStore.open(base).result().list().result()
        for name in sorted({k.decode().rsplit("/", 1)[0] for k in keys if k.endswith(b"/.zarray")}):
            spec = {"driver": "zarr", "kvstore": {**base, "path": f"{name}/"}}
            ts.open(spec, open=True, read=True).result().read().result()
    except Exception as e:  # tensorstore raises ValueError / OSError for damaged data
        raise _read_error(step_dir, e) from None


def read_generators(step_dir: str, config: ml_collections.ConfigDict | None = None
                    ) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, generator params `{"pan", "trn", "ftn"}` as host numpy) of one complete step folder.

    Checks SHA256SUMS, then reads only the generator subtrees (orbax partial restore; the EMA copy
    when the checkpoint has one) and checks they are finite (DamagedCheckpoint otherwise).
    `config` overrides the saved one; a checkpoint whose parameters do not fit the config's networks
    is refused (CheckpointError) with the first differing parameter named.
    """
    step_dir = os.path.abspath(step_dir)
    if not check_hashes(step_dir):
        read_back(step_dir)
    config = config if config is not None else saved_config(step_dir)
    state_dir = os.path.join(step_dir, "state")
    with _quiet_item_metadata():
        return config, _restore_generators(step_dir, state_dir, config)


def _restore_generators(step_dir: str, state_dir: str, config: ml_collections.ConfigDict) -> dict:
    """read_generators' orbax part: the generator subtrees of `state_dir`, checked."""
    try:
        meta = ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata
        tree = dict(meta.tree if hasattr(meta, "tree") else meta)
    except Exception as e:  # orbax raises many types for unreadable folders
        raise _read_error(step_dir, e) from None
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
        raise _read_error(step_dir, e) from None
    params = jax.tree.map(np.asarray, restored[group])
    bad = _non_finite(params)
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


# ---------------------------------------------------------------- the trainer's checkpointer

class _QuietOrbaxErrors(logging.Filter):
    """Drops orbax's own ERROR records (each with a traceback, one per thread of a failed save):
    the same error reaches the Checkpointer's caller, which reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


def _drop_closed_loop_errors(previous: Callable) -> Callable:
    """sys.unraisablehook dropping `RuntimeError: Event loop is closed`, passing the rest to `previous`.

    When one write or read of an orbax save / restore fails, orbax closes the asyncio loop it ran
    them on while tensorstore still completes the others; each completion then fails to reach the
    closed loop and is printed by tensorstore as an unraisable error, dozens of tracebacks, some
    after the run has ended. The failure itself reaches the Checkpointer's caller.
    """
    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        previous(unraisable)

    hook.drops_closed_loop_errors = True
    return hook


class _QuietOrphanedFutures(logging.Filter):
    """Drops asyncio's "Future / Task exception was never retrieved" records: after one write of an
    orbax save fails, the futures and tasks of its other writes fail too (the same full disk) and
    are only garbage-collected later, some after the run has reported the failure in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Future exception was never retrieved",
                                               "Task exception was never retrieved"))


class Checkpointer:
    """orbax CheckpointManager over `directory` keeping the newest `max_to_keep` steps, with the
    layout above: complete steps only, SHA256SUMS after each commit, verified restores."""

    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.max_to_keep = max_to_keep
        self._unhashed: list[int] = []  # saved steps not yet hashed (their commit may be in flight)
        self._state_bytes: int | None = None  # of the last save: what one more checkpoint needs
        self._quiet = _QuietOrbaxErrors()
        logging.getLogger("absl").addFilter(self._quiet)
        self._unraisable = sys.unraisablehook
        if not getattr(sys.unraisablehook, "drops_closed_loop_errors", False):
            sys.unraisablehook = _drop_closed_loop_errors(sys.unraisablehook)
        self._failed = False  # a save or restore failed: tensorstore may still report to orbax's loop
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True)
        with self._translated("opening the checkpoints"):
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    @property
    def workdir(self) -> str:
        return os.path.dirname(self.directory)

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
        number again) with one warning line; returns the new path."""
        path = os.path.join(self.directory, str(step))
        aside = f"{path}.{suffix}"
        if os.path.exists(aside):
            aside = f"{aside}.{time.time_ns()}"
        logging.warning("checkpoint step %d (%s) %s: moved aside to %s", step, path, why, aside)
        if jax.process_index() == 0 and os.path.isdir(path):
            os.rename(path, aside)
        self.manager.reload()
        return aside

    def missing_files(self, step: int) -> list[str]:
        """What a complete checkpoint of `step` has and this one lacks (empty when complete)."""
        return missing_files(os.path.join(self.directory, str(step)))

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def check_free_space(self, state: Any) -> None:
        """Raises WorkdirError unless the disk holds one more checkpoint of `state` beyond the complete
        ones already here (up to keep + 1 in all: keep, and one being written before the oldest
        goes)."""
        on_disk = len(complete_steps(self.directory))
        need = free_space_needed(state, self.max_to_keep, on_disk)
        free = shutil.disk_usage(self.directory).free
        if free < need:
            raise WorkdirError(
                f"workdir {self.workdir}: {free / MiB:.1f} MiB free, checkpoints need {need / MiB:.1f} MiB "
                f"more ({self.max_to_keep} kept + 1 being written, {on_disk} already on disk); free "
                "space and rerun; nothing was trained")

    def save(self, step: int, state: Any, config: ml_collections.ConfigDict) -> None:
        """Saves host `state` (numpy pytree) and the config at `step`; refuses non-finite values."""
        bad = [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_leaves_with_path(state)
               if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.all(np.isfinite(x))]
        if bad:
            raise FloatingPointError(f"checkpoint at step {step}: refusing to save non-finite values "
                                     f"in {bad[:5]}")
        self._finish_pending()
        self._state_bytes = state_bytes(state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  config=ocp.args.JsonSave(config_to_json(config)))
        self._unhashed.append(step)
        with self._translated(f"saving checkpoint {step}"):
            self.manager.save(step, args=args, force=True)

    def _finish_pending(self) -> None:
        """Waits for the save in flight, then writes SHA256SUMS of every step committed since."""
        pending, self._unhashed = self._unhashed, []
        with self._translated(f"saving checkpoint {pending[-1] if pending else ''}".strip()):
            self.manager.wait_until_finished()
            for s in pending:
                path = os.path.join(self.directory, str(s))
                if jax.process_index() == 0 and not missing_files(path):
                    write_hashes(path)

    @contextlib.contextmanager
    def _translated(self, doing: str):
        try:
            with disk_full_is_workdir_error(self.workdir, doing, self._state_bytes):
                yield
        except BaseException:
            self._note_failure()
            raise

    def _note_failure(self) -> None:
        # tensorstore's other writes of this save may still fail and be reported until exit
        self._failed = True
        asyncio_log = logging.getLogger("asyncio")
        if not any(isinstance(f, _QuietOrphanedFutures) for f in asyncio_log.filters):
            asyncio_log.addFilter(_QuietOrphanedFutures())

    def restore(self, step: int, like: Any) -> Any:
        """The state saved at `step`, with the structure, shapes and dtypes of host pytree `like`.

        Raises DamagedCheckpoint when a file differs from SHA256SUMS, the state does not read back,
        or it holds non-finite values.
        """
        step_dir = os.path.join(self.directory, str(step))
        if not check_hashes(step_dir):
            read_back(step_dir)
        abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        try:
            restored = jax.tree.map(np.asarray, self.manager.restore(step, args=args)["state"])
        except Exception as e:
            self._note_failure()
            raise _read_error(step_dir, e) from None
        bad = _non_finite(restored)
        if bad:
            raise DamagedCheckpoint(step_dir, f"state{bad}", "non-finite values")
        return restored

    def restore_latest(self, like: Any) -> tuple[int | None, Any]:
        """(step, state) of the newest complete step that verifies, else (None, `like`); damaged
        newer steps are moved aside to `<step>.corrupt`, each with one warning line."""
        damaged: set[int] = set()  # in multi-host runs only process 0 moves folders: skip, not wait
        while (step := self.latest_step(frozenset(damaged))) is not None:
            try:
                return step, self.restore(step, like)
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
                if not self._failed:  # after a failure, late completions may come until exit
                    sys.unraisablehook = self._unraisable

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- config and preemption

def config_to_json(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as JSON-safe data (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def write_config(workdir: str, config: ml_collections.ConfigDict) -> str:
    """Writes workdir/config.json (process 0 only); returns its path."""
    path = os.path.join(workdir, "config.json")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(config_to_json(config), f, indent=2, sort_keys=True)
    return path


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
