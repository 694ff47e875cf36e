"""Multi-process: when one of two `jax.distributed` processes dies, the other stops with an error
naming the cause within a bounded time instead of waiting forever in a collective.

(Lock-step equality of 2 processes with the 1-process run is tests/test_parallel.py's
test_two_processes_train_in_lock_step_like_one.) The workers run the real `parallel` code
(initialize_distributed from config.distributed, DataParallel, a psum step) without the
networks, so no model compile is needed.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests import processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEARTBEAT_S = 5
WORKER = """
import sys, time
import jax, jax.numpy as jnp, numpy as np
from configs import default
from m2e_jax import parallel
cfg = default.get_config().distributed
cfg.update(enabled=True, coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]),
           heartbeat_timeout_s=int(sys.argv[3]))
parallel.initialize_distributed(cfg)
par = parallel.DataParallel("shard_map")

def step(state, batch):
    total = jax.lax.psum(jnp.sum(batch["x"]), parallel.AXIS)
    return {"w": state["w"] + total}, total

fn = par.compile(step)
state = par.put_state({"w": np.float32(0)})
for i in range(100_000):
    state, total = fn(state, par.put_batch({"x": np.ones((1, 3), np.float32)}))
    print("step", i, float(par.get_state(total)), flush=True)
    time.sleep(0.05)
"""
CLEAR = ("another task died", "heartbeat timeout", "Connection closed by peer", "unhealthy")


def start(address: str, index: int) -> subprocess.Popen:
    env = processes.cpu_env(1, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-u", "-c", WORKER, address, str(index), str(HEARTBEAT_S)],
                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen, needle: str, lines: list[str], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            return
        assert time.time() < deadline, "".join(lines[-20:])
    raise AssertionError(f"worker exited before {needle!r}:\n{''.join(lines[-30:])}")


@pytest.mark.slow
@pytest.mark.parametrize("dies", [1, 0], ids=["worker_dies", "coordinator_dies"])
def test_survivor_exits_with_a_clear_error_in_bounded_time(dies):
    import portpicker

    address = f"127.0.0.1:{portpicker.pick_unused_port()}"
    procs = [start(address, i) for i in range(2)]
    try:
        logs: list[list[str]] = [[], []]
        for proc, lines in zip(procs, logs):
            wait_for(proc, "step 3 6.0", lines)  # both in lock step: 3 + 3 ones summed over processes
        survivor = procs[1 - dies]
        procs[dies].send_signal(signal.SIGKILL)
        t0 = time.time()
        out, _ = survivor.communicate(timeout=HEARTBEAT_S * 8)
        took = time.time() - t0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    out = "".join(logs[1 - dies]) + out
    assert survivor.returncode != 0, out[-3000:]
    assert took < HEARTBEAT_S * 6, f"survivor took {took:.1f} s to stop"
    assert any(c in out for c in CLEAR), out[-3000:]
