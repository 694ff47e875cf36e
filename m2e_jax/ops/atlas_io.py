"""DensePose texture-atlas layout <-> our per-part UV atlas (host side, numpy).

DensePose's texture-transfer notebook keeps a texture as one image 800 wide x 1200 high: 4 columns
x 6 rows of 200x200 tiles, part p in the tile at column (p - 1) // 6, row (p - 1) % 6, read as
`tile[int((255 - V) * 199 / 255), int(U * 199 / 255)]` (V flipped). Our atlas (`ops.uv_warp`) is
`[24, T, T, C]` with texel `[row, col]` at col = U * (T - 1), row = (1 - V) * (T - 1): the same
orientation and the same corner-aligned grid, so converting is a per-tile resample from T to 200
texels a side and back (linear, widened into a tent filter when shrinking so it does not alias).
"""

from __future__ import annotations

import numpy as np

from m2e_jax.densepose import NUM_PARTS

DP_TILE_PX = 200
DP_COLS, DP_ROWS = 4, 6


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """`[n_out, n_in]` float64 rows summing to 1: corner-aligned linear resampling of a 1-D signal.

    Output sample k sits at input position k * (n_in - 1) / (n_out - 1). Upsampling is exact linear
    interpolation; downsampling widens the tent to the sample spacing (area-like, no aliasing).
    """
    if n_in < 2 or n_out < 2:
        raise ValueError(f"resample_matrix: sizes must be >= 2, got {n_in} -> {n_out}")
    scale = (n_in - 1) / (n_out - 1)
    radius = max(scale, 1.0)
    pos = np.arange(n_out)[:, None] * scale
    w = np.clip(1.0 - np.abs(np.arange(n_in)[None, :] - pos) / radius, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def _tile_slot(part_index: int) -> tuple[int, int]:
    """(row, column) of the tile holding part `part_index + 1` in DensePose's atlas image."""
    return part_index % DP_ROWS, part_index // DP_ROWS


def atlas_to_densepose(atlas, coverage=None, tile_px: int = DP_TILE_PX) -> np.ndarray:
    """Our atlas `[..., 24, T, T, C]` -> DensePose's atlas image `[..., 6 * tile_px, 4 * tile_px, C]`.

    With `coverage` `[..., 24, T, T, 1]` the resampling averages covered texels only (no dark fringes
    from uncovered ones); texels with no covered neighbour come out 0. Returns float32 in the atlas's
    value range (convert to uint8 yourself for a PNG).
    """
    atlas = np.asarray(atlas, np.float64)
    if atlas.ndim < 4 or atlas.shape[-4] != NUM_PARTS or atlas.shape[-3] != atlas.shape[-2]:
        raise ValueError(f"atlas: expected shape [..., {NUM_PARTS}, T, T, C], got {atlas.shape}")
    cov = np.ones(atlas.shape[:-1] + (1,)) if coverage is None else np.asarray(coverage, np.float64)
    if cov.shape != atlas.shape[:-1] + (1,):
        raise ValueError(f"coverage: expected shape {atlas.shape[:-1] + (1,)}, got {cov.shape}")
    m = resample_matrix(atlas.shape[-2], tile_px)
    num = np.einsum("ir,...prcx,jc->...pijx", m, atlas * cov, m, optimize=True)
    den = np.einsum("ir,...prcx,jc->...pijx", m, cov, m, optimize=True)
    tiles = np.where(den > 1e-6, num / np.where(den > 1e-6, den, 1.0), 0.0)
    lead = atlas.shape[:-4]
    out = np.zeros(lead + (DP_ROWS * tile_px, DP_COLS * tile_px, atlas.shape[-1]), np.float32)
    for p in range(NUM_PARTS):
        r, c = _tile_slot(p)
        out[..., r * tile_px:(r + 1) * tile_px, c * tile_px:(c + 1) * tile_px, :] = tiles[..., p, :, :, :]
    return out


def atlas_from_densepose(texture, tile_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """DensePose's atlas image `[..., 6 * S, 4 * S, C]` (S = 200 for the notebook's) -> our atlas.

    Args:
      texture: uint8 or float; values are kept as they are (uint8 0..255 becomes float 0..255).
      tile_size: T of the returned atlas.
    Returns:
      atlas float32 `[..., 24, T, T, C]` and coverage float32 `[..., 24, T, T, 1]` (all ones: a
      painted texture covers every texel).
    """
    tex = np.asarray(texture)
    if tex.ndim < 3:
        raise ValueError(f"texture: expected an atlas image [..., H, W, C], got shape {tex.shape}")
    h, w = tex.shape[-3:-1]
    if h % DP_ROWS or w % DP_COLS or h // DP_ROWS != w // DP_COLS:
        raise ValueError(f"texture: a DensePose atlas is {DP_COLS} x {DP_ROWS} square tiles (800 wide x "
                         f"1200 high for the notebook's), got {w} wide x {h} high")
    if isinstance(tile_size, bool) or not isinstance(tile_size, int | np.integer) or tile_size < 2:
        raise ValueError(f"tile_size must be an integer >= 2, got {tile_size!r}")
    s = h // DP_ROWS
    m = resample_matrix(s, tile_size)
    tiles = []
    for p in range(NUM_PARTS):
        r, c = _tile_slot(p)
        tile = tex[..., r * s:(r + 1) * s, c * s:(c + 1) * s, :].astype(np.float64)
        tiles.append(np.einsum("ir,...rcx,jc->...ijx", m, tile, m, optimize=True))
    atlas = np.stack(tiles, axis=-4).astype(np.float32)
    return atlas, np.ones(atlas.shape[:-1] + (1,), np.float32)
