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


def _pipeline_like():
    rng = np.random.default_rng(0)
    u = lambda *s: jnp.asarray(rng.uniform(-1, 1, s), jnp.float32)
    region = jnp.asarray(rng.uniform(size=(1, 4, 4, 1)) > 0.4, jnp.float32)
    valid = jnp.asarray(rng.uniform(size=(1, 4, 4, 1)) > 0.5, jnp.float32)
    out = {"aligned": u(1, 4, 4, 3), "refined": u(1, 4, 4, 3), "output": u(1, 4, 4, 3),
           "alpha": (u(1, 4, 4, 1) + 1) / 2, "warped": u(1, 4, 4, 3), "valid": valid, "region": region}
    inputs = {"target_image": u(1, 4, 4, 3), "region": region}
    return out, inputs


def test_generator_loss_is_the_weighted_sum():
    from m2e_jax.models.defaults import loss_config

    cfg = loss_config()
    cfg.update(dict(l1_weight=3.0, alpha_weight=0.5, adv_weight=2.0, consistency_weight=7.0))
    out, inputs = _pipeline_like()
    y, r = inputs["target_image"], out["region"]
    fake = {"pan": FAKE, "final": REAL}
    total, terms = losses.generator_loss(out, inputs, cfg, vgg=None, fake_logits=fake, paired=True)
    l1 = (losses.l1_loss(out["aligned"], y) + losses.l1_loss(out["refined"], y, r)
          + losses.l1_loss(out["output"], y))
    adv = losses.g_adv_loss(FAKE) + losses.g_adv_loss(REAL)
    expected = 3.0 * l1 + 0.5 * losses.alpha_loss(out["alpha"], out["valid"], r) + 2.0 * adv
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    assert "consistency" not in terms
    total_u, terms_u = losses.generator_loss(out, inputs, cfg, paired=False)
    expected_u = (7.0 * losses.consistency_loss(out["refined"], out["warped"], out["valid"], r)
                  + 0.5 * losses.alpha_loss(out["alpha"], out["valid"], r))
    np.testing.assert_allclose(total_u, expected_u, rtol=1e-6)
    assert not any(k.startswith("l1") for k in terms_u)
    # A PAN-only stage has only the PAN term.
    pan_only = {k: out[k] for k in ("aligned", "warped", "valid", "region")}
    total_p, terms_p = losses.generator_loss(pan_only, inputs, cfg)
    assert set(terms_p) == {"l1_aligned"}
    np.testing.assert_allclose(total_p, 3.0 * losses.l1_loss(out["aligned"], y), rtol=1e-6)
