"""The command line: flags, config errors before any compilation, and SIGTERM -> save and exit 0."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(workdir, *overrides, data_dir=None):
    env = processes.cpu_env(1)
    cmd = [sys.executable, "-m", "m2e_jax.main", "--config", "configs/synthetic.py:test", "--workdir",
           str(workdir), *overrides]
    if data_dir:
        cmd.append(f"--config.dataset.data_dir={data_dir}")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_bad_config_value_fails_fast_with_the_field_named(tmp_path):
    t0 = time.time()
    proc = launch(tmp_path / "w", "--config.optim.g_lr=-0.001")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "config.optim.g_lr: must be > 0, got -0.001" in out
    assert not (tmp_path / "w").exists()
    assert time.time() - t0 < 60


def test_unknown_override_is_rejected(tmp_path):
    proc = launch(tmp_path / "w", "--config.optim.learning_rate=0.1")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "learning_rate" in out


@pytest.mark.slow
def test_sigterm_saves_and_exits_zero(tmp_path):
    workdir, data, cache = tmp_path / "w", tmp_path / "data", tmp_path / "xla_cache"
    proc = launch(workdir, "--config.schedule.pan_steps=100000", "--config.eval_every=100000",
                  "--config.image_every=100000", "--config.checkpoint_every=100000", "--config.log_every=2",
                  f"--config.compilation_cache_dir={cache}", data_dir=data)
    lines = []
    deadline = time.time() + 240
    for line in proc.stdout:  # wait until training is under way (step 2 logged)
        lines.append(line)
        if "train/g_total" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    out = "".join(lines) + out
    assert proc.returncode == 0, out[-3000:]
    assert "Stopping early" in out
    steps = [int(os.path.basename(p)) for p in glob.glob(str(workdir / "checkpoints" / "[0-9]*"))]
    assert len(steps) == 1 and 2 <= steps[0] < 100000
    assert (workdir / "config.json").exists()
    # the config's persistent compilation cache holds the compiled train step for the next restart
    assert any("train_step" in name for name in os.listdir(cache)), os.listdir(cache)
