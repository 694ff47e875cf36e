"""Training losses (method.md "Our design", hybrid paired / unpaired training). Pure functions.

Weights and choices come from `config.loss` (defaults in m2e_jax/models/defaults.py):
  gan                 "lsgan" | "hinge" | "nonsaturating"   adversarial formulation
  adv_weight          1.0    weight of the generator's adversarial terms
  l1_weight           10.0   L1 to the target (paired) image
  perceptual_weight   10.0   VGG perceptual loss to the target
  consistency_weight  10.0   unpaired self-consistency: T agrees with W where V = 1 inside R_P
  alpha_weight        1.0    pulls TRN's alpha toward V inside R_P
  vgg                 "lpips_vgg16" | path to converted VGG19 weights (.npz)
  vgg16_layer_weights (1/32, 1/16, 1/8, 1/4, 1)  per-layer weights of the perceptual loss

The adversarial losses take discriminator logits; the discriminators are pose-conditional through
their inputs (image concatenated with enc(I_P), see models/discriminators.py). Logits may be a
single array or a list of arrays (several discriminators / scales): the loss is summed over them.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

GANS = ("lsgan", "hinge", "nonsaturating")


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
    """perceptual_loss on `vgg.features` of x and y (`[B, H, W, 3]` in [-1, 1]); one trunk pass."""
    feats = vgg.features(jnp.concatenate([x, y], axis=0))
    b = x.shape[0]
    return perceptual_loss([f[:b] for f in feats], [f[b:] for f in feats], layer_weights)


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


def generator_loss(out: dict, inputs: dict, loss_cfg, vgg=None, fake_logits: dict | None = None,
                   paired: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted generator objective of one batch (method.md "Hybrid paired / unpaired training").

    out: TryOnNet output (any prefix of the pipeline: terms of missing stages are skipped).
    inputs: prepare_batch output (target_image used when paired).
    fake_logits: discriminator logits {"pan": D_pan(A), "final": D_final(P')}, either optional.
    vgg: models.vgg.Vgg for the perceptual terms (skipped when None or perceptual_weight == 0).
    paired (static): target terms against target_image on A, T (inside R_P) and P'; otherwise the
    unpaired self-consistency term. The alpha term and adversarial terms apply to both.

    total = adv_weight * sum_D g_adv_loss + l1_weight * (L1(A, Y) + L1(T, Y | R_P) + L1(P', Y))
            + perceptual_weight * (perc(A, Y) + perc(T, Y) + perc(P', Y))        [paired]
            + consistency_weight * consistency_loss(T, W, V, R_P)               [unpaired]
            + alpha_weight * alpha_loss(alpha, V, R_P)
    Returns (total, dict of the unweighted terms).
    """
    terms: dict[str, jax.Array] = {}
    stage_images = [(k, out[k]) for k in ("aligned", "refined", "output") if k in out]
    if paired:
        target = inputs["target_image"]
        for name, image in stage_images:
            mask = inputs["region"] if name == "refined" else None
            terms[f"l1_{name}"] = l1_loss(image, target, mask)
        if vgg is not None and loss_cfg.perceptual_weight and stage_images:
            # One trunk pass over every stage and the target (the target's features once).
            b = target.shape[0]
            feats = vgg.features(jnp.concatenate([image for _, image in stage_images] + [target], axis=0))
            target_feats = [f[-b:] for f in feats]
            for n, (name, _) in enumerate(stage_images):
                terms[f"perceptual_{name}"] = perceptual_loss(
                    [f[n * b:(n + 1) * b] for f in feats], target_feats, loss_cfg.vgg16_layer_weights)
    elif "refined" in out:
        terms["consistency"] = consistency_loss(out["refined"], out["warped"], out["valid"], out["region"])
    if "alpha" in out:
        terms["alpha"] = alpha_loss(out["alpha"], out["valid"], out["region"])
    for name, logits in (fake_logits or {}).items():
        terms[f"adv_{name}"] = g_adv_loss(logits, loss_cfg.gan)
    weights = {"l1": loss_cfg.l1_weight, "perceptual": loss_cfg.perceptual_weight,
               "consistency": loss_cfg.consistency_weight, "alpha": loss_cfg.alpha_weight,
               "adv": loss_cfg.adv_weight}
    total = jnp.zeros((), jnp.float32)
    for name, value in terms.items():
        total = total + weights[name.split("_")[0]] * value
    return total, terms
