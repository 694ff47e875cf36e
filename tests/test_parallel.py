"""Data parallelism: pmap and jit + shard_map run one per-device step to the same numbers."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2e_jax import parallel
from tests import processes


def sgd_step(state, batch):
    """Least squares on this device's rows; gradients averaged over the data axis."""
    def loss(w):
        return jnp.mean((batch["x"] @ w - batch["y"]) ** 2)

    value, grad = jax.value_and_grad(loss)(state["w"])
    grad = jax.lax.pmean(grad, parallel.AXIS)
    return {"w": state["w"] - 0.1 * grad, "step": state["step"] + 1}, jax.lax.pmean(value, parallel.AXIS)


def data(seed, n=8):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return {"x": x, "y": (x @ np.array([1.0, -2.0, 0.5], np.float32))[:, None]}


def run(par, steps=5):
    state = par.put_state({"w": np.zeros((3, 1), np.float32), "step": np.int32(0)})
    fn = par.compile(sgd_step)
    losses = []
    for s in range(steps):
        state, loss = fn(state, par.put_batch(data(s)))
        losses.append(float(par.get_state(loss)))
    return par.get_state(state), losses


def test_pmap_shard_map_and_one_device_agree():
    assert jax.device_count() == 4, "conftest should provide 4 simulated devices"
    results = {mode: run(parallel.DataParallel(mode)) for mode in parallel.MODES}
    single = run(parallel.DataParallel("shard_map", devices=jax.devices()[:1]))
    for state, losses in list(results.values()) + [single]:
        np.testing.assert_allclose(state["w"], single[0]["w"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(losses, single[1], rtol=1e-5)
        assert int(state["step"]) == 5
    assert single[1][-1] < single[1][0]  # it does learn


@pytest.mark.parametrize("mode", parallel.MODES)
def test_replicated_arguments_are_kept_and_gathered_outputs_are_global(mode):
    """compile(num_replicated=1): state donated and pmean'ed per device, the extra argument
    replicated and not donated; an all_gather'ed output is the whole global batch, in order."""
    par = parallel.DataParallel(mode, devices=jax.devices()[:2])

    def fn(state, batch, weights):
        g = jax.lax.pmean(jnp.mean(batch["x"]) * weights["w"], parallel.AXIS)
        rows = jax.lax.all_gather(batch["x"] * weights["w"], parallel.AXIS, tiled=True)
        return {"s": state["s"] + g}, {"g": g, "rows": rows}

    step = par.compile(fn, num_replicated=1)
    weights = par.put_state({"w": np.float32(3.0)})
    state = par.put_state({"s": np.float32(1.0)})
    batch = {"x": np.arange(4, dtype=np.float32)}
    for _ in range(2):
        state, metrics = step(state, par.put_batch(batch), weights)
    host = par.get_state(metrics)
    assert float(host["g"]) == 4.5  # mean(0..3) * 3
    np.testing.assert_array_equal(host["rows"], 3.0 * batch["x"])
    assert float(par.get_state(state)["s"]) == 10.0
    assert float(par.get_state(weights)["w"]) == 3.0  # not donated: still readable


@pytest.mark.parametrize("mode", parallel.MODES)
def test_layouts(mode):
    par = parallel.DataParallel(mode)
    host = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.int32(3)}
    dev = par.put_state(host)
    back = par.get_state(dev)
    np.testing.assert_array_equal(back["a"], host["a"])
    assert int(back["s"]) == 3
    batch = par.put_batch({"x": np.arange(8 * 2, dtype=np.float32).reshape(8, 2)})["x"]
    if mode == "pmap":
        assert batch.shape == (4, 2, 2)
        np.testing.assert_array_equal(np.asarray(batch).reshape(8, 2), np.arange(16).reshape(8, 2))
    else:
        assert batch.shape == (8, 2)
        assert [s.data.shape for s in batch.addressable_shards] == [(2, 2)] * 4
    with pytest.raises(ValueError, match="divisible"):
        par.put_batch({"x": np.zeros((6, 2), np.float32)})


def test_unknown_mode():
    with pytest.raises(ValueError, match="config.parallel: unknown mode 'gspmd'"):
        parallel.DataParallel("gspmd")


def test_no_distributed_init_without_config_or_launcher(monkeypatch):
    for k in parallel._CLUSTER_ENV:
        monkeypatch.delenv(k, raising=False)
    assert parallel.initialize_distributed(None) is False


WORKER = """
import sys
from configs import synthetic
from m2e_jax import train
c = synthetic.get_config("test")
c.dataset.data_dir = sys.argv[1]
c.schedule.update(pan_steps=3, trn_steps=0, ftn_steps=0, joint_steps=0)
c.eval_every = c.image_every = c.checkpoint_every = 3
c.optim.eps = 1e-3
c.distributed.update(enabled=True, coordinator_address=sys.argv[3], num_processes=2,
                     process_id=int(sys.argv[4]), cpu_collectives=True)
train.train_and_evaluate(c, sys.argv[2])
import jax
print("processes", jax.process_count(), "devices", jax.device_count())
"""


@pytest.mark.slow
def test_two_processes_train_in_lock_step_like_one(tmp_path, fake_gcs, gcs_env):
    """2 processes x 2 CPU devices (gloo collectives) == 1 process x 4 devices, same global batch.

    The two processes share a workdir in a bucket (fake-gcs-server on 127.0.0.1, as a TPU pod
    slice's hosts do): one checkpoint set, written collectively, one config and eval table
    (process 0's), both locks released, nothing written to a local `gs:` folder."""
    import portpicker

    from configs import synthetic
    from m2e_jax import checkpoints, train
    from m2e_jax import workdir as workdir_lib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = str(tmp_path / "data")
    config = synthetic.get_config("test")
    config.dataset.data_dir = data
    config.schedule.update(pan_steps=3, trn_steps=0, ftn_steps=0, joint_steps=0)
    config.eval_every = config.image_every = config.checkpoint_every = 3
    config.optim.eps = 1e-3  # zero-gradient parameters then stay put (see test_train.tiny_config)
    one = train.train_and_evaluate(config, str(tmp_path / "one"))  # also renders the shared data

    address = f"127.0.0.1:{portpicker.pick_unused_port()}"
    env = processes.cpu_env(2, PYTHONPATH=root)
    two = fake_gcs.bucket("lockstep") + "/two"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, data, two, address, str(i)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert all("processes 2 devices 4" in out for out in outs)

    objects = fake_gcs.objects("lockstep")
    steps = {name.split("/")[2] for name in objects if name.startswith("two/checkpoints/")}
    assert steps == {"3"}, sorted(objects)  # one set: no per-process copies, no leftover temporaries
    assert "two/config.json" in objects and "two/checkpoints/3/SHA256SUMS" in objects
    assert not any("lock" in name for name in objects), sorted(objects)
    assert not (tmp_path / "gs:").exists()

    def params(workdir):
        with checkpoints.Checkpointer(workdir_lib.path(workdir) / "checkpoints") as ck:
            return ck.restore(3, train.init_state(config))

    a, b = params(str(tmp_path / "one")), params(two)
    init = train.init_state(config)
    for x, y, z in zip(*(jax.tree.leaves(t["params"]) for t in (a, b, init))):
        np.testing.assert_allclose(x - z, y - z, rtol=2e-2, atol=1e-4)  # updates, as in test_train
    table = json.loads(train.eval_file(two, 3).read_text())["metrics"]
    for subset in one:
        for k, v in one[subset]["tryon"].items():
            np.testing.assert_allclose(table[subset]["tryon"][k], v, rtol=1e-3)
