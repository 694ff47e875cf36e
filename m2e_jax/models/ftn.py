"""Fitting Network (FTN): fits the refined garment onto the person.

P' keeps the face, hair, background and other garments of P untouched wherever the soft region R~
is 0, and lies in [-1, 1]. G edits the input composite x = P * (1 - R_P) + T * R_P (our design
choice, not the paper's) instead of redrawing it:
    [G_img, m] = G([P * (1 - R_P), T * R_P, R_P, enc(I_P)]);  G_img = tanh(.)
    m = sigmoid(. + mask_offset) in [0, 1]
    P' = R~ * (m * x + (1 - m) * G_img) + (1 - R~) * P
Why: when G paints the whole region from scratch (method.md "Our design" 4, P' = R~ G_img +
(1 - R~) P; the former `model.ftn_mode="direct"`), every texture detail of T must pass through G's
bottleneck and comes out blurred (measured on the synthetic demo: SSIM below the "paste the warp"
baseline). With a composition mask, as in pix2pixHD's / CP-VTON's try-on modules, T's pixels pass
straight through where they are right and G only repaints seams, skin and holes. `mask_offset`
(model.ftn_mask_offset: 1, m ~ sigmoid(1) = 0.73 at initialisation) starts P' near x; the trainer's
`loss.ftn_mask_weight` term (L1 of m toward 1 inside R~) keeps m from collapsing to 0.

With a paint map Q (model.ftn_paint; models/tryon.py `paint_region`: the part of the region that
M's warped garment does not cover) T is hidden from G there and the mask becomes m (1 - Q): G
paints those pixels from P's context (P's skin where a long sleeve becomes a short one), the one
thing FTN knows that TRN cannot, since only FTN sees P.

With model.ftn_relight ("gain" or "ramp"), T is relit to P's photo before anything else:
T_lit = relight(T, g), a gain map g on [0, 1] intensity predicted from M's and P's whole photos
(`RelightHead`), used in FTN's input and in the composite x. "gain": one gain per channel (a change
of exposure and white balance); "ramp": times a linear ramp across the frame (the light falling off
to one side). Why: T carries M's photo's light (through the warp) and P' must be lit as P's photo,
and FTN's convolutions, which see a few dozen pixels each, cannot estimate a whole photo's light.
g is a map `[B, H, W, 3]` so `recompose` resizes it with the other maps.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from m2e_jax.models.layers import GeneratorNet, check_choice, compute_dtype

RELIGHT_MODES = ("none", "gain", "ramp")


def composite(generated, person, soft_region):
    """R~ * G + (1 - R~) * P: exactly P where R~ == 0."""
    return soft_region * generated + (1.0 - soft_region) * person


def input_composite(person, refined, region):
    """x = P * (1 - R_P) + T * R_P: the refined garment pasted into the person's garment region."""
    return person * (1.0 - region) + refined * region


def relight(image, gain):
    """`image` `[B, H, W, 3]` in [-1, 1] times `gain` (broadcastable, > 0) on [0, 1] intensity,
    clipped: how a photo's exposure and colour balance act on it."""
    return jnp.clip((image + 1.0) * 0.5 * gain, 0.0, 1.0) * 2.0 - 1.0


class RelightHead(nn.Module):
    """The light of P's photo relative to M's: M, P `[B, H, W, 3]` in [-1, 1] -> gain map g > 0,
    exactly 1 at initialisation (zero-init last layer). Three stride-2 3x3 convs, then a mean over
    the whole image (the light is a property of the photo, not of a patch), then 3 (or with `ramp`
    5) numbers z in [-max_log_gain, max_log_gain]:
      ramp False: g = exp(z_c)                          `[B, 1, 1, 3]`
      ramp True:  g = exp(z_c + z_3 x + z_4 y)          `[B, H, W, 3]`, x, y in [-1, 1] across the frame
    """

    channels: int = 16
    max_log_gain: float = 0.5
    ramp: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, model_image, person):
        x = jnp.concatenate([model_image, person], axis=-1).astype(self.dtype)
        for level in range(3):
            x = nn.relu(nn.Conv(self.channels * 2 ** level, (3, 3), strides=(2, 2), dtype=self.dtype)(x))
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        z = nn.Dense(5 if self.ramp else 3, kernel_init=nn.initializers.zeros)(x)
        z = self.max_log_gain * jnp.tanh(z)
        log_gain = z[:, None, None, :3]
        if self.ramp:
            h, w = person.shape[1:3]
            yy = jnp.linspace(-1.0, 1.0, h)[None, :, None, None]
            xx = jnp.linspace(-1.0, 1.0, w)[None, None, :, None]
            log_gain = log_gain + z[:, None, None, 3:4] * xx + z[:, None, None, 4:5] * yy
        return jnp.exp(log_gain)


def fit_output(person, refined, region, soft_region, image, mask, paint=None, gain=None):
    """P' from FTN's own outputs: G_img `image` and the composition mask m.

    P' = R~ (m x + (1 - m) G_img) + (1 - R~) P with x = input_composite(P, T, R). With a paint map Q
    (model.ftn_paint, `[B, H, W, 1]` in [0, 1]) the mask is m (1 - Q): FTN's own G_img wherever it
    paints. With a gain map (model.ftn_relight, `[B, H, W, 3]`) x holds relight(T, gain). Any resolution:
    `recompose` in models/tryon.py evaluates it on full-resolution P, T and regions with FTN's maps
    upsampled.
    """
    if gain is not None:
        refined = relight(refined, gain)
    if paint is not None:
        mask = mask * (1.0 - paint)
    generated = mask * input_composite(person, refined, region) + (1.0 - mask) * image
    return composite(generated, person, soft_region)


class FTN(GeneratorNet):
    """FTN generator (`model.ftn_blocks` residual blocks; the composite formula of the module docstring).

    Inputs (float32 `[B, H, W, C]`): person P and refined T in [-1, 1] (C=3), region R_P and
    soft_region R~ in [0, 1] (C=1), person_iuv I_P as float IUV; paint Q `[B, H, W, 1]` in [0, 1]
    or None (model.ftn_paint): the part of the region FTN paints, where T is hidden from it and P'
    is its own G_img (`fit_output`); model_image M `[B, H, W, 3]`, needed with `relight` (model.ftn_relight
    "gain" or "ramp").
    Returns P', float32 `[B, H, W, 3]` in [-1, 1]; with `with_mask=True` the pair (P', m) where m is
    the composition mask `[B, H, W, 1]` in [0, 1]; with `with_parts=True` a dict: `output` P',
    `generated` G_img `[B, H, W, 3]` in [-1, 1], `mask` m (what `recompose` needs to redo the
    formula at another resolution) and, with `relight`, `gain` (`[B, H, W, 3]`, the gain map T was
    relit by).
    """

    num_blocks: int = 6
    blocks_field = "ftn_blocks"
    mask_offset: float = 3.0
    relight: str = "none"

    @classmethod
    def from_config(cls, model_cfg, **overrides):
        fields = dict(mask_offset=model_cfg.ftn_mask_offset, relight=model_cfg.ftn_relight)
        fields.update(overrides)
        return super().from_config(model_cfg, **fields)

    @nn.compact
    def __call__(self, person, refined, region, soft_region, person_iuv, paint=None,
                 with_mask: bool = False, with_parts: bool = False, model_image=None):
        dt = person.dtype
        check_choice("model.ftn_relight", self.relight, RELIGHT_MODES)
        gain = None
        if self.relight != "none":
            if model_image is None:
                raise ValueError("FTN: model.ftn_relight needs the model image")
            head = RelightHead(self.base_channels, ramp=self.relight == "ramp",
                               dtype=compute_dtype(self.dtype), name="relight")
            gain = head(model_image, person)
            gain = jnp.broadcast_to(gain, refined.shape)
            lit = relight(refined, gain)
        else:
            lit = refined
        if paint is None:
            x = [person * (1.0 - region), lit * region, region.astype(dt)]
        else:  # T is hidden where FTN paints; the paint map is one more input channel
            x = [person * (1.0 - region), lit * (region - paint), region.astype(dt), paint.astype(dt)]
        x = jnp.concatenate(x + [self.encode(person_iuv).astype(dt)], axis=-1)
        logits = self.generate(x, 4)
        image = jnp.tanh(logits[..., :3])
        mask = nn.sigmoid(logits[..., 3:] + self.mask_offset)
        # fit_output relights T again (one elementwise op) rather than taking `lit`: the same
        # formula as `recompose`, and the measured checkpoints (RESULTS.md section 9) came from it.
        output = fit_output(person, refined, region, soft_region, image, mask, paint, gain)
        if with_parts:
            return {"output": output, "generated": image, "mask": mask,
                    **({} if gain is None else {"gain": gain})}
        return (output, mask) if with_mask else output
