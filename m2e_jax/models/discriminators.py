"""Pose-conditional PatchGAN discriminators (method.md "Our design" 5).

D(x, I_P): the image x `[B, H, W, 3]` in [-1, 1] is concatenated with enc(I_P) and scored per
patch. Architecture (pix2pix's 70x70 PatchGAN for d_layers=3): 4x4 stride-2 conv `d_channels` +
LeakyReLU(0.2); d_layers - 1 more 4x4 stride-2 convs doubling the width (capped at 8x) + norm +
LeakyReLU; one 4x4 stride-1 conv + norm + LeakyReLU; a 4x4 stride-1 conv to 1 logit. Zero padding 1.
Output `[B, H / 2**d_layers - 2, W / 2**d_layers - 2, 1]` float32 logits.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from m2e_jax import densepose
from m2e_jax.models.layers import NORMS, Norm, check_choice, check_divisible, compute_dtype


class PatchDiscriminator(nn.Module):
    """Pose-conditional PatchGAN. `__call__(image, person_iuv)` -> logits."""

    channels: int = 64
    num_layers: int = 3
    norm: str = "instance"
    dtype: str = "float32"

    @classmethod
    def from_config(cls, model_cfg, **overrides):
        fields = dict(channels=model_cfg.d_channels, num_layers=model_cfg.d_layers, norm=model_cfg.norm,
                      dtype=model_cfg.dtype)
        fields.update(overrides)
        return cls(**fields)

    @nn.compact
    def __call__(self, image, person_iuv):
        check_choice("model.norm", self.norm, NORMS)
        check_divisible(image.shape[1], image.shape[2], 2 ** self.num_layers, "discriminator")
        dt = compute_dtype(self.dtype)

        def conv(x, features, stride, bias):
            return nn.Conv(features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)),
                           use_bias=bias, dtype=dt)(x)

        x = jnp.concatenate([image.astype(dt),
                             densepose.encode_iuv(person_iuv, dtype=dt)], axis=-1)
        x = nn.leaky_relu(conv(x, self.channels, 2, True), 0.2)
        for n in range(1, self.num_layers + 1):
            stride = 2 if n < self.num_layers else 1
            x = conv(x, self.channels * min(2 ** n, 8), stride, self.norm == "none")
            x = nn.leaky_relu(Norm(self.norm, dt)(x), 0.2)
        return conv(x, 1, 1, True).astype(jnp.float32)
