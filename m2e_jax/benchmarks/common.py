"""Shared pieces of the benchmark scripts: machine description, timing, FLOPs / MFU, tables, JSON.

Every benchmark times a jitted function as the median of `repeats` calls after warm-up, each call
ended by `jax.block_until_ready`, and names the machine it ran on (`machine_info`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from m2e_jax import xla_flags

# Dense peak TFLOP/s by device kind substring and compute dtype (vendor data sheets, no sparsity;
# float32 on NVIDIA means plain FP32, not TF32). Matched case-insensitively, first hit wins.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("h200", {"bfloat16": 989.0, "float32": 67.0}),
    ("h100", {"bfloat16": 989.0, "float32": 67.0}),
    ("a100", {"bfloat16": 312.0, "float32": 19.5}),
    ("l4", {"bfloat16": 121.0, "float32": 30.3}),
    ("a10", {"bfloat16": 125.0, "float32": 31.2}),
    ("v100", {"bfloat16": 125.0, "float32": 15.7}),  # fp16 tensor cores: V100 has no bf16
    ("tpu v6", {"bfloat16": 918.0, "float32": 918.0 / 4}),
    ("tpu v5p", {"bfloat16": 459.0, "float32": 459.0 / 4}),
    ("tpu v5", {"bfloat16": 197.0, "float32": 197.0 / 4}),  # v5e / v5 lite
    ("tpu v4", {"bfloat16": 275.0, "float32": 275.0 / 4}),
)


def parse_args(ap: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Adds --cpu_convolutions to a benchmark's parser, parses `argv` and applies the choice to
    XLA_FLAGS (before the first device query, so it takes effect); then the command line's storage
    settings (storage_clients.install: a --workdir or --data_dir on a bucket as in main)."""
    from m2e_jax import storage_clients

    xla_flags.add_argument(ap)
    a = ap.parse_args(argv)
    xla_flags.configure(a.cpu_convolutions)
    storage_clients.install()
    return a


def machine_info() -> dict[str, Any]:
    """Processor, core count, OS, jax version and the devices JAX sees."""
    devs = jax.devices()
    return {"processor": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
            "os": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
            "backend": jax.default_backend(), "devices": [str(d) for d in devs],
            "device_kind": devs[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def machine_line(info: dict[str, Any] | None = None) -> str:
    info = info or machine_info()
    return (f"machine: {info['processor']}, {info['cpu_cores']} cores, {info['os']}; jax {info['jax']} "
            f"on {info['backend']} ({info['device_kind']}), {len(info['devices'])} device(s): "
            f"{', '.join(info['devices'][:4])}{' ...' if len(info['devices']) > 4 else ''}")


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` in ms over `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def compile_timed(jitted, *args) -> tuple[Any, float]:
    """(compiled executable, seconds to lower + compile) for a `jax.jit`-wrapped function."""
    t0 = time.perf_counter()
    exe = jitted.lower(*args).compile()
    return exe, time.perf_counter() - t0


def flops_of(compiled) -> float | None:
    """FLOPs of one call from XLA's cost analysis (None when the backend gives none)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends raise NotImplementedError / XlaRuntimeError
        return None
    if isinstance(cost, Sequence) and not isinstance(cost, dict):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    flops = float(cost["flops"])
    return flops if flops > 0 else None


def peak_tflops(device, dtype: str, override: float | None = None) -> float | None:
    """Peak dense TFLOP/s for MFU: `override` if given, else PEAK_TFLOPS by device kind, else None."""
    if override:
        return float(override)
    kind = device.device_kind.lower()
    for key, by_dtype in PEAK_TFLOPS:
        if key in kind:
            return by_dtype.get(dtype)
    return None


def peak_memory_bytes(device) -> int | None:
    """Peak bytes in use on `device` since start, where the backend reports it (GPU/TPU; not CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:
        return None
    if not stats:
        return None
    return stats.get("peak_bytes_in_use", stats.get("bytes_in_use"))


def parse_sizes(text: str, flag: str = "--sizes") -> list[tuple[int, int]]:
    """"64x48,128x96" -> [(64, 48), (128, 96)]; a SystemExit naming the flag on bad input."""
    out = []
    for item in text.split(","):
        try:
            h, w = (int(x) for x in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"{flag}: expected HxW[,HxW...], got {item!r}") from None
        if h <= 0 or w <= 0:
            raise SystemExit(f"{flag}: sizes must be positive, got {item!r}")
        out.append((h, w))
    return out


def parse_ints(text: str, flag: str) -> list[int]:
    """"1,4,16" -> [1, 4, 16]; a SystemExit naming the flag on bad input."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise SystemExit(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise SystemExit(f"{flag}: values must be positive, got {text!r}")
    return values


DTYPES = ("float32", "bfloat16")


def parse_dtypes(text: str, flag: str = "--dtypes") -> list[str]:
    """"float32,bfloat16" -> ["float32", "bfloat16"]; a SystemExit naming the flag on bad input."""
    dtypes = text.split(",")
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise SystemExit(f"{flag}: unknown {bad}; expected some of {DTYPES}")
    return dtypes


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return format(value, spec)


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Fixed-width text table; columns are (row key, header, format spec) (None prints "-")."""
    cells = [[h for _, h, _ in columns]]
    cells += [[_fmt(r.get(k), spec) for k, _, spec in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """GitHub Markdown table; columns as in `format_table` (None prints "-")."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(k), spec) for k, _, spec in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str | None, name: str, info: dict, rows: Sequence[dict], **extra: Any) -> None:
    """Writes {"benchmark", "machine", "rows", ...} to `path`, a file or a gs:// object, whole or not
    at all (workdir.write_atomic); no-op when None."""
    if not path:
        return
    from m2e_jax import workdir as workdir_lib

    table = {"benchmark": name, "machine": info, "rows": list(rows), **extra}
    workdir_lib.write_atomic(path, json.dumps(table, indent=2, default=float).encode())
