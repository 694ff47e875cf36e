"""Synthetic try-on examples (data_schema format) and the dataset folder writer.

Every split draws identities and garments from its own pool: pool member n of split s is sampled
from `default_rng([seed, split_id, POOL_TAG, n])` and gets an id naming the split ("train-i0007"),
so train and test never share an identity or a garment. Example `index` of a split is drawn from
`default_rng([seed, split_id, index])`: the same seed gives identical bytes.

- paired: M = (A, g, l, pose a), P = (A, g, l, pose b), target = P.
- unpaired: M = (A, gA, lA, a), P = (B, gB, lB, b), target P* = P's identity and pose in M's garment
  of `garment_kind` and P's own other garment: (B, gA, lB, b) for "upper", (B, gB, lA, b) for "lower".
Image names encode identity, upper, lower and pose ids: `<identity>_<upper>_<lower>_<pose>`.

`world_cfg` (a preset name or an effects.WorldConfig; default "easy", the original world) adds the
difficulties of real photos (effects.py): per-photo lighting and framing shared by P and P*, loose
tops and long hair, back views; DensePose errors and JPEG only in the inputs M, P, I_M, I_P. The
ground truth P* stays the exact render of (B, g, l, pose b) under P's lighting and camera.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from m2e_jax import densepose
from m2e_jax.synthetic import effects, world

VERSION = 1
SPLITS: dict[str, int] = {"train": 0, "test": 1}
# Pool sizes per split: identities, upper garments, lower garments.
POOL_SIZES: dict[str, dict[str, int]] = {
    "train": {"identity": 400, "upper": 400, "lower": 200},
    "test": {"identity": 100, "upper": 100, "lower": 50},
}
EXAMPLE_KINDS = ("paired", "unpaired")
_POOL_TAG = {"identity": 1_000_001, "upper": 1_000_002, "lower": 1_000_003}
_PAIRING_TAG = 1_000_004
_ID_LETTER = {"identity": "i", "upper": "u", "lower": "l"}
_EFFECT_TAG = {"identity": 1_000_011, "upper": 1_000_012, "lower": 1_000_013}
_PHOTO_TAG = 1_000_020  # + role: 0 = M's photo, 1 = P's photo (P* is photographed as P)
PHOTO_ROLES = ("model", "person")


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split: unknown split {split!r}; expected one of {tuple(SPLITS)}")
    return SPLITS[split]


@functools.lru_cache(maxsize=8192)
def pool_member(seed: int, split: str, what: str, n: int,
                world_cfg: effects.WorldConfig = effects.PRESETS["easy"]) -> world.Identity | world.Garment:
    """Member `n` of a split's pool of `what` ("identity" | "upper" | "lower") in world `world_cfg`."""
    size = POOL_SIZES[split][what]
    if not 0 <= n < size:
        raise ValueError(f"pool index {n} out of range for {split} {what} pool of {size}")
    rng = np.random.default_rng([seed, _split_id(split), _POOL_TAG[what], n])
    ident = f"{split}-{_ID_LETTER[what]}{n:04d}"
    member = (world.sample_identity(rng, id=ident) if what == "identity"
              else world.sample_garment(rng, what, id=ident))
    if world_cfg.is_easy():
        return member
    rng = np.random.default_rng([seed, _split_id(split), _EFFECT_TAG[what], n])
    if what == "identity":
        return effects.edit_identity(member, rng, world_cfg)
    return effects.edit_garment(member, rng, world_cfg)


def pool(seed: int, split: str, what: str, world_cfg: str | effects.WorldConfig = "easy"
         ) -> list[world.Identity | world.Garment]:
    """The whole pool of `what` for a split (for inspection and disjointness checks)."""
    _split_id(split)
    cfg = effects.preset(world_cfg)
    return [pool_member(seed, split, what, n, cfg) for n in range(POOL_SIZES[split][what])]


def photo_rng(seed: int, split: str, index: int, role: str) -> np.random.Generator:
    """The random stream of one photo's conditions (framing, lighting, JPEG, estimation errors)."""
    return np.random.default_rng([seed, _split_id(split), _PHOTO_TAG + PHOTO_ROLES.index(role), int(index)])


def image_name(identity: world.Identity, upper: world.Garment, lower: world.Garment,
               pose: world.Pose) -> str:
    return f"{identity.id}_{upper.id}_{lower.id}_{pose.id}"


def _two_distinct(rng: np.random.Generator, size: int) -> tuple[int, int]:
    a = int(rng.integers(size))
    b = int(rng.integers(size - 1))
    return a, b + (b >= a)


def _check_args(seed: int, split: str, height: int, width: int, garment_kind: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _split_id(split)
    world.check_size(height, width)
    if garment_kind not in densepose.GARMENT_KINDS:
        raise ValueError(f"garment_kind: unknown {garment_kind!r}; expected one of {densepose.GARMENT_KINDS}")


Person = tuple[world.Identity, world.Garment, world.Garment, world.Pose]  # identity, upper, lower, pose


def example_people(seed: int, split: str, index: int, kind: str = "paired", garment_kind: str = "upper",
                   world_cfg: str | effects.WorldConfig = "easy") -> tuple[Person, Person, Person]:
    """The (identity, upper, lower, pose) of M, P and the target of example `index` (no rendering).

    The target shares P's pose object, so it is framed (and, in make_example, lit) as P's photo.
    """
    _split_id(split)
    if kind not in EXAMPLE_KINDS:
        raise ValueError(f"kind: unknown example kind {kind!r}; expected one of {EXAMPLE_KINDS}")
    if garment_kind not in densepose.GARMENT_KINDS:
        raise ValueError(f"garment_kind: unknown {garment_kind!r}; expected one of {densepose.GARMENT_KINDS}")
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    rng = np.random.default_rng([seed, _split_id(split), int(index)])
    sizes = POOL_SIZES[split]
    ia, ib = _two_distinct(rng, sizes["identity"])
    ua, ub = _two_distinct(rng, sizes["upper"])
    la, lb = _two_distinct(rng, sizes["lower"])
    pose_a = world.sample_pose(rng, id=f"p{index:06d}a")
    pose_b = world.sample_pose(rng, id=f"p{index:06d}b")
    cfg = effects.preset(world_cfg)
    if not cfg.is_easy():
        pose_a = effects.edit_pose(pose_a, photo_rng(seed, split, index, "model"), cfg)
        pose_b = effects.edit_pose(pose_b, photo_rng(seed, split, index, "person"), cfg)
    member = functools.partial(_member, seed, split, cfg)
    a, ga, lo_a = member("identity", ia), member("upper", ua), member("lower", la)
    model = (a, ga, lo_a, pose_a)
    if kind == "paired":
        person = (a, ga, lo_a, pose_b)
        return model, person, person
    b, gb, lo_b = member("identity", ib), member("upper", ub), member("lower", lb)
    person = (b, gb, lo_b, pose_b)
    target = (b, ga, lo_b, pose_b) if garment_kind == "upper" else (b, gb, lo_a, pose_b)
    return model, person, target


def _member(seed: int, split: str, cfg: effects.WorldConfig, what: str, n: int):
    return pool_member(seed, split, what, n, cfg)


class PhotoConditions(NamedTuple):
    """How one photo was taken beyond its pose: lighting (None = the easy world's), the JPEG quality
    of the input (0 = none) and the stream of its DensePose estimation errors (None = exact)."""
    lighting: effects.Lighting | None
    jpeg_quality: int
    errors: np.random.Generator | None


def photo_conditions(seed: int, split: str, index: int, role: str,
                     world_cfg: effects.WorldConfig) -> PhotoConditions:
    """The conditions of M's ("model") or P's ("person") photo of example `index` (P* shares P's).

    Drawn from the photo's stream after the pose edits (example_people), so each value is the
    same however the example is assembled."""
    if world_cfg.is_easy():
        return PhotoConditions(None, 0, None)
    rng = photo_rng(seed, split, index, role)
    effects.edit_pose(_DRAW_POSE, rng, world_cfg)  # advance past the pose edits' draws
    lighting = effects.sample_lighting(rng, world_cfg)
    quality = effects.jpeg_quality(rng, world_cfg)
    return PhotoConditions(lighting, quality, rng)


_DRAW_POSE = world.Pose(id="draws", lean=0.0, head_tilt=0.0, shoulder=(0.0, 0.0), elbow=(0.0, 0.0),
                        arm_front=(True, True), hip=(0.0, 0.0), knee=(0.0, 0.0), zoom=1.0, shift=0.0)


def make_example(seed: int, split: str, index: int, height: int, width: int, kind: str = "paired",
                 garment_kind: str = "upper", world_cfg: str | effects.WorldConfig = "easy"
                 ) -> dict[str, Any]:
    """One example in data_schema format, plus `model_id`, `person_id`, `target_id` (image names).

    Args:
      seed: world seed (>= 0). split: "train" | "test". index: example number (>= 0).
      height, width: image size in pixels (>= 32; 4:3 such as 128x96 looks right).
      kind: "paired" | "unpaired". garment_kind: "upper" | "lower" (the garment transferred).
      world_cfg: "easy" | "medium" | "hard" or an effects.WorldConfig.
    `model_image`, `person_image`, `model_iuv`, `person_iuv` are the method's inputs (with the
    world's JPEG and DensePose errors); `target_image` and `target_iuv` are exact, and so are the
    parsing maps and masks. Also carries `model_parse`, `person_parse`, `target_parse` (uint8
    [H, W]) and `target_iuv` for writers; they are not part of the batch format.
    """
    _check_args(seed, split, height, width, garment_kind)
    cfg = effects.preset(world_cfg)
    model, person, target = example_people(seed, split, index, kind, garment_kind, cfg)
    m = world.render(*model, height, width)
    p = world.render(*person, height, width)
    t = p if kind == "paired" else world.render(*target, height, width)
    cond_m = photo_conditions(seed, split, index, "model", cfg)
    cond_p = photo_conditions(seed, split, index, "person", cfg)
    m_image, p_image = effects.light(m.image, cond_m.lighting), effects.light(p.image, cond_p.lighting)
    t_image = p_image if kind == "paired" else effects.light(t.image, cond_p.lighting)  # lit as P
    m_iuv, p_iuv = m.iuv, p.iuv
    if not cfg.is_easy():
        m_iuv = effects.estimate_iuv(m.iuv, cond_m.errors, cfg)
        p_iuv = effects.estimate_iuv(p.iuv, cond_p.errors, cfg)
    value = densepose.GARMENT_KINDS.index(garment_kind) + 1
    return {
        "model_image": effects.jpeg(m_image, cond_m.jpeg_quality), "model_iuv": m_iuv,
        "model_mask": (m.parse == value).astype(np.uint8)[..., None],
        "person_image": effects.jpeg(p_image, cond_p.jpeg_quality), "person_iuv": p_iuv,
        "person_mask": (p.parse == value).astype(np.uint8)[..., None],
        "target_image": t_image,
        "has_target": np.int32(1), "paired": np.int32(kind == "paired"),
        "garment_kind": np.int32(value - 1),
        "model_id": image_name(*model), "person_id": image_name(*person), "target_id": image_name(*target),
        "model_parse": m.parse, "person_parse": p.parse, "target_parse": t.parse,
        "target_iuv": t.iuv,
    }


def is_paired(seed: int, split: str, index: int, paired_fraction: float) -> bool:
    """Whether example `index` is paired: a per-index draw, so it does not depend on `num`."""
    return bool(np.random.default_rng([seed, _split_id(split), _PAIRING_TAG, index]).random()
                < paired_fraction)


def make_examples(seed: int, split: str, num: int, height: int, width: int, paired_fraction: float = 0.5,
                  garment_kind: str = "upper", world_cfg: str | effects.WorldConfig = "easy"
                  ) -> list[dict[str, Any]]:
    """Examples 0..num-1 of a split, in order; which are paired is fixed by (seed, split, index)."""
    _check_args(seed, split, height, width, garment_kind)
    cfg = effects.preset(world_cfg)
    if not 0.0 <= paired_fraction <= 1.0:
        raise ValueError(f"paired_fraction must lie in [0, 1], got {paired_fraction}")
    if isinstance(num, bool) or not isinstance(num, int | np.integer) or num < 0:
        raise ValueError(f"num must be a non-negative integer, got {num!r}")
    return [make_example(seed, split, i, height, width,
                         "paired" if is_paired(seed, split, i, paired_fraction) else "unpaired",
                         garment_kind, cfg) for i in range(num)]


def _save_render(images_dir: Path, name: str, image: np.ndarray, iuv: np.ndarray, parse: np.ndarray) -> None:
    Image.fromarray(image, "RGB").save(images_dir / f"{name}.png")
    Image.fromarray(np.ascontiguousarray(densepose.iuv_to_png_rgb(iuv)), "RGB").save(
        images_dir / f"{name}_IUV.png")
    Image.fromarray(parse, "L").save(images_dir / f"{name}_parse.png")


def _write_split(split_dir: Path, examples: list[dict[str, Any]]) -> dict[str, int]:
    images_dir = split_dir / "images"
    images_dir.mkdir(parents=True)
    written: set[str] = set()
    pairs, triplets = [], []
    for ex in examples:
        for role in ("model", "person", "target"):
            name = ex[f"{role}_id"]
            if name in written:
                continue
            image = ex[f"{role}_image"]
            iuv = ex["target_iuv"] if role == "target" else ex[f"{role}_iuv"]
            _save_render(images_dir, name, image, iuv, ex[f"{role}_parse"])
            written.add(name)
        if ex["paired"]:
            pairs.append((ex["model_id"], ex["person_id"]))
        else:
            triplets.append((ex["model_id"], ex["person_id"], ex["target_id"]))
    for fname, header, rows in (("pairs.csv", ("source", "target"), pairs),
                                ("triplets.csv", ("model", "person", "target"), triplets)):
        with open(split_dir / fname, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
    return {"examples": len(examples), "pairs": len(pairs), "triplets": len(triplets), "images": len(written)}


def write_dataset(out_dir: str | os.PathLike, seed: int, height: int, width: int, num_train: int,
                  num_test: int, paired_fraction: float = 0.5, garment_kind: str = "upper",
                  overwrite: bool = False, world_cfg: str | effects.WorldConfig = "easy") -> dict[str, Any]:
    """Writes the data_schema folder layout for train and test; returns the meta dict.

    Built in a temporary sibling folder and renamed into place at the end, so a killed build never
    leaves a folder that looks complete. Raises FileExistsError if `out_dir` exists (unless
    `overwrite`).
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"out_dir {out} already exists (pass overwrite=True to replace it)")
    for name, n in (("num_train", num_train), ("num_test", num_test)):
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    _check_args(seed, "train", height, width, garment_kind)
    cfg = effects.preset(world_cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is meant to be shared
    try:
        counts = {}
        for split, num in (("train", num_train), ("test", num_test)):
            examples = make_examples(seed, split, num, height, width, paired_fraction, garment_kind, cfg)
            counts[split] = _write_split(tmp / split, examples)
        meta = {"version": VERSION, "generator": "m2e_jax.synthetic", "seed": seed, "height": height,
                "width": width, "paired_fraction": paired_fraction, "garment_kind": garment_kind,
                "world": dataclasses.asdict(cfg), "pool_sizes": POOL_SIZES, "counts": counts}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
