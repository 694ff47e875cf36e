"""Numerical faults: a diverging run (NaN / inf) or a loss spike stops training with a message naming
the step and the loss term, keeps the last good checkpoint and never saves non-finite parameters."""

import os
import re

import jax
import numpy as np
import pytest

from configs import synthetic
from m2e_jax import checkpoints, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic_data"))


def stage1_config(data_dir: str, steps: int):
    c = synthetic.get_config("test")
    c.dataset.data_dir = data_dir
    c.schedule.update(pan_steps=steps, trn_steps=0, ftn_steps=0, joint_steps=0)
    c.checkpoint_every = 1
    c.keep_checkpoints = 10
    c.eval_every = c.image_every = c.log_every = 1000
    return c


def saved_states(workdir: str, config) -> dict[int, dict]:
    with checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")) as ck:
        return {s: ck.restore(s, train.init_state(config)) for s in ck.all_steps()}


def test_spike_guard_per_stream_warmup_and_message():
    guard = train.SpikeGuard(factor=3.0, warmup=3)
    for step, (key, value) in enumerate([((1, True), 1.0)] * 3 + [((4, False), 50.0)] * 3, 1):
        guard.check(step, key, {"g_total": value}, last_good=None)  # a new stream starts its own mean
    guard.check(7, (1, True), {"g_total": 2.9}, last_good=6)  # under 3x the mean of 1.0
    with pytest.raises(FloatingPointError,
                       match=r"loss spike at step 8: g_total = 40 is .*loss_spike_factor = 3.0.*step 6"):
        guard.check(8, (1, True), {"g_total": 40.0}, last_good=6)
    train.SpikeGuard(factor=0.0, warmup=0).check(1, (1, True), {"g_total": 1e30}, None)  # off
    fresh = train.SpikeGuard(factor=3.0, warmup=3)
    for step in range(1, 4):  # no verdict during the warmup, whatever the values
        fresh.check(step, (1, True), {"g_total": 10.0 ** step}, None)


@pytest.mark.slow
def test_diverging_run_stops_names_step_and_term_saves_nothing_non_finite(tmp_path, data_dir):
    """A learning rate of 1e30 blows PAN's weights up at step 1; step 2's losses are inf / NaN."""
    config = stage1_config(data_dir, steps=4)
    config.optim.g_lr = 1e30
    with pytest.raises(FloatingPointError) as err:
        train.train_and_evaluate(config, str(tmp_path))
    msg = str(err.value)
    assert re.search(r"non-finite loss at step 2 \(term '\w+'; all: \[.*'pan_l1'", msg), msg
    assert "last good checkpoint is step 1" in msg, msg
    states = saved_states(str(tmp_path), config)
    assert sorted(states) == [1]
    for leaf in jax.tree.leaves(states[1]):
        assert np.all(np.isfinite(leaf))


@pytest.mark.slow
def test_loss_spike_stops_training_before_saving(tmp_path, data_dir, monkeypatch):
    """The real loop with step 8's reported g_total scaled 100x (a diverging update, as the loss
    sees it): the run stops naming step 8, and checkpoints 1..7 are all that exist."""
    config = stage1_config(data_dir, steps=10)
    config.loss_spike_factor = 5.0
    original = train.Steps.train

    def compiled(self, stage):
        fn = original(self, stage)

        def step(state, batch):
            state, metrics = fn(state, batch)
            if int(par_step(state)) == 8:
                metrics = {**metrics, "g_total": metrics["g_total"] * 100.0}
            return state, metrics
        return step

    def par_step(state):
        return np.asarray(state["step"].addressable_shards[0].data)

    monkeypatch.setattr(train.Steps, "train", compiled)
    with pytest.raises(FloatingPointError, match=r"loss spike at step 8: g_total = .* step 7\."):
        train.train_and_evaluate(config, str(tmp_path))
    assert sorted(saved_states(str(tmp_path), config)) == list(range(1, 8))
