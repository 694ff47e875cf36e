"""The build's process-pool map: order kept, worker exceptions arrive as serially, a dead worker is an
error (not a hang). The functions run in spawned workers, which import this module: it imports
m2e_jax (and so jax) only where an error is raised, to keep the workers' start short."""

import os
import signal
import time
from pathlib import Path

import pytest

from m2e_jax.records import pool


def _raise_record_error(x):
    if x == 2:
        from m2e_jax.readers import photos

        raise photos.RecordError("x.png", "broken")
    return x * 10


class _Odd(Exception):
    def __init__(self, a, b):  # not rebuildable from its args: pickles but does not unpickle
        super().__init__(f"odd {a}")


def _raise_unpicklable(x):
    if x == 2:
        raise _Odd(x, object)
    return x


def _touch(path):
    Path(path).touch()
    return path


def _die(x):
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def test_order_kept_and_record_errors_arrive_unchanged():
    from m2e_jax.readers import photos

    assert list(pool.parallel_map(_raise_record_error, [1, 3, 4, 5, 6], 2)) == [10, 30, 40, 50, 60]
    for workers in (0, 2):
        with pytest.raises(photos.RecordError, match="x.png: broken") as info:
            list(pool.parallel_map(_raise_record_error, [1, 2, 3], workers))
        assert (info.value.file, info.value.reason) == ("x.png", "broken")


def test_unpicklable_exception_and_dead_worker_end_in_one_line():
    with pytest.raises(_Odd, match="odd 2"):
        list(pool.parallel_map(_raise_unpicklable, [1, 2, 3], 0))
    with pytest.raises(RuntimeError, match="^_Odd: odd 2$"):
        list(pool.parallel_map(_raise_unpicklable, [1, 2, 3], 2))
    with pytest.raises(pool.WorkerDied, match="died") as info:
        list(pool.parallel_map(_die, [1, 2, 3, 4], 2))
    assert "\n" not in str(info.value)


def test_at_most_a_window_of_items_is_in_flight(tmp_path):
    """Results are not produced far ahead of the consumer (a build holds a few records per worker):
    with 2 workers x 2, after k results at most k + 4 items have started, however slow the consumer."""
    items = [str(tmp_path / f"{i}.started") for i in range(12)]
    for k, got in enumerate(pool.parallel_map(_touch, items, 2, per_worker=2)):
        assert got == items[k]
        time.sleep(0.05)  # a slow consumer: unbounded, all 12 would have started by now
        assert len(list(tmp_path.iterdir())) <= k + 1 + 4
