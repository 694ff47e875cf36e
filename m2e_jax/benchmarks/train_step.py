"""Full hybrid train step benchmark: `python -m m2e_jax.benchmarks.train_step [--quick|--full] [--json P]`.

Times `train.train_step` of the joint stage (PAN + TRN + FTN generators, both PatchGAN
discriminator updates, L1 + perceptual + adversarial + TRN losses, the UV warp, two Adam updates)
on a paired batch, compiled by `parallel.DataParallel` on one device exactly as training does
(donated state). Per (size, dtype, batch): compile seconds, median ms/step, images/s, XLA's FLOPs
per step, achieved TFLOP/s, MFU against `--peak_tflops` (or the known table for GPUs/TPUs), peak
device memory where the backend reports it, and (JSON "g_total") the generator loss of every step
run, from the same initial parameters for each dtype: the float32 / bfloat16 loss curves.

Default grid on CPU is kept to a few minutes; `--full` runs 64x48, 128x96, 256x192 x float32,
bfloat16 x batch 1, 2, 4, 8, 16, 32, 64 (for accelerators). Network widths default to the paper
scale of configs/default.py on accelerators and to the demo scale of configs/synthetic.py on CPU
(`--widths`), where one paper-scale step at 64x48 batch 4 takes ~8 s and ~140 s to compile;
`--base_channels` etc. override either (smoke tests).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np

from m2e_jax import losses
from m2e_jax.benchmarks import common

DEFAULT_SIZES, DEFAULT_BATCHES = "64x48,128x96", "1,4"
QUICK_SIZES, QUICK_BATCHES = "64x48", "2"
FULL_SIZES, FULL_BATCHES = "64x48,128x96,256x192", "1,2,4,8,16,32,64"
DTYPES = common.DTYPES


def default_widths() -> str:
    """"demo" widths on CPU (the paper's take minutes per step there), "paper" on accelerators."""
    return "demo" if jax.default_backend() == "cpu" else "paper"


def bench_config(height: int, width: int, dtype: str, batch: int, widths: str = "paper",
                 base_channels: int | None = None, blocks: int | None = None,
                 d_channels: int | None = None, perceptual: bool = True):
    """The `widths` preset config (see _configs.preset_config) at this size / dtype / batch.

    base_channels, blocks (every generator), d_channels override the preset when not None;
    perceptual=False drops the VGG16 perceptual loss.
    """
    from m2e_jax.benchmarks._configs import preset_config

    c = preset_config(widths)
    c.model.update(height=height, width=width, dtype=dtype)
    c.batch_size = batch
    if base_channels is not None:
        c.model.base_channels = base_channels
    if blocks is not None:
        c.model.update(pan_blocks=blocks, trn_blocks=blocks, ftn_blocks=blocks)
    if d_channels is not None:
        c.model.d_channels = d_channels
    if not perceptual:
        c.loss.perceptual_weight = 0.0
    c.model.warp_tile = min(c.model.warp_tile, max(8, height // 4))
    return c


@functools.lru_cache(maxsize=8)
def _examples(height: int, width: int, n: int) -> dict[str, np.ndarray]:
    from m2e_jax.input_pipeline import stack_examples
    from m2e_jax.synthetic.dataset import make_example

    return stack_examples([make_example(0, "train", i, height, width, kind="paired") for i in range(n)])


def paired_batch(height: int, width: int, batch: int) -> dict[str, np.ndarray]:
    """A paired data_schema batch of synthetic examples (at most 4 rendered, tiled to `batch`)."""
    ex = _examples(height, width, min(batch, 4))
    reps = -(-batch // len(ex["paired"]))
    return {k: np.concatenate([v] * reps)[:batch] for k, v in ex.items()}


def bench_one(config, stage: int, repeats: int, peak: float | None, vgg=None, num_devices: int = 1) -> dict:
    """Compiles and times one train step configuration; returns a table row.

    Runs data-parallel over the first `num_devices` devices (config.batch_size is the global batch).
    """
    from m2e_jax import parallel, train

    if num_devices > jax.device_count():
        raise ValueError(f"num_devices={num_devices} but JAX sees {jax.device_count()} devices")
    dev = jax.devices()[0]
    par = parallel.DataParallel(config.parallel, devices=jax.devices()[:num_devices])
    h, w, b = config.model.height, config.model.width, config.batch_size
    step_fn = par.compile(functools.partial(train.train_step, config=config, stage=stage, vgg=vgg))
    state = par.put_state(train.init_state(config))
    batch = par.put_batch(paired_batch(h, w, b))
    exe, compile_s = common.compile_timed(step_fn, state, batch)
    flops = common.flops_of(exe)
    holder = {"state": state}
    losses = []  # g_total of every step, fetched at the end: the loss curve on this fixed batch

    def call():
        holder["state"], metrics = exe(holder["state"], batch)
        losses.append(metrics["g_total"])
        return metrics

    ms = common.median_ms(call, repeats, warmup=1)
    curve = [float(np.asarray(par.get_state(x))) for x in losses]
    tflops = flops / (ms / 1e3) / 1e12 if flops else None
    peak_t = common.peak_tflops(dev, config.model.dtype, peak)
    return {"size": f"{h}x{w}", "dtype": config.model.dtype, "batch": b, "stage": stage,
            "devices": num_devices,
            "compile_s": compile_s, "ms_per_step": ms, "images_per_s": b / (ms / 1e3),
            "gflops_per_step": flops / 1e9 if flops else None, "tflops_per_s": tflops,
            "peak_tflops": peak_t, "mfu": tflops / peak_t if tflops and peak_t else None,
            "peak_mem_mib": (m / 2**20 if (m := common.peak_memory_bytes(dev)) else None),
            "g_total": curve}


COLUMNS = [("size", "size", "s"), ("dtype", "dtype", "s"), ("batch", "batch", "d"),
           ("compile_s", "compile s", ".1f"), ("ms_per_step", "ms/step", ".1f"),
           ("images_per_s", "img/s", ".2f"), ("gflops_per_step", "GFLOP/step", ".1f"),
           ("tflops_per_s", "TFLOP/s", ".3f"), ("mfu", "MFU", ".1%"),
           ("peak_mem_mib", "peak MiB", ".0f")]


def add_width_flags(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--widths", choices=("paper", "demo"), default=None,
                    help="network preset: paper (configs/default.py) or demo (configs/synthetic.py); "
                         "default demo on CPU, paper elsewhere")
    ap.add_argument("--base_channels", type=int, default=None, help="generator width override")
    ap.add_argument("--blocks", type=int, default=None, help="residual blocks of every generator")
    ap.add_argument("--d_channels", type=int, default=None, help="discriminator width (default 64)")
    ap.add_argument("--no_perceptual", action="store_true", help="drop the VGG16 perceptual loss")


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m m2e_jax.benchmarks.train_step",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=None, help=f"HxW list (default {DEFAULT_SIZES})")
    ap.add_argument("--batches", default=None, help=f"batch sizes (default {DEFAULT_BATCHES})")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="compute dtypes: float32,bfloat16")
    ap.add_argument("--stage", type=int, default=4, choices=(1, 2, 3, 4), help="4 = all networks")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps (default 5, quick 2)")
    ap.add_argument("--peak_tflops", type=float, default=None, help="device peak for MFU")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_SIZES}, batch {QUICK_BATCHES}")
    ap.add_argument("--full", action="store_true", help=f"{FULL_SIZES} x batch {FULL_BATCHES}")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    add_width_flags(ap)
    a = common.parse_args(ap, argv)
    preset = "quick" if a.quick else "full" if a.full else "default"
    sizes = common.parse_sizes(a.sizes or {"quick": QUICK_SIZES, "full": FULL_SIZES}.get(
        preset, DEFAULT_SIZES))
    batches = common.parse_ints(a.batches or {"quick": QUICK_BATCHES, "full": FULL_BATCHES}.get(
        preset, DEFAULT_BATCHES), "--batches")
    dtypes = common.parse_dtypes(a.dtypes)
    repeats = a.repeats or (2 if a.quick else 5)

    widths = a.widths or default_widths()
    info = common.machine_info()
    print(common.machine_line(info))
    t0 = time.perf_counter()
    rows, vgg = [], None
    for h, w in sizes:
        for dtype in dtypes:
            for b in batches:
                cfg = bench_config(h, w, dtype, b, widths, a.base_channels, a.blocks, a.d_channels,
                                   not a.no_perceptual)
                vgg = vgg or losses.load_perceptual_vgg(cfg.loss)
                try:
                    rows.append(bench_one(cfg, a.stage, repeats, a.peak_tflops, vgg))
                except Exception as e:  # noqa: BLE001 -- e.g. out of device memory at a big batch
                    if "RESOURCE_EXHAUSTED" not in str(e) and "Out of memory" not in str(e):
                        raise
                    rows.append({"size": f"{h}x{w}", "dtype": dtype, "batch": b, "error": "OOM"})
                print(f"  {rows[-1]['size']} {dtype} batch {b}: "
                      f"{rows[-1].get('ms_per_step', float('nan')):.1f} ms/step", file=sys.stderr)
    print(f"train_step, {widths} widths, stage {a.stage} (all networks + D steps + losses), "
          f"median of {repeats} steps after warm-up, {time.perf_counter() - t0:.0f} s total")
    print(common.format_table(rows, COLUMNS))
    common.write_json(a.json, "train_step", info, rows, stage=a.stage, widths=widths)
    return rows


if __name__ == "__main__":
    main()
