"""Preemption: SIGKILL at a random step and in the middle of a checkpoint save, then SIGTERM, then a
resume to the end reproduce the uninterrupted run bit for bit; incomplete checkpoints are skipped.

The trainer runs as `python -m m2e_jax.main` subprocesses (1 CPU device each) sharing a persistent
XLA compilation cache, so only the first one pays for compiling (~40 s on 2 cores; the rest ~15 s).
"""

import glob
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import synthetic
from m2e_jax import checkpoints
from tests import processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 8
CKPT_EVERY = 3
# Runs the CLI; with KILL_IN_SAVE=K it SIGKILLs itself while orbax commits step K (the state's
# arrays are on disk in K.orbax-checkpoint-tmp*, the rename that publishes the step is not done).
WORKER = """
import os, signal, sys
kill = os.environ.get("KILL_IN_SAVE")
if kill:
    from orbax.checkpoint._src.path import atomicity
    original = atomicity.AtomicRenameTemporaryPath.finalize
    async def finalize(self):
        if self._final_path.name == "state" and self._final_path.parent.name.startswith(kill + "."):
            os.kill(os.getpid(), signal.SIGKILL)
        return await original(self)
    atomicity.AtomicRenameTemporaryPath.finalize = finalize
from absl import app
from m2e_jax import main
app.run(main.main, argv=["m2e_jax.main", *sys.argv[1:]])
"""
STEP_LINE = re.compile(r"\] \[(\d+)\] (train/.*)$")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("preemption")
    return {"data": str(root / "data"), "cache": str(root / "xla_cache"), "root": root}


def launch(shared, workdir, **env_extra) -> subprocess.Popen:
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or shared["cache"]
    env = processes.cpu_env(1, JAX_COMPILATION_CACHE_DIR=cache,
                            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONPATH=ROOT, **env_extra)
    cmd = [sys.executable, "-c", WORKER, "--config", "configs/synthetic.py:test", "--workdir", str(workdir),
           f"--config.dataset.data_dir={shared['data']}", f"--config.schedule.pan_steps={TOTAL}",
           *(f"--config.schedule.{k}_steps=0" for k in ("trn", "ftn", "joint")),
           "--config.log_every=1", f"--config.checkpoint_every={CKPT_EVERY}", f"--config.eval_every={TOTAL}",
           f"--config.image_every={TOTAL}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def read_until_step(proc, step: int, lines: list[str], timeout: float = 240) -> None:
    """Reads the trainer's output into `lines` until it has logged the metrics of `step`."""
    deadline = time.time() + timeout
    for line in proc.stdout:
        lines.append(line)
        m = STEP_LINE.search(line)
        if m and int(m.group(1)) == step:
            return
        assert time.time() < deadline, "".join(lines[-30:])
    raise AssertionError(f"trainer exited before step {step}:\n{''.join(lines[-40:])}")


def finish(proc, lines: list[str], timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return "".join(lines) + out


def step_metrics(log: str) -> dict[int, str]:
    """{step: its logged train scalars} (a step logged twice keeps its last value)."""
    return {int(m.group(1)): m.group(2) for m in map(STEP_LINE.search, log.splitlines()) if m}


def complete_steps(workdir) -> list[int]:
    return sorted(int(os.path.basename(p)) for p in glob.glob(str(workdir / "checkpoints" / "[0-9]*"))
                  if os.path.basename(p).isdigit())


def final_state(workdir):
    """The raw saved state of the last step (restored with orbax's own metadata, no template)."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(str(workdir / "checkpoints")) as mgr:
        return mgr.restore(TOTAL, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


@pytest.mark.slow
def test_sigkill_anywhere_and_sigterm_then_resume_equal_the_straight_run(shared):
    root = shared["root"]
    ref = launch(shared, root / "straight")
    ref_log = finish(ref, [], timeout=400)
    assert ref.returncode == 0, ref_log[-3000:]

    work = root / "interrupted"
    log = ""
    # Trial 1: SIGKILL right after a random step (seeded, so a failure reproduces).
    kill_at = random.Random(7).randint(1, 2 * CKPT_EVERY - 2)
    proc, lines = launch(shared, work), []
    read_until_step(proc, kill_at, lines)
    proc.kill()
    log += finish(proc, lines)
    assert proc.returncode == -signal.SIGKILL
    saved = complete_steps(work)
    before = [s for s in range(CKPT_EVERY, kill_at, CKPT_EVERY)]  # step kill_at may be mid-save
    assert saved in (before, before + [kill_at]), (kill_at, saved)

    # Trial 2: SIGKILL while step 2 * CKPT_EVERY is being committed.
    proc = launch(shared, work, KILL_IN_SAVE=str(2 * CKPT_EVERY))
    out = finish(proc, [])
    log += out
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    assert glob.glob(str(work / "checkpoints" / f"{2 * CKPT_EVERY}.orbax-checkpoint-tmp*" / "state*"))
    assert complete_steps(work) == [CKPT_EVERY]

    # Trial 3: SIGTERM (a scheduler's preemption notice): save the current step, exit 0, quickly.
    proc, lines = launch(shared, work), []
    read_until_step(proc, 2 * CKPT_EVERY - 1, lines)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out = finish(proc, lines, timeout=60)
    took = time.time() - t0
    log += out
    assert proc.returncode == 0, out[-3000:]
    assert f"Resumed from step {CKPT_EVERY}" in out  # not from the half-written step
    assert took < 20, f"SIGTERM to exit took {took:.1f} s"
    stopped = complete_steps(work)[-1]
    assert 2 * CKPT_EVERY - 1 <= stopped < TOTAL

    proc = launch(shared, work)
    out = finish(proc, [])
    log += out
    assert proc.returncode == 0, out[-3000:]
    assert f"Resumed from step {stopped}" in out

    # Same parameters, optimizer state and step, bit for bit (same program, same device, same data).
    a, b = final_state(root / "straight"), final_state(work)
    leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 10
    for (path, x), y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    # Same training metrics at every step (as logged) and the same final evaluation.
    ref_metrics, got_metrics = step_metrics(ref_log), step_metrics(log)
    assert sorted(ref_metrics) == list(range(1, TOTAL + 1))
    assert got_metrics == ref_metrics
    evals = [json.loads((w / "eval" / f"step_{TOTAL:07d}.json").read_text())["metrics"]
             for w in (root / "straight", work)]
    assert evals[0] == evals[1]


def tree(seed: int):
    rng = np.random.default_rng(seed)
    return {"step": np.int32(seed), "w": rng.normal(size=(3, 4)).astype(np.float32)}


def test_incomplete_checkpoints_are_skipped_and_moved_aside(tmp_path):
    """A step folder without its commit marker or items (a cut-short copy) is never restored."""
    import shutil

    cfg = synthetic.get_config("test")
    with checkpoints.Checkpointer(str(tmp_path), async_save=False, max_to_keep=5) as ck:
        for step in (1, 2):
            ck.save(step, tree(step), cfg)
    shutil.copytree(tmp_path / "2", tmp_path / "3")
    shutil.rmtree(tmp_path / "3" / "state")  # items half copied
    shutil.copytree(tmp_path / "2", tmp_path / "4")
    os.remove(tmp_path / "4" / "commit_success.txt")  # never committed
    (tmp_path / "5").mkdir()  # an empty step folder
    (tmp_path / "6.orbax-checkpoint-tmp").mkdir()  # a save in flight when the job died
    with checkpoints.Checkpointer(str(tmp_path), async_save=False, max_to_keep=5) as ck:
        assert ck.latest_step() == 2
        np.testing.assert_array_equal(ck.restore(2, tree(0))["w"], tree(2)["w"])
        assert ck.all_steps() == [1, 2]
        ck.save(3, tree(3), cfg)  # the resumed run reaches step 3 again: no clash with the debris
        assert ck.latest_step() == 3
    # orbax's scratch folder of a save that never committed holds no restorable step: removed at start
    # (cleanup_tmp_directories), so a disk filled by a failed save has its space back.
    assert sorted(os.listdir(tmp_path)) == ["1", "2", "3", "3.incomplete", "4.incomplete", "5.incomplete"]
