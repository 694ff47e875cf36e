"""m2e_jax/checkpoints.py (the Checkpointer): exact round trip, keep-N, the config beside each step,
no NaN saves, the SIGTERM flag, SHA256SUMS of every step and damaged steps moved aside."""

import json
import os
import re
import shutil
import signal
import subprocess

import numpy as np
import pytest

from configs import synthetic
from m2e_jax import checkpoints


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
        for a, b in zip(leaves(got), leaves(tree(3)), strict=True):
            np.testing.assert_array_equal(a, b)
        assert got["params"]["w"].dtype == np.float32 and int(got["step"]) == 3
        saved = ck.restore_config(3)
    assert saved == json.loads(cfg.to_json_best_effort())
    # A fresh manager on the same directory finds the latest step (what a restarted job does).
    ck2 = checkpoints.Checkpointer(str(tmp_path / "ckpt"))
    assert ck2.latest_step() == 3
    ck2.close()


def leaves(t):
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
    for a, b in zip(leaves(state), leaves(big_tree(1)), strict=True):
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
