"""The synthetic try-on world: a 2D articulated person with exact DensePose-style IUV.

A person is a set of body segments (tapered capsules), each with its own surface chart (U across,
V along), labelled with DensePose's part indices (front variants; arms and head split into their two
DensePose halves). Rendering first rasterises the IUV map (painter's order by a pose-dependent depth),
quantises U, V to uint8, then colours every labelled pixel with `texel(identity, upper, lower, I, U, V)`
of its own stored (I, U, V). So the IUV agrees with the image exactly, and moving pixels through UV
space between two poses of the same outfit reproduces the other render up to UV quantisation.

Geometry depends only on (identity, pose); colour of a body pixel only on (identity, garments, I, U, V).
Coordinates: pixel centres at (x + 0.5, y + 0.5), x to the right, y down; the person faces the camera,
so the person's right side is on the image's left.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import numpy as np

from m2e_jax import densepose

# Body segments. Each label maps to a segment kind, and to the half of a split segment it covers.
SEG_TORSO, SEG_HEAD, SEG_UPPER_ARM, SEG_LOWER_ARM, SEG_HAND, SEG_UPPER_LEG, SEG_LOWER_LEG, SEG_FOOT = range(8)

# label -> (segment kind, side): side 0 = whole segment (U = (t + 1) / 2), -1 = the t < 0 half
# (U = 1 + t), +1 = the t >= 0 half (U = t); t in [-1, 1] is the signed distance across the segment.
_LABEL_CHART: dict[int, tuple[int, int]] = {
    2: (SEG_TORSO, 0),
    23: (SEG_HEAD, -1), 24: (SEG_HEAD, 1),
    16: (SEG_UPPER_ARM, -1), 18: (SEG_UPPER_ARM, 1),   # right arm: inside, outside
    17: (SEG_UPPER_ARM, -1), 15: (SEG_UPPER_ARM, 1),   # left arm: outside, inside
    20: (SEG_LOWER_ARM, -1), 22: (SEG_LOWER_ARM, 1),
    21: (SEG_LOWER_ARM, -1), 19: (SEG_LOWER_ARM, 1),
    3: (SEG_HAND, 0), 4: (SEG_HAND, 0),
    9: (SEG_UPPER_LEG, 0), 10: (SEG_UPPER_LEG, 0),
    13: (SEG_LOWER_LEG, 0), 14: (SEG_LOWER_LEG, 0),
    6: (SEG_FOOT, 0), 5: (SEG_FOOT, 0),
    # Back views (Pose.back): DensePose's back parts, which a front view never shows.
    1: (SEG_TORSO, 0),
    7: (SEG_UPPER_LEG, 0), 8: (SEG_UPPER_LEG, 0),
    11: (SEG_LOWER_LEG, 0), 12: (SEG_LOWER_LEG, 0),
}
BACK_LABELS: tuple[int, ...] = (1, 7, 8, 11, 12)
LABELS_USED: tuple[int, ...] = tuple(sorted(set(_LABEL_CHART) - set(BACK_LABELS)))  # front views
LABELS_ALL: tuple[int, ...] = tuple(sorted(_LABEL_CHART))
_SEG_OF = np.zeros(densepose.NUM_LABELS, np.int32)
_SIDE_OF = np.zeros(densepose.NUM_LABELS, np.int32)
for _lab, (_seg, _side) in _LABEL_CHART.items():
    _SEG_OF[_lab], _SIDE_OF[_lab] = _seg, _side

# Physical extent of each segment's chart (body units: torso length ~1), so garment patterns keep
# roughly one scale across torso and sleeves. Columns: across (full width), along.
_CHART_SIZE = np.array([
    [0.60, 1.0],   # torso
    [0.34, 0.56],  # head
    [0.20, 0.70],  # upper arm
    [0.16, 0.62],  # lower arm
    [0.10, 0.20],  # hand
    [0.28, 0.95],  # upper leg
    [0.22, 0.90],  # lower leg
    [0.10, 0.20],  # foot
], np.float32)

UPPER_STYLES = ("short_sleeve", "long_sleeve")
LOWER_STYLES = ("trousers", "skirt")
PATTERNS = ("stripes", "checks", "dots", "plain")
BACKGROUNDS = ("solid", "gradient", "stripes")  # plus "texture" (Identity.bg_texture, harder worlds)
LOGO_SHAPE = (3, 5)  # rows, columns of the text-like mark's bitmap


@dataclasses.dataclass(frozen=True)
class Identity:
    """A person: body proportions (body units, torso length ~1), colours (RGB 0..255), background."""
    id: str
    torso_len: float
    shoulder_half: float
    hip_half: float
    head_len: float
    head_half: float
    neck_half: float
    upper_arm: float
    lower_arm: float
    arm_half: float
    upper_leg: float
    lower_leg: float
    leg_half: float
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    shoe: tuple[float, float, float]
    hairline: float       # head V above which hair is drawn
    hair_sides: float     # |t| beyond which hair hangs down the sides of the face
    background: str
    bg_colours: tuple[float, ...]  # two RGB colours, flattened
    bg_freq: float
    # Harder worlds only (defaults keep the easy world's renders byte for byte):
    hair_length: float = 0.0  # long hair hanging over the shoulders, body units below the neck
    bg_texture: int = 0       # > 0: seed of a textured backdrop (replaces `background`)

    def params(self) -> tuple:
        """Every parameter except the id (to check that two pools share no identity)."""
        return dataclasses.astuple(self)[1:]


@dataclasses.dataclass(frozen=True)
class Garment:
    """A garment textured in UV space. `length`: sleeve length in arm segments (upper: 0.3..2) or
    leg coverage in leg segments (lower: 0.4..2)."""
    id: str
    kind: str             # "upper" | "lower"
    style: str            # UPPER_STYLES or LOWER_STYLES
    length: float
    pattern: str          # PATTERNS
    base: tuple[float, float, float]
    accent: tuple[float, float, float]
    freq: float           # pattern cycles per body unit
    angle: float          # stripe direction (radians)
    duty: float           # accent fraction of a stripe period / dot radius
    shade: float          # edge darkening strength, 0..1
    neckline: float       # torso V above which a V-neck shows skin (upper only)
    logo: tuple[int, ...]  # LOGO_SHAPE bitmap flattened, all zeros = no mark
    logo_colour: tuple[float, float, float]
    # Harder worlds only: a loose top flares beyond the torso's chart (extra half width at the
    # hem, in hip half widths) and its hem hangs `hem` body units below the pelvis.
    loose: float = 0.0
    hem: float = 0.0

    def params(self) -> tuple:
        return dataclasses.astuple(self)[1:]


@dataclasses.dataclass(frozen=True)
class Pose:
    """Joint angles (radians; 0 = limb hanging straight down, positive = away from the body) and framing."""
    id: str
    lean: float
    head_tilt: float
    shoulder: tuple[float, float]  # (right, left) abduction; negative crosses the body
    elbow: tuple[float, float]     # forearm relative to the upper arm; negative bends toward the body
    arm_front: tuple[bool, bool]   # arm drawn in front of the torso (else behind it)
    hip: tuple[float, float]
    knee: tuple[float, float]
    zoom: float                    # person size relative to "fills the frame"
    shift: float                   # horizontal placement in the free space, -1..1
    back: bool = False             # seen from behind: DensePose's back parts, mirrored sides
    shift_y: float = 0.0           # vertical offset, fraction of the frame height (camera framing)


class Render(NamedTuple):
    image: np.ndarray  # uint8 [H, W, 3] RGB
    iuv: np.ndarray    # uint8 [H, W, 3] (I, U, V)
    parse: np.ndarray  # uint8 [H, W]: 0 other, 1 upper garment, 2 lower garment


@dataclasses.dataclass(frozen=True)
class Segment:
    """A rasterisable body segment in pixel coordinates."""
    labels: tuple[int, int]   # label of the t < 0 half, of the t >= 0 half (equal when unsplit)
    a: tuple[float, float]    # axis start (x, y); V grows from a to b
    b: tuple[float, float]
    wa: float                 # half widths at a and b
    wb: float
    ra: float                 # rounded cap lengths beyond a and b (0: flat end)
    rb: float
    depth: float              # painter's order: larger is nearer the camera
    neck: tuple[float, float] = (0.0, 0.0)  # head only: (fraction of the axis, half width) of the neck


# ----------------------------------------------------------------------------------------- sampling

def _colour(rng: np.random.Generator, lo: float = 20.0, hi: float = 235.0) -> tuple[float, float, float]:
    return tuple(float(c) for c in np.round(rng.uniform(lo, hi, 3), 1))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.round(rng.uniform(lo, hi), 4))


_SKIN_TONES = np.array([[255, 224, 196], [234, 192, 160], [198, 148, 110], [150, 102, 72], [95, 62, 45]],
                       np.float64)


def sample_identity(rng: np.random.Generator, id: str = "identity") -> Identity:
    """Draws body proportions, skin/hair/shoe colours and a background."""
    k = rng.uniform(0, len(_SKIN_TONES) - 1)
    lo = int(k)
    skin = _SKIN_TONES[lo] + (k - lo) * (_SKIN_TONES[min(lo + 1, len(_SKIN_TONES) - 1)] - _SKIN_TONES[lo])
    return Identity(
        id=id,
        torso_len=_u(rng, 0.92, 1.08), shoulder_half=_u(rng, 0.28, 0.35), hip_half=_u(rng, 0.21, 0.28),
        head_len=_u(rng, 0.52, 0.6), head_half=_u(rng, 0.15, 0.18), neck_half=_u(rng, 0.065, 0.085),
        upper_arm=_u(rng, 0.55, 0.66), lower_arm=_u(rng, 0.50, 0.60), arm_half=_u(rng, 0.08, 0.1),
        upper_leg=_u(rng, 0.78, 0.92), lower_leg=_u(rng, 0.72, 0.86), leg_half=_u(rng, 0.11, 0.14),
        skin=tuple(float(c) for c in np.round(skin + rng.uniform(-8, 8, 3), 1)),
        hair=_colour(rng, 10, 160), shoe=_colour(rng, 10, 120),
        hairline=_u(rng, 0.74, 0.86), hair_sides=_u(rng, 0.75, 1.1),
        background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
        bg_colours=_colour(rng, 120, 250) + _colour(rng, 120, 250), bg_freq=_u(rng, 3.0, 8.0),
    )


def sample_garment(rng: np.random.Generator, kind: str, id: str = "garment") -> Garment:
    """Draws a garment of `kind` ("upper" | "lower"): style, length, pattern, colours, logo."""
    if kind not in densepose.GARMENT_KINDS:
        raise ValueError(f"kind: unknown garment kind {kind!r}; expected one of {densepose.GARMENT_KINDS}")
    if kind == "upper":
        style = UPPER_STYLES[int(rng.integers(2))]
        length = _u(rng, 0.3, 1.0) if style == "short_sleeve" else _u(rng, 1.6, 2.0)
        pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
        has_logo = rng.random() < 0.7
    else:
        style = LOWER_STYLES[int(rng.integers(2))]
        length = _u(rng, 1.7, 2.0) if style == "trousers" else _u(rng, 0.5, 1.3)
        pattern = PATTERNS[int(rng.choice(4, p=[0.3, 0.2, 0.1, 0.4]))]
        has_logo = False
    base = _colour(rng)
    accent = _colour(rng)
    # Keep the pattern visible: push the accent away from the base when they are too alike.
    if np.abs(np.subtract(base, accent)).sum() < 150:
        accent = tuple(float(255.0 - c) for c in base)
    logo = tuple(int(x) for x in (rng.random(LOGO_SHAPE[0] * LOGO_SHAPE[1]) < 0.55)) if has_logo else (
        (0,) * (LOGO_SHAPE[0] * LOGO_SHAPE[1]))
    return Garment(
        id=id, kind=kind, style=style, length=length, pattern=pattern, base=base, accent=accent,
        freq=_u(rng, 3.0, 7.0), angle=float([0.0, np.pi / 2, np.pi / 4, -np.pi / 4][int(rng.integers(4))]),
        duty=_u(rng, 0.3, 0.5), shade=_u(rng, 0.15, 0.45), neckline=_u(rng, 0.88, 0.96) if kind == "upper"
        else 1.0, logo=logo, logo_colour=_colour(rng),
    )


def sample_pose(rng: np.random.Generator, id: str = "pose") -> Pose:
    """Draws joint angles; some poses cross a forearm over the torso (drawn in front of it)."""
    shoulder, elbow, front = [], [], []
    for _ in range(2):
        mode = rng.random()
        if mode < 0.3:      # forearm across the belly
            s, e = _u(rng, 0.05, 0.35), _u(rng, -2.3, -1.5)
        elif mode < 0.45:   # raised
            s, e = _u(rng, 1.2, 2.3), _u(rng, -0.6, 0.4)
        else:               # hanging, a little open
            s, e = _u(rng, -0.05, 0.6), _u(rng, -0.5, 0.2)
        crosses = e < -1.0 or s < 0.0
        shoulder.append(s)
        elbow.append(e)
        front.append(bool(crosses or rng.random() < 0.85))
    return Pose(
        id=id, lean=_u(rng, -0.08, 0.08), head_tilt=_u(rng, -0.2, 0.2),
        shoulder=tuple(shoulder), elbow=tuple(elbow), arm_front=tuple(front),
        hip=(_u(rng, 0.0, 0.3), _u(rng, 0.0, 0.3)), knee=(_u(rng, -0.35, 0.05), _u(rng, -0.35, 0.05)),
        zoom=_u(rng, 0.88, 1.0), shift=_u(rng, -1.0, 1.0),
    )


# ----------------------------------------------------------------------------------------- geometry

def _rot(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _limb_dir(down: np.ndarray, side: int, angle: float) -> np.ndarray:
    """`down` rotated outward (toward image-left for side -1) by `angle`."""
    return _rot(down, side * -angle)


def body_segments(identity: Identity, pose: Pose, height: int, width: int) -> list[Segment]:
    """The person's segments in pixel coordinates, fitted into a `height` x `width` frame."""
    idn = identity
    down = _rot(np.array([0.0, 1.0]), pose.lean)
    up = -down
    right = _rot(np.array([1.0, 0.0]), pose.lean)  # image-right, across the torso
    pelvis = np.zeros(2)
    neck = pelvis + up * idn.torso_len
    # (labels, a, b, wa, wb, ra, rb, depth, neck) in body units.
    segs: list[tuple] = [((2, 2), pelvis, neck, idn.hip_half, idn.shoulder_half, 0.05, 0.07, 1.0, None)]
    head_dir = _rot(up, pose.head_tilt)
    head_base = neck - up * 0.05
    segs.append(((23, 24), head_base, head_base + head_dir * idn.head_len, 0.0, idn.head_half, 0.0, 0.0,
                 1.5, (0.3, idn.neck_half)))
    arm_labels = {-1: ((16, 18), (20, 22), 3), 1: ((17, 15), (21, 19), 4)}
    leg_labels = {-1: (9, 13, 6), 1: (10, 14, 5)}
    if pose.back:  # seen from behind: the person's right side is on the image's right
        segs[0] = ((1, 1),) + segs[0][1:]
        segs[1] = ((24, 23),) + segs[1][1:]
        arm_labels = {-1: ((15, 17), (19, 21), 4), 1: ((18, 16), (22, 20), 3)}
        leg_labels = {-1: (8, 12, 5), 1: (7, 11, 6)}
    for k, side in enumerate((-1, 1)):
        upper_lab, lower_lab, hand_lab = arm_labels[side]
        shoulder = neck - up * 0.1 + right * side * (idn.shoulder_half - idn.arm_half * 0.8)
        d1 = _limb_dir(down, side, pose.shoulder[k])
        elbow = shoulder + d1 * idn.upper_arm
        d2 = _limb_dir(d1, side, pose.elbow[k])
        wrist = elbow + d2 * idn.lower_arm
        hand = wrist + d2 * 0.16
        base = 2.0 + 0.05 * k if pose.arm_front[k] else -1.0 + 0.05 * k
        aw = idn.arm_half
        segs.append((upper_lab, shoulder, elbow, aw, aw * 0.85, aw, aw * 0.85, base, None))
        segs.append((lower_lab, elbow, wrist, aw * 0.8, aw * 0.62, aw * 0.8, aw * 0.3, base + 0.01, None))
        segs.append(((hand_lab, hand_lab), wrist, hand, aw * 0.6, aw * 0.5, aw * 0.3, aw * 0.5, base + 0.02,
                     None))
        upper_leg, lower_leg, foot_lab = leg_labels[side]
        hip = pelvis + right * side * (idn.hip_half - idn.leg_half * 0.9)
        d3 = _limb_dir(down, side, pose.hip[k])
        knee = hip + d3 * idn.upper_leg
        d4 = _limb_dir(d3, side, pose.knee[k])
        ankle = knee + d4 * idn.lower_leg
        toe = ankle + _limb_dir(down, side, 1.1) * 0.17
        lw = idn.leg_half
        segs.append(((upper_leg, upper_leg), hip, knee, lw, lw * 0.8, lw, lw * 0.8, 0.3, None))
        segs.append(((lower_leg, lower_leg), knee, ankle, lw * 0.8, lw * 0.55, lw * 0.8, lw * 0.55, 0.2,
                     None))
        segs.append(((foot_lab, foot_lab), ankle, toe, lw * 0.55, lw * 0.5, lw * 0.5, lw * 0.5, 0.1, None))

    # Fit the bounding box of all segments (with their widths) into the frame.
    pts = np.array([p for s in segs for p in (s[1], s[2])])
    pad = np.array([max(s[3], s[4], s[5], s[6]) for s in segs])
    pad = np.repeat(pad, 2)[:, None]
    lo = (pts - pad).min(axis=0)
    hi = (pts + pad).max(axis=0)
    size = hi - lo
    scale = min(0.94 * height / size[1], 0.94 * width / size[0]) * pose.zoom
    free = np.array([width, height]) - size * scale
    offset = free / 2 + np.array([pose.shift * free[0] / 2 * 0.8, pose.shift_y * height]) - lo * scale
    out = []
    for labels, a, b, wa, wb, ra, rb, depth, nk in segs:
        a_px, b_px = a * scale + offset, b * scale + offset
        out.append(Segment(labels=tuple(labels), a=(float(a_px[0]), float(a_px[1])),
                           b=(float(b_px[0]), float(b_px[1])), wa=wa * scale, wb=wb * scale,
                           ra=ra * scale, rb=rb * scale, depth=depth,
                           neck=(0.0, 0.0) if nk is None else (nk[0], nk[1] * scale)))
    return out


def check_size(height: int, width: int) -> None:
    """Raises ValueError unless `height` and `width` are integers >= 32 (64x48 .. 256x192 is typical)."""
    for name, val in (("height", height), ("width", width)):
        if isinstance(val, bool) or not isinstance(val, int | np.integer):
            raise ValueError(f"{name} must be an integer number of pixels, got {val!r}")
        if val < 32:
            raise ValueError(f"{name} must be >= 32 pixels, got {val}")


def segment_chart(seg: Segment, px: np.ndarray, py: np.ndarray):
    """Inverse map of one segment at pixel-centre coordinates (broadcastable arrays).

    Returns (inside bool, label int32, U float64 in [0, 1], V float64 in [0, 1]), all broadcast to
    the shape of `px + py`; label/U/V are only meaningful where `inside`.
    """
    ax, ay = seg.a
    dx, dy = seg.b[0] - ax, seg.b[1] - ay
    length = max(float(np.hypot(dx, dy)), 1e-6)
    dx, dy = dx / length, dy / length
    rx, ry = px - ax, py - ay
    along = rx * dx + ry * dy
    across = rx * -dy + ry * dx  # n = d rotated +90 degrees: image-right for an upward axis
    s = along / length
    if seg.neck[1] > 0:  # head: a neck, then an ellipse
        frac, neck_half = seg.neck
        centre, half_len = (1 + frac) / 2, (1 - frac) / 2
        ell = seg.wb * np.sqrt(np.clip(1 - ((s - centre) / half_len) ** 2, 0, 1))
        half = np.where((s >= 0) & (s < centre), np.maximum(ell, neck_half), ell)
    else:
        half = seg.wa + (seg.wb - seg.wa) * np.clip(s, 0, 1)
        over_a = np.clip(-along, 0, None) / max(seg.ra, 1e-6)
        over_b = np.clip(along - length, 0, None) / max(seg.rb, 1e-6)
        half = half * np.sqrt(np.clip(1 - over_a ** 2, 0, 1) * np.clip(1 - over_b ** 2, 0, 1))
    inside = (np.abs(across) < half) & (along >= -seg.ra) & (along <= length + seg.rb)
    t = np.clip(across / np.maximum(half, 1e-9), -1, 1)
    neg, pos = seg.labels
    if neg == pos:
        label = np.full(t.shape, neg, np.int32)
        u = (t + 1) / 2
    else:
        label = np.where(t < 0, neg, pos).astype(np.int32)
        u = np.where(t < 0, 1 + t, t)
    v = np.clip((along + seg.ra) / (seg.ra + length + seg.rb), 0, 1)
    return inside, label, u, v


def _bbox(seg: Segment, height: int, width: int) -> tuple[int, int, int, int]:
    r = max(seg.wa, seg.wb, seg.ra, seg.rb, seg.neck[1]) + 1
    xs, ys = (seg.a[0], seg.b[0]), (seg.a[1], seg.b[1])
    x0, x1 = max(int(np.floor(min(xs) - r)), 0), min(int(np.ceil(max(xs) + r)), width)
    y0, y1 = max(int(np.floor(min(ys) - r)), 0), min(int(np.ceil(max(ys) + r)), height)
    return y0, y1, x0, x1


def rasterize(segments: list[Segment], height: int, width: int) -> np.ndarray:
    """IUV map uint8 `[height, width, 3]` of the segments, nearest segment (largest depth) on top.

    Each segment's inverse map is evaluated over its bounding box only; U, V are quantised here so
    the stored bytes are the single source of truth for colouring.
    """
    iuv = np.zeros((height, width, 3), np.uint8)
    for seg in sorted(segments, key=lambda s: s.depth):
        y0, y1, x0, x1 = _bbox(seg, height, width)
        if y0 >= y1 or x0 >= x1:
            continue
        px = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
        py = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
        inside, label, u, v = segment_chart(seg, px, py)
        block = iuv[y0:y1, x0:x1]
        block[inside, 0] = label[inside]
        block[inside, 1] = np.round(u[inside] * 255)
        block[inside, 2] = np.round(v[inside] * 255)
    return iuv


# ------------------------------------------------------------------------------------------ colour

def _unit(x) -> np.ndarray:
    """uint8 0..255 -> float32 [0, 1]; floats pass through."""
    x = np.asarray(x)
    return x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x.astype(np.float32)


def _chart(part: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(segment kind, t in [-1, 1] across the whole segment) of labels and their U."""
    side = _SIDE_OF[part]
    t = np.where(side == 0, 2 * u - 1, np.where(side < 0, u - 1, u))
    return _SEG_OF[part], t.astype(np.float32)


def coverage(identity: Identity, upper: Garment, lower: Garment, part, u, v) -> np.ndarray:
    """Garment parsing of body-surface points: uint8, 0 skin/other, 1 upper, 2 lower garment.

    `part` int labels; `u`, `v` uint8 0..255 or float [0, 1]; all broadcastable.
    """
    del identity  # coverage is a property of the garments on the shared body chart
    part = np.asarray(part, np.int32)
    u, v = _unit(u), _unit(v)
    seg, t = _chart(part, u)
    neck = upper.neckline
    vneck = (v > neck) & (np.abs(t) < 0.5 * (v - neck) / max(1 - neck, 1e-6)) & (part != 1)  # front only
    top = (((seg == SEG_TORSO) & ~vneck) | ((seg == SEG_UPPER_ARM) & (v <= upper.length))
           | ((seg == SEG_LOWER_ARM) & (v <= upper.length - 1)))
    bottom = (((seg == SEG_UPPER_LEG) & (v <= lower.length))
              | ((seg == SEG_LOWER_LEG) & (v <= lower.length - 1)))
    out = np.where(top, 1, np.where(bottom, 2, 0)).astype(np.uint8)
    return np.where(part > 0, out, 0).astype(np.uint8)


def _pattern(g: Garment, seg: np.ndarray, t: np.ndarray, v: np.ndarray, front: np.ndarray | bool = True
             ) -> np.ndarray:
    """Garment colour (float32 [..., 3], before shading) at chart points; the logo only on the front."""
    gx = t * _CHART_SIZE[seg, 0] / 2
    gy = v * _CHART_SIZE[seg, 1]
    c, s = np.float32(np.cos(g.angle)), np.float32(np.sin(g.angle))
    p = g.freq * (gx * c + gy * s)
    q = g.freq * (-gx * s + gy * c)
    if g.pattern == "stripes":
        accent = (p - np.floor(p)) < g.duty
    elif g.pattern == "checks":
        accent = (np.floor(p) + np.floor(q)) % 2 == 0
    elif g.pattern == "dots":
        accent = np.hypot(p - np.floor(p) - 0.5, q - np.floor(q) - 0.5) < 0.6 * g.duty
    else:
        accent = np.zeros(t.shape, bool)
    col = np.where(accent[..., None], np.float32(g.accent), np.float32(g.base))
    if any(g.logo):  # a small text-like mark on the left chest: a bitmap of cells with gaps
        rows, cols = LOGO_SHAPE
        lx = (t - 0.15) / 0.5 * cols
        ly = (0.74 - v) / 0.16 * rows
        in_box = (seg == SEG_TORSO) & front & (lx >= 0) & (lx < cols) & (ly >= 0) & (ly < rows)
        cell = (np.clip(ly.astype(np.int32), 0, rows - 1) * cols + np.clip(lx.astype(np.int32), 0, cols - 1))
        gap = ((lx - np.floor(lx)) < 0.8) & ((ly - np.floor(ly)) < 0.7)
        on = in_box & gap & (np.asarray(g.logo, bool)[cell])
        col = np.where(on[..., None], np.float32(g.logo_colour), col)
    return col


def texel(identity: Identity, upper: Garment, lower: Garment, part, u, v) -> np.ndarray:
    """Colour of body-surface points: uint8 `[..., 3]` RGB.

    Args:
      part: int labels (DensePose parts used by this world, see LABELS_USED; 0 gives black).
      u, v: the points' U, V: uint8 0..255 (as stored in an IUV map) or float in [0, 1].
    Shading is a function of U only (darker toward a segment's edges), so colour is a pure function
    of (identity, garments, part, U, V).
    """
    part = np.asarray(part, np.int32)
    u, v = _unit(u), _unit(v)
    part, u, v = np.broadcast_arrays(part, u, v)
    seg, t = _chart(part, u)
    col = np.broadcast_to(np.float32(identity.skin), part.shape + (3,)).copy()
    head = seg == SEG_HEAD
    hair = head & ((v > identity.hairline) | ((np.abs(t) > identity.hair_sides) & (v > 0.5)))
    eyes = head & (np.abs(v - 0.63) < 0.035) & (np.abs(np.abs(t) - 0.42) < 0.14)
    mouth = head & (np.abs(v - 0.46) < 0.02) & (np.abs(t) < 0.25)
    col[hair] = identity.hair
    col[eyes & ~hair] = (30.0, 30.0, 40.0)
    col[mouth & ~hair] = (150.0, 60.0, 60.0)
    col[seg == SEG_FOOT] = identity.shoe
    cov = coverage(identity, upper, lower, part, u, v)
    shade_k = np.full(part.shape, 0.25, np.float32)
    for value, g in ((1, upper), (2, lower)):
        m = cov == value
        if m.any():
            col[m] = _pattern(g, seg[m], t[m], v[m], part[m] != 1)
            shade_k[m] = g.shade
    col *= (1 - shade_k * t * t)[..., None]
    col[part == 0] = 0
    return np.clip(np.round(col), 0, 255).astype(np.uint8)


def background(identity: Identity, height: int, width: int) -> np.ndarray:
    """Screen-space backdrop uint8 `[height, width, 3]` (solid, vertical gradient, soft stripes or
    a texture); a fresh copy (renders paint over it)."""
    return _background(identity, height, width).copy()


@functools.lru_cache(maxsize=1024)
def _background(identity: Identity, height: int, width: int) -> np.ndarray:
    c0 = np.float32(identity.bg_colours[:3])
    c1 = np.float32(identity.bg_colours[3:])
    y = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
    x = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / height
    if identity.bg_texture > 0:
        w = _texture(identity.bg_texture, x, y)
    elif identity.background == "solid":
        w = np.zeros((height, width), np.float32)
    elif identity.background == "gradient":
        w = np.broadcast_to(y, (height, width))
    else:
        w = 0.35 * (((x + y) * identity.bg_freq) % 1.0 < 0.5)
    col = c0 + (c1 - c0) * w[..., None]
    out = np.clip(np.round(col), 0, 255).astype(np.uint8)
    out.flags.writeable = False  # shared by the cache
    return out


def _texture(seed: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A textured backdrop's mixing weight in [0, 1] `[H, W]`: a few oriented waves and blobs."""
    rng = np.random.default_rng(seed)
    w = np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32)
    for _ in range(4):
        f, a, ph = rng.uniform(3.0, 12.0), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        w += np.sin(2 * np.pi * f * (x * np.cos(a) + y * np.sin(a)) + ph).astype(np.float32)
    for _ in range(3):
        cx, cy, r = rng.uniform(0, 0.75), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
        w += 2.0 * (np.hypot(x - cx, y - cy) < r)
    return np.clip(0.5 + w / 8.0, 0.0, 1.0)


def _depth(segments: list[Segment], iuv: np.ndarray) -> np.ndarray:
    """Depth of the surface seen at each pixel `[H, W]` float32 (-inf on the background)."""
    table = np.full(densepose.NUM_LABELS, -np.inf, np.float32)
    for seg in segments:
        table[list(seg.labels)] = seg.depth
    return table[iuv[..., 0]]


def _frame(seg: Segment, px: np.ndarray, py: np.ndarray):
    """(along, across, length) of pixel centres in a segment's axis frame (pixels)."""
    dx, dy = seg.b[0] - seg.a[0], seg.b[1] - seg.a[1]
    length = max(float(np.hypot(dx, dy)), 1e-6)
    dx, dy = dx / length, dy / length
    rx, ry = px - seg.a[0], py - seg.a[1]
    return rx * dx + ry * dy, rx * -dy + ry * dx, length


def _loose_top(identity: Identity, upper: Garment, torso: Segment, px, py):
    """A loose top's cloth off the body: (inside `[H, W]` bool, colour float32 `[H, W, 3]`).

    The torso chart continued beyond the body: the top widens from mid torso down by `upper.loose`
    hip half widths and hangs `upper.hem` body units below the pelvis; its pattern is the torso's
    chart extrapolated (t beyond +-1, V below 0), so the same garment looks the same on any pose.
    """
    along, across, length = _frame(torso, px, py)
    s = along / length
    scale = torso.wa / identity.hip_half
    half = torso.wa + (torso.wb - torso.wa) * np.clip(s, 0, 1)
    flare = half + upper.loose * torso.wa * np.clip((0.6 - s) / 0.6, 0, None)
    inside = (np.abs(across) < flare) & (along >= -upper.hem * scale) & (s <= 0.6)
    t = across / half
    v = (along + torso.ra) / (torso.ra + length + torso.rb)
    seg = np.full(t.shape, SEG_TORSO, np.int32)
    col = _pattern(upper, seg, t.astype(np.float32), v.astype(np.float32), front=False)
    col = col * (1 - upper.shade * np.minimum(t * t, 1.0))[..., None]
    return inside, col


def _long_hair(identity: Identity, pose: Pose, head: Segment, torso: Segment, px, py):
    """Long hair hanging from the head over the shoulders: inside `[H, W]` bool, colour `[H, W, 3]`.

    Seen from the front it frames the face (two strands); from behind it covers the upper back.
    """
    down = np.subtract(torso.a, torso.b)
    down = down / max(float(np.hypot(*down)), 1e-6)
    top = np.add(head.b, -down * 0.1 * head.wb)
    along = (px - top[0]) * down[0] + (py - top[1]) * down[1]
    across = (px - top[0]) * -down[1] + (py - top[1]) * down[0]
    scale = torso.wb / identity.shoulder_half
    reach = np.hypot(*np.subtract(head.b, head.a)) + identity.hair_length * scale
    half = 1.3 * head.wb
    inside = (along >= 0) & (along <= reach) & (np.abs(across) < half)
    if not pose.back:
        inside &= (np.abs(across) > 0.72 * head.wb) | (along < 0.25 * reach)
    q = np.clip(np.abs(across) / half, 0, 1)
    col = np.float32(identity.hair) * (0.8 + 0.2 * np.cos(9.0 * across / half) * (1 - q))[..., None]
    return inside, col.astype(np.float32)


def render(identity: Identity, upper: Garment, lower: Garment, pose: Pose, height: int,
           width: int) -> Render:
    """Renders the person: IUV first, then every labelled pixel coloured by texel of its own (I, U, V).

    Harder worlds add what the body surface does not carry (the IUV keeps the body underneath, as
    DensePose labels it): a back view's hair-covered head, a loose top's cloth beyond the torso
    (parse 1) and long hair over the shoulders (parse 0), each drawn in depth order.
    """
    check_size(height, width)
    if upper.kind != "upper" or lower.kind != "lower":
        raise ValueError(f"render: expected an upper and a lower garment, got kinds "
                         f"{upper.kind!r} and {lower.kind!r}")
    segments = body_segments(identity, pose, height, width)
    iuv = rasterize(segments, height, width)
    image = background(identity, height, width)
    parse = np.zeros((height, width), np.uint8)
    fg = iuv[..., 0] > 0
    i, u, v = iuv[fg, 0], iuv[fg, 1], iuv[fg, 2]
    image[fg] = texel(identity, upper, lower, i, u, v)
    parse[fg] = coverage(identity, upper, lower, i, u, v)
    if pose.back or upper.loose > 0 or upper.hem > 0 or identity.hair_length > 0:
        _off_surface(identity, upper, pose, segments, iuv, image, parse)
    return Render(image=image, iuv=iuv, parse=parse)


def _off_surface(identity: Identity, upper: Garment, pose: Pose, segments: list[Segment], iuv: np.ndarray,
                 image: np.ndarray, parse: np.ndarray) -> None:
    """Draws (in place) what lies off the body chart: back-view hair, a loose top, long hair."""
    height, width = parse.shape
    torso, head = segments[0], segments[1]
    # Everything drawn here lies within the torso's box grown by the widest flare and the hem
    # (about a torso length), so only that window is evaluated.
    grow = torso.wa * (1 + 2 * upper.loose) + np.hypot(torso.b[0] - torso.a[0], torso.b[1] - torso.a[1])
    xs, ys = (torso.a[0], torso.b[0], head.b[0]), (torso.a[1], torso.b[1], head.b[1])
    x0, x1 = max(int(min(xs) - grow), 0), min(int(np.ceil(max(xs) + grow)), width)
    y0, y1 = max(int(min(ys) - grow), 0), min(int(np.ceil(max(ys) + grow)), height)
    px = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
    py = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
    win = (slice(y0, y1), slice(x0, x1))
    iuv, image, parse = iuv[win], image[win], parse[win]  # views: drawing writes through
    depth = _depth(segments, iuv)
    if pose.back:  # the back of the head is hair
        on_head = np.isin(iuv[..., 0], densepose.HEAD)
        u = iuv[..., 1].astype(np.float32) / 255
        shade = 1 - 0.25 * np.square(np.where(iuv[..., 0] == 24, u - 1, u))
        image[on_head] = np.clip(np.round(np.float32(identity.hair) * shade[on_head][:, None]), 0, 255)
    if upper.loose > 0 or upper.hem > 0:
        inside, col = _loose_top(identity, upper, torso, px, py)
        cloth = inside & (depth < torso.depth)  # over the legs and arms behind, under arms in front
        image[cloth] = np.clip(np.round(col[cloth]), 0, 255).astype(np.uint8)
        parse[cloth] = 1
    if identity.hair_length > 0:
        inside, col = _long_hair(identity, pose, head, torso, px, py)
        hair = inside & (depth < 1.9)  # over torso and head, under arms held in front
        image[hair] = np.clip(np.round(col[hair]), 0, 255).astype(np.uint8)
        parse[hair] = 0
