"""Accelerator table: `python -m m2e_jax.benchmarks.accelerator [--quick] [--torch_python PY] --out DIR`.

One command for the first GPU or TPU this project gets: runs the benchmarks of RESULTS.md's
accelerator table through their own `main`s and writes DIR/accelerator.json (every row) and
DIR/accelerator.md (the tables, ready for RESULTS.md):
  1. train_step: the joint step at paper widths, 256x192, float32 and bfloat16, per-device batch
     --batches (MFU against common.PEAK_TFLOPS, peak memory from the device);
  2. inference: the try-on forward at paper widths, batch 1 (latency) and --infer_batches;
  3. scaling: the same step data-parallel over 1, 2, 4 ... of the accelerators (skipped with < 2);
  4. the PyTorch twin (benchmarks/torch_twin.py, PAN + PatchGAN step) against our same step, with
     bf16 autocast on CUDA, when --torch_python names a python with torch (gan_step runs it).
On one H100 the default grid is sized to finish in about 10 minutes (each paper-scale compile takes
1-2 minutes). `--quick` runs the same path at demo widths and 32x32 on whatever is there (the test
suite's smoke test on CPU; no timing means anything there).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence

import jax

from m2e_jax.benchmarks import common, gan_step, inference, scaling, train_step

TINY = ["--widths", "demo", "--base_channels", "8", "--blocks", "1", "--d_channels", "8"]


def _rows(fn, argv: list[str], json_path: str) -> list[dict]:
    """Runs a benchmark's main with --json; returns its rows (as written, so floats are plain)."""
    fn([*argv, "--json", json_path])
    with open(json_path) as f:
        return json.load(f)["rows"]


def plan(a: argparse.Namespace, devices: int) -> dict[str, list[str] | None]:
    """The argv of each benchmark (None: skipped) for these flags and this many devices."""
    if a.quick:  # programs tests/test_benchmarks.py also compiles (the compilation cache has them)
        size, batches, infer, dtypes, infer_dtypes = "32x32", "2", "2", "float32", "float32"
        widths, twin = [*TINY, "--repeats", "1"], ["--quick"]
    else:
        size, batches, infer, dtypes, infer_dtypes = "256x192", a.batches, a.infer_batches, a.dtypes, a.dtypes
        widths = ["--widths", "paper"]
        h, w = size.split("x")
        twin = ["--height", h, "--width", w, "--batch", batches.split(",")[0], "--dtype", "bfloat16",
                "--variants", "resize_conv,transpose", "--rounds", "2"]
    # inference has no discriminator: no --d_channels
    infer_widths = [x for i, x in enumerate(widths) if "--d_channels" not in widths[max(0, i - 1):i + 1]]
    counts = [n for n in (1, 2, 4, 8, 16) if n <= devices]
    return {
        "train_step": ["--sizes", size, "--batches", batches, "--dtypes", dtypes, *widths],
        "inference": ["--sizes", size, "--batches", infer, "--dtypes", infer_dtypes, *infer_widths],
        "scaling": (["--real", "--devices", ",".join(map(str, counts)), "--size", size,
                     "--per_device_batch", batches.split(",")[0], "--sizes", "", *widths]
                    if devices > 1 else None),
        "torch_twin": ([*twin, "--torch_python", a.torch_python] if a.torch_python else None),
    }


RUNNERS = {"train_step": (train_step.main, train_step.COLUMNS),
           "inference": (inference.main, inference.COLUMNS),
           "scaling": (scaling.main, scaling.COLUMNS_DEV),
           "torch_twin": (gan_step.main, gan_step.COLUMNS)}


def markdown(info: dict, sections: dict[str, list[dict] | str]) -> str:
    """The Markdown report: the machine line, then one table (or the reason it was skipped) per part."""
    out = [f"Accelerator table: {common.machine_line(info)}", ""]
    for name, rows in sections.items():
        out.append(f"### {name}")
        out.append(rows if isinstance(rows, str) else common.markdown_table(rows, RUNNERS[name][1]))
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m m2e_jax.benchmarks.accelerator",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for accelerator.json and accelerator.md")
    ap.add_argument("--batches", default="16,32", help="train step batches per device (default 16,32)")
    ap.add_argument("--infer_batches", default="1,16", help="inference batches (default 1,16)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--torch_python", default=None,
                    help="a python with torch (CUDA build on a GPU): also run the PyTorch twin")
    ap.add_argument("--quick", action="store_true", help="demo widths at 32x32 (smoke test)")
    a = common.parse_args(ap, argv)
    common.parse_ints(a.batches, "--batches")
    common.parse_ints(a.infer_batches, "--infer_batches")
    common.parse_dtypes(a.dtypes)
    if a.torch_python and not os.path.isfile(a.torch_python):
        raise SystemExit(f"--torch_python {a.torch_python}: no such file")
    os.makedirs(a.out, exist_ok=True)
    info = common.machine_info()
    t0 = time.perf_counter()
    sections: dict[str, list[dict] | str] = {}
    # simulated CPU devices share the same cores: scaling over them is benchmarks.scaling's own job
    accelerators = jax.device_count() if jax.default_backend() != "cpu" else 0
    for name, argv_ in plan(a, accelerators).items():
        if argv_ is None:
            why = "fewer than 2 accelerators" if name == "scaling" else "no --torch_python"
            sections[name] = f"skipped: {why}"
            continue
        fn, _ = RUNNERS[name]
        sections[name] = _rows(fn, argv_, os.path.join(a.out, f"{name}.json"))
    total_s = time.perf_counter() - t0
    report = {"benchmark": "accelerator", "machine": info, "quick": a.quick, "total_s": total_s,
              "sections": sections}
    with open(os.path.join(a.out, "accelerator.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
    with open(os.path.join(a.out, "accelerator.md"), "w") as f:
        f.write(markdown(info, sections) + f"\nTotal {total_s:.0f} s.\n")
    print(f"accelerator table: {total_s:.0f} s; wrote {a.out}/accelerator.json and accelerator.md")
    return report


if __name__ == "__main__":
    main()
