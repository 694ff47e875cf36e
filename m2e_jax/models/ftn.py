"""Fitting Network (FTN): fits the refined garment onto the person.

P' = R~ * tanh(G_ftn([P * (1 - R_P), T * R_P, R_P, enc(I_P)])) + (1 - R~) * P
(method.md "Our design" 4): the face, hair, background and other garments come from P untouched
wherever the soft region R~ is 0.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from m2e_jax.models.layers import GeneratorNet


def composite(generated, person, soft_region):
    """R~ * G + (1 - R~) * P: exactly P where R~ == 0."""
    return soft_region * generated + (1.0 - soft_region) * person


class FTN(GeneratorNet):
    """FTN generator (`model.ftn_blocks` residual blocks).

    Inputs (float32 `[B, H, W, C]`): person P and refined T in [-1, 1] (C=3), region R_P and
    soft_region R~ in [0, 1] (C=1), person_iuv I_P as float IUV.
    Returns P', float32 `[B, H, W, 3]` in [-1, 1].
    """

    num_blocks: int = 6
    blocks_field = "ftn_blocks"

    @nn.compact
    def __call__(self, person, refined, region, soft_region, person_iuv):
        dt = person.dtype
        x = jnp.concatenate([person * (1.0 - region), refined * region, region.astype(dt),
                             self.encode(person_iuv).astype(dt)], axis=-1)
        generated = jnp.tanh(self.generate(x, 3))
        return composite(generated, person, soft_region)
