"""PatchGAN discriminators: patch logits, pose conditioning, gradients."""

import jax
import jax.numpy as jnp
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
