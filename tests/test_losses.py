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


def test_generator_terms_are_the_weighted_formulas():
    from m2e_jax.models.defaults import loss_config

    cfg = loss_config()
    cfg.update(dict(l1_weight=3.0, alpha_weight=0.5, adv_weight=2.0, consistency_weight=7.0,
                    perceptual_weight=0.0, ftn_mask_weight=0.0))
    out, inputs = _pipeline_like()
    y, r = inputs["target_image"], out["region"]
    logits = {"pan": FAKE, "final": REAL}
    discriminate = lambda name, image: logits[name]
    terms = losses.generator_terms(out, inputs, cfg, paired=1.0, discriminate=discriminate)
    l1 = (losses.l1_loss(out["aligned"], y) + losses.l1_loss(out["refined"], y, r)
          + losses.l1_loss(out["output"], y))
    adv = losses.g_adv_loss(FAKE) + losses.g_adv_loss(REAL)
    expected = 3.0 * l1 + 0.5 * losses.alpha_loss(out["alpha"], out["valid"], r) + 2.0 * adv
    np.testing.assert_allclose(losses.total(terms), expected, rtol=1e-6)
    assert set(terms) == {"pan_l1", "pan_adv", "trn_l1", "trn_alpha", "trn_consistency", "ftn_l1", "ftn_adv"}
    assert float(terms["trn_consistency"]) == 0.0  # paired: no self-consistency
    terms_u = losses.generator_terms(out, inputs, cfg, paired=0.0)
    expected_u = (7.0 * losses.consistency_loss(out["refined"], out["warped"], out["valid"], r)
                  + 0.5 * losses.alpha_loss(out["alpha"], out["valid"], r))
    np.testing.assert_allclose(losses.total(terms_u), expected_u, rtol=1e-6)
    assert all(float(v) == 0.0 for k, v in terms_u.items() if k.endswith("_l1"))  # unpaired: no target
    # A PAN-only stage has only the PAN terms; TRN alone (stage 2, PAN frozen) has no PAN terms.
    pan_only = {k: out[k] for k in ("aligned", "warped", "valid", "region")}
    terms_p = losses.generator_terms(pan_only, inputs, cfg, paired=1.0, trained=("pan",))
    assert set(terms_p) == {"pan_l1"}
    np.testing.assert_allclose(losses.total(terms_p), 3.0 * losses.l1_loss(out["aligned"], y), rtol=1e-6)
    trn_only = {k: v for k, v in out.items() if k != "output"}
    assert set(losses.generator_terms(trn_only, inputs, cfg, 1.0, trained=("trn",))) == {
        "trn_l1", "trn_alpha", "trn_consistency"}


def test_generator_terms_ftn_mask_and_missing_vgg():
    from m2e_jax.models.defaults import loss_config

    cfg = loss_config()
    cfg.update(dict(perceptual_weight=0.0, ftn_mask_weight=4.0))
    out, inputs = _pipeline_like()
    out["ftn_mask"] = jnp.full((1, 4, 4, 1), 0.75)
    out["soft_region"] = out["region"]
    terms = losses.generator_terms(out, inputs, cfg, paired=1.0, trained=("ftn",))
    np.testing.assert_allclose(terms["ftn_mask"], 4.0 * 0.25, rtol=1e-6)
    # model.ftn_paint: m is unused where FTN paints, so the pull averages over R~ (1 - Q) only.
    mask = out["ftn_mask"].at[:, :2].set(0.0)
    paint = jnp.zeros_like(mask).at[:, :2].set(1.0)
    terms = losses.generator_terms({**out, "ftn_mask": mask, "ftn_paint": paint}, inputs, cfg,
                                   paired=1.0, trained=("ftn",))
    np.testing.assert_allclose(terms["ftn_mask"], 4.0 * 0.25, rtol=1e-6)
    cfg.perceptual_weight = 1.0
    with pytest.raises(ValueError, match="perceptual_weight > 0 needs a VGG"):
        losses.generator_terms(out, inputs, cfg, paired=1.0)


def test_discriminator_terms_by_name():
    logits = {("pan", "real"): REAL, ("pan", "fake"): FAKE}
    real, fake = jnp.zeros((1, 2, 2, 3)), jnp.ones((1, 2, 2, 3))
    discriminate = lambda name, image: logits[(name, "real" if float(image.mean()) == 0 else "fake")]
    terms = losses.discriminator_terms(real, {"pan": fake}, discriminate, "hinge")
    assert set(terms) == {"d_pan"}
    np.testing.assert_allclose(terms["d_pan"], losses.d_loss(REAL, FAKE, "hinge"), rtol=1e-6)


def test_pan_region_body_compares_a_with_the_target_on_ps_body_only():
    """loss.pan_region="body": PAN's L1 sees only P's DensePose foreground (I > 0); the background,
    which M does not show, no longer counts. "image" (the paper's) is the whole-image mean."""
    from m2e_jax.models.defaults import loss_config

    cfg = loss_config()
    cfg.update(dict(l1_weight=2.0, perceptual_weight=0.0))
    out, inputs = _pipeline_like()
    iuv = np.zeros((1, 4, 4, 3), np.float32)
    iuv[0, 1:3, 1:4, 0] = 2.0  # the body: 6 pixels of part 2
    inputs["person_iuv"] = jnp.asarray(iuv)
    body = iuv[..., :1] > 0
    y = np.asarray(inputs["target_image"])
    a = np.where(body, y, y + 0.5)  # right on the body, off by 0.5 everywhere else
    pan_only = {"aligned": jnp.asarray(a)}
    cfg.pan_region = "body"
    assert float(losses.generator_terms(pan_only, inputs, cfg, 1.0, trained=("pan",))["pan_l1"]) == 0.0
    a2 = np.where(body, y + 0.25, y + 0.5)
    got = losses.generator_terms({"aligned": jnp.asarray(a2)}, inputs, cfg, 1.0, trained=("pan",))
    np.testing.assert_allclose(float(got["pan_l1"]), 2.0 * 0.25, rtol=1e-6)
    cfg.pan_region = "image"
    got = losses.generator_terms({"aligned": jnp.asarray(a2)}, inputs, cfg, 1.0, trained=("pan",))
    np.testing.assert_allclose(float(got["pan_l1"]), 2.0 * (6 * 0.25 + 10 * 0.5) / 16, rtol=1e-6)
    with pytest.raises(ValueError, match="pan_region"):
        losses.pan_mask(inputs, "garment")
