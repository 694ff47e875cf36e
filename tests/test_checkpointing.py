"""m2e_jax/checkpointing.py (the readers): the newest complete step, falling back past a damaged
one, one-line errors for what is not a checkpoint, and evaluate / the trainer on a damaged step."""

import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import synthetic
from m2e_jax import checkpointing, checkpoints
from tests import processes
from tests.test_checkpoints import flip_4k, leaves


def gen_checkpoints(root, steps, seed=0):
    """A workdir with generator checkpoints of the tiny config at `steps`; returns (cfg, params by step)."""
    from tests.test_infer import random_params

    cfg = synthetic.get_config("test")
    shapes = checkpointing.generator_shapes(cfg.model)
    params = {s: random_params(shapes, seed + s) for s in steps}
    with checkpoints.Checkpointer(str(root / "checkpoints"), async_save=False) as ck:
        for s in steps:
            ck.save(s, {"step": np.int32(s), "params": params[s]}, cfg)
    return cfg, params


def test_readers_take_the_newest_complete_step_by_relative_path_and_fall_back_past_damage(
        tmp_path, monkeypatch, caplog):
    """...and say nothing of a sound checkpoint: no orbax warning of the step-level metadata file,
    which the CheckpointManager layout keeps beside `state/`, not in it."""
    cfg, params = gen_checkpoints(tmp_path / "w", (1, 2))
    (tmp_path / "w" / "checkpoints" / "3" / "state").mkdir(parents=True)  # a half-copied step
    monkeypatch.chdir(tmp_path)
    located = checkpointing.find_step(workdir="w")  # relative, as the README's commands are
    assert located.steps == (1, 2) and located.directory == str(tmp_path / "w" / "checkpoints")
    with caplog.at_level(logging.INFO):
        config, got, step_dir = checkpointing.load_generators(located)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert step_dir == str(tmp_path / "w" / "checkpoints" / "2") and config.model == cfg.model
    for a, b in zip(leaves(got), leaves(params[2]), strict=True):
        np.testing.assert_array_equal(a, b)

    damaged = flip_4k(tmp_path / "w" / "checkpoints" / "2")
    warnings = []
    located = checkpointing.find_step(workdir="w")
    _, got, step_dir = checkpointing.load_generators(located, warn=warnings.append)
    assert step_dir.endswith(os.path.join("checkpoints", "1"))
    for a, b in zip(leaves(got), leaves(params[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(warnings) == 1 and re.search(rf"checkpoints/2 is damaged: {damaged}: .*; using step 1 instead",
                                            warnings[0]), warnings
    with pytest.raises(checkpointing.CheckpointError, match=r"checkpoints/2 is damaged.*--no_fallback"):
        checkpointing.load_generators(checkpointing.find_step(workdir="w"), fallback=False)
    with pytest.raises(checkpointing.CheckpointError, match=r"checkpoints/2 is damaged"):
        checkpointing.load_generators(checkpointing.find_step(workdir="w", step=2))
    assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["1", "2", "3"]  # readers move nothing


def test_not_a_checkpoint_or_another_projects_is_one_line(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "model.pt").write_bytes(b"PK\x03\x04 not ours")
    error = checkpointing.CheckpointError
    with pytest.raises(error, match=r"--checkpoint .*photos: no m2e_jax checkpoint there"):
        checkpointing.find_step(checkpoint=str(tmp_path / "photos"))
    with pytest.raises(error, match=r"--workdir .*nowhere: no such checkpoint directory"):
        checkpointing.find_step(workdir=str(tmp_path / "nowhere"))
    other = {"step": np.int32(5), "encoder": {"w": np.ones((3, 3), np.float32)}}
    with checkpoints.Checkpointer(str(tmp_path / "other" / "checkpoints"), async_save=False) as ck:
        ck.save(5, other, synthetic.get_config("test"))
    with pytest.raises(checkpointing.CheckpointError, match=r"not an m2e_jax try-on checkpoint"):
        checkpointing.load_generators(checkpointing.find_step(workdir=str(tmp_path / "other")))


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_named_skipped_by_evaluate_and_resumed_past(tmp_path):
    """The trainer's checkpoints, 4 KiB flipped in the newest: evaluate names it and uses the one
    before (or refuses with --no_fallback); rerunning the training command moves it aside with one
    line and resumes from the previous step to the same state as the uninterrupted run."""
    from m2e_jax import train
    from tests.test_reliability_workdir import ROOT, TOTAL, pan_config, run_trainer

    workdir, data = tmp_path / "w", tmp_path / "data"
    r = run_trainer(workdir, data)
    assert r.returncode == 0, r.stderr[-3000:]
    ckdir = workdir / "checkpoints"
    assert checkpoints.complete_steps(str(ckdir)) == [3, 6, TOTAL]
    like = train.init_state(pan_config())
    with checkpoints.Checkpointer(str(ckdir)) as ck:
        uninterrupted = ck.restore(TOTAL, like)
    damaged = flip_4k(ckdir / str(TOTAL))

    env = processes.cpu_env(1)
    evaluate = [sys.executable, "-m", "m2e_jax.evaluate", "--workdir", str(workdir), "--num_examples", "4"]
    ev = subprocess.run(evaluate, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0 and "Traceback" not in ev.stderr, ev.stderr[-3000:]
    warned = [ln for ln in ev.stderr.splitlines() if ln.startswith("m2e_jax.evaluate: warning:")]
    assert len(warned) == 1 and f"checkpoints/{TOTAL} is damaged: {damaged}: " in warned[0], ev.stderr[-2000:]
    assert warned[0].endswith("using step 6 instead")
    assert (workdir / "eval" / "metrics_test_step6.json").is_file()
    ev = subprocess.run(evaluate + ["--no_fallback"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
    assert ev.returncode == 1 and "Traceback" not in ev.stderr, ev.stderr[-3000:]
    refused = f"m2e_jax.evaluate: error: checkpoint {ckdir}/{TOTAL} is damaged: {damaged}"
    assert ev.stderr.strip().splitlines()[-1].startswith(refused), ev.stderr[-2000:]

    r = run_trainer(workdir, data)
    out = r.stdout + r.stderr
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in out and "Event loop is closed" not in out, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if "is damaged" in ln]
    assert len(lines) == 1 and f"checkpoint step {TOTAL} " in lines[0] and damaged in lines[0], lines
    assert "Resumed from step 6" in r.stderr
    assert (ckdir / f"{TOTAL}.corrupt").is_dir() and checkpoints.complete_steps(str(ckdir)) == [3, 6, TOTAL]
    with checkpoints.Checkpointer(str(ckdir)) as ck:
        resumed = ck.restore(TOTAL, like)
    for a, b in zip(leaves(resumed), leaves(uninterrupted), strict=True):
        np.testing.assert_array_equal(a, b)
