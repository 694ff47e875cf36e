"""Benchmark of ops.uv_warp: `python -m m2e_jax.benchmarks.uv_warp [--quick] [--json PATH]`.

For each batch x size: median ms per jitted call after warm-up, megapixels/s (target pixels), the
same warp in vectorised NumPy (`numpy_uv_warp`, np.bincount / fancy indexing, float64; our
"reference" at these sizes, checked against the JAX op), and the floor: a plain jitted gather of
the image by a random index map of the same size (`jnp.take_along_axis`). Inputs are synthetic-world
renders at each size (paired examples), so coverage and part statistics are realistic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from m2e_jax.ops.uv_warp import WEIGHT_EPS, uv_warp

DEFAULT_SIZES = "64x48,128x96,256x192,512x384"
QUICK_SIZES = "64x48,128x96"


def _corners_np(iuv: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices `[4, B, N]` into a `[B * 24 * T * T]` atlas and bilinear weights `[4, B, N]`."""
    b, h, w, _ = iuv.shape
    part = iuv[..., 0].astype(np.int64).reshape(b, -1)
    u = iuv[..., 1].reshape(b, -1) / 255.0
    v = iuv[..., 2].reshape(b, -1) / 255.0
    x, y = u * (t - 1), (1 - v) * (t - 1)
    x0, y0 = np.minimum(np.floor(x), t - 2), np.minimum(np.floor(y), t - 2)
    fx, fy = x - x0, y - y0
    base = ((np.arange(b)[:, None] * 24 + np.maximum(part - 1, 0)) * t + y0.astype(np.int64)) * t \
        + x0.astype(np.int64)
    idx = np.stack([base, base + 1, base + t, base + t + 1])
    wt = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy]) * (part > 0)
    return idx, wt


def numpy_uv_warp(src: np.ndarray, src_iuv: np.ndarray, tgt_iuv: np.ndarray, tile_size: int = 32,
                  fill_iters: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised NumPy version of `uv_warp` for uint8 IUV (same atlas convention and rules)."""
    b, _, _, c = src.shape
    t = tile_size
    size = b * 24 * t * t
    idx, wt = _corners_np(src_iuv, t)
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


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _inputs(batch: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from m2e_jax.synthetic import dataset

    exs = [dataset.make_example(0, "test", i, h, w, kind="paired") for i in range(batch)]
    img = np.stack([e["model_image"] for e in exs]).astype(np.float32) / 127.5 - 1
    return img, np.stack([e["model_iuv"] for e in exs]), np.stack([e["person_iuv"] for e in exs])


def bench_one(batch: int, h: int, w: int, repeats: int, tile_size: int, fill_iters: int) -> dict:
    img, s_iuv, t_iuv = _inputs(batch, h, w)
    warp = jax.jit(lambda a, b, c: uv_warp(a, b, c, tile_size=tile_size, fill_iters=fill_iters))
    args = [jax.device_put(x) for x in (img, s_iuv, t_iuv)]
    t0 = time.perf_counter()
    out, valid = jax.block_until_ready(warp(*args))
    compile_s = time.perf_counter() - t0
    jax_ms = _median_ms(lambda: warp(*args), repeats)

    ref, ref_valid = numpy_uv_warp(img, s_iuv, t_iuv, tile_size, fill_iters)
    diff = float(np.abs(np.asarray(out) - ref).max())
    if not np.array_equal(np.asarray(valid), ref_valid):
        diff = float("inf")
    np_ms = _median_ms(lambda: numpy_uv_warp(img, s_iuv, t_iuv, tile_size, fill_iters), max(1, repeats // 2))

    index = jax.device_put(np.random.default_rng(0).integers(0, h * w, (batch, h * w, 1)).astype(np.int32))
    flat = jax.device_put(img.reshape(batch, h * w, -1))
    gather = jax.jit(lambda x, i: jnp.take_along_axis(x, i, axis=1))
    jax.block_until_ready(gather(flat, index))
    gather_ms = _median_ms(lambda: gather(flat, index), repeats)
    return {"batch": batch, "size": f"{h}x{w}", "tile_size": tile_size, "fill_iters": fill_iters,
            "jax_ms": jax_ms, "compile_s": compile_s, "mpix_per_s": batch * h * w / jax_ms / 1e3,
            "numpy_ms": np_ms, "speedup_vs_numpy": np_ms / jax_ms, "gather_ms": gather_ms,
            "x_gather_floor": jax_ms / gather_ms, "max_abs_diff_vs_numpy": diff}


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
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per size (default 10, quick 3)")
    ap.add_argument("--tile-size", type=int, default=32)
    ap.add_argument("--fill-iters", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, few repeats")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    sizes = _parse_sizes(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    repeats = args.repeats or (3 if args.quick else 10)

    rows = [bench_one(args.batch, h, w, repeats, args.tile_size, args.fill_iters) for h, w in sizes]
    dev = jax.devices()[0]
    print(f"uv_warp on {dev.platform} ({dev.device_kind}), T={args.tile_size}, fill_iters={args.fill_iters}; "
          "numpy = vectorised NumPy float64; floor = jitted take_along_axis gather of the same size")
    head = (f"{'batch x size':>15} {'jax ms':>9} {'Mpix/s':>8} {'numpy ms':>9} {'x numpy':>8} "
            f"{'gather ms':>9} {'x floor':>8} {'compile s':>9} {'max|diff|':>9}")
    print(head)
    for r in rows:
        print(f"{str(r['batch']) + ' x ' + r['size']:>15} {r['jax_ms']:9.2f} {r['mpix_per_s']:8.2f} "
              f"{r['numpy_ms']:9.2f} {r['speedup_vs_numpy']:8.1f} {r['gather_ms']:9.3f} "
              f"{r['x_gather_floor']:8.1f} {r['compile_s']:9.2f} {r['max_abs_diff_vs_numpy']:9.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(dev), "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
