"""Checkpoints: exact round trip, keep-N, the config beside each step, no NaN saves, SIGTERM flag."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from configs import synthetic
from m2e_jax import checkpointing, checkpoints


def tree(seed: int):
    rng = np.random.default_rng(seed)
    return {"step": np.int32(seed), "params": {"w": rng.normal(size=(3, 4)).astype(np.float32),
                                               "b": rng.normal(size=(4,)).astype(np.float32)},
            "opt": [np.int32(7), rng.normal(size=(2,)).astype(np.float32)]}


@pytest.mark.parametrize("async_save", [True, False])
def test_round_trip_keep_n_and_config(tmp_path, async_save):
    cfg = synthetic.get_config("test")
    with checkpoints.Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2, async_save=async_save) as ck:
        for step in (1, 2, 3):
            ck.save(step, tree(step), cfg)
        ck.wait()
        assert ck.all_steps() == [2, 3] and ck.latest_step() == 3
        got = ck.restore(3, tree(0))
        for a, b in zip(_leaves(got), _leaves(tree(3)), strict=True):
            np.testing.assert_array_equal(a, b)
        assert got["params"]["w"].dtype == np.float32 and int(got["step"]) == 3
        saved = ck.restore_config(3)
    assert saved == json.loads(cfg.to_json_best_effort())
    # A fresh manager on the same directory finds the latest step (what a restarted job does).
    ck2 = checkpoints.Checkpointer(str(tmp_path / "ckpt"))
    assert ck2.latest_step() == 3
    ck2.close()


def _leaves(t):
    import jax

    return jax.tree.leaves(t)


def test_refuses_non_finite_state(tmp_path):
    bad = tree(1)
    bad["params"]["b"][2] = np.nan
    with checkpoints.Checkpointer(str(tmp_path), async_save=False) as ck:
        with pytest.raises(FloatingPointError, match=r"step 5.*\['params'\]\['b'\]"):
            ck.save(5, bad, synthetic.get_config("test"))
        assert ck.latest_step() is None


def test_write_config(tmp_path):
    cfg = synthetic.get_config("test")
    path = checkpoints.write_config(str(tmp_path / "w"), cfg)
    with open(path) as f:
        assert json.load(f)["model"]["height"] == cfg.model.height


def test_preemption_flag_catches_sigterm_and_restores_handler():
    before = signal.getsignal(signal.SIGTERM)
    with checkpoints.PreemptionFlag() as flag:
        assert not flag.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.is_set()
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------- the step layout and damage

def big_tree(seed: int):
    """A state whose largest array (64 KiB) gets a data file of its own, larger than 4 KiB."""
    t = tree(seed)
    t["params"]["big"] = np.random.default_rng(seed).normal(size=(128, 128)).astype(np.float32)
    return t


def flip_4k(step_dir) -> str:
    """Inverts 4 KiB in the middle of the largest data file below `step_dir/state` (as a bad disk or
    an interrupted copy does); returns that file relative to step_dir."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs
             if os.sep + "d" + os.sep in os.path.join(d, f)]
    path = max(files, key=os.path.getsize)
    size = os.path.getsize(path)
    assert size > 8192, size
    with open(path, "r+b") as f:
        f.seek(size // 2 - 2048)
        block = f.read(4096)
        f.seek(size // 2 - 2048)
        f.write(bytes(b ^ 0xFF for b in block))
    return os.path.relpath(path, step_dir)


@pytest.mark.parametrize("async_save", [True, False])
def test_hashes_of_every_file_after_commit_in_sha256sum_format(tmp_path, async_save):
    cfg = synthetic.get_config("test")
    with checkpoints.Checkpointer(str(tmp_path), max_to_keep=2, async_save=async_save) as ck:
        for step in (1, 2, 3):
            ck.save(step, big_tree(step), cfg)
    for step in (2, 3):
        step_dir = tmp_path / str(step)
        listed = sorted(line.split("  ", 1)[1].strip() for line in open(step_dir / checkpoints.HASHES))
        on_disk = sorted(os.path.relpath(os.path.join(d, f), step_dir) for d, _, fs in os.walk(step_dir)
                         for f in fs if f != checkpoints.HASHES)
        assert listed == on_disk and any(p.startswith("state/") for p in listed)
        assert checkpoints.check_hashes(str(step_dir))
        if shutil.which("sha256sum"):  # the coreutils tool reads the same file
            r = subprocess.run(["sha256sum", "--quiet", "-c", checkpoints.HASHES], cwd=step_dir,
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr


def remove_a_listed_data_file(step_dir) -> str:
    """Deletes the largest array data file that `step_dir/SHA256SUMS` lists; returns its name there."""
    listed = [line.rstrip("\n").split("  ", 1)[1] for line in open(step_dir / checkpoints.HASHES)]
    arrays = [r for r in listed if r.startswith("state" + os.sep)]
    rel = max(arrays, key=lambda r: os.path.getsize(step_dir / r))
    os.remove(step_dir / rel)
    return rel


@pytest.mark.parametrize("damage", [flip_4k, remove_a_listed_data_file])
def test_a_damaged_newest_step_is_moved_aside_and_training_resumes_from_the_previous(tmp_path, caplog,
                                                                                     damage):
    """Bytes flipped in a data file, or a file SHA256SUMS lists gone from the step (an interrupted
    copy): either is named as damaged, with the file, and the step moved aside like a corrupt one."""
    cfg = synthetic.get_config("test")
    with checkpoints.Checkpointer(str(tmp_path), async_save=False) as ck:
        for step in (1, 2):
            ck.save(step, big_tree(step), cfg)
    damaged = damage(tmp_path / "2")
    with checkpoints.Checkpointer(str(tmp_path)) as ck:
        step, state = ck.restore_latest(big_tree(0))
        assert step == 1 and ck.all_steps() == [1]
    for a, b in zip(_leaves(state), _leaves(big_tree(1)), strict=True):
        np.testing.assert_array_equal(a, b)
    lines = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(lines) == 1 and "checkpoint step 2" in lines[0] and damaged in lines[0], lines
    if damage is remove_a_listed_data_file:
        assert f"missing (listed in {checkpoints.HASHES})" in lines[0], lines
    assert (tmp_path / "2.corrupt").is_dir() and not (tmp_path / "2").exists()  # moved, never deleted


def test_unhashed_steps_are_read_back_non_finite_and_truncated_ones_refused(tmp_path, caplog, capfd):
    """Steps without SHA256SUMS (older ones, or killed before hashing) are checked by reading them."""
    cfg = synthetic.get_config("test")
    with checkpoints.Checkpointer(str(tmp_path), async_save=False) as ck:
        ck.save(1, big_tree(1), cfg)
        ck.save(2, big_tree(2), cfg)
        nan = big_tree(3)
        nan["params"]["w"][1, 2] = np.inf
        args = checkpoints.ocp.args.Composite(state=checkpoints.ocp.args.StandardSave(nan),
                                                config=checkpoints.ocp.args.JsonSave({}))
        ck.manager.save(3, args=args, force=True)  # past Checkpointer.save's refusal, as a bad disk could
    os.remove(tmp_path / "2" / checkpoints.HASHES)
    data = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "2" / "state") for f in fs
            if os.sep + "d" + os.sep in os.path.join(d, f)]
    os.truncate(max(data, key=os.path.getsize), 100)
    with checkpoints.Checkpointer(str(tmp_path)) as ck:
        assert ck.restore_latest(big_tree(0))[0] == 1
    lines = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "step 3" in lines[0] and "state['params']['w']: non-finite values" in lines[0]
    assert "step 2" in lines[1] and re.search(r"state array params\.\w+/[\d.]+: unreadable", lines[1])
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Event loop is closed" not in err, err


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
    for a, b in zip(_leaves(got), _leaves(params[2]), strict=True):
        np.testing.assert_array_equal(a, b)

    damaged = flip_4k(tmp_path / "w" / "checkpoints" / "2")
    warnings = []
    located = checkpointing.find_step(workdir="w")
    _, got, step_dir = checkpointing.load_generators(located, warn=warnings.append)
    assert step_dir.endswith(os.path.join("checkpoints", "1"))
    for a, b in zip(_leaves(got), _leaves(params[1]), strict=True):
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

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
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
    for a, b in zip(_leaves(resumed), _leaves(uninterrupted), strict=True):
        np.testing.assert_array_equal(a, b)
