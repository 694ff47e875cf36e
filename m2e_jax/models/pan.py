"""Pose Alignment Network (PAN): the model image M re-posed to the person's pose.

A = tanh(G_pan([M, enc(I_M), enc(I_P), W, V]))  (method.md "Our design" 2), with G_pan the ResNet
generator of layers.ResnetGenerator (`model.pan_blocks` residual blocks).
`model.pan_inputs = "model_only"` drops W and V (the ablation "PAN without the warp input":
A = tanh(G_pan([M, enc(I_M), enc(I_P)]))).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from m2e_jax.models.layers import GeneratorNet, check_choice

PAN_INPUTS = ("model_and_warp", "model_only")


class PAN(GeneratorNet):
    """PAN generator.

    Inputs (float32, `[B, H, W, C]`): model_image M in [-1, 1] (C=3); model_iuv I_M and person_iuv I_P
    as float IUV (densepose.iuv_to_float); warped W in [-1, 1] (C=3); valid V in {0, 1} (C=1).
    Returns the aligned image A, float32 `[B, H, W, 3]` in [-1, 1].
    """

    num_blocks: int = 9
    blocks_field = "pan_blocks"
    inputs: str = "model_and_warp"

    @classmethod
    def from_config(cls, model_cfg, **overrides):
        fields = dict(inputs=model_cfg.pan_inputs)
        fields.update(overrides)
        return super().from_config(model_cfg, **fields)

    @nn.compact
    def __call__(self, model_image, model_iuv, person_iuv, warped, valid):
        dt = model_image.dtype
        check_choice("model.pan_inputs", self.inputs, PAN_INPUTS)
        parts = [model_image, self.encode(model_iuv).astype(dt), self.encode(person_iuv).astype(dt)]
        if self.inputs == "model_and_warp":
            parts += [warped, valid.astype(dt)]
        x = jnp.concatenate(parts, axis=-1)
        return jnp.tanh(self.generate(x, 3))
