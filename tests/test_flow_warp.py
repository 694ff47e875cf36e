"""ops/flow_warp.py: the identity at zero, whole-pixel moves equal slicing (border pixels repeat),
fractional moves interpolate linearly, the gradient in the field is the image's slope."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2e_jax.ops.flow_warp import flow_warp

warp = jax.jit(flow_warp)


def _image(seed: int = 0, shape=(2, 6, 5, 3)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _field(dy: float, dx: float, shape=(2, 6, 5)) -> np.ndarray:
    return np.broadcast_to(np.asarray([dy, dx], np.float32), shape + (2,)).copy()


def test_zero_field_is_the_identity():
    image = _image()
    np.testing.assert_array_equal(warp(image, _field(0, 0)), image)


def test_whole_pixel_moves_read_the_neighbour_and_repeat_the_border():
    image = _image()
    down = np.asarray(warp(image, _field(1, 0)))  # pixel (y, x) reads (y + 1, x)
    np.testing.assert_array_equal(down[:, :-1], image[:, 1:])
    np.testing.assert_array_equal(down[:, -1], image[:, -1])  # past the border: the border row
    left = np.asarray(warp(image, _field(0, -2)))  # reads (y, x - 2)
    np.testing.assert_array_equal(left[:, :, 2:], image[:, :, :-2])
    np.testing.assert_array_equal(left[:, :, :2], np.repeat(image[:, :, :1], 2, axis=2))


def test_fractional_moves_interpolate_bilinearly():
    image = _image()
    out = np.asarray(warp(image, _field(0.25, 0.5)))
    y, x = 2, 1  # reads (2.25, 1.5): the four pixels around it, weighted by distance
    expect = (0.75 * (0.5 * image[:, y, x] + 0.5 * image[:, y, x + 1])
              + 0.25 * (0.5 * image[:, y + 1, x] + 0.5 * image[:, y + 1, x + 1]))
    np.testing.assert_allclose(out[:, y, x], expect, atol=1e-6)
    # A per-pixel field: each pixel moves on its own.
    field = np.zeros((2, 6, 5, 2), np.float32)
    field[1, 3, 2] = (-1.0, 2.0)
    out = np.asarray(warp(image, field))
    np.testing.assert_array_equal(out[1, 3, 2], image[1, 2, 4])
    np.testing.assert_array_equal(np.delete(out.reshape(-1, 3), 1 * 30 + 3 * 5 + 2, 0),
                                  np.delete(image.reshape(-1, 3), 1 * 30 + 3 * 5 + 2, 0))


def test_gradient_in_the_field_is_the_image_slope():
    """d out / d dx between two pixels is the difference of their values (linear interpolation), so
    a loss on the moved warp tells TRN's field which way to move; the image gets gradients too."""
    image = _image()
    target = np.roll(image, -1, axis=2)

    def loss(field, img):
        return jnp.sum(flow_warp(img, field)[:, :, :-1] * target[:, :, :-1])

    field = _field(0.0, 0.3)
    g_field, g_image = jax.jit(jax.grad(loss, argnums=(0, 1)))(field, image)
    slope = (image[:, :, 1:] - image[:, :, :-1]) * target[:, :, :-1]
    np.testing.assert_allclose(np.asarray(g_field)[:, :, :-1, 1], slope.sum(-1), atol=1e-5)
    assert float(jnp.abs(g_image).sum()) > 0
    eps = 1e-3  # and it agrees with a finite difference
    numeric = (loss(field + np.asarray([0, eps], np.float32), image)
               - loss(field - np.asarray([0, eps], np.float32), image)) / (2 * eps)
    np.testing.assert_allclose(float(np.asarray(g_field)[..., 1].sum()), float(numeric), rtol=2e-2)


def test_mismatched_field_is_refused():
    with pytest.raises(ValueError, match=r"flow_warp: flow \(2, 6, 5, 3\) does not match image"):
        flow_warp(_image(), np.zeros((2, 6, 5, 3), np.float32))
