"""The optimizer: one optax Adam per network group, the learning rate an optax schedule of the step.

Groups: the generators "pan", "trn", "ftn" (config.optim.g_lr) and the discriminators "d_pan",
"d_final" (config.optim.d_lr). The state is `{group: optax.ScaleByAdamState}`, the layout every
checkpoint holds.

Why per group and not one `optax.multi_transform`: a stage trains only some groups (train.stage_groups)
and a frozen group must keep its Adam moments and count untouched, not decay them with zero
gradients; and the learning rate is a pure function of the global step (schedule.py: resume needs
nothing but the step), while an optax schedule inside a transform counts that transform's own
updates, which differ per group once stages freeze some of them. multi_transform / masked would
also change the state's structure from stage to stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from m2e_jax import schedule
from m2e_jax.models.tryon import NETWORKS

DISCRIMINATORS = ("d_pan", "d_final")
GROUPS = NETWORKS + DISCRIMINATORS


def learning_rate_schedule(base: float, total: int, decay_start: float) -> optax.Schedule:
    """base until decay_start * total steps, then linear to 0 at `total`."""
    start = decay_start * total
    decay = optax.linear_schedule(base, 0.0, transition_steps=max(total - start, 1.0))
    return optax.join_schedules([optax.constant_schedule(base), decay], boundaries=[start])


def learning_rates(config) -> dict[str, optax.Schedule]:
    """{group: schedule of the global step} from config.optim and the schedule's total steps."""
    o, total = config.optim, schedule.total_steps(config.schedule)
    g = learning_rate_schedule(o.g_lr, total, o.decay_start)
    d = learning_rate_schedule(o.d_lr, total, o.decay_start)
    return {k: g if k in NETWORKS else d for k in GROUPS}


def adam(config) -> optax.GradientTransformation:
    """Adam's scaling (config.optim b1, b2, eps) without the learning rate, which `update` applies."""
    return optax.scale_by_adam(b1=config.optim.b1, b2=config.optim.b2, eps=config.optim.eps)


def init(params: Mapping[str, Any]) -> dict[str, Any]:
    """Fresh optimizer state `{group: ScaleByAdamState}` (its structure does not depend on b1, b2, eps)."""
    tx = optax.scale_by_adam()
    return {k: tx.init(v) for k, v in params.items()}


def update(params: dict, opt_state: dict, grads: Mapping[str, Any], step: jax.Array, config
           ) -> tuple[dict, dict]:
    """One Adam step of the groups in `grads` at global `step`; the other groups are left as they are."""
    tx, lrs = adam(config), learning_rates(config)
    new_params, new_opt = dict(params), dict(opt_state)
    for key, g in grads.items():
        updates, new_opt[key] = tx.update(g, opt_state[key], params[key])
        updates = optax.tree_utils.tree_scale(-lrs[key](step), updates)
        new_params[key] = optax.apply_updates(params[key], updates)
    return new_params, new_opt


def all_finite(tree: Any) -> jax.Array:
    """True when every leaf of `tree` is finite (bool scalar)."""
    # One check on the concatenated leaves: a reduction per leaf gets fused into every gradient
    # computation (a third of the step's compile time and 3.5x its HLO on CPU; see benchmarks/RESULTS.md).
    flat = jnp.concatenate([jnp.ravel(v).astype(jnp.float32) for v in jax.tree.leaves(tree)])
    return jnp.all(jnp.isfinite(flat))
