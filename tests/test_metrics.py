"""SSIM / PSNR wrappers: agreement with dm_pix, the [-1, 1] mapping, and the masked variants."""

import dm_pix
import jax.numpy as jnp
import numpy as np
import pytest

from m2e_jax import metrics


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), -1, 1).astype(np.float32)
    return a, b


def test_psnr_matches_dm_pix_on_unit_range(images):
    a, b = images
    want = dm_pix.psnr((a + 1) / 2, (b + 1) / 2)
    np.testing.assert_allclose(metrics.psnr(a, b), want, rtol=1e-5)


def test_psnr_known_value_and_cap():
    a = np.zeros((1, 16, 16, 3), np.float32)
    b = a + 0.2  # 0.1 in [0, 1] units: MSE 0.01 -> 20 dB
    np.testing.assert_allclose(metrics.psnr(a, b), [20.0], rtol=1e-5)
    assert float(metrics.psnr(a, a)[0]) == metrics.MAX_PSNR


def test_ssim_identity_and_degradation(images):
    a, b = images
    np.testing.assert_allclose(metrics.ssim(a, a), [1.0, 1.0], atol=1e-5)
    s = np.asarray(metrics.ssim(a, b))
    assert np.all(s < 0.99) and np.all(s > 0.0)
    np.testing.assert_allclose(s, dm_pix.ssim((a + 1) / 2, (b + 1) / 2), rtol=1e-5)


def test_masked_metrics_ignore_pixels_outside_the_mask(images):
    a, b = images
    mask = np.zeros((2, 32, 32, 1), np.float32)
    mask[:, 8:24, 8:24] = 1
    # Wreck everything beyond the SSIM window (radius 5) around the mask: masked scores must not move.
    near = np.zeros_like(mask)
    near[:, 3:29, 3:29] = 1
    c = np.where(near > 0, b, -a)
    np.testing.assert_allclose(metrics.masked_psnr(a, b, mask), metrics.masked_psnr(a, c, mask), rtol=1e-6)
    np.testing.assert_allclose(metrics.masked_ssim(a, b, mask), metrics.masked_ssim(a, c, mask), atol=1e-6)
    assert np.all(np.asarray(metrics.psnr(a, c)) < np.asarray(metrics.psnr(a, b)) - 3)


def test_masked_equals_unmasked_for_a_full_mask(images):
    a, b = images
    full = jnp.ones((2, 32, 32, 1))
    np.testing.assert_allclose(metrics.masked_psnr(a, b, full), metrics.psnr(a, b), rtol=1e-5)
    np.testing.assert_allclose(metrics.masked_ssim(a, b, full), metrics.ssim(a, b), rtol=1e-5)


def test_image_metrics_keys(images):
    a, b = images
    out = metrics.image_metrics(a, b, np.ones((2, 32, 32, 1), np.float32))
    assert set(out) == {"ssim", "psnr", "ssim_masked", "psnr_masked"}
    assert all(v.shape == (2,) for v in out.values())
