"""The difficulties of real photos, as fields of the synthetic world's config, and presets of them.

`WorldConfig` holds one field per effect; `PRESETS` names three worlds:
  easy    every effect off: the original world (exact IUV, garments on the body surface, one
          lighting), byte for byte.
  medium  DensePose-like errors, back views and self-occlusion, loose tops and long hair, per-photo
          lighting, camera framing, JPEG inputs and textured backgrounds, all moderate.
  hard    the same effects, stronger and more frequent.

Where each effect acts (dataset.make_example applies them):
- On the *inputs* only (what a method is given; never the ground truth): DensePose estimation
  errors in `model_iuv` / `person_iuv` (`estimate_iuv`) and JPEG compression of `model_image` /
  `person_image` (`jpeg`).
- On the photographed world (inputs and ground truth alike, so P* stays the exact render of
  identity B, pose b, garment g with P's lighting and camera): back views, crossed arms, framing
  (`edit_pose`), loose tops (`edit_garment`), long hair and textured backdrops (`edit_identity`),
  lighting (`Lighting`, drawn per photo; P* is lit as P's photo).
Every draw comes from its own random stream keyed by (seed, split, tag, index or pool member,
photo), so the easy preset never consumes a random number the original world did not.
"""

from __future__ import annotations

import dataclasses
import io
from typing import NamedTuple

import numpy as np
from PIL import Image

from m2e_jax import densepose
from m2e_jax.synthetic import world


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """One field per effect; zero / (0, 0) turns it off. Probabilities are per photo unless noted."""
    name: str = "easy"
    # DensePose estimation errors (input IUV only).
    border_px: int = 0          # silhouette grown or shrunk by 1..border_px pixels (at 128 rows)
    uv_drift: float = 0.0       # amplitude of a smooth U/V drift, uint8 UV units (16 = 1 texel at tile 16)
    drop_prob: float = 0.0      # per arm: the hand and the distal half of the forearm go missing
    speckle: float = 0.0        # fraction of body pixels turned into holes
    swap_prob: float = 0.0      # the whole map's left/right parts swapped
    # Surface the model photo never showed.
    cross_prob: float = 0.0     # per arm: forearm across the torso, in front of it (self-occlusion)
    back_prob: float = 0.0      # seen from behind (DensePose's back parts)
    # Garments off the body surface (per garment / identity of the pools).
    loose_prob: float = 0.0     # upper garment is a loose top: flares beyond the torso, with a hem
    loose_max: float = 0.0      # largest flare, in hip half widths
    hem_max: float = 0.0        # longest hem below the pelvis, body units
    long_hair_prob: float = 0.0  # identity wears long hair over the shoulders
    # Photometry (per photo; P* is lit as P).
    gain: float = 0.0           # brightness factor in [1 - gain, 1 + gain]
    cast: float = 0.0           # per-channel factor in [1 - cast, 1 + cast]
    ramp: float = 0.0           # directional light: brightness varies by +-ramp across the frame
    shadow: float = 0.0         # a soft shadow edge darkening one side by up to `shadow`
    # Camera.
    zoom_out: float = 0.0       # person scale drawn in [0.88 - zoom_out, 1.0] instead of [0.88, 1.0]
    shift_y: float = 0.0        # vertical offset in [-shift_y, shift_y] frame heights
    jpeg_quality: tuple[int, int] = (0, 0)  # input photos JPEG-compressed at a quality in this range
    texture_prob: float = 0.0   # identity's backdrop is textured

    def is_easy(self) -> bool:
        return dataclasses.replace(self, name="easy") == WorldConfig()


PRESETS: dict[str, WorldConfig] = {
    "easy": WorldConfig(),
    "medium": WorldConfig(
        name="medium", border_px=1, uv_drift=8.0, drop_prob=0.1, speckle=0.01, swap_prob=0.03,
        cross_prob=0.25, back_prob=0.1, loose_prob=0.35, loose_max=0.6, hem_max=0.25, long_hair_prob=0.3,
        gain=0.15, cast=0.06, ramp=0.2, shadow=0.2, zoom_out=0.1, shift_y=0.04, jpeg_quality=(60, 90),
        texture_prob=0.3),
    "hard": WorldConfig(
        name="hard", border_px=3, uv_drift=16.0, drop_prob=0.25, speckle=0.03, swap_prob=0.08,
        cross_prob=0.4, back_prob=0.25, loose_prob=0.6, loose_max=1.0, hem_max=0.45, long_hair_prob=0.5,
        gain=0.25, cast=0.1, ramp=0.35, shadow=0.35, zoom_out=0.2, shift_y=0.08, jpeg_quality=(30, 70),
        texture_prob=0.6),
}


def preset(name_or_config: str | WorldConfig) -> WorldConfig:
    """The WorldConfig of a preset name ("easy" | "medium" | "hard"), or a WorldConfig as given."""
    if isinstance(name_or_config, WorldConfig):
        return name_or_config
    if name_or_config not in PRESETS:
        raise ValueError(f"world preset: unknown {name_or_config!r}; expected one of {tuple(PRESETS)}")
    return PRESETS[name_or_config]


# ------------------------------------------------------------------ the photographed world

def edit_identity(identity: world.Identity, rng: np.random.Generator, cfg: WorldConfig) -> world.Identity:
    """Long hair and a textured backdrop, drawn for a pool member from its own stream."""
    hair = rng.random() < cfg.long_hair_prob
    length = float(np.round(rng.uniform(0.35, 0.6), 4))
    texture = rng.random() < cfg.texture_prob
    seed = int(rng.integers(1, 2**31 - 1))
    return dataclasses.replace(identity, hair_length=length if hair else 0.0,
                               bg_texture=seed if texture else 0)


def edit_garment(garment: world.Garment, rng: np.random.Generator, cfg: WorldConfig) -> world.Garment:
    """A loose top (upper garments only), drawn for a pool member from its own stream."""
    loose = rng.random() < cfg.loose_prob
    flare = float(np.round(rng.uniform(0.3, 1.0) * cfg.loose_max, 4))
    hem = float(np.round(rng.uniform(0.2, 1.0) * cfg.hem_max, 4))
    if garment.kind != "upper" or not loose:
        return garment
    return dataclasses.replace(garment, loose=flare, hem=hem)


def edit_pose(pose: world.Pose, rng: np.random.Generator, cfg: WorldConfig) -> world.Pose:
    """Crossed forearms, a back view and the camera's framing of one photo."""
    shoulder, elbow, front = list(pose.shoulder), list(pose.elbow), list(pose.arm_front)
    for k in range(2):
        cross = rng.random() < cfg.cross_prob
        s, e = float(np.round(rng.uniform(0.0, 0.3), 4)), float(np.round(rng.uniform(-2.6, -1.9), 4))
        if cross:
            shoulder[k], elbow[k], front[k] = s, e, True
    back = bool(rng.random() < cfg.back_prob)
    zoom = float(np.round(rng.uniform(0.88 - cfg.zoom_out, 1.0), 4)) if cfg.zoom_out > 0 else pose.zoom
    shift_y = float(np.round(rng.uniform(-cfg.shift_y, cfg.shift_y), 4)) if cfg.shift_y > 0 else 0.0
    return dataclasses.replace(pose, shoulder=tuple(shoulder), elbow=tuple(elbow), arm_front=tuple(front),
                               back=back, zoom=zoom, shift_y=shift_y)


class Lighting(NamedTuple):
    """One photo's illumination: colour = clip(render * gain * cast[c] * ramp(x, y) * shadow(x, y))."""
    gain: float
    cast: tuple[float, float, float]
    ramp_angle: float   # direction the light comes from (radians)
    ramp: float         # brightness change across the frame, +-
    shadow: float       # darkening beyond the shadow edge
    shadow_pos: float   # edge position along the light direction, -0.5..0.5 of the frame


def sample_lighting(rng: np.random.Generator, cfg: WorldConfig) -> Lighting:
    return Lighting(
        gain=float(1 + rng.uniform(-cfg.gain, cfg.gain)),
        cast=tuple(float(1 + c) for c in rng.uniform(-cfg.cast, cfg.cast, 3)),
        ramp_angle=float(rng.uniform(0, 2 * np.pi)), ramp=float(rng.uniform(0, cfg.ramp)),
        shadow=float(rng.uniform(0, cfg.shadow)), shadow_pos=float(rng.uniform(-0.3, 0.3)))


def light(image: np.ndarray, lighting: Lighting | None) -> np.ndarray:
    """The render `image` uint8 `[H, W, 3]` under `lighting` (None: unchanged), uint8."""
    if lighting is None:
        return image
    h, w = image.shape[:2]
    y = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h - 0.5
    x = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / h - 0.5 * w / h
    along = x * np.cos(lighting.ramp_angle) + y * np.sin(lighting.ramp_angle)
    factor = (1 + 2 * lighting.ramp * along) * lighting.gain
    # A soft shadow edge (about 1/8 of the frame wide) on the side away from the light.
    factor = factor * (1 - lighting.shadow / (1 + np.exp((along - lighting.shadow_pos) * -16.0)))
    out = image.astype(np.float32) * factor[..., None] * np.float32(lighting.cast)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ the inputs only

def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """`image` uint8 `[H, W, 3]` through a JPEG encode/decode at `quality` (0: unchanged)."""
    if quality <= 0:
        return image
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def jpeg_quality(rng: np.random.Generator, cfg: WorldConfig) -> int:
    lo, hi = cfg.jpeg_quality
    return int(rng.integers(lo, hi + 1)) if hi > 0 else 0


_SWAP = np.arange(densepose.NUM_LABELS, dtype=np.uint8)
for _a, _b in ((3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 18), (19, 20), (21, 22),
               (23, 24)):
    _SWAP[_a], _SWAP[_b] = _b, _a
_FOREARM_OF_HAND = {3: (20, 22), 4: (19, 21)}


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`a` moved by (dy, dx) pixels (|dy|, |dx| <= 1), edges repeated."""
    pad = [(1, 1), (1, 1)] + [(0, 0)] * (a.ndim - 2)
    p = np.pad(a, pad, mode="edge")
    h, w = a.shape[:2]
    return p[1 - dy:1 - dy + h, 1 - dx:1 - dx + w]


def _grow(iuv: np.ndarray) -> np.ndarray:
    """Background pixels next to the body take a 4-neighbour's (I, U, V): the silhouette grows 1 px."""
    out = iuv.copy()
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        n = _shift(iuv, dy, dx)
        take = (out[..., 0] == 0) & (n[..., 0] > 0)
        out[take] = n[take]
    return out


def _shrink(iuv: np.ndarray) -> np.ndarray:
    """Body pixels with >= 2 background 4-neighbours become background: the silhouette's convex
    edges recede by about 1 px, while limbs only 2-3 px wide (at 64 rows) are thinned, not erased."""
    fg = iuv[..., 0] > 0
    bg_neighbours = sum((~_shift(fg, dy, dx)).astype(np.int32)
                        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)))
    out = iuv.copy()
    out[fg & (bg_neighbours >= 2)] = 0
    return out


def estimate_iuv(iuv: np.ndarray, rng: np.random.Generator, cfg: WorldConfig) -> np.ndarray:
    """What a DensePose estimator might return for the exact map `iuv` uint8 `[H, W, 3]` (uint8).

    Border error (silhouette grown or shrunk 1..border_px px), smooth U/V drift, dropped hands and
    forearm halves, speckle holes, and occasionally every left/right part swapped; each draw comes
    from `rng` whether or not it applies, so one effect's draws do not shift another's.
    """
    h, w = iuv.shape[:2]
    out = iuv.copy()
    # border_px is in pixels of a 128-row photo (a limb is ~6 px wide there); smaller photos get
    # proportionally fewer steps, at least one, so thin limbs are not eroded away entirely.
    steps = int(rng.integers(1, cfg.border_px + 1)) if cfg.border_px > 0 else 0
    steps = max(1, int(np.round(steps * h / 128))) if steps else 0
    grow = rng.random() < 0.5
    for _ in range(steps):
        out = _grow(out) if grow else _shrink(out)
    fx, fy = rng.uniform(0.5, 1.5, 2)
    phase = rng.uniform(0, 2 * np.pi, 4)
    amp = rng.uniform(0.5, 1.0, 2) * cfg.uv_drift
    if cfg.uv_drift > 0:
        yy = (np.arange(h)[:, None] + 0.5) / h
        xx = (np.arange(w)[None, :] + 0.5) / w
        fg = out[..., 0] > 0
        for c, k in ((1, 0), (2, 1)):
            drift = (amp[k] * np.sin(2 * np.pi * fx * xx + phase[2 * k])
                     * np.cos(2 * np.pi * fy * yy + phase[2 * k + 1]))
            moved = np.clip(np.round(out[..., c].astype(np.float64) + drift), 0, 255).astype(np.uint8)
            out[..., c] = np.where(fg, moved, out[..., c])
    drops = rng.random(2) < cfg.drop_prob
    for hand, drop in zip((3, 4), drops):
        if drop:
            lower = np.isin(out[..., 0], _FOREARM_OF_HAND[hand]) & (out[..., 2] > 128)
            out[(out[..., 0] == hand) | lower] = 0
    holes = rng.random((h, w)) < cfg.speckle
    out[holes & (out[..., 0] > 0)] = 0
    if rng.random() < cfg.swap_prob:
        out[..., 0] = _SWAP[out[..., 0]]
    return out
