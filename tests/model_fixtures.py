"""Tiny model configs and random inputs shared by the model/loss tests (imported, not conftest)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from m2e_jax.models.defaults import model_config

H, W = 32, 32


# The defaults' additions to the plain networks switched off: the unit tests check each network's
# own formula, and each addition (parsing-guided region, painting, relighting, the weaker mask
# offset) in the test that switches it on; the training tests run the defaults (configs/synthetic.py).
PLAIN = dict(parse_region=False, parse_dropout=0.0, ftn_paint=False, person_parse_dropout=0.0,
             ftn_relight="none", ftn_mask_offset=3.0)


def tiny_model_config(**overrides):
    """32x32 images, 8 base channels, 1 residual block per generator, 2-layer PatchGAN; PLAIN."""
    cfg = model_config()
    cfg.update(dict(height=H, width=W, base_channels=8, pan_blocks=1, trn_blocks=1, ftn_blocks=1,
                    d_channels=8, d_layers=2, garment_dilation=1, soft_dilation=1, feather=1, **PLAIN))
    cfg.update(overrides)
    return cfg


def random_iuv(rng: np.random.Generator, batch: int = 2, h: int = H, w: int = W) -> np.ndarray:
    """uint8 IUV `[B, H, W, 3]`: background border, a torso block, arms and legs, random U, V."""
    iuv = np.zeros((batch, h, w, 3), np.uint8)
    i = np.zeros((h, w), np.uint8)
    i[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 2            # torso front
    i[h // 4: h // 2, w // 8: w // 4] = 15                     # left upper arm
    i[h // 4: h // 2, 3 * w // 4: 7 * w // 8] = 16            # right upper arm
    i[3 * h // 4: 7 * h // 8, w // 4: 3 * w // 4] = 9         # upper leg
    i[h // 8: h // 4, 3 * w // 8: 5 * w // 8] = 23            # head
    iuv[..., 0] = i
    iuv[..., 1:] = rng.integers(0, 256, (batch, h, w, 2), dtype=np.uint8) * (i > 0)[..., None]
    return iuv


def random_batch(seed: int = 0, batch: int = 2, h: int = H, w: int = W) -> dict[str, np.ndarray]:
    """A data_schema batch of random images on the synthetic IUV layout."""
    rng = np.random.default_rng(seed)
    img = lambda: rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    return {
        "model_image": img(), "person_image": img(), "target_image": img(),
        "model_iuv": random_iuv(rng, batch, h, w), "person_iuv": random_iuv(rng, batch, h, w),
        "model_mask": np.zeros((batch, h, w, 1), np.uint8),
        "person_mask": np.zeros((batch, h, w, 1), np.uint8),
        "has_target": np.ones((batch,), np.int32), "paired": np.ones((batch,), np.int32),
        "garment_kind": np.zeros((batch,), np.int32),
    }


def random_inputs(seed: int = 0, batch: int = 2, h: int = H, w: int = W, cfg=None) -> dict[str, jax.Array]:
    """prepare_batch output plus a random stand-in warp (warped in [-1, 1], valid in {0, 1})."""
    from m2e_jax.models.tryon import prepare_batch

    inputs = prepare_batch(random_batch(seed, batch, h, w), cfg if cfg is not None else tiny_model_config())
    k1, k2 = jax.random.split(jax.random.key(seed + 100))
    inputs["warped"] = jax.random.uniform(k1, (batch, h, w, 3), minval=-1.0, maxval=1.0)
    inputs["valid"] = (jax.random.uniform(k2, (batch, h, w, 1)) > 0.5).astype(jnp.float32) * inputs["region"]
    return inputs


def all_leaves_nonzero(tree) -> list[str]:
    """Paths of leaves that are zero everywhere (dead parameters); empty when all receive gradient."""
    dead = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not bool(jnp.any(leaf != 0)):
            dead.append(jax.tree_util.keystr(path))
    return dead
