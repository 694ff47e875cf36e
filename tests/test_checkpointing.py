"""Checkpoints: exact round trip, keep-N, the config beside each step, no NaN saves, SIGTERM flag."""

import json
import os
import signal

import numpy as np
import pytest

from configs import synthetic
from m2e_jax import checkpointing


def tree(seed: int):
    rng = np.random.default_rng(seed)
    return {"step": np.int32(seed), "params": {"w": rng.normal(size=(3, 4)).astype(np.float32),
                                               "b": rng.normal(size=(4,)).astype(np.float32)},
            "opt": [np.int32(7), rng.normal(size=(2,)).astype(np.float32)]}


@pytest.mark.parametrize("async_save", [True, False])
def test_round_trip_keep_n_and_config(tmp_path, async_save):
    cfg = synthetic.get_config("test")
    with checkpointing.Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2, async_save=async_save) as ck:
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
    ck2 = checkpointing.Checkpointer(str(tmp_path / "ckpt"))
    assert ck2.latest_step() == 3
    ck2.close()


def _leaves(t):
    import jax

    return jax.tree.leaves(t)


def test_refuses_non_finite_state(tmp_path):
    bad = tree(1)
    bad["params"]["b"][2] = np.nan
    with checkpointing.Checkpointer(str(tmp_path), async_save=False) as ck:
        with pytest.raises(FloatingPointError, match=r"step 5.*\['params'\]\['b'\]"):
            ck.save(5, bad, synthetic.get_config("test"))
        assert ck.latest_step() is None


def test_write_config(tmp_path):
    cfg = synthetic.get_config("test")
    path = checkpointing.write_config(str(tmp_path / "w"), cfg)
    with open(path) as f:
        assert json.load(f)["model"]["height"] == cfg.model.height


def test_preemption_flag_catches_sigterm_and_restores_handler():
    before = signal.getsignal(signal.SIGTERM)
    with checkpointing.PreemptionFlag() as flag:
        assert not flag.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.is_set()
    assert signal.getsignal(signal.SIGTERM) is before
