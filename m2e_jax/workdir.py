"""The workdir, on a local disk or in a bucket: its paths, writability, free space and the lock.

Every path the project writes or reads under a workdir is an `etils.epath.Path` (`path()`), the
abstraction orbax itself uses, so `gs://bucket/run` is a bucket and never a local `./gs:` folder.
Buckets go through epath's fsspec backend (gcsfs): TensorFlow's own `gs://` file system, epath's
default when TensorFlow is installed, reaches only storage.googleapis.com (its endpoint is
compiled in), while gcsfs, google-cloud-storage and tensorstore (orbax's array writer) all honour
the standard emulator / endpoint variables (`STORAGE_EMULATOR_HOST`, `TENSORSTORE_GCS_HTTP_URL`).
The command lines choose gcsfs at start-up (`storage_clients.use_gcsfs`, `EPATH_USE_TF=false`).
Local paths keep what only a disk has: `fcntl` locks, free-space checks, atomic renames.

Object storage has no rename and no flock, so:
- shared files are written by process 0 only (`write_atomic` writes a temporary name then renames
  on a disk; on a bucket an object appears whole when its upload completes);
- one trainer per workdir is an object `train.lock` created only if absent (GCS
  `ifGenerationMatch=0`), holding the run's id and a heartbeat that a thread renews; a lock whose
  heartbeat is older than `stale_s` is taken over with a warning (its run died without releasing);
- free space is not checked (a bucket has none to run out of); one log line says so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from typing import Any

from etils import epath

from m2e_jax import storage_clients

# gs:// through gcsfs, decided here at import: etils fixes a process's gs:// backend at the first file
# operation on any epath path, local or not (storage_clients.use_gcsfs), so a default set later, by
# an entry point, comes too late in a process that used a path before (a test run, a notebook).
storage_clients.use_gcsfs()

MiB = 2**20
LOCK = "train.lock"


class WorkdirError(OSError):
    """The workdir cannot hold the run (unwritable, too little free space, in use by another run)."""


class WorkdirUnreachable(WorkdirError):
    """A bucket workdir that stopped answering mid-run (its clients gave up retrying)."""


def path(p: str | os.PathLike) -> epath.Path:
    """`p` as an epath.Path (`gs://...` stays a bucket path; a local path is made absolute)."""
    p = epath.Path(p)
    return p if not is_local(p) else epath.Path(os.path.abspath(os.fspath(p)))


def is_local(p: str | os.PathLike) -> bool:
    """True for a local file system path, False for a URL such as gs://bucket/run."""
    return "://" not in os.fspath(p)


def write_atomic(target: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `target` so that readers see the old file or the whole new one, never part.

    On a disk: a hidden `.NAME.tmp-PID` beside it, renamed over it (a killed job or a full disk
    leaves only that name). On a bucket an object is visible only once its upload completes.
    """
    target = path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not is_local(target):
        target.write_bytes(data)
        return
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def move_tree(src: epath.Path, dst: epath.Path) -> None:
    """Renames folder `src` to `dst`: one rename on a disk; on a bucket, which has no folders to
    rename, a copy of every object then the deletion of the originals (gcsfs's own move tries the
    newer objects.move API first, which not every GCS-compatible server has)."""
    if is_local(src):
        os.rename(src, dst)
        return
    fs = bucket_fs(src)
    fs.copy(os.fspath(src), os.fspath(dst), recursive=True)
    fs.rm(os.fspath(src), recursive=True)
    fs.invalidate_cache()


def bucket_fs(p: str | os.PathLike) -> Any:
    """The fsspec file system (gcsfs for gs://) that epath itself uses for `p`: one instance, so the
    listings it caches are the ones a change here invalidates (orbax lists through epath too)."""
    from etils.epath import backend

    return backend.fsspec_backend.fs(os.fspath(p))


def copy_missing(src: str | os.PathLike, dst: str | os.PathLike, last: str | None = None) -> int:
    """Copies every file below folder `src` to the same place below `dst` unless a file of the same
    size is there already; returns how many were copied. Either side may be a bucket. Resumable:
    each file lands under its name only once whole (write_atomic), so rerunning after a cut-short
    copy copies only what is missing. A file named `last` in `src` is copied after its siblings, so
    its presence in `dst` can mark the folder complete (a built dataset's dataset_info.json)."""
    src, dst = path(src), path(dst)
    copied = 0
    for child in sorted(src.iterdir(), key=lambda c: c.name == last):
        target = dst / child.name
        if child.is_dir():
            copied += copy_missing(child, target, last)
        elif not (target.exists() and target.stat().length == child.stat().length):
            write_atomic(target, child.read_bytes())
            copied += 1
    return copied


def stage_path(url: str | os.PathLike) -> str:
    """The local folder for bucket folder `url`: $M2E_STAGE_DIR (default ~/.cache/m2e_jax/staged)
    /<bucket>/<path>; a local path as it is. One place, so what a build writes there for a bucket
    is what the trainer's `staged` later finds."""
    if is_local(url):
        return os.fspath(url)
    root = os.path.expanduser(os.environ.get("M2E_STAGE_DIR", "~/.cache/m2e_jax/staged"))
    return os.path.join(root, os.fspath(url).split("://", 1)[1])


def staged(url: str | os.PathLike) -> str:
    """A local copy of bucket folder `url` (its files copied once, resumably: copy_missing) at
    stage_path(url); a local path as it is. For readers that open local files only (array_record's
    records)."""
    if is_local(url):
        return os.fspath(url)
    local = stage_path(url)
    n = copy_missing(url, local)
    logging.info("staged %s to %s (%d files copied)", url, local, n)
    return local


def check_workdir(workdir: str | os.PathLike) -> None:
    """Raises WorkdirError when `workdir` cannot be created or written (a probe file is written)."""
    root = path(workdir)
    probe = root / f".write_probe.{socket.gethostname()}.{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink()
        if is_disk_full(e):
            raise WorkdirError(f"workdir {workdir}: disk full ({_free(workdir)}); free space and rerun; "
                               "nothing was trained") from None
        raise WorkdirError(f"workdir {workdir}: not writable ({e.strerror or e}); nothing was "
                           "trained") from None


def _free(workdir: str | os.PathLike) -> str:
    try:
        return f"{shutil.disk_usage(os.fspath(path(workdir))).free / MiB:.1f} MiB free"
    except OSError:
        return "free space unknown"


def free_bytes(workdir: str | os.PathLike) -> int | None:
    """Free bytes on the workdir's disk; None on a bucket (nothing to run out of), said in one line."""
    if not is_local(workdir):
        logging.info("workdir %s is a bucket: free space is not checked", workdir)
        return None
    return shutil.disk_usage(os.fspath(path(workdir))).free


def is_disk_full(e: BaseException) -> bool:
    """An error of a write that ran out of space (OSError ENOSPC, or tensorstore's RESOURCE_EXHAUSTED
    with os_error_code 28, which orbax re-raises as ValueError)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or "os_error_code='28'" in text or "Disk quota exceeded" in text


@contextlib.contextmanager
def disk_full_is_workdir_error(workdir: str | os.PathLike, doing: str, checkpoint_bytes: int | None = None):
    """A full disk during `doing` becomes one WorkdirError line naming the workdir, the free space,
    what one checkpoint needs and which checkpoints are intact; other errors pass unchanged."""
    try:
        yield
    except WorkdirError:
        raise
    except Exception as e:
        if not is_disk_full(e):
            raise
        from m2e_jax import checkpoints  # the layout's module imports this one

        size = f"; one checkpoint needs {checkpoint_bytes / MiB:.1f} MiB" if checkpoint_bytes else ""
        kept = checkpoints.complete_steps(path(workdir) / "checkpoints")
        intact = f"checkpoints {', '.join(map(str, kept))} are intact" if kept else "no checkpoint yet"
        raise WorkdirError(f"workdir {workdir}: disk full while {doing} ({_free(workdir)}{size}); {intact}; "
                           "free space and rerun the same command to resume") from None


def _refusal(workdir: Any, holder: str, lock: Any) -> WorkdirError:
    return WorkdirError(f"workdir {workdir}: in use by another training run ({holder or 'a process'}, "
                        f"lock {lock}); wait for it to finish or stop it, or use another --workdir")


class WorkdirLock:
    """One trainer per workdir while a run holds `workdir/train.lock` (one per process index in
    multi-host jobs). A second run refuses in one line naming the holder.

    On a disk: an exclusive `flock`, which the kernel drops when its process dies (even by
    SIGKILL), so a dead run's lock is taken over; where the filesystem has no flock (some network
    mounts), the recorded pid is checked instead. On a bucket: `ObjectLock`.
    """

    def __init__(self, workdir: str | os.PathLike, process_index: int = 0, process_count: int = 1,
                 stale_s: float = 300.0):
        name = LOCK if process_count == 1 else f"{LOCK}.{process_index}"
        self.workdir = workdir
        self.path = path(workdir) / name
        self._object = None if is_local(workdir) else ObjectLock(self.path, workdir, stale_s)
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def acquire(self) -> WorkdirLock:
        if self._object is not None:
            self._object.acquire()
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refusal(self.workdir, self._holder(), self.path) from None
        except OSError as e:  # no flock here (ENOLCK, EOPNOTSUPP): judge by the recorded pid
            if not _recorded_holder_alive(self._holder()):
                logging.warning("workdir lock %s: no flock (%s); judged by the recorded pid", self.path, e)
            else:
                os.close(fd)
                raise _refusal(self.workdir, self._holder(), self.path) from None
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
        if self._object is not None:
            self._object.release()
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty lock file: released cleanly, nobody to take over from
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, kind, error, traceback) -> None:
        if isinstance(error, WorkdirUnreachable) and self._object is not None:
            # another request would only retry in vain; a rerun on this host takes the lock over
            # (its holder is a dead process here), elsewhere once its heartbeat is stale_s old
            self._object.abandon()
            return
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


def _dead_here(holder: str) -> bool:
    """True when `holder` ("pid N on HOST") names a process of this machine that no longer runs."""
    m = re.fullmatch(r"pid (\d+) on (\S+)", holder)
    return bool(m) and m.group(2) == socket.gethostname() and not _recorded_holder_alive(holder)


class ObjectLock:
    """A lock object in a bucket: created only if absent (gcsfs `mode="create"`, i.e. GCS
    `ifGenerationMatch=0`), holding JSON {run, holder, heartbeat}; a thread rewrites the heartbeat
    every `stale_s / 5` seconds while held. A lock whose heartbeat is older than `stale_s` belongs
    to a run that died without releasing it: it is deleted and created anew, with a warning."""

    def __init__(self, lock_path: epath.Path, workdir: Any, stale_s: float = 300.0):
        self.path, self.workdir, self.stale_s = lock_path, workdir, stale_s
        self._fs, self._key = bucket_fs(lock_path), os.fspath(lock_path)
        self.run = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._lost = False  # the heartbeat found another run's lock in place of this one

    def _record(self) -> bytes:
        return json.dumps({"run": self.run, "holder": f"pid {os.getpid()} on {socket.gethostname()}",
                           "heartbeat": time.time()}).encode()

    def _read(self) -> dict:
        try:
            return json.loads(self._fs.cat_file(self._key))
        except FileNotFoundError:
            return {}
        except ValueError:  # a lock object this code did not write: treat as held, naming nothing
            return {"holder": "", "heartbeat": time.time()}

    def acquire(self) -> None:
        for _ in range(2):  # a stale lock is deleted once, then created as if absent
            try:
                self._fs.pipe_file(self._key, self._record(), mode="create")
                break
            except FileExistsError:
                held = self._read()
                age = time.time() - float(held.get("heartbeat", 0.0))
                # a run of this machine that is gone (killed, or ended with the bucket unreachable)
                # needs no waiting for its heartbeat to age
                if held and age < self.stale_s and not _dead_here(held.get("holder", "")):
                    name = f"{held.get('holder', '')}, run {held.get('run', '?')}, heartbeat {age:.0f} s ago"
                    raise _refusal(self.workdir, name, self.path) from None
                logging.warning("workdir %s: taking over the lock left by %s (no heartbeat for %.0f s)",
                                self.workdir, held.get("holder", "a run"), age)
                with contextlib.suppress(FileNotFoundError):
                    self._fs.rm_file(self._key)
        else:
            raise _refusal(self.workdir, self._read().get("holder", ""), self.path)
        self._fs.invalidate_cache()
        self._beat = threading.Thread(target=self._heartbeat, name="workdir-lock-heartbeat", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.stale_s / 5):
            try:
                held = self._read()
                if self._stop.is_set():  # released meanwhile: writing now would recreate the lock
                    return
                if held.get("run") != self.run:
                    logging.warning("workdir %s: the lock %s was taken over by another run", self.workdir,
                                    self.path)
                    self._lost = True
                    return
                self._fs.pipe_file(self._key, self._record())
            except OSError as e:  # an unreachable bucket: the run itself reports it
                logging.warning("workdir lock %s: heartbeat not written (%s)", self.path, e)

    def abandon(self) -> None:
        """Stops the heartbeat and leaves the lock object as it is (the bucket does not answer)."""
        if self._beat is not None:
            self._stop.set()
            self._beat.join(timeout=1.0)  # a heartbeat request in flight ends on its own
            self._beat = None
            logging.warning("workdir lock %s: left in place; a rerun on this host takes it over", self.path)

    def release(self) -> None:
        if self._beat is None:
            return
        self._stop.set()
        self._beat.join()
        self._beat = None
        try:  # one request: a bucket that stopped answering costs one round of client retries
            if not self._lost:
                self._fs.rm_file(self._key)
        except FileNotFoundError:
            pass
        except OSError as e:  # the bucket went away: the lock goes stale and is taken over later
            logging.warning("workdir lock %s: not released (%s)", self.path, e)
