"""Benchmark of ops.uv_warp: `python -m m2e_jax.benchmarks.uv_warp [--quick] [--json PATH]`.

For each batch x size and splat mode, timed in alternating rounds (the machine may be shared, so
load drifts hit every column alike): the median ms per jitted call after warm-up and megapixels/s
(target pixels); the plain-loop NumPy reference (`loop_uv_warp`, the one the tests check the op
against; one call, only up to `--loop-max-pixels` source pixels per batch, "-" elsewhere: nothing
is extrapolated); the same warp in vectorised NumPy (`numpy_uv_warp`, np.bincount / fancy
indexing, float64); and the floor: one jitted gather of C values per target pixel from a
source-sized `[B * H * W, C]` table by a precomputed, cache-friendly index map (a shift): the least
any warp must do (ours also computes its indices from the IUV maps, splats 4 texels per source
pixel, fills holes and gathers 4 texels per target pixel).
Inputs are synthetic-world renders at each size (paired examples), so coverage and part statistics
are realistic.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from m2e_jax.ops.uv_warp import SPLAT_MODES, WEIGHT_EPS, uv_warp

DEFAULT_SIZES = "64x48,128x96,256x192,512x384"
QUICK_SIZES = "64x48,128x96"


# ------------------------------------------------------------------ plain-loop NumPy reference
# The tests' reference (tests/test_uv_warp.py checks the op against it to 1e-5): float64, one pixel
# and one texel at a time, written from the module docstring's rules, not from the op's tricks.

def _tent(d: float) -> float:
    return max(0.0, 1.0 - abs(d))


def _reach(z: float, t: int) -> range:
    """Texel indices k in 0..t-1 with |z - k| < 1: the only ones a tent at z can weigh."""
    return range(max(0, math.floor(z) - 1), min(t, math.floor(z) + 2))


def _texel_xy(iuv_px, t: int) -> tuple[int, float, float]:
    part = int(round(float(iuv_px[0])))
    scale = 255.0 if np.asarray(iuv_px).dtype == np.uint8 else 1.0
    x = min(max(float(iuv_px[1]) / scale, 0.0), 1.0) * (t - 1)
    y = (1.0 - min(max(float(iuv_px[2]) / scale, 0.0), 1.0)) * (t - 1)
    return part, x, y


def loop_image_to_atlas(image, iuv, tile_size: int, fill_iters: int, splat: str = "bilinear"):
    """Plain loops: atlas `[B, 24, T, T, C]`, coverage `[B, 24, T, T, 1]` (float64).

    bilinear: every texel of the pixel's tile gets tent(x - col) * tent(y - row) of it;
    nearest: texel (floor(y + 0.5), floor(x + 0.5)) gets weight 1.
    """
    b_, h, w, c = image.shape
    t = tile_size
    sums = np.zeros((b_, 24, t, t, c))
    wsum = np.zeros((b_, 24, t, t))
    for b in range(b_):
        for yy in range(h):
            for xx in range(w):
                part, x, y = _texel_xy(iuv[b, yy, xx], t)
                if part == 0:
                    continue
                if splat == "nearest":
                    taps = [(math.floor(y + 0.5), math.floor(x + 0.5), 1.0)]
                else:
                    taps = [(r, col, _tent(x - col) * _tent(y - r))
                            for r in _reach(y, t) for col in _reach(x, t)]
                for r, col, wt in taps:
                    if wt > 0:
                        sums[b, part - 1, r, col] += wt * image[b, yy, xx]
                        wsum[b, part - 1, r, col] += wt
    cov = (wsum > WEIGHT_EPS).astype(np.float64)
    atlas = np.where(cov[..., None] > 0, sums / np.maximum(wsum, 1e-30)[..., None], 0.0)
    for _ in range(fill_iters):
        new_atlas, new_cov = atlas.copy(), cov.copy()
        for b in range(b_):
            for p in range(24):
                for r in range(t):
                    for col in range(t):
                        if cov[b, p, r, col]:
                            continue
                        acc, n = np.zeros(c), 0
                        for rr in range(max(0, r - 1), min(t, r + 2)):
                            for cc in range(max(0, col - 1), min(t, col + 2)):
                                if cov[b, p, rr, cc]:
                                    acc += atlas[b, p, rr, cc]
                                    n += 1
                        if n:
                            new_atlas[b, p, r, col] = acc / n
                            new_cov[b, p, r, col] = 1.0
        atlas, cov = new_atlas, new_cov
    return atlas, cov[..., None]


def loop_atlas_to_image(atlas, cov, iuv):
    """Plain loops: image `[B, H, W, C]`, valid `[B, H, W, 1]` (float64), bilinear among covered texels."""
    b_, _, t, _, c = atlas.shape
    h, w = iuv.shape[1:3]
    out, valid = np.zeros((b_, h, w, c)), np.zeros((b_, h, w, 1))
    for b in range(b_):
        for yy in range(h):
            for xx in range(w):
                part, x, y = _texel_xy(iuv[b, yy, xx], t)
                if part == 0:
                    continue
                num, den = np.zeros(c), 0.0
                for r in _reach(y, t):
                    for col in _reach(x, t):
                        wt = _tent(x - col) * _tent(y - r) * cov[b, part - 1, r, col, 0]
                        num += wt * atlas[b, part - 1, r, col]
                        den += wt
                if den > WEIGHT_EPS:
                    out[b, yy, xx], valid[b, yy, xx] = num / den, 1.0
    return out, valid


def loop_uv_warp(src, src_iuv, tgt_iuv, tile_size: int = 32, fill_iters: int = 2, splat: str = "bilinear"):
    """`uv_warp` in plain loops (float64): warped `[B, H2, W2, C]`, valid `[B, H2, W2, 1]`."""
    atlas, cov = loop_image_to_atlas(np.asarray(src, np.float64), src_iuv, tile_size, fill_iters, splat)
    return loop_atlas_to_image(atlas, cov, tgt_iuv)


# ------------------------------------------------------------------- vectorised NumPy version

def _corners_np(iuv: np.ndarray, t: int, splat: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    """Flat indices `[K, B, N]` into a `[B * 24 * T * T]` atlas and weights `[K, B, N]`: the K = 4
    bilinear corners, or (splat="nearest") K = 1 nearest texel with weight 1."""
    b, h, w, _ = iuv.shape
    part = iuv[..., 0].astype(np.int64).reshape(b, -1)
    u = iuv[..., 1].reshape(b, -1) / 255.0
    v = iuv[..., 2].reshape(b, -1) / 255.0
    x, y = u * (t - 1), (1 - v) * (t - 1)
    tile = (np.arange(b)[:, None] * 24 + np.maximum(part - 1, 0)) * t
    if splat == "nearest":
        idx = (tile + np.floor(y + 0.5).astype(np.int64)) * t + np.floor(x + 0.5).astype(np.int64)
        return idx[None], (part > 0)[None].astype(np.float64)
    x0, y0 = np.minimum(np.floor(x), t - 2), np.minimum(np.floor(y), t - 2)
    fx, fy = x - x0, y - y0
    base = (tile + y0.astype(np.int64)) * t + x0.astype(np.int64)
    idx = np.stack([base, base + 1, base + t, base + t + 1])
    wt = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy]) * (part > 0)
    return idx, wt


def numpy_uv_warp(src: np.ndarray, src_iuv: np.ndarray, tgt_iuv: np.ndarray, tile_size: int = 32,
                  fill_iters: int = 2, splat: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    """Vectorised NumPy version of `uv_warp` for uint8 IUV (same atlas convention and rules)."""
    b, _, _, c = src.shape
    t = tile_size
    size = b * 24 * t * t
    idx, wt = _corners_np(src_iuv, t, splat)
    flat = src.reshape(b, -1, c).astype(np.float64)
    wsum = np.bincount(idx.ravel(), wt.ravel(), size)
    sums = np.stack([np.bincount(idx.ravel(), (wt * flat[None, ..., k]).ravel(), size) for k in range(c)], -1)
    cov = wsum > WEIGHT_EPS
    atlas = np.where(cov[:, None], sums / np.where(cov, wsum, 1)[:, None], 0).reshape(b * 24, t, t, c)
    cov = cov.reshape(b * 24, t, t, 1).astype(np.float64)
    for _ in range(fill_iters):
        stacked = np.pad(np.concatenate([atlas * cov, cov], -1), ((0, 0), (1, 1), (1, 1), (0, 0)))
        s = sum(stacked[:, dy:dy + t, dx:dx + t] for dy in range(3) for dx in range(3))
        new = (cov == 0) & (s[..., c:] > 0)
        atlas = np.where(new, s[..., :c] / np.maximum(s[..., c:], 1e-30), atlas)
        cov = np.maximum(cov, new)
    table = np.concatenate([atlas * cov, cov], -1).reshape(size, c + 1)
    idx, wt = _corners_np(tgt_iuv, t)
    acc = (wt[..., None] * table[idx]).sum(0)  # [B, N, C + 1]
    valid = acc[..., c:] > WEIGHT_EPS
    out = np.where(valid, acc[..., :c] / np.where(valid, acc[..., c:], 1), 0)
    h, w = tgt_iuv.shape[1:3]
    return out.reshape(b, h, w, c), valid.reshape(b, h, w, 1).astype(np.float64)


def _alternating_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median ms per call of each function, timed in interleaved rounds (all warmed up first)."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _inputs(batch: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from m2e_jax.synthetic import dataset

    exs = [dataset.make_example(0, "test", i, h, w, kind="paired") for i in range(batch)]
    img = np.stack([e["model_image"] for e in exs]).astype(np.float32) / 127.5 - 1
    return img, np.stack([e["model_iuv"] for e in exs]), np.stack([e["person_iuv"] for e in exs])


def _max_diff(out, valid, ref, ref_valid) -> float:
    """max |op - reference| over the image; inf when the valid masks disagree anywhere."""
    if not np.array_equal(np.asarray(valid), ref_valid):
        return float("inf")
    return float(np.abs(np.asarray(out, np.float64) - ref).max())


def bench_one(batch: int, h: int, w: int, repeats: int, tile_size: int, fill_iters: int,
              splats: Sequence[str], loop_max_pixels: int) -> list[dict]:
    """One row per splat mode for a batch x size (see the module docstring for the columns)."""
    img, s_iuv, t_iuv = _inputs(batch, h, w)
    args = [jax.device_put(x) for x in (img, s_iuv, t_iuv)]
    fns: dict[str, Callable[[], object]] = {}
    rows = []
    for splat in splats:
        warp = jax.jit(lambda a, b, c, splat=splat: uv_warp(a, b, c, tile_size=tile_size,
                                                               fill_iters=fill_iters, splat=splat))
        t0 = time.perf_counter()
        out, valid = jax.block_until_ready(warp(*args))
        row = {"batch": batch, "size": f"{h}x{w}", "splat": splat, "tile_size": tile_size,
               "fill_iters": fill_iters, "compile_s": time.perf_counter() - t0}
        vec = numpy_uv_warp(img, s_iuv, t_iuv, tile_size, fill_iters, splat)
        row["max_abs_diff_vs_numpy"] = _max_diff(out, valid, *vec)
        row["loop_ms"] = row["max_abs_diff_vs_loop"] = None
        if batch * h * w <= loop_max_pixels:
            t0 = time.perf_counter()
            loop = loop_uv_warp(img, s_iuv, t_iuv, tile_size, fill_iters, splat)
            row["loop_ms"] = (time.perf_counter() - t0) * 1e3
            row["max_abs_diff_vs_loop"] = _max_diff(out, valid, *loop)
        fns[f"jax_{splat}"] = lambda warp=warp: warp(*args)
        fns[f"numpy_{splat}"] = lambda splat=splat: numpy_uv_warp(img, s_iuv, t_iuv, tile_size, fill_iters,
                                                                   splat)
        rows.append(row)

    # The floor: one gather of C values per target pixel, by an index map computed beforehand. The map
    # shifts each image by (3, 5) pixels (wrapping): best-case memory locality, so the floor is a true
    # lower bound (a random map would miss the cache at large sizes and flatter the op).
    table = jax.device_put(img.reshape(batch * h * w, -1))
    bb, yy, xx = np.meshgrid(np.arange(batch), np.arange(h), np.arange(w), indexing="ij")
    index = jax.device_put((((bb * h + (yy + 3) % h) * w + (xx + 5) % w).reshape(-1)).astype(np.int32))
    gather = jax.jit(lambda x, i: x.at[i].get(mode="promise_in_bounds"))
    fns["gather"] = lambda: gather(table, index)
    ms = _alternating_ms(fns, repeats)
    for row in rows:
        jax_ms, np_ms = ms[f"jax_{row['splat']}"], ms[f"numpy_{row['splat']}"]
        row.update(jax_ms=jax_ms, mpix_per_s=batch * h * w / jax_ms / 1e3, numpy_ms=np_ms,
                   speedup_vs_numpy=np_ms / jax_ms, gather_ms=ms["gather"],
                   x_gather_floor=jax_ms / ms["gather"],
                   speedup_vs_loop=None if row["loop_ms"] is None else row["loop_ms"] / jax_ms)
    return rows


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        try:
            h, w = (int(x) for x in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--sizes: expected HxW[,HxW...], got {item!r}") from None
        out.append((h, w))
    return out


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=None,
                    help=f"HxW list (default {DEFAULT_SIZES}; --quick: {QUICK_SIZES})")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per size (default 10, quick 3)")
    ap.add_argument("--tile-size", type=int, default=32)
    ap.add_argument("--fill-iters", type=int, default=2)
    ap.add_argument("--splat", default=",".join(SPLAT_MODES), help="comma list of splat modes to time")
    ap.add_argument("--loop-max-pixels", type=int, default=4 * 256 * 192,
                    help="run the plain-loop reference only up to this many pixels per batch (0 = never)")
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, few repeats")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    sizes = _parse_sizes(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    repeats = args.repeats or (3 if args.quick else 10)
    splats = [x.strip() for x in args.splat.split(",") if x.strip()]
    if not splats or any(x not in SPLAT_MODES for x in splats):
        raise SystemExit(f"--splat: expected a comma list of {SPLAT_MODES}, got {args.splat!r}")

    rows = [r for h, w in sizes
            for r in bench_one(args.batch, h, w, repeats, args.tile_size, args.fill_iters, splats,
                               args.loop_max_pixels)]
    dev = jax.devices()[0]
    print(f"uv_warp on {dev.platform} ({dev.device_kind}), T={args.tile_size}, fill_iters={args.fill_iters}; "
          "loop = plain-loop NumPy reference (the tests'), vec = vectorised NumPy, both float64; "
          "floor = one gather of C values per target pixel by a precomputed index map")
    print(f"{'batch x size':>15} {'splat':>8} {'jax ms':>8} {'Mpix/s':>7} {'loop ms':>9} {'x loop':>7} "
          f"{'vec ms':>8} {'x vec':>6} {'floor ms':>8} {'x floor':>7} {'compile s':>9} {'|d| loop':>8} "
          f"{'|d| vec':>8}")
    opt = lambda v, fmt: "-" if v is None else format(v, fmt)
    for r in rows:
        print(f"{str(r['batch']) + ' x ' + r['size']:>15} {r['splat']:>8} {r['jax_ms']:8.2f} "
              f"{r['mpix_per_s']:7.2f} {opt(r['loop_ms'], '.0f'):>9} {opt(r['speedup_vs_loop'], '.0f'):>7} "
              f"{r['numpy_ms']:8.2f} {r['speedup_vs_numpy']:6.1f} {r['gather_ms']:8.3f} "
              f"{r['x_gather_floor']:7.1f} {r['compile_s']:9.2f} {opt(r['max_abs_diff_vs_loop'], '.1e'):>8} "
              f"{r['max_abs_diff_vs_numpy']:8.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(dev), "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
