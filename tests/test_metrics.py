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
    assert set(out) == {"ssim", "psnr", "ssim_masked", "psnr_masked", "colour_masked"}
    assert all(v.shape == (2,) for v in out.values())


def test_colour_error_is_the_light_off_in_the_mask(images):
    """A per-channel gain inside the mask (how m2e_jax/synthetic/effects.py `light` lights a photo:
    intensity times gain * cast[c]) is charged by its size there; pixels outside the mask and pure
    texture are not."""
    a, _ = images
    u = (np.asarray(a) + 1) / 2
    mask = np.zeros((2, 32, 32, 1), np.float32)
    mask[:, 8:24, 4:20] = 1
    gain = np.array([1.2, 1.0, 0.9], np.float32)
    lit = np.where(mask > 0, np.clip(u * gain, 0, 1), u)
    outside = np.where(mask > 0, u, 1 - u)
    err = metrics.masked_colour_error(jnp.asarray(lit * 2 - 1), a, mask)
    want = [np.mean(np.abs((np.clip(u[i] * gain, 0, 1) - u[i])[mask[i, ..., 0] > 0].mean(0)))
            for i in range(2)]
    np.testing.assert_allclose(err, want, rtol=1e-4)
    assert float(err.min()) > 0.01
    err_outside = metrics.masked_colour_error(jnp.asarray(outside * 2 - 1), a, mask)
    np.testing.assert_allclose(err_outside, 0, atol=1e-6)
    # The mask's rows 8..23 mirrored onto themselves: the same colours, moved (texture, not light).
    flipped = np.where(mask > 0, u[:, ::-1], u)
    err_moved = metrics.masked_colour_error(jnp.asarray(flipped * 2 - 1), a, mask)
    np.testing.assert_allclose(err_moved, 0, atol=1e-6)
    np.testing.assert_allclose(metrics.masked_colour_error(a, a, np.zeros_like(mask)), 0)


# ---------------------------------------------------------------- SSIM against Wang et al.

def wang_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Independent SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
    dynamic range 1, 'valid' windows, mean over the map and channels; x, y [H, W, C] in [0, 1]."""
    from scipy.signal import correlate2d

    ax = np.arange(11) - 5
    g = np.exp(-(ax ** 2) / (2 * 1.5 ** 2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    maps = []
    for c in range(x.shape[-1]):
        a, b = x[..., c].astype(np.float64), y[..., c].astype(np.float64)
        f = lambda z: correlate2d(z, win, mode="valid")
        mu_a, mu_b = f(a), f(b)
        var_a, var_b, cov = f(a * a) - mu_a ** 2, f(b * b) - mu_b ** 2, f(a * b) - mu_a * mu_b
        num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
        maps.append(num / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(maps))


def test_ssim_matches_wang_et_al_reference_on_a_fixed_pair():
    yy, xx = np.mgrid[0:40, 0:36] / 40.0
    a = np.stack([np.sin(6 * xx), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1)  # smooth, in [-1, 1]
    rng = np.random.default_rng(7)
    b = np.clip(0.8 * a + 0.1 + rng.normal(0, 0.15, a.shape), -1, 1)
    want = wang_ssim((a + 1) / 2, (b + 1) / 2)
    got = float(metrics.ssim(a[None].astype(np.float32), b[None].astype(np.float32))[0])
    assert 0.3 < want < 0.95
    np.testing.assert_allclose(got, want, atol=2e-4)


# ---------------------------------------------------------------- LPIPS

@pytest.mark.parametrize("net", ["alexnet"])
def test_lpips_zero_for_identical_and_grows_with_distortion(images, net):
    a, b = images
    np.testing.assert_allclose(metrics.lpips(a, a, net), [0.0, 0.0], atol=1e-6)
    mild = np.asarray(metrics.lpips(a, b, net))
    strong = np.asarray(metrics.lpips(a, np.clip(a + np.random.default_rng(1).normal(0, 0.6, a.shape), -1, 1)
                                      .astype(np.float32), net))
    assert np.all(mild > 0.001) and np.all(strong > mild)
    # Symmetric in its arguments (both images go through the same trunk and normalisation).
    np.testing.assert_allclose(metrics.lpips(b, a, net), mild, rtol=1e-4)


def test_masked_lpips_sees_only_the_mask(images):
    a, b = images
    empty = np.zeros((2, 32, 32, 1), np.float32)
    np.testing.assert_allclose(metrics.masked_lpips(b, a, empty), [0.0, 0.0], atol=1e-6)
    full = np.ones((2, 32, 32, 1), np.float32)
    np.testing.assert_allclose(metrics.masked_lpips(b, a, full), metrics.lpips(b, a), rtol=1e-5)


def test_lpips_rejects_unknown_net():
    with pytest.raises(ValueError, match="lpips net"):
        metrics.lpips_params("resnet")


# ---------------------------------------------------------------- FID / IS

def test_frechet_distance_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    np.testing.assert_allclose(metrics.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)), want, rtol=1e-10)


def test_fid_matches_scipy_sqrtm_on_synthetic_features():
    import scipy.linalg

    rng = np.random.default_rng(1)
    fa = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    fb = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) + 0.5
    mu1, s1 = np.mean(fa, 0), np.cov(fa, rowvar=False)
    mu2, s2 = np.mean(fb, 0), np.cov(fb, rowvar=False)
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    np.testing.assert_allclose(metrics.fid(fa, fb), want, rtol=1e-8)
    assert abs(metrics.fid(fa, fa)) < 1e-8
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.fid(fa[:1], fb)


def test_inception_score_extremes_and_closed_form():
    k = 10
    np.testing.assert_allclose(metrics.inception_score(np.full((50, k), 1 / k))[0], 1.0, rtol=1e-12)
    confident = np.eye(k)[np.arange(100) % k]  # sure of each class, all classes equally often
    np.testing.assert_allclose(metrics.inception_score(confident)[0], k, rtol=1e-12)
    # Two examples, two classes: p1 = (0.9, 0.1), p2 = (0.1, 0.9); marginal uniform.
    p = np.array([[0.9, 0.1], [0.1, 0.9]])
    kl = 0.9 * np.log(0.9 / 0.5) + 0.1 * np.log(0.1 / 0.5)
    np.testing.assert_allclose(metrics.inception_score(p)[0], np.exp(kl), rtol=1e-12)
    mean, std = metrics.inception_score(np.concatenate([confident, np.full((100, k), 1 / k)]), splits=2)
    np.testing.assert_allclose([mean, std], [(k + 1) / 2, (k - 1) / 2], rtol=1e-12)
    with pytest.raises(ValueError, match="probability"):
        metrics.inception_score(np.ones((4, 3)))
