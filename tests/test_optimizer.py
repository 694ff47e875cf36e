"""The optimizer: optax schedules and per-group Adam give exactly the hand-written formulas they replaced."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import synthetic
from m2e_jax import optimizer, schedule


def reference_learning_rate(step, base, total, decay_start):
    """The hand-made schedule optimizer.learning_rate_schedule replaced (base, then linear to 0)."""
    start = decay_start * total
    frac = np.clip((total - step) / max(total - start, 1.0), 0.0, 1.0)
    return base * (1.0 if step < start else frac)


@pytest.mark.parametrize("total,decay_start", [(100, 0.5), (1200, 0.5), (5, 0.5), (7, 0.3), (10, 0.0),
                                               (10, 1.0)])
def test_schedule_equals_the_old_formula(total, decay_start):
    sched = optimizer.learning_rate_schedule(2e-4, total, decay_start)
    steps = np.arange(total)  # every step that is trained
    want = [reference_learning_rate(s, 2e-4, total, decay_start) for s in steps]
    # Equal up to float32 rounding (optax computes base * (1 - count / length), the old formula
    # base * (total - step) / length: ~1e-6 relative apart near the end).
    np.testing.assert_allclose(np.asarray(sched(jnp.asarray(steps))), want, rtol=1e-5, atol=1e-12)
    lr = [float(optimizer.learning_rate_schedule(1.0, 100, 0.5)(s)) for s in (0, 49, 50, 75, 100)]
    np.testing.assert_allclose(lr, [1.0, 1.0, 1.0, 0.5, 0.0], atol=1e-6)


def test_update_is_adam_per_group_at_the_global_step_and_leaves_other_groups():
    config = synthetic.get_config("test")
    config.optim.update(b1=0.5, b2=0.999, eps=1e-8, g_lr=1e-2, d_lr=3e-3, decay_start=0.0)
    total = schedule.total_steps(config.schedule)
    rng = np.random.default_rng(0)
    params = {k: {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)} for k in optimizer.GROUPS}
    opt = optimizer.init(params)
    step = jnp.int32(2)
    grads = {"trn": {"w": jnp.ones((3, 2))}, "d_pan": {"w": jnp.full((3, 2), -2.0)}}
    new_params, new_opt = jax.jit(lambda p, o, g, s: optimizer.update(p, o, g, s, config))(
        params, opt, grads, step)
    tx = optax.scale_by_adam(b1=0.5, b2=0.999, eps=1e-8)
    for key, base in (("trn", 1e-2), ("d_pan", 3e-3)):
        u, state = tx.update(grads[key], opt[key], params[key])
        lr = reference_learning_rate(2, base, total, 0.0)
        np.testing.assert_allclose(new_params[key]["w"], params[key]["w"] - lr * u["w"], rtol=1e-6)
        assert int(new_opt[key].count) == 1
        np.testing.assert_allclose(new_opt[key].mu["w"], state.mu["w"])
    for key in set(optimizer.GROUPS) - set(grads):  # frozen this stage: untouched, moments included
        np.testing.assert_array_equal(new_params[key]["w"], params[key]["w"])
        assert int(new_opt[key].count) == 0


def test_all_finite():
    assert bool(optimizer.all_finite({"a": jnp.ones(3), "b": [jnp.zeros((2, 2))]}))
    assert not bool(optimizer.all_finite({"a": jnp.ones(3), "b": [jnp.array([[0.0, jnp.nan]])]}))
    assert not bool(optimizer.all_finite({"a": jnp.array([jnp.inf])}))
