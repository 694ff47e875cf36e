"""Pose Alignment Network (PAN): the model image M re-posed to the person's pose.

A = tanh(G_pan([M, enc(I_M), enc(I_P), W, V]))  (method.md "Our design" 2), with G_pan the ResNet
generator of layers.ResnetGenerator (`model.pan_blocks` residual blocks).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from m2e_jax.models.layers import GeneratorNet


class PAN(GeneratorNet):
    """PAN generator.

    Inputs (float32, `[B, H, W, C]`): model_image M in [-1, 1] (C=3); model_iuv I_M and person_iuv I_P
    as float IUV (densepose.iuv_to_float); warped W in [-1, 1] (C=3); valid V in {0, 1} (C=1).
    Returns the aligned image A, float32 `[B, H, W, 3]` in [-1, 1].
    """

    num_blocks: int = 9
    blocks_field = "pan_blocks"

    @nn.compact
    def __call__(self, model_image, model_iuv, person_iuv, warped, valid):
        dt = model_image.dtype
        x = jnp.concatenate([model_image, self.encode(model_iuv).astype(dt),
                             self.encode(person_iuv).astype(dt), warped, valid.astype(dt)], axis=-1)
        return jnp.tanh(self.generate(x, 3))
