"""Texture Refinement Network (TRN): puts the warped texture's detail back into the aligned image.

[T_g, a] = G_trn([A, W, V, R_P, enc(I_P)]); T_g = tanh(.), alpha = sigmoid(a) in [0, 1];
T = R_P * (alpha * W + (1 - alpha) * T_g) + (1 - R_P) * A    (method.md "Our design" 3).
alpha selects the warped pixels W where they are trustworthy (losses.alpha_loss pulls it toward V);
outside the garment region R_P the aligned image A is kept.

With model.trn_offset > 0 (ours; off by default, the paper's TRN), TRN also predicts an offset field
o = tanh(.) in [-1, 1]^2 and moves the warp by o * trn_offset pixels before it blends it:
W' = flow_warp(W, o * trn_offset), V' = flow_warp(V, ...), and W', V' replace W, V above. DensePose's
errors misplace the warp's pixels by a few pixels; moving them keeps their detail, where redrawing
them at the networks' size blurs it (benchmarks/RESULTS.md 12, "What bounds LPIPS"), and the same
field, upsampled, moves the warp at the photo's size (models.tryon.recompose). Measured on `hard`
(RESULTS.md 12, trn_offset 2): unregularised, the field learns a rough sub-pixel jitter that helps a
little at the networks' size and costs SSIM at the photo's; experimental until a smoothness term wins.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from m2e_jax.models.layers import GeneratorNet
from m2e_jax.ops.flow_warp import flow_warp


def blend_texture(aligned, warped, texture, alpha, region):
    """T = R_P * (alpha * W + (1 - alpha) * T_g) + (1 - R_P) * A; all `[B, H, W, C]` broadcastable."""
    inside = alpha * warped + (1.0 - alpha) * texture
    return region * inside + (1.0 - region) * aligned


def move_warp(warped, valid, offset, max_offset: float) -> tuple[jax.Array, jax.Array]:
    """(W', V'): W `[B, H, W, 3]` and V `[B, H, W, 1]` moved by TRN's field `offset` `[B, H, W, 2]`
    in [-1, 1] (dy, dx) times `max_offset` pixels at this resolution (ops/flow_warp.py)."""
    pixels = offset * max_offset
    return flow_warp(warped, pixels), flow_warp(valid, pixels)


class TRN(GeneratorNet):
    """TRN generator (`model.trn_blocks` residual blocks).

    Inputs (float32 `[B, H, W, C]`): aligned A and warped W in [-1, 1] (C=3), valid V and region R_P
    in [0, 1] (C=1), person_iuv I_P as float IUV.
    Returns a dict: `texture` T_g `[B, H, W, 3]` in [-1, 1], `alpha` `[B, H, W, 1]` in [0, 1],
    `refined` T `[B, H, W, 3]` in [-1, 1]; with max_offset > 0 also `trn_offset` o `[B, H, W, 2]` in
    [-1, 1] and the moved warp `moved_warped` W', `moved_valid` V'; all float32.
    """

    num_blocks: int = 3
    blocks_field = "trn_blocks"
    max_offset: float = 0.0  # model.trn_offset: pixels at the networks' size; 0 = the paper's TRN

    @classmethod
    def from_config(cls, model_cfg, **overrides):
        return super().from_config(model_cfg, **{"max_offset": model_cfg.trn_offset, **overrides})

    @nn.compact
    def __call__(self, aligned, warped, valid, region, person_iuv):
        dt = aligned.dtype
        x = jnp.concatenate([aligned, warped, valid.astype(dt), region.astype(dt),
                             self.encode(person_iuv).astype(dt)], axis=-1)
        logits = self.generate(x, 6 if self.max_offset > 0 else 4)
        texture = jnp.tanh(logits[..., :3])
        alpha = nn.sigmoid(logits[..., 3:4])
        out = {"texture": texture, "alpha": alpha}
        if self.max_offset > 0:
            out["trn_offset"] = jnp.tanh(logits[..., 4:6])
            warped, valid = move_warp(warped, valid, out["trn_offset"], self.max_offset)
            out.update(moved_warped=warped, moved_valid=valid)
        out["refined"] = blend_texture(aligned, warped, texture, alpha, region)
        return out
