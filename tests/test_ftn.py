"""FTN: P' equals P exactly outside R~, stays in [-1, 1], gradients reach every parameter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2e_jax.models.ftn import FTN
from tests.model_fixtures import all_leaves_nonzero, random_inputs, tiny_model_config


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_model_config()
    ftn = FTN.from_config(cfg)
    inputs = random_inputs(cfg=cfg)
    refined = jax.random.uniform(jax.random.key(8), (2, 32, 32, 3), minval=-1, maxval=1)
    args = (inputs["person_image"], refined, inputs["region"], inputs["soft_region"], inputs["person_iuv"])
    params = jax.jit(ftn.init)(jax.random.key(0), *args)
    return ftn, params, args


def test_person_kept_outside_soft_region(setup):
    ftn, params, args = setup
    person, _, region, soft, _ = args
    out = jax.jit(ftn.apply)(params, *args)
    assert out.shape == (2, 32, 32, 3) and float(jnp.abs(out).max()) <= 1.0
    outside = np.asarray(soft[..., 0]) == 0
    assert outside.any() and (~outside).any()
    np.testing.assert_array_equal(np.asarray(out)[outside], np.asarray(person)[outside])
    # R~ covers R_P, and inside R_P the output is generated, not P.
    assert bool(jnp.all(soft >= region - 1e-6))
    inside = np.asarray(region[..., 0]) == 1
    assert np.abs(np.asarray(out)[inside] - np.asarray(person)[inside]).mean() > 1e-2


def test_gradients_reach_every_parameter(setup):
    ftn, params, args = setup
    grads = jax.jit(jax.grad(lambda p: jnp.mean(ftn.apply(p, *args) ** 2)))(params)
    assert all_leaves_nonzero(grads) == []
