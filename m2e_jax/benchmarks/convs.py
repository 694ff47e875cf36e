"""Each conv of the PAN generator on its own: `python -m m2e_jax.benchmarks.convs [--cpu_convolutions K]`.

For every distinct conv of models/layers.ResnetGenerator (7x7 head, stride-2 downsamples, residual
3x3, both x2 upsamples, 7x7 tail) at --height x --width, batch --batch, the forward, the weight
gradient (dW) and the input gradient (dX), each jitted alone, in the formulation the layers use
(fast=True), with median ms, GFLOP/s and how many cores were busy (process CPU time / wall time).
Run it once per `--cpu_convolutions` choice to see what XLA's kernels do with each shape: the
per-op evidence behind config.cpu_convolutions and the layer formulations (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np

from m2e_jax.benchmarks import common
from m2e_jax.models import layers


def conv_cases(height: int, width: int, base: int) -> list[dict]:
    """The distinct convs of the generator (61 input channels, as PAN): name, input size, module."""
    w = lambda level: base * 2 ** min(level, 3)
    top = w(2)
    h4, w4, h2, w2 = height // 4, width // 4, height // 2, width // 2
    return [
        {"name": "head 7x7", "hw": (height, width), "cin": 61,
         "module": layers.ReflectConv(w(0), 7, use_bias=False)},
        {"name": "down 3x3 s2", "hw": (height, width), "cin": w(0),
         "module": nn.Conv(w(1), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False)},
        {"name": "down 3x3 s2", "hw": (h2, w2), "cin": w(1),
         "module": nn.Conv(top, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False)},
        {"name": "residual 3x3", "hw": (h4, w4), "cin": top,
         "module": layers.ReflectConv(top, 3, use_bias=False)},
        {"name": "up resize_conv", "hw": (h4, w4), "cin": top,
         "module": layers.UpsampleConv(w(1), "resize_conv")},
        {"name": "up resize_conv", "hw": (h2, w2), "cin": w(1),
         "module": layers.UpsampleConv(w(0), "resize_conv")},
        {"name": "up transpose", "hw": (h2, w2), "cin": w(1),
         "module": layers.UpsampleConv(w(0), "transpose")},
        {"name": "tail 7x7", "hw": (height, width), "cin": w(0), "module": layers.ReflectConv(3, 7)},
    ]


def _timed(fn, args, repeats: int) -> tuple[float, float]:
    """(median ms, cores busy) of `fn(*args)` after warm-up."""
    jax.block_until_ready(fn(*args))
    times = []
    cpu0 = os.times()
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    cpu1 = os.times()
    busy = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / max(sum(times), 1e-9)
    return float(np.median(times) * 1e3), busy


def bench_case(case: dict, batch: int, repeats: int) -> dict:
    h, w = case["hw"]
    x = jax.random.normal(jax.random.key(0), (batch, h, w, case["cin"]))
    module = case["module"]
    params = module.init(jax.random.key(1), x)
    y = module.apply(params, x)
    g = jax.random.normal(jax.random.key(2), y.shape)
    fwd = jax.jit(lambda p, x: module.apply(p, x))
    dw = jax.jit(lambda p, x, g: jax.vjp(lambda p: module.apply(p, x), p)[1](g)[0])
    dx = jax.jit(lambda p, x, g: jax.vjp(lambda x: module.apply(p, x), x)[1](g)[0])
    flops = common.flops_of(fwd.lower(params, x).compile())
    row = {"conv": case["name"], "input": f"{h}x{w}x{case['cin']}", "output": "x".join(map(str, y.shape[1:]))}
    for name, fn, args in (("fwd", fwd, (params, x)), ("dw", dw, (params, x, g)), ("dx", dx, (params, x, g))):
        ms, busy = _timed(fn, args, repeats)
        row[f"{name}_ms"], row[f"{name}_cores"] = ms, busy
    row["fwd_gflops_s"] = flops / row["fwd_ms"] / 1e6 if flops else None
    row["total_ms"] = row["fwd_ms"] + row["dw_ms"] + row["dx_ms"]
    return row


COLUMNS = [("conv", "conv", "s"), ("input", "input HxWxC", "s"), ("output", "output", "s"),
           ("fwd_ms", "fwd ms", ".2f"), ("fwd_cores", "cores", ".2f"), ("fwd_gflops_s", "fwd GFLOP/s", ".0f"),
           ("dw_ms", "dW ms", ".2f"), ("dw_cores", "cores", ".2f"), ("dx_ms", "dX ms", ".2f"),
           ("dx_cores", "cores", ".2f"), ("total_ms", "sum ms", ".1f")]


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m m2e_jax.benchmarks.convs",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=48)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--base_channels", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=None, help="timed calls (default 15, quick 2)")
    ap.add_argument("--quick", action="store_true", help="32x32, batch 1, base 8")
    ap.add_argument("--json", default=None)
    a = common.parse_args(ap, argv)
    if a.quick:
        a.height, a.width, a.batch, a.base_channels = 32, 32, 1, 8
    repeats = a.repeats or (2 if a.quick else 15)
    layers.check_divisible(a.height, a.width, 4, "--height/--width")
    info = common.machine_info()
    print(common.machine_line(info))
    rows = [bench_case(c, a.batch, repeats) for c in conv_cases(a.height, a.width, a.base_channels)]
    print(f"PAN generator convs, batch {a.batch}, float32, cpu_convolutions={a.cpu_convolutions}, "
          f"median of {repeats}; cores = process CPU time / wall time")
    print(common.format_table(rows, COLUMNS))
    common.write_json(a.json, "convs", info, rows, cpu_convolutions=a.cpu_convolutions)
    return rows


if __name__ == "__main__":
    main()
