"""Texture Refinement Network (TRN): puts the warped texture's detail back into the aligned image.

[T_g, a] = G_trn([A, W, V, R_P, enc(I_P)]); T_g = tanh(.), alpha = sigmoid(a) in [0, 1];
T = R_P * (alpha * W + (1 - alpha) * T_g) + (1 - R_P) * A    (method.md "Our design" 3).
alpha selects the warped pixels W where they are trustworthy (losses.alpha_loss pulls it toward V);
outside the garment region R_P the aligned image A is kept.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from m2e_jax.models.layers import GeneratorNet


def blend_texture(aligned, warped, texture, alpha, region):
    """T = R_P * (alpha * W + (1 - alpha) * T_g) + (1 - R_P) * A; all `[B, H, W, C]` broadcastable."""
    inside = alpha * warped + (1.0 - alpha) * texture
    return region * inside + (1.0 - region) * aligned


class TRN(GeneratorNet):
    """TRN generator (`model.trn_blocks` residual blocks).

    Inputs (float32 `[B, H, W, C]`): aligned A and warped W in [-1, 1] (C=3), valid V and region R_P
    in [0, 1] (C=1), person_iuv I_P as float IUV.
    Returns a dict: `texture` T_g `[B, H, W, 3]` in [-1, 1], `alpha` `[B, H, W, 1]` in [0, 1],
    `refined` T `[B, H, W, 3]` in [-1, 1]; all float32.
    """

    num_blocks: int = 3
    blocks_field = "trn_blocks"

    @nn.compact
    def __call__(self, aligned, warped, valid, region, person_iuv):
        dt = aligned.dtype
        x = jnp.concatenate([aligned, warped, valid.astype(dt), region.astype(dt),
                             self.encode(person_iuv).astype(dt)], axis=-1)
        logits = self.generate(x, 4)
        texture = jnp.tanh(logits[..., :3])
        alpha = nn.sigmoid(logits[..., 3:])
        refined = blend_texture(aligned, warped, texture, alpha, region)
        return {"texture": texture, "alpha": alpha, "refined": refined}
