"""The workdir: unwritable, full before and during training, and one trainer at a time.

Tests run as root, where a read-only mode bit does not stop writes: unwritable is a workdir below a
regular file (and, for other users, a chmod 0o500 folder).

Full disk: the free-space check before the first step (`shutil.disk_usage` patched to report 1 MiB),
and a disk that fills up during training, then frees up. The latter runs on a real small tmpfs where
this machine lets the test `mount -t tmpfs` (root, no container restriction): the disk is filled with
a file just before the save of step 6 and tensorstore's own write fails with ENOSPC. Where mount is
refused it patches orbax's save to raise the error tensorstore raises on a full disk (the message
recorded on a tmpfs) and `shutil.disk_usage` to report the space. The test prints which way it ran
and records it as the `full_disk_method` property of the JUnit report.

Lock: a real trainer holds the workdir while a second `python -m m2e_jax.main` is started on it.
"""

import errno
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import synthetic
from m2e_jax import checkpoints, train
from m2e_jax import workdir as workdir_lib
from tests import processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL, CKPT_EVERY = 8, 3  # the preemption tests' schedule: their compiled step is in the shared cache
# Runs the training CLI. FILL_AT=K fills the disk (DISK=tmpfs: a file FILLER using all but 64 KiB;
# DISK=patched: the next orbax save fails as tensorstore fails on a full disk) just before step K
# is saved; DISK_FREE=N (patched only) is what shutil.disk_usage reports as free.
WORKER = """
import os, shutil, sys
fill, disk = os.environ.get("FILL_AT"), os.environ.get("DISK")
from m2e_jax import checkpoints
from m2e_jax import workdir as workdir_lib
if fill:
    save = checkpoints.Checkpointer.save
    def filling_save(self, step, state, config):
        if step == int(fill):
            self.wait()
            if disk == "tmpfs":
                with open(os.environ["FILLER"], "wb") as f:
                    f.write(b"\\0" * max(0, shutil.disk_usage(self.directory).free - 65536))
            else:
                def full(*a, **k):
                    raise ValueError('RESOURCE_EXHAUSTED: Error writing "params.pan/0" in OCDBT database: '
                                     'Failed to write 81920 bytes to file 11: No space left on device '
                                     "[os_error_code='28']")
                self.manager.save = full
        return save(self, step, state, config)
    checkpoints.Checkpointer.save = filling_save
if disk == "patched" and os.environ.get("DISK_FREE"):
    real = shutil.disk_usage
    shutil.disk_usage = lambda p: real(p)._replace(free=int(os.environ["DISK_FREE"]))
from absl import app
from m2e_jax import main
app.run(main.main, argv=["m2e_jax.main", *sys.argv[1:]])
"""


def trainer_flags(workdir, data_dir, *overrides) -> list[str]:
    """The training CLI's flags: the tiny synthetic config, PAN stage only, TOTAL steps, a checkpoint
    every CKPT_EVERY steps."""
    return ["--config", "configs/synthetic.py:test", "--workdir", str(workdir),
            f"--config.dataset.data_dir={data_dir}", f"--config.schedule.pan_steps={TOTAL}",
            *(f"--config.schedule.{k}_steps=0" for k in ("trn", "ftn", "joint")), "--config.log_every=1",
            f"--config.checkpoint_every={CKPT_EVERY}", f"--config.eval_every={TOTAL}",
            f"--config.image_every={TOTAL}", *overrides]


def trainer_cmd(workdir, data_dir, *overrides) -> list[str]:
    """trainer_flags through WORKER, which behaves as `python -m m2e_jax.main` unless told."""
    return [sys.executable, "-c", WORKER, *trainer_flags(workdir, data_dir, *overrides)]


def trainer_env(**extra) -> dict:
    return processes.cpu_env(1, PYTHONPATH=ROOT, **extra)


def run_trainer(workdir, data_dir, *overrides, timeout=600, **env) -> subprocess.CompletedProcess:
    return subprocess.run(trainer_cmd(workdir, data_dir, *overrides), cwd=ROOT, env=trainer_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def user_error_lines(stderr: str, command: str = "m2e_jax.main") -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith(f"{command}: error:")]


def pan_config():
    """The config trainer_cmd trains (for sizes)."""
    c = synthetic.get_config("test")
    c.schedule.update(pan_steps=TOTAL, trn_steps=0, ftn_steps=0, joint_steps=0)
    return c


@pytest.fixture
def config(tmp_path):
    c = synthetic.get_config("test")
    c.dataset.data_dir = str(tmp_path / "data")
    return c


def unwritable_workdirs(tmp_path) -> list[str]:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    dirs = [str(blocker / "workdir")]
    if os.geteuid() != 0:
        ro = tmp_path / "read_only"
        ro.mkdir(mode=0o500)
        dirs.append(str(ro / "workdir"))
    return dirs


def test_unwritable_workdir_fails_before_anything_runs(tmp_path, config, jax_events):
    for workdir in unwritable_workdirs(tmp_path):
        with pytest.raises(workdir_lib.WorkdirError, match=rf"workdir {workdir}: not writable \(.+\); "):
            train.train_and_evaluate(config, workdir)
        assert not jax_events  # nothing traced, let alone compiled
    assert not (tmp_path / "data").exists()  # not even the dataset was rendered


def test_check_workdir_cleans_its_probe(tmp_path):
    workdir_lib.check_workdir(str(tmp_path / "new" / "dir"))
    assert os.listdir(tmp_path / "new" / "dir") == []


def test_full_disk_fails_before_the_first_step(tmp_path, config, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(workdir_lib.shutil, "disk_usage", lambda p: real(p)._replace(free=2**20))
    steps = train.Steps(config)
    need = r"1.0 MiB free, checkpoints need [\d.]+ MiB more \(3 kept \+ 1 being written, 0 already"
    with pytest.raises(workdir_lib.WorkdirError, match=need):
        train.train_and_evaluate(config, str(tmp_path / "w"), steps=steps)
    assert not steps.traces and not steps.compile_counts()["eval"]  # no step compiled
    assert checkpoints.complete_steps(str(tmp_path / "w" / "checkpoints")) == []


def test_free_space_counts_the_checkpoints_on_disk(tmp_path, monkeypatch):
    """keep + 1 checkpoints in all: with k complete ones on disk, room for keep + 1 - k more (>= 1)."""
    state = {"a": np.zeros((1024, 256), np.float32)}  # 1 MiB
    assert [checkpoints.free_space_needed(state, 2, k) // 2**20 for k in range(5)] == [3, 2, 1, 1, 1]
    cfg = synthetic.get_config("test")
    real = shutil.disk_usage
    free = {"bytes": 3 * 2**20 - 1}
    monkeypatch.setattr(workdir_lib.shutil, "disk_usage", lambda p: real(p)._replace(free=free["bytes"]))
    with checkpoints.Checkpointer(str(tmp_path / "c"), max_to_keep=2, async_save=False) as ck:
        with pytest.raises(workdir_lib.WorkdirError, match=r"3.0 MiB free, checkpoints need 3.0 MiB more"):
            ck.check_free_space(state)
        free["bytes"] = 3 * 2**20
        ck.check_free_space(state)
        for step in (1, 2):
            ck.save(step, state, cfg)
        free["bytes"] = 2**20 - 1  # two kept on disk: one more must fit, no more
        with pytest.raises(workdir_lib.WorkdirError, match=r"need 1.0 MiB more .* 2 already on disk"):
            ck.check_free_space(state)
        free["bytes"] = 2**20
        ck.check_free_space(state)


def test_free_space_counts_only_the_checkpoints_the_run_schedules(tmp_path, monkeypatch):
    """A run that keeps every checkpoint (benchmarks.curves: keep = steps) needs room for the saves
    its schedule makes (every checkpoint_every steps, the last step, one stop between them), not for
    `keep`: 5,000 kept of a 64x48 double-width run asked for 65 GiB and refused to start."""
    assert checkpoints.scheduled_saves(5000, 833) == 8  # 833 ... 4998, 5000, and one SIGTERM save
    assert checkpoints.scheduled_saves(1200, 200) == 7
    state = {"a": np.zeros((1024, 256), np.float32)}  # 1 MiB
    assert checkpoints.free_space_needed(state, 5000, 0, saves=8) // 2**20 == 9
    assert checkpoints.free_space_needed(state, 3, 0, saves=8) // 2**20 == 4  # keep still caps
    assert checkpoints.free_space_needed(state, 5000, 8, saves=8) // 2**20 == 1
    real = shutil.disk_usage
    monkeypatch.setattr(workdir_lib.shutil, "disk_usage", lambda p: real(p)._replace(free=9 * 2**20))
    with checkpoints.Checkpointer(str(tmp_path / "c"), max_to_keep=5000, async_save=False) as ck:
        ck.check_free_space(state, saves=8)
        with pytest.raises(workdir_lib.WorkdirError, match=r"need 5001.0 MiB more \(5000 kept"):
            ck.check_free_space(state)
        with pytest.raises(workdir_lib.WorkdirError, match=r"need 10.0 MiB more \(9 kept"):
            ck.check_free_space(state, saves=9)


def test_disk_errors_are_recognised():
    assert workdir_lib.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert workdir_lib.is_disk_full(ValueError("RESOURCE_EXHAUSTED: ... [os_error_code='28']"))
    assert not workdir_lib.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not workdir_lib.is_disk_full(ValueError("RESOURCE_EXHAUSTED: out of memory"))


@pytest.fixture
def small_disk(tmp_path, record_property):
    """(folder, method, size): a real tmpfs of 3.5 checkpoints of pan_config() where mount works
    (method "tmpfs"), else a plain folder (method "patched")."""
    size = int(3.5 * checkpoints.state_bytes(train.init_state(pan_config())))
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)]
    mounted = shutil.which("mount") is not None and subprocess.run(mount, capture_output=True).returncode == 0
    method = "tmpfs" if mounted else "patched"
    record_property("full_disk_method", method)
    print(f"full disk tested on {f'a real tmpfs of {size} bytes' if mounted else 'a patched write'}")
    try:
        yield mnt, method, size
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def _bytes_under(paths) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for p in paths for d, _, fs in os.walk(p) for f in fs)


@pytest.mark.slow
def test_disk_full_mid_save_one_line_then_resume_when_one_checkpoint_fits(small_disk, tmp_path):
    mnt, method, size = small_disk
    workdir, data, filler = mnt / "w", tmp_path / "data", mnt / "filler"
    one = checkpoints.state_bytes(train.init_state(pan_config()))
    extra = {"DISK": method, "FILLER": str(filler)}
    if method == "patched":
        extra["DISK_FREE"] = str(size)
    r = run_trainer(workdir, data, "--config.keep_checkpoints=2", FILL_AT="6", **extra)
    errors = user_error_lines(r.stderr)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    assert len(errors) == 1 and errors == r.stderr.strip().splitlines()[-1:], r.stderr[-2000:]
    assert re.search(rf"workdir {workdir}: disk full while saving checkpoint 6 \([\d.]+ MiB free; one "
                     rf"checkpoint needs {one / 2**20:.1f} MiB\); checkpoints 3 are intact; free space",
                     errors[0]), errors[0]
    assert checkpoints.complete_steps(str(workdir / "checkpoints")) == [3]
    assert checkpoints.check_hashes(str(workdir / "checkpoints" / "3"))

    # The disk frees up: room for two more checkpoints, not keep + 1 = 3 (one is on disk already).
    if method == "tmpfs":
        filler.unlink()
        # what the trainer finds free once orbax removed the failed save's scratch folder
        free = shutil.disk_usage(mnt).free + _bytes_under(glob.glob(str(workdir / "checkpoints" / "*tmp*")))
    else:
        free = int(2.5 * one)
        extra["DISK_FREE"] = str(free)
    assert 2 * one <= free < 3 * one, (free, one)
    r = run_trainer(workdir, data, "--config.keep_checkpoints=2", **extra)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr and "Resumed from step 3" in r.stderr, r.stderr[-3000:]
    assert checkpoints.complete_steps(str(workdir / "checkpoints")) == [6, TOTAL]
    assert not glob.glob(str(workdir / "checkpoints" / "*tmp*"))  # the failed save's scratch is gone


def test_workdir_lock_in_one_process(tmp_path, caplog):
    with workdir_lib.WorkdirLock(str(tmp_path)) as lock:
        assert open(lock.path).read().startswith(f"pid {os.getpid()} on ")
        holder = rf"in use by another training run \(pid {os.getpid()}"
        with pytest.raises(workdir_lib.WorkdirError, match=holder):
            workdir_lib.WorkdirLock(str(tmp_path)).acquire()
    assert open(lock.path).read() == ""  # released: nobody to take over from
    with workdir_lib.WorkdirLock(str(tmp_path)):
        assert "taking over" not in caplog.text


@pytest.mark.slow
def test_second_trainer_refuses_naming_the_first_and_a_dead_ones_lock_is_taken_over(tmp_path, caplog):
    workdir, data = tmp_path / "w", tmp_path / "data"
    first = subprocess.Popen(trainer_cmd(workdir, data, "--config.schedule.pan_steps=100000",
                                         "--config.eval_every=100000", "--config.image_every=100000",
                                         "--config.checkpoint_every=100000"),
                             cwd=ROOT, env=trainer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        deadline, lines = time.time() + 300, []
        for line in first.stdout:  # the first run is training (it holds the lock since before compiling)
            lines.append(line)
            if "train/g_total" in line or time.time() > deadline:
                break
        assert first.poll() is None, "".join(lines[-30:])
        second = subprocess.run(trainer_cmd(workdir, data), cwd=ROOT, env=trainer_env(), capture_output=True,
                                text=True, timeout=300)
        assert second.returncode == 1, second.stderr[-3000:]
        assert "Traceback" not in second.stderr + second.stdout, second.stderr[-3000:]
        assert user_error_lines(second.stderr) == second.stderr.strip().splitlines()[-1:]
        assert re.search(rf"workdir {workdir}: in use by another training run \(pid {first.pid} on \S+, lock "
                         rf"{workdir}/train.lock\)", second.stderr), second.stderr[-1000:]
        assert not glob.glob(str(workdir / "checkpoints" / "[0-9]*"))  # the second one wrote nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    # The first run died without releasing: its lock is taken over, naming it.
    with workdir_lib.WorkdirLock(str(workdir)):
        assert f"taking over the lock left by pid {first.pid}" in caplog.text
