"""Inference benchmark: `python -m m2e_jax.benchmarks.inference [--quick] [--json PATH]`.

Times the jitted try-on forward pass `models.tryon.forward` that image grids, evaluation and the
infer command run, as the infer command compiles it (`tryon_pipeline.TryOn.forward`): uint8 batch ->
prepare_batch -> UV warp -> PAN -> TRN -> FTN. Latency of one try-on (batch 1) and throughput
(try-ons/s) for larger batches, per size and compute dtype, with compile time and XLA's FLOPs per
try-on. Random parameters (speed does not depend on training).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import jax

from m2e_jax import tryon_pipeline
from m2e_jax.benchmarks import common
from m2e_jax.benchmarks.train_step import bench_config, default_widths, paired_batch

DEFAULT_SIZES, DEFAULT_BATCHES = "64x48,128x96,256x192", "1,8"
QUICK_SIZES, QUICK_BATCHES = "64x48", "1,4"


def bench_one(config, repeats: int) -> dict:
    from m2e_jax.models import tryon

    h, w, b = config.model.height, config.model.width, config.batch_size
    net = tryon_pipeline.TryOn(config, tryon.init_params(config.model, jax.random.key(0)))
    batch = jax.device_put(paired_batch(h, w, b))
    exe, compile_s = common.compile_timed(net.forward, net.params, batch)
    ms = common.median_ms(lambda: exe(net.params, batch)["output"], repeats, warmup=1)
    flops = common.flops_of(exe)
    return {"size": f"{h}x{w}", "dtype": config.model.dtype, "batch": b, "compile_s": compile_s,
            "ms_per_batch": ms, "ms_per_tryon": ms / b, "tryons_per_s": b / (ms / 1e3),
            "gflops_per_tryon": flops / b / 1e9 if flops else None}


COLUMNS = [("size", "size", "s"), ("dtype", "dtype", "s"), ("batch", "batch", "d"),
           ("compile_s", "compile s", ".1f"), ("ms_per_batch", "ms/batch", ".1f"),
           ("ms_per_tryon", "ms/try-on", ".1f"), ("tryons_per_s", "try-ons/s", ".2f"),
           ("gflops_per_tryon", "GFLOP/try-on", ".2f")]


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m m2e_jax.benchmarks.inference",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=None, help=f"HxW list (default {DEFAULT_SIZES})")
    ap.add_argument("--batches", default=None, help=f"batch sizes (default {DEFAULT_BATCHES}; 1 = latency)")
    ap.add_argument("--dtypes", default="float32", help="compute dtypes: float32,bfloat16")
    ap.add_argument("--widths", choices=("paper", "demo"), default=None,
                    help="network preset (default demo on CPU, paper elsewhere)")
    ap.add_argument("--base_channels", type=int, default=None)
    ap.add_argument("--blocks", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="timed calls (default 10, quick 3)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_SIZES}, batches {QUICK_BATCHES}")
    ap.add_argument("--json", default=None)
    a = common.parse_args(ap, argv)
    sizes = common.parse_sizes(a.sizes or (QUICK_SIZES if a.quick else DEFAULT_SIZES))
    batches = common.parse_ints(a.batches or (QUICK_BATCHES if a.quick else DEFAULT_BATCHES), "--batches")
    dtypes = common.parse_dtypes(a.dtypes)
    repeats = a.repeats or (3 if a.quick else 10)
    widths = a.widths or default_widths()
    info = common.machine_info()
    print(common.machine_line(info))
    t0 = time.perf_counter()
    rows = [bench_one(bench_config(h, w, d, b, widths, a.base_channels, a.blocks), repeats)
            for h, w in sizes for d in dtypes for b in batches]
    print(f"inference (UV warp + PAN + TRN + FTN), {widths} widths, median of {repeats} calls, "
          f"{time.perf_counter() - t0:.0f} s total")
    print(common.format_table(rows, COLUMNS))
    common.write_json(a.json, "inference", info, rows, widths=widths)
    return rows


if __name__ == "__main__":
    main()
