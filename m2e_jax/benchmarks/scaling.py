"""Scaling benchmark: `python -m m2e_jax.benchmarks.scaling [--quick] [--json PATH]`.

(1) Devices: the joint train step (train_step benchmark) data-parallel over 1, 2, 4 ... simulated
host devices, each count in its own subprocess started with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (the flag must be set before JAX loads), at
a fixed per-device batch (weak scaling: global batch = N x per-device batch). On a CPU the
"devices" share the same cores, so this measures the data-parallel overhead (sharding,
collectives, per-device dispatch), not a speed-up; on a multi-GPU host pass --real to use the
real devices instead.
(2) Image size: the same step at growing sizes on one device, and time per megapixel relative to
the smallest size (1.0 = exactly linear in pixels).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import jax

from m2e_jax.benchmarks import common
from m2e_jax.benchmarks.train_step import add_width_flags, bench_config, default_widths

DEFAULT_DEVICES, QUICK_DEVICES = "1,2,4", "1,2"
DEFAULT_SIZES, QUICK_SIZES = "64x48,128x96,256x192", "32x32,64x64"


def _config(a: argparse.Namespace, h: int, w: int, batch: int):
    return bench_config(h, w, "float32", batch, a.widths or default_widths(), a.base_channels, a.blocks,
                        a.d_channels, not a.no_perceptual)


def _worker(a: argparse.Namespace) -> None:
    """Subprocess body: one train step row over every visible device, printed as JSON."""
    from m2e_jax.benchmarks.train_step import bench_one

    n = jax.device_count()
    h, w = common.parse_sizes(a.size, "--size")[0]
    row = bench_one(_config(a, h, w, a.per_device_batch * n), 4, a.repeats, None, num_devices=n)
    print("ROW " + json.dumps(row, default=float))


def _forwarded(a: argparse.Namespace) -> list[str]:
    args = ["--size", a.size, "--per_device_batch", str(a.per_device_batch), "--repeats", str(a.repeats),
            "--cpu_convolutions", a.cpu_convolutions]
    for flag in ("widths", "base_channels", "blocks", "d_channels"):
        if getattr(a, flag) is not None:
            args += [f"--{flag}", str(getattr(a, flag))]
    return args + (["--no_perceptual"] if a.no_perceptual else [])


def run_devices(a: argparse.Namespace, count: int) -> dict:
    env = dict(os.environ)
    if not a.real:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])
        env.setdefault("JAX_PLATFORMS", "cpu")
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(count))
    cmd = [sys.executable, "-m", "m2e_jax.benchmarks.scaling", "--_worker", *_forwarded(a)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    rows = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    if proc.returncode or not rows:
        raise RuntimeError(f"scaling worker for {count} devices failed:\n{proc.stderr[-3000:]}")
    return json.loads(rows[-1])


COLUMNS_DEV = [("devices", "devices", "d"), ("batch", "global batch", "d"), ("compile_s", "compile s", ".1f"),
               ("ms_per_step", "ms/step", ".1f"), ("images_per_s", "img/s", ".2f"),
               ("vs_one", "ms per device-batch vs first", ".2f")]
COLUMNS_SIZE = [("size", "size", "s"), ("batch", "batch", "d"), ("compile_s", "compile s", ".1f"),
                ("ms_per_step", "ms/step", ".1f"), ("ms_per_mpix", "ms/Mpix", ".0f"),
                ("vs_linear", "vs linear", ".2f")]


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m m2e_jax.benchmarks.scaling",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default=None, help=f"device counts (default {DEFAULT_DEVICES})")
    ap.add_argument("--size", default="64x48", help="image size of the device sweep")
    ap.add_argument("--per_device_batch", type=int, default=2)
    ap.add_argument("--sizes", default=None, help=f"size sweep (default {DEFAULT_SIZES}; '' skips it)")
    ap.add_argument("--batch", type=int, default=2, help="batch of the size sweep")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps (default 5, quick 2)")
    ap.add_argument("--real", action="store_true", help="sweep real accelerators, not simulated CPUs")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    add_width_flags(ap)
    ap.set_defaults(widths=None)
    a = common.parse_args(ap, argv)
    a.repeats = a.repeats or (2 if a.quick else 5)
    if a._worker:
        _worker(a)
        return {}
    counts = common.parse_ints(a.devices or (QUICK_DEVICES if a.quick else DEFAULT_DEVICES), "--devices")
    sizes_text = a.sizes if a.sizes is not None else QUICK_SIZES if a.quick else DEFAULT_SIZES
    info = common.machine_info()
    print(common.machine_line(info))
    t0 = time.perf_counter()
    dev_rows = [run_devices(a, n) for n in counts]
    # Weak scaling on shared cores: N devices do N times the work, so compare time per device-batch.
    base = dev_rows[0]["ms_per_step"] / dev_rows[0]["devices"]
    for r in dev_rows:
        r["vs_one"] = r["ms_per_step"] / r["devices"] / base
    from m2e_jax.benchmarks.train_step import bench_one

    size_rows = []
    for h, w in (common.parse_sizes(sizes_text) if sizes_text else []):
        r = bench_one(_config(a, h, w, a.batch), 4, a.repeats, None)
        r["ms_per_mpix"] = r["ms_per_step"] / (a.batch * h * w / 1e6)
        size_rows.append(r)
    for r in size_rows:
        r["vs_linear"] = r["ms_per_mpix"] / size_rows[0]["ms_per_mpix"]
    print(f"scaling, joint train step, {a.widths or default_widths()} widths, "
          f"{time.perf_counter() - t0:.0f} s total")
    print(f"devices ({'real' if a.real else 'simulated host devices sharing the CPU'}), {a.size}, "
          f"{a.per_device_batch} per device (1.00 = no overhead beyond the extra work on the same cores)")
    print(common.format_table(dev_rows, COLUMNS_DEV))
    if size_rows:
        print(f"image size, batch {a.batch}, one device (vs linear: ms per megapixel / smallest size's)")
        print(common.format_table(size_rows, COLUMNS_SIZE))
    common.write_json(a.json, "scaling", info, dev_rows + size_rows)
    return {"devices": dev_rows, "sizes": size_rows}


if __name__ == "__main__":
    main()
