"""Moving an image by a dense offset field, in pixels (TRN's correction of the UV warp,
model.trn_offset): the output pixel (y, x) reads the image at (y + dy, x + dx), bilinearly.

TRN predicts its field at the networks' size in units of model.trn_offset pixels, so the same field,
upsampled, moves the warp at the photo's size by `models.tryon.scaled_model_config`'s trn_offset.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def flow_warp(image: jax.Array, flow: jax.Array) -> jax.Array:
    """Samples `image` at each pixel's position moved by `flow`, bilinearly.

    image: `[B, H, W, C]` float; flow: `[B, H, W, 2]` float, (dy, dx) in pixels (the output pixel
    (y, x) reads image at (y + dy, x + dx)); positions past the border read the border pixel.
    Returns `[B, H, W, C]` in image's dtype. Differentiable in both arguments (in flow through the
    bilinear weights: its gradient sees the image one pixel around the sampled position).
    """
    b, h, w, c = image.shape
    if flow.shape != (b, h, w, 2):
        raise ValueError(f"flow_warp: flow {flow.shape} does not match image {image.shape} "
                         "(needs [B, H, W, 2])")
    flow = flow.astype(jnp.float32)
    ys = jnp.clip(jnp.arange(h, dtype=jnp.float32)[None, :, None] + flow[..., 0], 0.0, h - 1.0)
    xs = jnp.clip(jnp.arange(w, dtype=jnp.float32)[None, None, :] + flow[..., 1], 0.0, w - 1.0)
    y0, x0 = jnp.floor(ys), jnp.floor(xs)
    wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
    flat = image.reshape(b, h * w, c)

    def at(y: jax.Array, x: jax.Array) -> jax.Array:
        return jnp.take_along_axis(flat, (y * w + x).reshape(b, h * w, 1), axis=1).reshape(b, h, w, c)

    top = (1.0 - wx) * at(y0, x0) + wx * at(y0, x1)
    bottom = (1.0 - wx) * at(y1, x0) + wx * at(y1, x1)
    return ((1.0 - wy) * top + wy * bottom).astype(image.dtype)
