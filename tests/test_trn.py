"""TRN: alpha in [0, 1], the documented blend inside R_P, A outside, gradients everywhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2e_jax.models.trn import TRN
from m2e_jax.ops.flow_warp import flow_warp
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


def test_offset_field_moves_the_warp_it_blends(setup):
    """model.trn_offset: TRN's field o in [-1, 1] moves W and V by o * trn_offset pixels
    (ops/flow_warp.py) and T blends the moved W'; the field's own output channels get gradients
    through that blend. Off (0, the paper's TRN), there is no field and T blends W itself."""
    _, _, args = setup
    aligned, warped, valid, region, _ = args
    assert "trn_offset" not in jax.jit(setup[0].apply)(setup[1], *args)
    trn = TRN.from_config(tiny_model_config(trn_offset=2.0))
    assert trn.max_offset == 2.0
    params = jax.jit(trn.init)(jax.random.key(0), *args)
    out = jax.jit(trn.apply)(params, *args)
    offset = np.asarray(out["trn_offset"])
    assert offset.shape == (2, 32, 32, 2) and np.abs(offset).max() <= 1.0 and offset.std() > 1e-3
    np.testing.assert_allclose(out["moved_warped"], flow_warp(warped, offset * 2.0), atol=1e-6)
    np.testing.assert_allclose(out["moved_valid"], flow_warp(valid, offset * 2.0), atol=1e-6)
    assert float(jnp.abs(out["moved_warped"] - warped).max()) > 0.1  # it really moved
    inside = np.asarray(region[..., 0]) == 1
    blend = out["alpha"] * out["moved_warped"] + (1 - out["alpha"]) * out["texture"]
    np.testing.assert_allclose(np.asarray(out["refined"])[inside], np.asarray(blend)[inside], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["refined"])[~inside], np.asarray(aligned)[~inside])

    def loss(p):  # only through T: the field's gradient comes from the moved warp alone
        return jnp.mean(trn.apply(p, *args)["refined"] ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    head = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(grads)
            if leaf.ndim == 4 and leaf.shape[-1] == 6]  # the last conv: texture, alpha, field
    assert len(head) == 1 and float(jnp.abs(head[0][..., 4:]).max()) > 0
