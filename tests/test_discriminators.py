"""PatchGAN discriminators: patch logits, pose conditioning, gradients, spectral norm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2e_jax.models.discriminators import PatchDiscriminator
from m2e_jax.models.tryon import build_discriminators
from tests.model_fixtures import all_leaves_nonzero, random_inputs, tiny_model_config


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_model_config()
    d = PatchDiscriminator.from_config(cfg)
    inputs = random_inputs(cfg=cfg)
    variables = jax.jit(d.init)(jax.random.key(0), inputs["person_image"], inputs["person_iuv"])
    return d, variables, inputs


def test_patch_logits_depend_on_image_and_pose(setup):
    d, variables, inputs = setup
    apply = jax.jit(d.apply)
    logits = apply(variables, inputs["person_image"], inputs["person_iuv"])
    # 32 / 2**2 = 8, minus 2 for the two stride-1 4x4 convs.
    assert logits.shape == (2, 6, 6, 1) and logits.dtype == jnp.float32
    other_pose = apply(variables, inputs["person_image"], jnp.flip(inputs["person_iuv"], axis=1))
    other_image = apply(variables, inputs["model_image"], inputs["person_iuv"])
    assert float(jnp.abs(other_pose - logits).max()) > 1e-4
    assert float(jnp.abs(other_image - logits).max()) > 1e-4


def test_gradients_reach_every_parameter(setup):
    d, variables, inputs = setup
    loss = lambda p: jnp.mean((d.apply({"params": p}, inputs["person_image"], inputs["person_iuv"]) - 1) ** 2)
    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert all_leaves_nonzero(grads) == []


def test_build_discriminators_and_bad_size():
    ds = build_discriminators(tiny_model_config())
    assert set(ds) == {"pan", "final"} and ds["pan"].channels == 8 and ds["final"].num_layers == 2
    d = PatchDiscriminator(channels=4, num_layers=3)
    with pytest.raises(ValueError, match="divisible by 8"):
        d.init(jax.random.key(0), jnp.zeros((1, 36, 32, 3)), jnp.zeros((1, 36, 32, 3)))


def test_spectral_norm_bounds_each_layer():
    cfg = tiny_model_config(spectral_norm=True)
    d = PatchDiscriminator.from_config(cfg)
    inputs = random_inputs(cfg=cfg)
    x, iuv = inputs["person_image"], inputs["person_iuv"]
    variables = jax.jit(d.init)(jax.random.key(0), x, iuv)
    assert "batch_stats" in variables

    @jax.jit
    def step(v):
        _, upd = d.apply(v, x, iuv, update_stats=True, mutable=["batch_stats"])
        return {"params": v["params"], **upd}

    for _ in range(15):  # power iteration converges on the largest singular value
        variables = step(variables)
    stats = variables["batch_stats"]
    checked = 0
    for group in stats.values():
        (sigma_key,) = [k for k in group if k.endswith("/kernel/sigma")]
        sigma = group[sigma_key]
        kernel = variables["params"][sigma_key.split("/")[0]]["kernel"]
        checked += 1
        true_sigma = np.linalg.svd(np.asarray(kernel).reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
        np.testing.assert_allclose(float(sigma), true_sigma, rtol=0.05)
    assert checked == 4
    # Frozen stats in the generator's pass: no mutation needed, output unchanged by repeated calls.
    a = d.apply(variables, x, iuv, update_stats=False)
    b = d.apply(variables, x, iuv, update_stats=False)
    np.testing.assert_array_equal(a, b)
