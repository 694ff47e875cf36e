"""UV-space warping: move an image to another pose through DensePose's body-surface coordinates.

W, V = uv_warp(M, I_M -> I_P) of method.md: the source pixels are splatted into a per-part UV
texture atlas, small holes in the atlas are filled, and every target pixel reads the atlas at its
own (I, U, V).

Atlas convention (pinned; `ops.atlas_io` converts to and from DensePose's 800x1200 layout):
  atlas    `[B, 24, T, T, C]`: tile `p - 1` holds part p (1..24); texel `[row, col]` sits at
           col = U * (T - 1), row = (1 - V) * (T - 1). The grid is corner-aligned (U = 0 and U = 1
           land exactly on the first and last texel) and V is flipped, so a tile reads exactly like
           a tile of DensePose's texture atlas (`tile[(255 - V) * 199 / 255, U * 199 / 255]`).
  coverage `[B, 24, T, T, 1]` in {0, 1}: 1 where the source pixels' bilinear weights on the texel sum
           to more than WEIGHT_EPS = 1e-3 (or hole filling reached it); the atlas colour is 0 where
           coverage is 0.

Splatting is bilinear: a source pixel adds weight w_k (its bilinear weight) times its colour to the
4 texels around its (U, V); a texel's colour is the weighted mean of what it received
(`splat="nearest"`: weight 1 on its nearest texel only, col = round(U * (T - 1)),
row = round((1 - V) * (T - 1))). Gathering is always bilinear among covered texels only:
sum_k w_k c_k x_k / sum_k w_k c_k (c = coverage). The output is
valid (1) exactly where the target pixel has a part (I > 0) and that denominator exceeds WEIGHT_EPS;
warped = 0 elsewhere. The op is linear in the source image, so gradients reach it exactly; all sums run in
float32 whatever the image dtype. Everything is a scatter-add or a gather of size 4 x H x W plus
O(atlas) work per example: no `[HW x HW]` intermediates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from m2e_jax import densepose

NUM_PARTS = densepose.NUM_PARTS
DEFAULT_TILE_SIZE = 32
DEFAULT_FILL_ITERS = 2
# "bilinear": each source pixel spreads over its 4 surrounding texels (exact reference semantics);
# "nearest": onto its nearest texel only, 4x less scatter traffic (see the benchmark notes).
SPLAT_MODES = ("bilinear", "nearest")
DEFAULT_SPLAT = "bilinear"
# Bilinear weight below which a texel or a target pixel counts as unseen: float rounding of U * (T - 1)
# (e.g. 36.999996 for U = 37 / 255 at T = 256) must not make a texel "seen" by a pixel one texel away.
WEIGHT_EPS = 1e-3


def _check_static(tile_size: int, fill_iters: int, splat: str = DEFAULT_SPLAT) -> None:
    if isinstance(tile_size, bool) or not isinstance(tile_size, int | np.integer) or tile_size < 2:
        raise ValueError(f"tile_size must be an integer >= 2, got {tile_size!r}")
    if isinstance(fill_iters, bool) or not isinstance(fill_iters, int | np.integer) or fill_iters < 0:
        raise ValueError(f"fill_iters must be an integer >= 0, got {fill_iters!r}")
    if splat not in SPLAT_MODES:
        raise ValueError(f"splat must be one of {SPLAT_MODES}, got {splat!r}")


def _check_rank(name: str, x, channels: int | None = None) -> None:
    if x.ndim != 4 or (channels is not None and x.shape[-1] != channels):
        want = f"[B, H, W, {channels}]" if channels is not None else "[B, H, W, C]"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")


def _compute_dtype(dtype) -> jnp.dtype:
    """Output dtype: the image's float dtype; integer images (uint8) come back as float32."""
    return jnp.dtype(dtype) if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(jnp.float32)


def _cells(iuv: jax.Array, tile_size: int) -> tuple[jax.Array, jax.Array]:
    """Atlas cell (its top-left texel) and bilinear corner weights of every pixel of one example.

    A pixel at texel coordinates (x, y) lies in the cell whose top-left texel is (x0, y0) =
    (min(floor(x), T - 2), min(floor(y), T - 2)); capping at T - 2 keeps all 4 corners in the tile
    (at x = T - 1 the weight moves to the right-hand corner).

    Args:
      iuv: `[H, W, 3]` uint8 or float IUV.
    Returns:
      cell uint32 `[H * W, 2]`: (row, col) of the top-left texel in the atlas seen as a `[24 * T, T]`
      grid (row = (part - 1) * T + y0, col = x0; unsigned, so indexing skips negative-index
      wrapping); weight float32 `[H * W, 4]` of the corners (y0, x0), (y0, x0 + 1), (y0 + 1, x0),
      (y0 + 1, x0 + 1); 0 on background pixels.
    """
    t = tile_size
    part, u, v = densepose.split_iuv(iuv)
    x = jnp.clip(u, 0.0, 1.0).reshape(-1) * (t - 1)
    y = (1.0 - jnp.clip(v, 0.0, 1.0)).reshape(-1) * (t - 1)
    x0 = jnp.minimum(jnp.floor(x), t - 2)
    y0 = jnp.minimum(jnp.floor(y), t - 2)
    fx, fy = x - x0, y - y0
    fg = (part.reshape(-1) > 0).astype(jnp.float32)
    row = jnp.maximum(part.reshape(-1) - 1, 0) * t + y0.astype(jnp.int32)
    cell = jnp.stack([row, x0.astype(jnp.int32)], axis=-1).astype(jnp.uint32)
    weight = jnp.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=-1) * fg[:, None]
    return cell, weight


def _shift(x: jax.Array, axis: int, step: int) -> jax.Array:
    """y[i] = x[i - step] along `axis` (step = +1 or -1), zero filled at the edge."""
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    return jax.lax.slice_in_dim(jnp.pad(x, pad), 1 - step, 1 - step + n, axis=axis)


# Internally the atlas is planar, `[B, 24, K, T, T]` (K = C colour planes premultiplied by coverage,
# then the coverage plane): XLA on CPU vectorises over the minor axis, and texel rows (T) make a far
# better minor axis than 3 or 4 channels (measured 2-5x faster hole filling).

# The splat and the gather move one 2 x 2 window of texels per pixel (a scatter/gather whose slice is
# the cell), measured ~15% faster each than 4 single-texel ones or one 4 x (C + 1) row per cell
# followed by dense shifts; XLA CPU recomputes the cell index per moved element, so fewer, wider
# slices pay.
_WINDOW = dict(update_window_dims=(1, 2, 3), inserted_window_dims=(), scatter_dims_to_operand_dims=(0, 1))


def _splat(image: jax.Array, iuv: jax.Array, tile_size: int) -> jax.Array:
    """One example, bilinear: `[H, W, C]` float32 image -> `[24, C + 1, T, T]` colour sums, then weight
    sums. Each pixel scatter-adds its 2 x 2 window of weighted (colour, 1) rows into the atlas."""
    t, c = tile_size, image.shape[-1]
    cell, weight = _cells(iuv, tile_size)
    flat = image.reshape(-1, c)
    rows = jnp.concatenate([flat, jnp.ones_like(flat[:, :1])], axis=-1)  # ones_like keeps sharding
    updates = (weight[:, :, None] * rows[:, None, :]).reshape(-1, 2, 2, c + 1)
    table = jax.lax.scatter_add(jnp.zeros((NUM_PARTS * t, t, c + 1), jnp.float32), cell, updates,
                                jax.lax.ScatterDimensionNumbers(**_WINDOW),
                                mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    return jnp.moveaxis(table.reshape(NUM_PARTS, t, t, c + 1), -1, 1)


def _splat_nearest(image: jax.Array, iuv: jax.Array, tile_size: int) -> jax.Array:
    """One example, nearest: like `_splat`, but each pixel adds weight 1 to its nearest texel only
    (one scatter row of C + 1 values: 4x less scatter traffic than bilinear)."""
    t, c = tile_size, image.shape[-1]
    part, u, v = densepose.split_iuv(iuv)
    col = jnp.floor(jnp.clip(u, 0.0, 1.0).reshape(-1) * (t - 1) + 0.5).astype(jnp.int32)
    row = jnp.floor((1.0 - jnp.clip(v, 0.0, 1.0)).reshape(-1) * (t - 1) + 0.5).astype(jnp.int32)
    part = part.reshape(-1)
    texel = ((jnp.maximum(part - 1, 0) * t + row) * t + col).astype(jnp.uint32)  # no negative-index wrap
    flat = image.reshape(-1, c)
    rows = jnp.concatenate([flat, jnp.ones_like(flat[:, :1])], axis=-1) * (part > 0)[:, None]
    table = jnp.zeros((NUM_PARTS * t * t, c + 1), jnp.float32).at[texel].add(rows, mode="promise_in_bounds")
    return jnp.moveaxis(table.reshape(NUM_PARTS, t, t, c + 1), -1, 1)


SPLATS = {"bilinear": _splat, "nearest": _splat_nearest}


def _neighbour_sum(x: jax.Array) -> jax.Array:
    """3x3 sum over the last two (texel) axes, zero padded: tiles never bleed into each other."""
    x = x + _shift(x, -1, 1) + _shift(x, -1, -1)
    return x + _shift(x, -2, 1) + _shift(x, -2, -1)


def _safe_div(num: jax.Array, den: jax.Array, ok: jax.Array) -> jax.Array:
    """num / den where `ok`, else 0, with finite gradients everywhere (the double-where trick)."""
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _fill_holes(planes: jax.Array, fill_iters: int) -> jax.Array:
    """Each iteration gives every uncovered texel with a covered 3x3 neighbour (same tile) their mean.

    planes: `[B, 24, C + 1, T, T]`, premultiplied colour then coverage in {0, 1}.
    A loop, not unrolled: XLA's CPU backend drops `optimization_barrier` before fusion, so an unrolled
    chain got fused into the gathers and recomputed per tap; a loop's carry is materialised
    (with the elementwise gather, measured ~1.5x faster for the whole warp at 256x192).
    """
    def step(_, planes):
        s = _neighbour_sum(planes)
        cov, count = planes[:, :, -1:], s[:, :, -1:]
        new = (cov == 0) & (count > 0)
        filled = jnp.concatenate([_safe_div(s[:, :, :-1], count, new), jnp.ones_like(count)], axis=2)
        return jnp.where(new, filled, planes)

    return jax.lax.fori_loop(0, fill_iters, step, planes)


def _to_planes(image, iuv, tile_size: int, fill_iters: int, splat: str) -> jax.Array:
    """`[B, H, W, C]` image -> filled atlas planes `[B, 24, C + 1, T, T]` (float32)."""
    sums = jax.vmap(SPLATS[splat], in_axes=(0, 0, None))(image.astype(jnp.float32), iuv, tile_size)
    weight = sums[:, :, -1:]
    covered = weight > WEIGHT_EPS
    planes = jnp.concatenate([_safe_div(sums[:, :, :-1], weight, covered), covered.astype(jnp.float32)],
                             axis=2)
    return _fill_holes(planes, fill_iters)


def _gather(planes: jax.Array, iuv: jax.Array, tile_size: int):
    """One example: atlas planes `[24, C + 1, T, T]`, iuv `[H, W, 3]` -> image `[H, W, C]`, valid.

    Gathers each pixel's 2 x 2 window of (premultiplied colour, coverage) rows and weighs it with an
    explicit sum of 4 products: a batched `einsum` lowered to a 4 x 4 dot per pixel on CPU (~2x slower)
    and a reduce over the window axis fused badly (~1.7x slower).
    """
    h, w = iuv.shape[:2]
    k = planes.shape[1]
    table = jnp.moveaxis(planes, 1, -1).reshape(-1, tile_size, k)  # [24 * T, T, K]
    cell, weight = _cells(iuv, tile_size)
    window = jax.lax.gather(table, cell, jax.lax.GatherDimensionNumbers(
        offset_dims=(1, 2, 3), collapsed_slice_dims=(), start_index_map=(0, 1)), slice_sizes=(2, 2, k),
        mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS).reshape(-1, 4, k)
    acc = sum(weight[:, j:j + 1] * window[:, j] for j in range(4))
    num, den = acc[:, :-1], acc[:, -1:]
    valid = den > WEIGHT_EPS
    return _safe_div(num, den, valid).reshape(h, w, k - 1), valid.astype(jnp.float32).reshape(h, w, 1)


def _from_planes(planes, iuv, tile_size: int):
    return jax.vmap(_gather, in_axes=(0, 0, None))(planes, iuv, tile_size)


def _per_device(fn, *args):
    """Applies `fn` (batch in, batch out, no cross-example work) to batch-leading `args`.

    When the batch axis is sharded over Explicit mesh axes (the default of `jax.make_mesh` in JAX
    0.10), the reshapes inside `fn` have no sharding rule; since examples are independent, run `fn`
    per device with `jax.shard_map` instead. Auto/unsharded inputs go straight through (XLA's
    partitioner then splits the batched scatter/gather along the batch on its own).
    """
    sharding = jax.typeof(args[0]).sharding
    batch_axes = sharding.spec[0] if len(sharding.spec) else None
    names = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes or ())
    if not names or any(n not in sharding.mesh.explicit_axes for n in names):
        return fn(*args)
    spec = P(batch_axes)
    args = [a if jax.typeof(a).sharding.spec[:1] == (batch_axes,)
            else jax.sharding.reshard(a, NamedSharding(sharding.mesh, spec)) for a in args]
    return jax.shard_map(fn, mesh=sharding.mesh, in_specs=spec, out_specs=spec)(*args)


def image_to_atlas(image: jax.Array, iuv: jax.Array, tile_size: int = DEFAULT_TILE_SIZE,
                   fill_iters: int = DEFAULT_FILL_ITERS, splat: str = DEFAULT_SPLAT
                   ) -> tuple[jax.Array, jax.Array]:
    """Splats an image into the per-part UV texture atlas (convention in the module docstring).

    Args:
      image: `[B, H, W, C]` float (any range; bfloat16 is accumulated in float32).
      iuv: `[B, H, W, 3]` uint8 (DensePose encoding) or float (I 0..24, U, V in [0, 1]).
      tile_size: T, texels per side of each part's tile (>= 2).
      fill_iters: hole-filling iterations (0 = off); each grows coverage by one texel within a part.
      splat: "bilinear" (default) or "nearest" (each pixel lands on its nearest texel only: faster,
        coarser; coverage is then exactly the texels some pixel rounds to).
    Returns:
      atlas `[B, 24, T, T, C]` and coverage `[B, 24, T, T, 1]` in {0, 1}, both in the image's dtype.
    """
    _check_static(tile_size, fill_iters, splat)
    _check_rank("image", image)
    _check_rank("iuv", iuv, 3)
    if image.shape[:3] != iuv.shape[:3]:
        raise ValueError(f"image {tuple(image.shape)} and iuv {tuple(iuv.shape)} differ in [B, H, W]")
    dtype = _compute_dtype(image.dtype)

    def run(image, iuv):
        planes = _to_planes(image, iuv, tile_size, fill_iters, splat)
        cov = planes[:, :, -1:]
        atlas = _safe_div(planes[:, :, :-1], cov, cov > 0)  # premultiplied -> plain colour
        to_channels_last = lambda x: jnp.moveaxis(x, 2, -1).astype(dtype)
        return to_channels_last(atlas), to_channels_last(cov)

    return _per_device(run, image, iuv)


def atlas_to_image(atlas: jax.Array, coverage: jax.Array, iuv: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reads the atlas at every pixel's (I, U, V), bilinearly among covered texels.

    Args:
      atlas: `[B, 24, T, T, C]`; coverage: `[B, 24, T, T, 1]` in {0, 1} (soft values act as weights).
      iuv: `[B, H, W, 3]` uint8 or float IUV of the pose to render.
    Returns:
      image `[B, H, W, C]` (0 where not valid) and valid `[B, H, W, 1]` in {0, 1}, in the atlas's dtype.
    """
    if atlas.ndim != 5 or atlas.shape[1] != NUM_PARTS or atlas.shape[2] != atlas.shape[3]:
        raise ValueError(f"atlas: expected shape [B, {NUM_PARTS}, T, T, C], got {tuple(atlas.shape)}")
    if coverage.shape != atlas.shape[:4] + (1,):
        raise ValueError(f"coverage: expected shape {atlas.shape[:4] + (1,)}, got {tuple(coverage.shape)}")
    _check_rank("iuv", iuv, 3)
    if iuv.shape[0] != atlas.shape[0]:
        raise ValueError(f"iuv batch {iuv.shape[0]} != atlas batch {atlas.shape[0]}")
    dtype = _compute_dtype(atlas.dtype)

    def run(atlas, coverage, iuv):
        cov = jnp.moveaxis(coverage.astype(jnp.float32), -1, 2)
        planes = jnp.concatenate([jnp.moveaxis(atlas.astype(jnp.float32), -1, 2) * cov, cov], axis=2)
        image, valid = _from_planes(planes, iuv, atlas.shape[2])
        return image.astype(dtype), valid.astype(dtype)

    return _per_device(run, atlas, coverage, iuv)


def uv_warp(src_image: jax.Array, src_iuv: jax.Array, tgt_iuv: jax.Array,
            tile_size: int = DEFAULT_TILE_SIZE, fill_iters: int = DEFAULT_FILL_ITERS,
            splat: str = DEFAULT_SPLAT) -> tuple[jax.Array, jax.Array]:
    """Warps `src_image` from the pose of `src_iuv` into the pose of `tgt_iuv`.

    Args:
      src_image: `[B, H, W, C]` float (e.g. in [-1, 1]); bfloat16 works (sums run in float32).
      src_iuv: `[B, H, W, 3]` uint8 or float IUV of the source.
      tgt_iuv: `[B, H2, W2, 3]` uint8 or float IUV of the target (its size may differ).
      tile_size, fill_iters, splat: see `image_to_atlas`.
    Returns:
      warped `[B, H2, W2, C]` (0 where not valid) and valid `[B, H2, W2, 1]` in {0, 1}, in the image's
      dtype (float32 for integer images).
    """
    _check_static(tile_size, fill_iters, splat)
    _check_rank("src_image", src_image)
    _check_rank("src_iuv", src_iuv, 3)
    _check_rank("tgt_iuv", tgt_iuv, 3)
    if src_image.shape[:3] != src_iuv.shape[:3]:
        raise ValueError(f"src_image {tuple(src_image.shape)} and src_iuv {tuple(src_iuv.shape)} "
                         "differ in [B, H, W]")
    if tgt_iuv.shape[0] != src_image.shape[0]:
        raise ValueError(f"tgt_iuv batch {tgt_iuv.shape[0]} != src_image batch {src_image.shape[0]}")
    dtype = _compute_dtype(src_image.dtype)

    def run(src_image, src_iuv, tgt_iuv):
        planes = _to_planes(src_image, src_iuv, tile_size, fill_iters, splat)
        warped, valid = _from_planes(planes, tgt_iuv, tile_size)
        return warped.astype(dtype), valid.astype(dtype)

    return _per_device(run, src_image, src_iuv, tgt_iuv)


_uv_warp_jit = jax.jit(uv_warp, static_argnames=("tile_size", "fill_iters", "splat"))


def _check_image(name: str, image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 4:
        raise ValueError(f"{name}: expected an image batch [B, H, W, C], got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.uint8 or arr.dtype == jnp.bfloat16):
        raise ValueError(f"{name}: dtype must be float or uint8, got {arr.dtype}")
    if arr.dtype != np.uint8 and not np.isfinite(arr.astype(np.float32)).all():
        raise ValueError(f"{name}: image contains NaN or Inf")
    return arr


def checked_uv_warp(src_image, src_iuv, tgt_iuv, tile_size: int = DEFAULT_TILE_SIZE,
                    fill_iters: int = DEFAULT_FILL_ITERS, splat: str = DEFAULT_SPLAT
                    ) -> tuple[jax.Array, jax.Array]:
    """`uv_warp` after host-side validation (call outside jit): clear errors instead of garbage.

    Checks ranks, dtypes, finiteness, the IUV maps (`densepose.check_iuv`: I in 0..24, U/V ranges),
    that the batch sizes agree and that the source image and source IUV have the same H, W.
    """
    _check_static(tile_size, fill_iters, splat)
    img = _check_image("src_image", src_image)
    for name, iuv in (("src_iuv", src_iuv), ("tgt_iuv", tgt_iuv)):
        arr = np.asarray(iuv)
        if arr.ndim != 4:
            raise ValueError(f"{name}: expected an IUV batch [B, H, W, 3], got shape {arr.shape}")
        densepose.check_iuv(arr, name)
    s, t = np.shape(src_iuv), np.shape(tgt_iuv)
    if img.shape[0] != s[0] or img.shape[0] != t[0]:
        raise ValueError(f"batch sizes differ: src_image {img.shape[0]}, src_iuv {s[0]}, tgt_iuv {t[0]}")
    if img.shape[1:3] != s[1:3]:
        raise ValueError(f"src_image is {img.shape[1]}x{img.shape[2]} but src_iuv is {s[1]}x{s[2]}: "
                         "the source IUV must be the source image's size (resize it with 'nearest')")
    return _uv_warp_jit(jnp.asarray(src_image), jnp.asarray(src_iuv), jnp.asarray(tgt_iuv),
                        tile_size=int(tile_size), fill_iters=int(fill_iters), splat=splat)
