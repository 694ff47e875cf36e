"""The CPU conv workarounds equal their plain forms; norms, resampling and the generator behave."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2e_jax import xla_flags
from m2e_jax.models import layers


def _x(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("ynnpack", [True, False])
@pytest.mark.parametrize("k", [3, 7])
def test_reflect_conv_fast_equals_plain(k, ynnpack, monkeypatch):
    # The padding trick is only used where convs run on YNNPACK; it must be bit-identical there.
    monkeypatch.setattr(xla_flags, "convs_on_ynnpack", lambda: ynnpack)
    x = _x((2, 12, 10, 5))
    fast = layers.ReflectConv(4, k, fast=True)
    plain = layers.ReflectConv(4, k, fast=False)
    params = fast.init(jax.random.key(1), x)
    y_fast, y_plain = fast.apply(params, x), plain.apply(params, x)
    assert y_fast.shape == (2, 12, 10, 4)
    np.testing.assert_array_equal(np.asarray(y_fast), np.asarray(y_plain))
    # And both equal an explicit reflect pad + lax conv.
    kern = params["params"]["conv"]["kernel"]
    xp = jnp.pad(x, ((0, 0), (k // 2,) * 2, (k // 2,) * 2, (0, 0)), mode="reflect")
    ref = jax.lax.conv_general_dilated(xp, kern, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(y_plain, ref + params["params"]["conv"]["bias"], atol=1e-5)


@pytest.mark.parametrize("mode", ["transpose", "resize_conv"])
def test_phase_upsample_equals_plain_form_with_gradients(mode):
    # fast=True (one small conv per output phase) vs fast=False (nn.ConvTranspose / repeat + conv):
    # same parameters, same outputs, same gradients for the input and every parameter.
    x = _x((2, 6, 5, 8))
    fast = layers.Upsample(4, mode, norm="none", fast=True)
    plain = layers.Upsample(4, mode, norm="none", fast=False)
    params = plain.init(jax.random.key(2), x)
    assert jax.tree.map(jnp.shape, fast.init(jax.random.key(2), x)) == jax.tree.map(jnp.shape, params)
    y_fast, y_plain = fast.apply(params, x), plain.apply(params, x)
    assert y_fast.shape == (2, 12, 10, 4)
    np.testing.assert_allclose(y_fast, y_plain, atol=2e-5)
    assert float(jnp.abs(y_fast).max()) > 0.1  # not trivially zero
    w = _x((2, 12, 10, 4), seed=5)  # a loss that weighs every output pixel differently
    grad = lambda m: jax.grad(lambda p, x: jnp.sum(w * m.apply(p, x)), argnums=(0, 1))(params, x)
    (gp_fast, gx_fast), (gp_plain, gx_plain) = grad(fast), grad(plain)
    np.testing.assert_allclose(gx_fast, gx_plain, atol=1e-4)
    for a, b in zip(jax.tree.leaves(gp_fast), jax.tree.leaves(gp_plain)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_phase_upsample_kernels_init_like_nn_conv():
    # Checkpoints and seeds do not depend on `fast`: the phase conv draws the same initial kernel.
    x = _x((1, 4, 4, 3))
    fast = layers.Upsample(5, "resize_conv", norm="none", fast=True).init(jax.random.key(7), x)
    plain = layers.Upsample(5, "resize_conv", norm="none", fast=False).init(jax.random.key(7), x)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain)):
        np.testing.assert_array_equal(a, b)


def test_phase_upsample_transpose_matches_loop_reference():
    # Independent of flax: y[2n] = x[n-1] w0 + x[n] w2, y[2n+1] = x[n] w1 per axis, written as loops.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 4, 2)).astype(np.float32)
    k = rng.standard_normal((3, 3, 2, 3)).astype(np.float32)
    taps = {0: ((-1, 0), (0, 2)), 1: ((0, 1),)}  # output parity -> (input offset, kernel tap)
    ref = np.zeros((1, 6, 8, 3), np.float32)
    for i in range(6):
        for j in range(8):
            for di, ki in taps[i % 2]:
                for dj, kj in taps[j % 2]:
                    n, m = i // 2 + di, j // 2 + dj
                    if 0 <= n < 3 and 0 <= m < 4:
                        ref[0, i, j] += x[0, n, m] @ k[ki, kj]
    y = layers.phase_upsample(jnp.asarray(x), jnp.asarray(k), "transpose")
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_resize_conv_is_nearest_then_conv():
    x = _x((1, 4, 3, 2))
    up = layers.Upsample(3, "resize_conv", norm="none")
    params = up.init(jax.random.key(3), x)
    near = jax.image.resize(x, (1, 8, 6, 2), "nearest")
    conv = nn.Conv(3, (3, 3), padding=((1, 1), (1, 1)))
    ref = jax.nn.relu(conv.apply({"params": params["params"]["conv"]}, near))
    np.testing.assert_allclose(up.apply(params, x), ref, atol=1e-6)


def test_depth_to_space_matches_loop():
    x = np.arange(2 * 3 * 2 * 12, dtype=np.float32).reshape(2, 3, 2, 12)
    y = np.asarray(layers.depth_to_space(jnp.asarray(x), 2))
    ref = np.zeros((2, 6, 4, 3), np.float32)
    for i in range(2):
        for j in range(2):
            ref[:, i::2, j::2, :] = x[..., (i * 2 + j) * 3: (i * 2 + j + 1) * 3]
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("kind", ["instance", "group"])
def test_norm_standardises_each_example(kind):
    x = _x((2, 8, 8, 8)) * 3.0 + 5.0
    norm = layers.Norm(kind)
    y = norm.apply(norm.init(jax.random.key(0), x), x)
    groups = 1 if kind == "instance" else 8  # gcd(32, 8) groups of 1 channel
    assert groups in (1, 8)
    np.testing.assert_allclose(jnp.mean(y, axis=(1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(jnp.std(y, axis=(1, 2)), 1.0, atol=1e-2)


def test_generator_rejects_bad_size_and_options():
    gen = layers.ResnetGenerator(3, base_channels=4, num_downsamples=2, num_blocks=1)
    with pytest.raises(ValueError, match="divisible by 4"):
        gen.init(jax.random.key(0), jnp.zeros((1, 30, 32, 3)))
    with pytest.raises(ValueError, match="model.upsample"):
        layers.ResnetGenerator(3, base_channels=4, num_blocks=1, upsample="bicubic").init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="model.dtype"):
        layers.compute_dtype("float16")


@pytest.mark.parametrize("upsample", ["transpose", "pixel_shuffle"])
def test_generator_upsample_modes_preserve_size(upsample):
    gen = layers.ResnetGenerator(2, base_channels=4, num_downsamples=1, num_blocks=1, upsample=upsample,
                                 norm="group")
    x = jnp.concatenate([_x((1, 8, 6, 3)), _x((1, 8, 6, 3), seed=5)])
    y, _ = jax.jit(gen.init_with_output)(jax.random.key(0), x)
    assert y.shape == (2, 8, 6, 2) and y.dtype == jnp.float32
    # The output depends on the input (the generator is not constant).
    assert float(jnp.abs(y[0] - y[1]).max()) > 1e-4
