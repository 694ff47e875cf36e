"""How the storage clients behave in a process of this project: bounded retries, one error line.

orbax, tensorstore, gcsfs and asyncio each report a failed write their own way (tracebacks per
thread, per retry, per orphaned future) while the same error also reaches the caller, which
reports it in one line (m2e_jax/train.py, main.py). The filters here drop the duplicates; the
command lines install the process-wide parts (`drop_closed_loop_errors`, `bound_bucket_retries`,
`QuietClientRetries`) once at start-up, the Checkpointer its orbax filter while it is open.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

# tensorstore (orbax's array writer) retries a failing GCS request 32 times, up to 32 s apart (its
# gcs_request_retries default): some 15 minutes before an unreachable bucket surfaces. Bounded to
# about what gcsfs allows (6 tries, 1 + 2 + ... + 16 s apart).
BUCKET_RETRIES = {"max_retries": 6, "initial_delay": "1s", "max_delay": "16s"}


def bound_bucket_retries() -> None:
    """Makes orbax's tensorstore contexts retry a failing bucket request as BUCKET_RETRIES says; the
    command lines call it once for their process (orbax has no option for it: its contexts are
    built from these module dicts, `tensorstore_utils.get_ts_context`)."""
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
    installed by the command lines (main.py) for their process, never by a constructor.

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

    return hook


class QuietClientRetries(logging.Filter):
    """Drops gcsfs's "out of retries" ERROR records (each with a traceback): the same error reaches
    the caller, which reports it in one line. The command lines install it on the "gcsfs" logger."""

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
