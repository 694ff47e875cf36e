"""Data parallelism: one per-device step, run under `jax.pmap` or `jax.jit` + `jax.shard_map`.

The per-device step `fn(state, batch, *replicated) -> (state, metrics)` sees its shard of the batch
and the whole (replicated) state and extra arguments (weights such as the perceptual loss's VGG),
and averages gradients and metrics itself with `jax.lax.pmean(..., axis_name=AXIS)` (or gathers
per-example outputs with `all_gather`, as scoring does). `DataParallel(mode)` wraps it:

  "shard_map" (default): `jax.jit(jax.shard_map(fn, mesh, in_specs=(P(), P(AXIS)), ...))` on a
      `jax.make_mesh((n,), (AXIS,))` mesh over every device of every process; the state is a
      replicated global array, batches are global arrays sharded along the batch axis.
  "pmap": `jax.pmap(fn, axis_name=AXIS)`; the state carries a leading local-device axis, batches
      are reshaped to `[local_devices, B_local / local_devices, ...]`.

Both put the same numbers through the same per-device code, so they give the same parameters
(tests/test_parallel.py). `put_state` / `get_state` / `put_batch` hide the layout difference from
the training loop; `get_state` always returns host numpy (what checkpoints store).

`initialize_distributed(cfg)` starts multi-host JAX once per process, before any other JAX work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
MODES = ("shard_map", "pmap")
# Any of these means a cluster launcher set up a multi-process job for us.
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


def initialize_distributed(cfg: Any = None) -> bool:
    """Calls `jax.distributed.initialize` when configured or when a launcher's variables are set.

    `cfg` is `config.distributed` (fields: enabled, coordinator_address, num_processes, process_id,
    local_device_ids; empty / -1 means auto-detect; heartbeat_timeout_s: after this long without a
    heartbeat from a process, the others stop with an error naming the dead task rather than wait
    in a collective). Returns True when multi-host was initialised.
    On CPU the collectives go through gloo (the default CPU backend has none across processes).
    """
    enabled = bool(cfg is not None and cfg.enabled)
    from_env = any(k in os.environ for k in _CLUSTER_ENV)
    if not (enabled or from_env):
        return False
    kwargs: dict[str, Any] = {}
    if cfg is not None:
        if cfg.coordinator_address:
            kwargs["coordinator_address"] = cfg.coordinator_address
        if cfg.num_processes >= 0:
            kwargs["num_processes"] = cfg.num_processes
        if cfg.process_id >= 0:
            kwargs["process_id"] = cfg.process_id
        if cfg.local_device_ids:
            kwargs["local_device_ids"] = list(cfg.local_device_ids)
        kwargs["heartbeat_timeout_seconds"] = int(cfg.heartbeat_timeout_s)
    on_cpu = os.environ.get("JAX_PLATFORMS", "").startswith("cpu")
    if on_cpu or (cfg is not None and cfg.cpu_collectives):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    logging.info("jax.distributed: process %d of %d, %d global devices", jax.process_index(),
                 jax.process_count(), jax.device_count())
    return True


class DataParallel:
    """Runs one per-device step data-parallel over all devices (see the module docstring)."""

    def __init__(self, mode: str = "shard_map", devices: list | None = None):
        if mode not in MODES:
            raise ValueError(f"config.parallel: unknown mode {mode!r}; expected one of {MODES}")
        self.mode = mode
        self.devices = list(devices) if devices is not None else jax.devices()
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        self.mesh = jax.sharding.Mesh(np.array(self.devices), (AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P(AXIS))
        # pmap feeds: a mesh over this process's devices whose one axis is the leading pmap axis.
        self._local_mesh = jax.sharding.Mesh(np.array(self.local_devices), (AXIS,))
        self._local_stacked = NamedSharding(self._local_mesh, P(AXIS))

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def compile(self, fn: Callable, donate_state: bool = True, num_replicated: int = 0) -> Callable:
        """fn(state, batch, *replicated) -> outputs, per device -> the data-parallel function.

        `state` is in `put_state`'s layout, `batch` in `put_batch`'s; every output must be the same on
        all devices (pmean'ed, psum'ed or all_gather'ed), and comes back in `put_state`'s layout: read
        it on the host with `get_state`, or feed it back in as the next state.

        `num_replicated` further arguments (e.g. the perceptual loss's VGG weights, LPIPS weights) are
        replicated in `put_state`'s layout and never donated. Passed as arguments they stay device
        buffers put once by the caller; closed over, their tens of MB would be embedded in the
        compiled program as constants, slowing compilation and doubling the memory.
        """
        donate = (0,) if donate_state else ()
        if self.mode == "pmap":
            return jax.pmap(fn, axis_name=AXIS, devices=self.local_devices, donate_argnums=donate)
        # check_vma=False gives pmap's semantics: with it on, the gradient of a replicated input is
        # already summed over devices by autodiff, and the step's own pmean would not average.
        in_specs = (P(), P(AXIS)) + (P(),) * num_replicated
        sharded = jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=P(), check_vma=False)
        return jax.jit(sharded, donate_argnums=donate)

    def put_state(self, tree: Any) -> Any:
        """Host (numpy) state -> this mode's device layout (replicated on every device)."""
        n = len(self.local_devices)

        def put(x):
            x = np.asarray(x)
            if self.mode == "pmap":
                return jax.device_put(np.broadcast_to(x, (n, *x.shape)), self._local_stacked)
            # make_array_from_callback works across processes, where each holds the same host value.
            return jax.make_array_from_callback(x.shape, self.replicated, lambda index: x[index])
        return jax.tree.map(put, tree)

    def get_state(self, tree: Any) -> Any:
        """Device state -> host numpy (one replica)."""
        def one(x):
            shard = np.asarray(x.addressable_shards[0].data)
            return shard[0] if self.mode == "pmap" else shard
        return jax.tree.map(one, tree)

    def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's slice of the global batch ([B_local, ...] numpy) -> device arrays."""
        if self.mode == "pmap":
            n = len(self.local_devices)

            def stack(x):
                if x.shape[0] % n:
                    raise ValueError(f"per-process batch {x.shape[0]} not divisible by {n} local devices")
                return jax.device_put(x.reshape(n, x.shape[0] // n, *x.shape[1:]), self._local_stacked)
            return {k: stack(np.asarray(v)) for k, v in local_batch.items()}
        n = len(self.local_devices)
        bad = [k for k, v in local_batch.items() if np.shape(v)[0] % n]
        if bad:
            raise ValueError(f"per-process batch of {bad} not divisible by {n} local devices")
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
                for k, v in local_batch.items()}
