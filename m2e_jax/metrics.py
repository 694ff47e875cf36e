"""Image-quality metrics for try-on results: SSIM and PSNR (dm_pix), whole-image and masked.

All functions take images in [-1, 1] (the networks' range), `[B, H, W, C]` float, and return one
value per image, `[B]` float32, so callers can weight, mask out padding and average themselves.
Masked variants score only the pixels where `mask` ([B, H, W, 1] in {0, 1}) is set: the garment
region R_P is where a try-on differs from the person photo, so whole-image scores hide most of it.
"""

from __future__ import annotations

import dm_pix
import jax.numpy as jnp

SSIM_FILTER = 11  # dm_pix's default Gaussian window; the SSIM map loses FILTER // 2 px per side.
MAX_PSNR = 100.0  # identical images score this instead of +inf, so means over a batch stay finite.


def to_unit(x):
    """[-1, 1] -> [0, 1] float32, clipped (network outputs may overshoot slightly)."""
    return jnp.clip((jnp.asarray(x, jnp.float32) + 1.0) * 0.5, 0.0, 1.0)


def psnr(a, b):
    """PSNR in dB, [B], dynamic range 1 after mapping [-1, 1] -> [0, 1]; capped at MAX_PSNR."""
    mse = jnp.mean(jnp.square(to_unit(a) - to_unit(b)), axis=(1, 2, 3))
    return _mse_to_psnr(mse)


def _mse_to_psnr(mse):
    return jnp.minimum(-10.0 * jnp.log10(jnp.maximum(mse, 1e-30)), MAX_PSNR)


def ssim(a, b):
    """Mean SSIM (11x11 Gaussian window, channel-averaged), [B] in [-1, 1]."""
    return dm_pix.ssim(to_unit(a), to_unit(b), filter_size=SSIM_FILTER)


def _masked_mean(values, mask, eps: float = 1e-8):
    """Mean of `values` [B, h, w, C] over pixels where mask [B, h, w, 1] is set; 0 for empty masks."""
    mask = jnp.broadcast_to(mask.astype(jnp.float32), values.shape)
    return jnp.sum(values * mask, axis=(1, 2, 3)) / jnp.maximum(jnp.sum(mask, axis=(1, 2, 3)), eps)


def masked_psnr(a, b, mask):
    """PSNR over the masked pixels only, [B] dB, capped at MAX_PSNR (also for an empty mask)."""
    return _mse_to_psnr(_masked_mean(jnp.square(to_unit(a) - to_unit(b)), mask))


def masked_ssim(a, b, mask):
    """Mean of the SSIM map over masked pixels, [B].

    The map is defined on the 'valid' window positions, so the mask is cropped by FILTER // 2 on
    each side to line up with it.
    """
    ssim_map = dm_pix.ssim(to_unit(a), to_unit(b), filter_size=SSIM_FILTER, return_map=True)
    r = SSIM_FILTER // 2
    crop = jnp.asarray(mask, jnp.float32)[:, r : mask.shape[1] - r, r : mask.shape[2] - r]
    return _masked_mean(ssim_map, crop)


def image_metrics(pred, target, mask=None) -> dict:
    """SSIM and PSNR of `pred` against `target`, [B] each; plus masked variants when `mask` is given."""
    out = {"ssim": ssim(pred, target), "psnr": psnr(pred, target)}
    if mask is not None:
        out["ssim_masked"] = masked_ssim(pred, target, mask)
        out["psnr_masked"] = masked_psnr(pred, target, mask)
    return out
