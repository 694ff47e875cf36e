"""How the storage clients behave in a process of this project: bounded retries, one error line.

orbax, tensorstore, gcsfs and asyncio each report a failed write their own way (tracebacks per
thread, per retry, per orphaned future) while the same error also reaches the caller, which
reports it in one line (m2e_jax/train.py, main.py). The filters here drop the duplicates. Every
command line (train, infer, evaluate, the web page, data_prep.build) calls `install()` at the top of
its main for the process-wide parts; the Checkpointer installs its orbax filter while it is open.
Nothing here changes the process on import.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

# tensorstore (orbax's array writer) retries a failing GCS request 32 times, up to 32 s apart (its
# gcs_request_retries default): some 15 minutes before an unreachable bucket surfaces. Bounded to
# about what gcsfs allows (6 tries, 1 + 2 + ... + 16 s apart).
BUCKET_RETRIES = {"max_retries": 6, "initial_delay": "1s", "max_delay": "16s"}


def install() -> None:
    """The process-wide storage settings of a command line, called at the top of its main before any
    path is built: gs:// through gcsfs (`use_gcsfs`), bounded bucket retries
    (`bound_bucket_retries`), and one line per storage failure (`drop_closed_loop_errors` as
    sys.unraisablehook, `QuietClientRetries` on the "gcsfs" logger). Idempotent: a test or a
    notebook may call a main more than once in one process."""
    use_gcsfs()
    bound_bucket_retries()  # an unreachable bucket ends the command within a minute or two
    if not getattr(sys.unraisablehook, "drops_closed_loop_errors", False):
        sys.unraisablehook = drop_closed_loop_errors(sys.unraisablehook)
    gcsfs_log = logging.getLogger("gcsfs")
    if not any(isinstance(f, QuietClientRetries) for f in gcsfs_log.filters):
        gcsfs_log.addFilter(QuietClientRetries())


def use_gcsfs() -> None:
    """Routes etils.epath's gs:// paths through its fsspec backend (gcsfs) unless EPATH_USE_TF says
    otherwise (setdefault: `EPATH_USE_TF=true` still chooses TensorFlow's file system).

    Where TensorFlow is installed epath defaults to TensorFlow's own gs:// file system, whose
    endpoint is compiled in (storage.googleapis.com): it cannot be pointed at a local emulator, and
    it is not the client orbax writes checkpoints with. gcsfs, like tensorstore, honours the
    standard endpoint variables (m2e_jax/workdir.py). epath reads the variable once per process, at
    the first file operation on any epath path, local ones included (etils/epath/gpath.py
    `_GPath._backend` calls the cached `_is_tf_installed` before it looks at the scheme), so this
    must run before any path is used: m2e_jax/workdir.py also calls it when it is imported, which
    precedes every path this package builds (and a notebook's, once it imports m2e_jax).
    """
    os.environ.setdefault("EPATH_USE_TF", "false")


def bound_bucket_retries() -> None:
    """Makes orbax's tensorstore contexts retry a failing bucket request as BUCKET_RETRIES says, for
    this process (orbax has no option for it: its contexts are built from these module dicts,
    `tensorstore_utils.get_ts_context`). Part of `install()`."""
    from orbax.checkpoint._src.serialization import tensorstore_utils

    for context in (tensorstore_utils._BASE_TS_CONTEXT, tensorstore_utils._DEFAULT_OCDBT_TS_CONTEXT):
        context.setdefault("gcs_request_retries", dict(BUCKET_RETRIES))


class QuietOrbaxErrors(logging.Filter):
    """Drops orbax's own ERROR records (each with a traceback, one per thread of a failed save):
    the same error reaches the Checkpointer's caller, which reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


def drop_closed_loop_errors(previous: Callable) -> Callable:
    """sys.unraisablehook dropping `RuntimeError: Event loop is closed`, passing the rest to `previous`;
    installed by `install()` for a command line's process, never by a constructor.

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

    hook.drops_closed_loop_errors = True  # what install() checks, so a second call wraps nothing
    return hook


class QuietClientRetries(logging.Filter):
    """Drops gcsfs's "out of retries" ERROR records (each with a traceback): the same error reaches
    the caller, which reports it in one line. `install()` puts it on the "gcsfs" logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "out of retries" not in str(record.msg)


class _QuietOrphanedFutures(logging.Filter):
    """Drops asyncio's "Future / Task exception was never retrieved" records: after one write of an
    orbax save fails, the futures and tasks of its other writes fail too (the same full disk) and
    are only garbage-collected later, some after the run has reported the failure in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Future exception was never retrieved",
                                               "Task exception was never retrieved"))


def quiet_orphaned_futures() -> None:
    # After a failed save or restore, tensorstore's other writes may still fail and be reported
    # (asyncio's "exception was never retrieved") until exit: the caller reports it once.
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _QuietOrphanedFutures) for f in asyncio_log.filters):
        asyncio_log.addFilter(_QuietOrphanedFutures())
