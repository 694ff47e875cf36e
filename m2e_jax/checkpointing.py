"""Checkpoints in the workdir (orbax CheckpointManager) and preemption handling.

Each checkpoint `workdir/checkpoints/<step>/` holds the training state (a pytree of host numpy
arrays: params, optimizer states, EMA, step) and the resolved config as JSON. Saves are
asynchronous (the loop continues while files are written); `wait()` before reading them back and
`close()` at exit surface any write error. The data position needs no saving: the batch of step s
is a pure function of s (input_pipeline.py).

Preemption: `PreemptionFlag` turns SIGTERM into a flag the loop polls; the loop then saves the
current step and exits 0. Multi-host jobs also ask orbax (`reached_preemption`), so every host
stops at the same step.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

# Written by orbax only after every item of a step is on disk (atomicity.COMMIT_SUCCESS_FILE), then
# the step's items.
COMPLETE_MARKERS = ("commit_success.txt", "state", "config")

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


class Checkpointer:
    """orbax CheckpointManager over `directory` keeping the newest `max_to_keep` steps."""

    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete step (None if there is none); incomplete step folders are skipped.

        orbax lists any folder named like a step, and a partial copy of a workdir (rsync cut short,
        a quota hit mid-copy) leaves such folders without their files: restoring one would crash or
        read garbage, so the resume point is the newest folder holding a commit marker and its items.
        """
        moved = False
        for step in sorted(self.manager.all_steps(), reverse=True):
            missing = self.missing_files(step)
            if not missing:
                break
            path = os.path.join(self.directory, str(step))
            aside = f"{path}.incomplete"
            if os.path.exists(aside):
                aside = f"{aside}.{time.time_ns()}"
            logging.warning("checkpoint %s is incomplete (missing %s): moved aside to %s", path,
                            ", ".join(missing), aside)
            # Out of the way, not deleted: the resumed run saves this step number again.
            if jax.process_index() == 0 and os.path.isdir(path):
                os.rename(path, aside)
            moved = True
        else:
            step = None
        if moved:
            self.manager.reload()
        return step

    def missing_files(self, step: int) -> list[str]:
        """What a complete checkpoint of `step` has and this one lacks (empty when complete)."""
        path = os.path.join(self.directory, str(step))
        return [name for name in COMPLETE_MARKERS if not os.path.exists(os.path.join(path, name))]

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, config: ml_collections.ConfigDict) -> None:
        """Saves host `state` (numpy pytree) and the config at `step`; refuses non-finite values."""
        bad = [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_leaves_with_path(state)
               if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.all(np.isfinite(x))]
        if bad:
            raise FloatingPointError(f"checkpoint at step {step}: refusing to save non-finite values "
                                     f"in {bad[:5]}")
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  config=ocp.args.JsonSave(config_to_json(config)))
        self.manager.save(step, args=args, force=True)

    def restore(self, step: int, like: Any) -> Any:
        """The state saved at `step`, with the structure, shapes and dtypes of host pytree `like`."""
        abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        restored = self.manager.restore(step, args=args)
        return jax.tree.map(np.asarray, restored["state"])

    def restore_config(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def reached_preemption(self, step: int) -> bool:
        return jax.process_count() > 1 and self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
