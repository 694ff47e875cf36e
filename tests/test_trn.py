"""TRN: alpha in [0, 1], the documented blend inside R_P, A outside, gradients everywhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2e_jax.models.trn import TRN
from tests.model_fixtures import all_leaves_nonzero, random_inputs, tiny_model_config


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_model_config()
    trn = TRN.from_config(cfg)
    inputs = random_inputs(cfg=cfg)
    aligned = jax.random.uniform(jax.random.key(7), (2, 32, 32, 3), minval=-1, maxval=1)
    args = (aligned, inputs["warped"], inputs["valid"], inputs["region"], inputs["person_iuv"])
    params = jax.jit(trn.init)(jax.random.key(0), *args)
    return trn, params, args


def test_blend_and_ranges(setup):
    trn, params, args = setup
    aligned, warped, _, region, _ = args
    out = jax.jit(trn.apply)(params, *args)
    alpha, texture, refined = out["alpha"], out["texture"], out["refined"]
    assert alpha.shape == (2, 32, 32, 1) and texture.shape == refined.shape == (2, 32, 32, 3)
    assert 0.0 <= float(alpha.min()) and float(alpha.max()) <= 1.0 and float(jnp.std(alpha)) > 1e-4
    assert float(jnp.abs(texture).max()) <= 1.0 and float(jnp.abs(refined).max()) <= 1.0
    inside = np.asarray(region[..., 0]) == 1
    assert inside.any() and (~inside).any()
    np.testing.assert_array_equal(np.asarray(refined)[~inside], np.asarray(aligned)[~inside])
    blend = alpha * warped + (1 - alpha) * texture
    np.testing.assert_allclose(np.asarray(refined)[inside], np.asarray(blend)[inside], atol=1e-6)


def test_gradients_reach_every_parameter(setup):
    trn, params, args = setup

    def loss(p):
        out = trn.apply(p, *args)
        return jnp.mean(out["refined"] ** 2) + jnp.mean(out["alpha"])

    grads = jax.jit(jax.grad(loss))(params)
    assert all_leaves_nonzero(grads) == []
