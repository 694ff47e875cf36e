"""Training fault matrix (issue 19.4): SIGKILL during the first compile, during a save, during
evaluation and during image writing; a workdir that turns read-only mid-run; the data folder
disappearing mid-run. Each case ends in one line (or no output at all: SIGKILL leaves none), leaves
no file half-written under its final name, and the resumed run equals the uninterrupted one bit for
bit: the same final parameters and optimizer state, evaluation table and image grid.

Cost: one uninterrupted reference run in this process; each fault is one `python -m m2e_jax.main`
subprocess (the trainer's own code, plus a fault injected by WORKER) stopped at step <= 3 of 6, then
resumed in this process. The subprocesses see this process's four simulated CPU devices and its
persistent compilation cache (tests/conftest.py), so they compile nothing and compute what this
process computes. The read-only case remounts the workdir read-only in a private mount namespace
(`unshare -m`: root ignores permission bits, a read-only mount it does not), which ends with the
process, so the resume finds the workdir writable again.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import synthetic
from m2e_jax import checkpoints, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL, CKPT_EVERY, EVAL_EVERY = 6, 2, 3  # saves at 2, 4, 6; evaluation and images at 3, 6
OVERRIDES = {"schedule.pan_steps": TOTAL, "schedule.trn_steps": 0, "schedule.ftn_steps": 0,
             "schedule.joint_steps": 0, "log_every": 1, "checkpoint_every": CKPT_EVERY,
             "eval_every": EVAL_EVERY, "image_every": EVAL_EVERY}

# The trainer's command line with one fault injected (M2E_FAULT; M2E_FAULT_WORKDIR names the workdir).
# A "cut" fault writes the first half of a file's bytes under the name the trainer chose, then
# SIGKILLs the process: what a kill in the middle of that write leaves on disk.
WORKER = r"""
import os, signal, subprocess, sys
FAULT, WORKDIR = os.environ["M2E_FAULT"], os.environ["M2E_FAULT_WORKDIR"]

def cut(path, data):
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

if FAULT == "first_compile":  # 0.1 s into the run's first XLA compilation
    import threading
    from jax._src import compiler
    compile_and_load = compiler.backend_compile_and_load
    def kill_soon(*a, **kw):
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGKILL)).start()
        return compile_and_load(*a, **kw)
    compiler.backend_compile_and_load = kill_soon
elif FAULT == "save":  # orbax has the arrays of step 4 on disk, the rename that publishes it not done
    from orbax.checkpoint._src.path import atomicity
    finalize = atomicity.AtomicRenameTemporaryPath.finalize
    async def killed_finalize(self):
        if self._final_path.name == "state" and self._final_path.parent.name.startswith("4."):
            os.kill(os.getpid(), signal.SIGKILL)
        return await finalize(self)
    atomicity.AtomicRenameTemporaryPath.finalize = killed_finalize
elif FAULT in ("evaluation", "images"):  # the step-3 metrics table / image grid being written
    # Cut the bytes the writer hands the file system (workdir.write_atomic writes through epath):
    # half of them reach the file it writes, then the process dies.
    from etils import epath
    folder = "eval" if FAULT == "evaluation" else "images"
    gpath = type(epath.Path(WORKDIR))
    write_bytes = gpath.write_bytes
    def cut_write(self, data):
        if self.parent.name == folder:
            cut(os.fspath(self), data)
        return write_bytes(self, data)
    gpath.write_bytes = cut_write
elif FAULT == "read_only":  # right after step 2's checkpoint is on disk
    from m2e_jax import checkpoints
    ck_save = checkpoints.Checkpointer.save
    def save_then_fault(self, step, *a, **kw):
        ck_save(self, step, *a, **kw)
        if step == 2:
            self.wait()
            for cmd in (["mount", "--bind", WORKDIR, WORKDIR], ["mount", "-o", "remount,bind,ro", WORKDIR]):
                subprocess.run(cmd, check=True)
    checkpoints.Checkpointer.save = save_then_fault
else:
    raise SystemExit(f"unknown M2E_FAULT {FAULT!r}")
sys.argv[0] = "m2e_jax.main"
from m2e_jax import main
from absl import app
app.run(main.main)
"""


def config_for(data_dir: str):
    c = synthetic.get_config("test")
    c.dataset.data_dir = data_dir
    for key, value in OVERRIDES.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def can_remount_read_only(tmp_path) -> bool:
    d = tmp_path / "probe"
    d.mkdir()
    script = f"mount --bind {d} {d} && mount -o remount,bind,ro {d} && ! touch {d}/x 2>/dev/null"
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process: its workdir and final state."""
    root = tmp_path_factory.mktemp("faults")
    data = str(root / "data")
    config = config_for(data)
    train.train_and_evaluate(config, str(root / "reference"))
    return {"root": root, "data": data, "config": config, "workdir": root / "reference"}


def run_with_fault(reference, fault: str, workdir, extra: tuple[str, ...] = ()):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, M2E_FAULT=fault,
               M2E_FAULT_WORKDIR=str(workdir))
    cmd = [sys.executable, "-c", WORKER, "--config", "configs/synthetic.py:test", "--workdir", str(workdir),
           f"--config.dataset.data_dir={reference['data']}",
           *(f"--config.{k}={v}" for k, v in OVERRIDES.items()), *extra]
    if fault == "read_only":
        cmd = ["unshare", "-m", "--propagation", "private", *cmd]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def complete_steps(workdir) -> list[int]:
    return sorted(int(os.path.basename(p)) for p in glob.glob(str(workdir / "checkpoints" / "[0-9]*"))
                  if os.path.basename(p).isdigit())


def resume(reference, workdir, caplog) -> str:
    """Reruns the training of `workdir` to the end in this process; returns its log."""
    config = config_for(reference["data"])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train.train_and_evaluate(config, str(workdir))
    return caplog.text


def final_state(workdir, config):
    with checkpoints.Checkpointer(str(workdir / "checkpoints")) as ck:
        return ck.restore(TOTAL, train.init_state(config))


def assert_equals_reference(reference, workdir):
    a, b = (final_state(w, reference["config"]) for w in (reference["workdir"], workdir))
    leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 10
    for (path, x), y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    for step in range(EVAL_EVERY, TOTAL + 1, EVAL_EVERY):
        name = f"step_{step:07d}"
        tables = [json.loads((w / "eval" / f"{name}.json").read_text())["metrics"]
                  for w in (reference["workdir"], workdir)]
        assert tables[0] == tables[1], step
        grids = [(w / "images" / f"{name}.png").read_bytes() for w in (reference["workdir"], workdir)]
        assert grids[0] == grids[1], step


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-4000:]


KILLS = {  # fault -> (complete checkpoints after the kill, files that must not exist after it)
    "first_compile": ([], []),
    "save": ([2], ["checkpoints/4"]),
    "evaluation": ([2], ["eval/step_0000003.json"]),
    "images": ([2], ["images/step_0000003.png"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(KILLS))
def test_sigkill_then_resume_equals_the_uninterrupted_run(reference, fault, caplog):
    root = reference["root"]
    workdir = root / f"kill_{fault}"
    extra = ()
    if fault == "first_compile":  # a cache of its own, so the first program really compiles
        extra = (f"--config.compilation_cache_dir={root / 'cache_first_compile'}",)
    proc = run_with_fault(reference, fault, workdir, extra)
    assert proc.returncode == -signal.SIGKILL, (proc.stdout + proc.stderr)[-4000:]
    steps, absent = KILLS[fault]
    assert complete_steps(workdir) == steps
    for name in absent:  # nothing half-written under a name a reader trusts
        assert not (workdir / name).exists(), name
    log = resume(reference, workdir, caplog)
    assert (f"Resumed from step {steps[-1]}" in log) if steps else ("Resumed" not in log), log[-3000:]
    assert_equals_reference(reference, workdir)


@pytest.mark.slow
def test_read_only_workdir_mid_run_stops_in_one_line_then_resumes(reference, caplog, tmp_path):
    if not can_remount_read_only(tmp_path):
        pytest.skip("needs mount namespaces (unshare -m) to make a folder read-only for root")
    workdir = reference["root"] / "read_only"
    proc = run_with_fault(reference, "read_only", workdir)
    no_traceback(proc.stdout + proc.stderr)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-4000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr[-4000:]
    assert f"workdir {workdir}" in errors[0] and "Read-only file system" in errors[0], errors
    assert "step 3" in errors[0] and "last complete checkpoint is step 2" in errors[0], errors
    assert complete_steps(workdir) == [2]
    assert not (workdir / "eval" / "step_0000003.json").exists()
    resume(reference, workdir, caplog)
    assert_equals_reference(reference, workdir)


@pytest.fixture(scope="module")
def tfds_reference(reference):
    """The uninterrupted run on records built by data_prep.build (array_record files read lazily)."""
    from data_prep import build

    root = reference["root"]
    build.build("synthetic", root / "tfds_manual", root / "tfds_data", 32, 32, synthetic_counts=(16, 8),
                workers=0)
    config = tfds_config(str(root / "tfds_data"))
    train.train_and_evaluate(config, str(root / "tfds_reference"))
    return {**reference, "data": str(root / "tfds_data"), "config": config,
            "workdir": root / "tfds_reference"}


def tfds_config(data_dir: str):
    c = config_for(data_dir)
    c.dataset.source = "tfds"
    return c


# When the records folder disappears ("after step 2": its files are open by then; "before the first
# batch": the trainer has listed the records but not opened the train file for reading). The
# synthetic world takes the same road: its records are read by the same source.
DATA_GONE = ["after step 2", "before the first batch"]


@pytest.mark.slow
@pytest.mark.parametrize("when", DATA_GONE)
def test_data_folder_disappearing_mid_run(tfds_reference, tmp_path, monkeypatch, when):
    """Files already open (or data decoded in memory) keep serving the run to the end; a file not opened yet
    ends the run in one DataError line naming it, and once the folder is back the rerun resumes."""
    from m2e_jax import input_pipeline

    ref = tfds_reference
    data = tmp_path / "data"
    shutil.copytree(ref["data"], data)
    config = tfds_config(str(data))
    if when == "after step 2":
        save = checkpoints.Checkpointer.save

        def save_then_remove(self, step, *a, **kw):
            save(self, step, *a, **kw)
            if step == 2:
                shutil.rmtree(data)
        monkeypatch.setattr(checkpoints.Checkpointer, "save", save_then_remove)
    else:
        iterate = input_pipeline.TrainData.iterate

        def remove_then_iterate(self, *a, **kw):
            shutil.rmtree(data)
            return iterate(self, *a, **kw)
        monkeypatch.setattr(input_pipeline.TrainData, "iterate", remove_then_iterate)
    workdir = tmp_path / "work"
    if when == "after step 2":
        train.train_and_evaluate(config, str(workdir))
        assert not data.exists()
    else:
        with pytest.raises(train.DataError) as err:
            train.train_and_evaluate(config, str(workdir))
        msg = str(err.value)
        assert "\n" not in msg and "the batch of step 1 cannot be read" in msg, msg
        assert "No such file or directory" in msg and "m2e_dataset-train.array_record" in msg, msg
        assert f"data_dir = {data}" in msg and "last complete checkpoint is none" in msg, msg
        assert complete_steps(workdir) == []
        monkeypatch.undo()
        shutil.copytree(ref["data"], data)  # the folder is back
        train.train_and_evaluate(config, str(workdir))
    assert complete_steps(workdir) == [2, 4, 6]
    assert_equals_reference(ref, workdir)


def test_this_process_uses_the_persistent_compilation_cache():
    """tests/conftest.py sets the cache before JAX is first imported: this process and the trainer
    subprocesses share compiled programs (without it, the reference run alone compiles ~30 programs)."""
    if os.environ.get("M2E_TEST_COMPILATION_CACHE", "1") == "0":
        pytest.skip("M2E_TEST_COMPILATION_CACHE=0 turns the cache off")
    assert jax.config.jax_compilation_cache_dir == os.environ["JAX_COMPILATION_CACHE_DIR"]
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
