"""FTN: P' equals P exactly outside R~, stays in [-1, 1], gradients reach every parameter; the
composite passes the pasted garment through its mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2e_jax.models.ftn import FTN, fit_output, input_composite, relight
from tests.model_fixtures import all_leaves_nonzero, random_inputs, tiny_model_config


@pytest.fixture(scope="module")
def args():
    inputs = random_inputs(cfg=tiny_model_config())
    refined = jax.random.uniform(jax.random.key(8), (2, 32, 32, 3), minval=-1, maxval=1)
    return (inputs["person_image"], refined, inputs["region"], inputs["soft_region"], inputs["person_iuv"])


@pytest.fixture(scope="module")
def setup(args):
    ftn = FTN.from_config(tiny_model_config())
    params = jax.jit(ftn.init)(jax.random.key(0), *args)
    apply = jax.jit(lambda p, *a: ftn.apply(p, *a, with_mask=True))
    return ftn, params, apply


def test_person_kept_outside_soft_region(setup, args):
    ftn, params, apply = setup
    person, refined, region, soft, _ = args
    out, mask = apply(params, *args)
    assert out.shape == (2, 32, 32, 3) and float(jnp.abs(out).max()) <= 1.0
    outside = np.asarray(soft[..., 0]) == 0
    assert outside.any() and (~outside).any()
    np.testing.assert_array_equal(np.asarray(out)[outside], np.asarray(person)[outside])
    # R~ covers R_P, and inside R_P the output is not P.
    assert bool(jnp.all(soft >= region - 1e-6))
    inside = np.asarray(region[..., 0]) == 1
    assert np.abs(np.asarray(out)[inside] - np.asarray(person)[inside]).mean() > 1e-2
    pasted = input_composite(person, refined, region)
    gap = float(jnp.abs(out - pasted)[inside].mean())
    # m ~ sigmoid(3) at initialisation (the fixture's offset): P' starts close to the pasted composite x.
    assert 0.0 <= float(mask.min()) and float(mask.max()) <= 1.0
    assert 0.85 < float(mask.mean()) < 0.99
    assert gap < 0.1, gap


def test_gradients_reach_every_parameter(setup, args):
    ftn, params, _ = setup
    grads = jax.jit(jax.grad(lambda p: jnp.mean(ftn.apply(p, *args) ** 2)))(params)
    assert all_leaves_nonzero(grads) == []


def test_composite_passes_texture_through_exactly(args):
    """With the mask saturated at 1, P' = R~ * x + (1 - R~) * P: T's pixels are not re-synthesised."""
    person, refined, region, soft, _ = args
    ftn = FTN.from_config(tiny_model_config(), mask_offset=40.0)
    params = jax.jit(ftn.init)(jax.random.key(1), *args)
    out = jax.jit(ftn.apply)(params, *args)
    expected = soft * input_composite(person, refined, region) + (1.0 - soft) * person
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_relight_starts_at_gain_one_and_relights_the_pasted_garment(args):
    """model.ftn_relight: the gain head's last layer starts at zero, so P' is the unrelit FTN's with
    the same generator; with a gain, the pasted T in P's composite is T * gain on [0, 1] intensity
    (`fit_output` with the gain map), and the gradient reaches the head."""
    person, refined, region, soft, iuv = args
    model_image = jax.random.uniform(jax.random.key(9), person.shape, minval=-1, maxval=1)
    lit_ftn = FTN.from_config(tiny_model_config(ftn_relight="gain"), mask_offset=40.0)
    plain_ftn = FTN.from_config(tiny_model_config(), mask_offset=40.0)
    params = jax.jit(lit_ftn.init)(jax.random.key(1), *args, model_image=model_image)
    apply = jax.jit(lambda p, m: lit_ftn.apply(p, *args, with_parts=True, model_image=m))
    parts = apply(params, model_image)
    np.testing.assert_array_equal(parts["gain"], 1.0)
    plain = {"params": {k: v for k, v in params["params"].items() if k != "relight"}}
    np.testing.assert_allclose(parts["output"], jax.jit(plain_ftn.apply)(plain, *args), atol=1e-6)
    params["params"]["relight"]["Dense_0"]["bias"] = jnp.asarray([0.6, 0.0, -0.6])
    parts = apply(params, model_image)
    gain = np.exp(0.5 * np.tanh([0.6, 0.0, -0.6]))
    np.testing.assert_allclose(parts["gain"][:, 3, 4], np.broadcast_to(gain, (2, 3)), rtol=1e-5)
    # The mask is saturated at 1 (offset 40): P' is the composite of the relit T.
    expected = soft * input_composite(person, relight(refined, gain), region) + (1.0 - soft) * person
    np.testing.assert_allclose(parts["output"], expected, atol=1e-5)
    np.testing.assert_allclose(fit_output(person, refined, region, soft, parts["generated"], parts["mask"],
                                          gain=parts["gain"]), parts["output"], atol=1e-6)
    energy = lambda p: jnp.mean(lit_ftn.apply(p, *args, model_image=model_image) ** 2)
    grads = jax.jit(jax.grad(energy))(params)
    assert float(jnp.abs(grads["params"]["relight"]["Dense_0"]["kernel"]).max()) > 0
    with pytest.raises(ValueError, match="ftn_relight"):
        jax.eval_shape(lit_ftn.init, jax.random.key(0), *args)  # no model image


def test_ramp_relight_is_a_linear_ramp_in_log_gain(args):
    """model.ftn_relight="ramp": log g = z_c + z_3 x + z_4 y with x, y in [-1, 1] across the frame;
    a head whose only nonzero output is the x slope gives a gain that falls from left to right,
    equal in every row and channel, reciprocal at the two edges."""
    person = args[0]
    model_image = jax.random.uniform(jax.random.key(9), person.shape, minval=-1, maxval=1)
    ftn = FTN.from_config(tiny_model_config(ftn_relight="ramp"))
    params = jax.jit(ftn.init)(jax.random.key(1), *args, model_image=model_image)
    params["params"]["relight"]["Dense_0"]["bias"] = jnp.asarray([0.0, 0.0, 0.0, -0.8, 0.0])
    parts = jax.jit(lambda p: ftn.apply(p, *args, with_parts=True, model_image=model_image))(params)
    gain = np.asarray(parts["gain"])
    assert gain.shape == (2, 32, 32, 3)
    c = 0.5 * np.tanh(0.8)
    np.testing.assert_allclose(gain[:, 7, 0], np.exp(c), rtol=1e-5)
    np.testing.assert_allclose(gain[:, 7, -1], np.exp(-c), rtol=1e-5)
    np.testing.assert_allclose(np.log(gain[0, 3]), np.log(gain[1, 20]), atol=1e-6)
    assert np.all(np.diff(gain[0, 0, :, 0]) < 0)
    with pytest.raises(ValueError, match="model.ftn_relight"):
        bad = FTN.from_config(tiny_model_config(ftn_relight="spot"))
        jax.eval_shape(bad.init, jax.random.key(0), *args, model_image=model_image)
