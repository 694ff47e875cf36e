"""PAN: [-1, 1] output of the right shape, gradients reach every parameter, any valid size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2e_jax.models.pan import PAN
from tests.model_fixtures import all_leaves_nonzero, random_inputs, tiny_model_config


def _args(inputs):
    return (inputs["model_image"], inputs["model_iuv"], inputs["person_iuv"], inputs["warped"],
            inputs["valid"])


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_model_config()
    pan = PAN.from_config(cfg)
    inputs = random_inputs(cfg=cfg)
    params = jax.jit(pan.init)(jax.random.key(0), *_args(inputs))
    return pan, params, inputs


def test_output_range_and_dependence(setup):
    pan, params, inputs = setup
    a = jax.jit(pan.apply)(params, *_args(inputs))
    assert a.shape == (2, 32, 32, 3) and a.dtype == jnp.float32
    assert float(jnp.abs(a).max()) <= 1.0 and float(jnp.std(a)) > 1e-3
    # The output depends on the person's pose (enc(I_P) is an input).
    args = list(_args(inputs))
    args[2] = jnp.roll(args[2], 5, axis=2)
    assert float(jnp.abs(jax.jit(pan.apply)(params, *args) - a).max()) > 1e-4


def test_gradients_reach_every_parameter(setup):
    pan, params, inputs = setup
    target = jax.random.uniform(jax.random.key(3), (2, 32, 32, 3), minval=-1, maxval=1)
    loss = lambda p: jnp.mean(jnp.abs(pan.apply(p, *_args(inputs)) - target))
    grads = jax.jit(jax.grad(loss))(params)
    assert all_leaves_nonzero(grads) == []
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))


def test_other_sizes_and_bad_size():
    cfg = tiny_model_config(base_channels=4, pan_blocks=0)
    pan = PAN.from_config(cfg)
    inputs = random_inputs(h=16, w=24, cfg=cfg)
    a, _ = jax.jit(pan.init_with_output)(jax.random.key(0), *_args(inputs))
    assert a.shape == (2, 16, 24, 3)
    np.testing.assert_array_less(np.abs(np.asarray(a)), 1.0 + 1e-6)
    bad = random_inputs(h=18, w=24, cfg=cfg)
    with pytest.raises(ValueError, match="18x24 must be divisible by 4"):
        pan.init(jax.random.key(0), *_args(bad))


def test_pan_without_the_warp_input_ignores_it(setup):
    """model.pan_inputs="model_only" (the ablation): A = G([M, enc(I_M), enc(I_P)]), W and V unused."""
    pan, params, inputs = setup
    cfg = tiny_model_config()
    cfg.pan_inputs = "model_only"
    plain = PAN.from_config(cfg)
    p = jax.jit(plain.init)(jax.random.key(0), *_args(inputs))
    a = jax.jit(plain.apply)(p, *_args(inputs))
    args = list(_args(inputs))
    args[3], args[4] = -args[3], 1.0 - args[4]
    np.testing.assert_array_equal(jax.jit(plain.apply)(p, *args), a)
    # The default PAN does read them, and has 4 more input channels in its first conv.
    moved = jax.jit(pan.apply)(params, *args) - jax.jit(pan.apply)(params, *_args(inputs))
    assert float(jnp.abs(moved).max()) > 1e-4
    first = lambda tree: next(x for x in jax.tree.leaves(tree) if x.ndim == 4)
    assert first(params).shape[2] == first(p).shape[2] + 4
    cfg.pan_inputs = "neither"
    with pytest.raises(ValueError, match="pan_inputs"):
        PAN.from_config(cfg).init(jax.random.key(0), *_args(inputs))
