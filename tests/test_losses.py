"""Each loss equals its formula computed by hand on a tiny example."""

import jax.numpy as jnp
import numpy as np
import pytest

from m2e_jax import losses

REAL = jnp.array([[0.5, 2.0], [-1.0, 1.0]])
FAKE = jnp.array([[0.0, -2.0], [1.5, 0.5]])


def test_lsgan_by_hand():
    # real - 1 = [-0.5, 1, -2, 0] -> squares 0.25, 1, 4, 0 -> mean 1.3125
    # fake^2 = 0, 4, 2.25, 0.25 -> mean 1.625
    np.testing.assert_allclose(losses.d_loss(REAL, FAKE, "lsgan"), 0.5 * (1.3125 + 1.625))
    # (fake - 1)^2 = 1, 9, 0.25, 0.25 -> 2.625
    np.testing.assert_allclose(losses.g_adv_loss(FAKE, "lsgan"), 2.625)


def test_hinge_by_hand():
    # relu(1 - real) = 0.5, 0, 2, 0 -> 0.625; relu(1 + fake) = 1, 0, 2.5, 1.5 -> 1.25
    np.testing.assert_allclose(losses.d_loss(REAL, FAKE, "hinge"), 0.5 * (0.625 + 1.25))
    np.testing.assert_allclose(losses.g_adv_loss(FAKE, "hinge"), -0.0)


def test_nonsaturating_by_hand():
    sp = lambda v: np.log1p(np.exp(v))
    r, f = np.asarray(REAL), np.asarray(FAKE)
    np.testing.assert_allclose(losses.d_loss(REAL, FAKE, "nonsaturating"),
                               0.5 * (sp(-r).mean() + sp(f).mean()), rtol=1e-6)
    np.testing.assert_allclose(losses.g_adv_loss(FAKE, "nonsaturating"), sp(-f).mean(), rtol=1e-6)


def test_adversarial_sums_over_discriminators_and_rejects_unknown():
    both = losses.g_adv_loss([FAKE, FAKE + 1.0], "lsgan")
    np.testing.assert_allclose(both, losses.g_adv_loss(FAKE) + losses.g_adv_loss(FAKE + 1.0))
    with pytest.raises(ValueError, match="loss.gan"):
        losses.d_loss(REAL, FAKE, "wgan")


def test_l1_masked_by_hand():
    x = jnp.zeros((1, 2, 2, 2))
    y = jnp.array([[[[1.0, 3.0], [2.0, 2.0]], [[4.0, 0.0], [-6.0, 2.0]]]])
    np.testing.assert_allclose(losses.l1_loss(x, y), 20.0 / 8)
    mask = jnp.array([[[[1.0], [0.0]], [[0.5], [0.0]]]])
    # (1 * (1 + 3) + 0.5 * (4 + 0)) / (2 channels * 1.5 area) = 6 / 3
    np.testing.assert_allclose(losses.l1_loss(x, y, mask), 2.0)
    assert float(losses.l1_loss(x, y, jnp.zeros_like(mask))) == 0.0


def test_perceptual_loss_by_hand():
    fx = [jnp.ones((1, 2, 2, 1)), jnp.zeros((1, 1, 1, 2))]
    fy = [jnp.zeros((1, 2, 2, 1)), jnp.array([[[[2.0, -4.0]]]])]
    np.testing.assert_allclose(losses.perceptual_loss(fx, fy, (0.5, 0.25)), 0.5 * 1.0 + 0.25 * 3.0)
    with pytest.raises(ValueError, match="layer weights"):
        losses.perceptual_loss(fx, fy, (1.0,))


def test_alpha_and_consistency_by_hand():
    alpha = jnp.array([[[[0.2], [0.9]], [[0.5], [0.0]]]])
    valid = jnp.array([[[[1.0], [1.0]], [[0.0], [1.0]]]])
    region = jnp.array([[[[1.0], [0.0]], [[1.0], [1.0]]]])
    # inside R_P: |0.2 - 1| + |0.5 - 0| + |0 - 1| = 2.3 over 3 pixels
    np.testing.assert_allclose(losses.alpha_loss(alpha, valid, region), 2.3 / 3, rtol=1e-6)
    refined = jnp.zeros((1, 2, 2, 3))
    warped = jnp.arange(12.0).reshape(1, 2, 2, 3)
    # mask V * R_P = pixels (0,0) and (1,1): |0,1,2| + |9,10,11| = 33 over 2 pixels * 3 channels
    np.testing.assert_allclose(losses.consistency_loss(refined, warped, valid, region), 33.0 / 6)
