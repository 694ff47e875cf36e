"""Training losses (method.md "Our design", hybrid paired / unpaired training). Pure functions.

The one home of the objective: `generator_terms` (the generators' weighted terms, what the train
step optimises and logs) and `discriminator_terms`, built from the formulas below.

Weights and choices come from `config.loss`, declared with their defaults and meanings in
m2e_jax/config_schema.py (`python -m m2e_jax.main --describe`). A new term: its weight there, its
formula in `generator_terms` here.

The adversarial losses take discriminator logits; the discriminators are pose-conditional through
their inputs (image concatenated with enc(I_P), see models/discriminators.py). Logits may be a
single array or a list of arrays (several discriminators / scales): the loss is summed over them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

GANS = ("lsgan", "hinge", "nonsaturating")
# (discriminator name "pan" | "final", image [B, H, W, 3]) -> logits, conditioned on P's pose.
Discriminate = Callable[[str, jax.Array], jax.Array]


def _as_list(logits) -> list[jax.Array]:
    return list(logits) if isinstance(logits, list | tuple) else [logits]


def _check_gan(kind: str) -> None:
    if kind not in GANS:
        raise ValueError(f"loss.gan: unknown adversarial loss {kind!r}; expected one of {GANS}")


def d_loss(real_logits, fake_logits, kind: str = "lsgan") -> jax.Array:
    """Discriminator loss, summed over discriminators; means over patches and batch.

    lsgan:          1/2 [ E (D(real) - 1)^2 + E D(fake)^2 ]
    hinge:          1/2 [ E relu(1 - D(real)) + E relu(1 + D(fake)) ]
    nonsaturating:  1/2 [ E softplus(-D(real)) + E softplus(D(fake)) ]   (= BCE with logits)
    The 1/2 slows D relative to G (pix2pix's convention).
    """
    _check_gan(kind)
    total = jnp.zeros((), jnp.float32)
    for real, fake in zip(_as_list(real_logits), _as_list(fake_logits), strict=True):
        if kind == "lsgan":
            term = jnp.mean((real - 1.0) ** 2) + jnp.mean(fake ** 2)
        elif kind == "hinge":
            term = jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))
        else:
            term = jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))
        total = total + 0.5 * term
    return total


def g_adv_loss(fake_logits, kind: str = "lsgan") -> jax.Array:
    """Generator adversarial loss, summed over discriminators.

    lsgan: E (D(fake) - 1)^2;  hinge: -E D(fake);  nonsaturating: E softplus(-D(fake)).
    """
    _check_gan(kind)
    total = jnp.zeros((), jnp.float32)
    for fake in _as_list(fake_logits):
        if kind == "lsgan":
            total = total + jnp.mean((fake - 1.0) ** 2)
        elif kind == "hinge":
            total = total - jnp.mean(fake)
        else:
            total = total + jnp.mean(jax.nn.softplus(-fake))
    return total


def l1_loss(x, y, mask=None) -> jax.Array:
    """Mean absolute error, optionally masked.

    x, y: `[B, H, W, C]`. mask: None, or `[B, H, W, 1]` in [0, 1].
    No mask: mean |x - y|. With a mask: sum(mask * |x - y|) / (C * max(sum(mask), 1)), i.e. the
    mean over the masked area (an empty mask gives 0, not NaN).
    """
    diff = jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))
    if mask is None:
        return jnp.mean(diff)
    mask = mask.astype(jnp.float32)
    area = jnp.maximum(jnp.sum(mask), 1.0) * diff.shape[-1]
    return jnp.sum(mask * diff) / area


def perceptual_loss(feats_x: Sequence[jax.Array], feats_y: Sequence[jax.Array],
                    layer_weights: Sequence[float]) -> jax.Array:
    """sum_l w_l * mean |phi_l(x) - phi_l(y)| over VGG feature maps phi_l (models/vgg.py)."""
    if not len(feats_x) == len(feats_y) == len(layer_weights):
        raise ValueError(f"perceptual_loss: {len(feats_x)} and {len(feats_y)} feature maps for "
                         f"{len(layer_weights)} layer weights (loss.vgg16_layer_weights)")
    total = jnp.zeros((), jnp.float32)
    for fx, fy, w in zip(feats_x, feats_y, layer_weights):
        total = total + w * jnp.mean(jnp.abs(fx - fy))
    return total


def vgg_perceptual(vgg, x, y, layer_weights: Sequence[float]) -> jax.Array:
    """perceptual_loss on `vgg.features` of x and y (`[B, H, W, 3]` in [-1, 1]); one trunk pass.

    A VGG truncated to the layers with nonzero weight (models.vgg.perceptual_depth) gets the
    weights of its layers; the dropped ones must be 0.
    """
    n = len(vgg.layer_names)
    if any(w != 0 for w in layer_weights[n:]):
        raise ValueError(f"vgg_perceptual: the VGG has {n} feature layers but loss.vgg16_layer_weights "
                         f"{tuple(layer_weights)!r} weights deeper ones")
    layer_weights = layer_weights[:n]
    feats = vgg.features(jnp.concatenate([x, y], axis=0))
    b = x.shape[0]
    return perceptual_loss([f[:b] for f in feats], [f[b:] for f in feats], layer_weights)


def load_perceptual_vgg(loss_cfg):
    """The VGG of the perceptual terms (`loss.vgg`), cut after the deepest layer with a nonzero
    weight in `loss.vgg16_layer_weights`; None when loss.perceptual_weight is 0."""
    if loss_cfg.perceptual_weight <= 0:
        return None
    from m2e_jax.models import vgg as vgg_lib

    return vgg_lib.load_vgg(loss_cfg.vgg, num_layers=vgg_lib.perceptual_depth(loss_cfg.vgg16_layer_weights))


def alpha_loss(alpha, valid, region) -> jax.Array:
    """TRN blend-mask term: l1_loss(alpha, V, mask=R_P) = mean over R_P of |alpha - V|.

    Pulls alpha to 1 where the warp has a source (keep W's texture) and to 0 where it has none.
    """
    return l1_loss(alpha, valid, region)


def consistency_loss(refined, warped, valid, region) -> jax.Array:
    """Unpaired self-consistency: l1_loss(T, W, mask=V * R_P), T agrees with W where the warp is valid.

    Restricted to R_P because outside it T is the aligned image A by construction.
    """
    return l1_loss(refined, warped, valid * region)


PAN_REGIONS = ("image", "body")


def pan_mask(inputs: Mapping[str, jax.Array], pan_region: str) -> jax.Array | None:
    """Where PAN's reconstruction terms compare A with the target, `[B, H, W, 1]` float32 or None
    (everywhere). "body": P's DensePose foreground (I > 0). PAN sees M, the IUV maps and the warp but
    not P's photo, so P's background is unknowable to it; over the whole image ("image", the
    paper's) most of PAN's L1 is background, which it can only blur or memorise (RESULTS.md 12)."""
    if pan_region not in PAN_REGIONS:
        raise ValueError(f"loss.pan_region must be one of {PAN_REGIONS}, got {pan_region!r}")
    if pan_region == "image":
        return None
    return (inputs["person_iuv"][..., :1] > 0).astype(jnp.float32)


def generator_terms(out: Mapping[str, jax.Array], inputs: Mapping[str, jax.Array], loss_cfg, paired,
                    trained: Sequence[str] = ("pan", "trn", "ftn"), discriminate: Discriminate | None = None,
                    vgg=None) -> dict[str, jax.Array]:
    """The generator objective of one batch as its weighted terms (names as training logs them).

    out: TryOnNet output of any prefix of the pipeline (terms of missing networks are skipped).
    inputs: models.tryon.network_inputs output (target_image is read; paired batches only).
    paired: the batch's paired share, 0 or 1 in practice (a jnp scalar in the train step): the
      reconstruction terms against the target are weighted by it, the self-consistency term by
      1 - paired; the alpha, adversarial and FTN-mask terms apply to both.
    trained: the networks this update trains (train.stage_groups); the PAN terms need "pan", the
      TRN terms "pan" or "trn" (they reach PAN's output through TRN), the FTN terms only FTN's output.
    discriminate(name, image) -> logits of discriminator "pan" (scores A) or "final" (scores P'),
      conditioned on P's pose; None skips the adversarial terms.
    vgg: models.vgg.Vgg for the perceptual terms; required when loss_cfg.perceptual_weight > 0.

    Terms (w = loss_cfg; Y the target, R_P the garment region, V the warp's validity):
      pan_l1 = paired w.l1 L1(A, Y | B)         pan_perceptual = paired w.perceptual perc(A, Y | B)
               (B: pan_mask, everywhere or P's body per w.pan_region)
      pan_adv = w.adv g_adv(D_pan(A))
      trn_l1 = paired w.l1 L1(T, Y | R_P)       trn_alpha = w.alpha alpha_loss(alpha, V, R_P)
      trn_consistency = (1 - paired) w.consistency consistency_loss(T, W, V, R_P)
      ftn_l1 = paired w.l1 L1(P', Y)            ftn_perceptual = paired w.perceptual perc(P', Y)
      ftn_adv = w.adv g_adv(D_final(P'))
      ftn_mask = w.ftn_mask_weight L1(m, 1 | R~)  FTN's composition mask toward 1 inside R~, which
                 keeps T's pixels passing straight through (with model.ftn_paint, inside
                 R~ (1 - Q) only: m is unused where FTN paints)
    The objective is their sum (`total`).
    """
    w = loss_cfg
    if w.perceptual_weight > 0 and vgg is None:
        raise ValueError("generator_terms: loss.perceptual_weight > 0 needs a VGG (models.vgg.load_vgg)")
    target = inputs["target_image"]
    terms: dict[str, jax.Array] = {}

    def reconstruction(name: str, image: jax.Array, mask: jax.Array | None = None) -> None:
        terms[f"{name}_l1"] = paired * w.l1_weight * l1_loss(image, target, mask)
        if w.perceptual_weight > 0:
            # Outside the mask the image is the target itself, so only the masked pixels differ.
            seen = image if mask is None else mask * image + (1.0 - mask) * target
            terms[f"{name}_perceptual"] = paired * w.perceptual_weight * vgg_perceptual(
                vgg, seen, target, w.vgg16_layer_weights)

    def adversarial(name: str, disc: str, image: jax.Array) -> None:
        if discriminate is not None:
            terms[f"{name}_adv"] = w.adv_weight * g_adv_loss(discriminate(disc, image), w.gan)

    if "pan" in trained:
        reconstruction("pan", out["aligned"], pan_mask(inputs, w.pan_region))
        adversarial("pan", "pan", out["aligned"])
    if "refined" in out and ("pan" in trained or "trn" in trained):
        region, valid = out["region"], out["valid"]
        terms["trn_l1"] = paired * w.l1_weight * l1_loss(out["refined"], target, region)
        terms["trn_alpha"] = w.alpha_weight * alpha_loss(out["alpha"], valid, region)
        terms["trn_consistency"] = (1.0 - paired) * w.consistency_weight * consistency_loss(
            out["refined"], out["warped"], valid, region)
    if "output" in out:
        reconstruction("ftn", out["output"])
        adversarial("ftn", "final", out["output"])
        if "ftn_mask" in out and w.ftn_mask_weight > 0:
            mask, where = out["ftn_mask"], out["soft_region"]
            if "ftn_paint" in out:  # where FTN paints, m is unused (fit_output)
                where = where * (1.0 - out["ftn_paint"])
            terms["ftn_mask"] = w.ftn_mask_weight * l1_loss(mask, jnp.ones_like(mask), where)
    return terms


def discriminator_terms(real: jax.Array, fakes: Mapping[str, jax.Array], discriminate: Discriminate,
                        kind: str = "lsgan") -> dict[str, jax.Array]:
    """{"d_<name>": d_loss(D(real), D(fake))} per discriminator name in `fakes` ("pan": A, "final": P').

    real: P, a real photo in pose I_P (the conditional "real" pair). The fakes are stop-gradient'ed:
    this objective trains the discriminators only.
    """
    return {f"d_{name}": d_loss(discriminate(name, real), discriminate(name, jax.lax.stop_gradient(fake)),
                                kind)
            for name, fake in fakes.items()}


def total(terms: Mapping[str, jax.Array]) -> jax.Array:
    """The objective: the sum of its weighted terms (0 for none)."""
    return sum(terms.values(), jnp.zeros((), jnp.float32))
