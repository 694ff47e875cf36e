"""An ordered, bounded process-pool map for the build's per-record work (decode, check, letterbox,
encode), whose worker errors reach the caller as they would serially and which never hangs."""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import multiprocessing
import pickle
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class WorkerDied(RuntimeError):
    """A build worker process ended without a result (killed, or out of memory)."""


def _call(fn: Callable, item: Any) -> tuple[bool, Any]:
    # In the worker: every exception comes back as a value that unpickles, so the parent's result
    # thread never dies on it (which would leave the pool waiting forever).
    try:
        return True, fn(item)
    except Exception as e:  # re-raised in the parent, unchanged where it pickles
        try:
            pickle.loads(pickle.dumps(e))
            return False, e
        except Exception:  # e.g. an exception class whose __init__ takes other arguments
            return False, RuntimeError(f"{type(e).__name__}: {e}")


def parallel_map(fn: Callable, items: Iterable, workers: int, per_worker: int = 2) -> Iterator:
    """map(fn, items) in order, over `workers` spawned processes (0 or 1: in this process).

    At most `per_worker * workers` items are in flight or finished but not yet consumed, so results
    (decoded and encoded images) never pile up. An exception raised by `fn` in a worker is raised here
    as it would be serially (an unpicklable one as RuntimeError with its message); a worker that dies
    raises WorkerDied.
    """
    items = list(items)
    if workers <= 1 or len(items) < 2:
        yield from map(fn, items)
        return
    # spawn, not fork: the parent may have started JAX/TF threads
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        pending: collections.deque = collections.deque()
        rest = iter(enumerate(items))
        for k, item in itertools.islice(rest, per_worker * workers):
            pending.append((k, pool.submit(_call, fn, item)))
        while pending:
            k, future = pending.popleft()
            try:
                ok, value = future.result()
            except concurrent.futures.process.BrokenProcessPool:
                raise WorkerDied(f"a build worker process died (killed, or out of memory) on item {k}; "
                                 f"rerun with --workers 0 to find the record") from None
            nxt = next(rest, None)
            if nxt is not None:
                pending.append((nxt[0], pool.submit(_call, fn, nxt[1])))
            if not ok:
                raise value
            yield value
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
