"""Decoding over cores: `python -m m2e_jax.benchmarks.input_cores --data_dir D [--workers 1,2] [--json P]`.

How the input pipeline's work (reading a record and decoding its 7 PNGs, `src[i]` of
tfds_source.load_source) scales with workers on one host: the same records read by k threads of one
process (what input_pipeline.TrainData could do with a wider pool: PIL's PNG decoder and zlib release
the GIL) and by k worker processes each with its own source (what grain's multiprocessing workers
do), in examples/s. D holds TFDS records, e.g. data_prep.benchmark_read's random folder dataset
(`build_dataset`; m2e_jax never imports data_prep, so build them first, RESULTS.md shows how).
Compare with pod_plan's input demand per host (examples/s = projected images/s per chip x chips
per host).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import time
from collections.abc import Sequence

from m2e_jax.benchmarks import common


def _read_range(data_dir: str, name: str, start: int, stop: int) -> int:
    """Reads records start..stop-1 with a source of this process's own; returns how many."""
    from m2e_jax import tfds_source

    src = tfds_source.load_source(data_dir, name, "train")
    for i in range(start, stop):
        src[i % len(src)]
    return stop - start


def rate(data_dir: str, name: str, workers: int, kind: str, reads: int) -> float:
    """Examples/s of `reads` record reads split over `workers` threads or processes (the pool's
    start-up excluded: a worker's first read happens before the clock starts)."""
    if kind == "threads":
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    else:  # spawned: forking a process that runs JAX's threads can deadlock
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers,
                                                      mp_context=multiprocessing.get_context("spawn"))
    with pool:
        list(pool.map(_read_range, [data_dir] * workers, [name] * workers, range(workers),
                      range(1, workers + 1)))  # warm: imports, file opens
        per = reads // workers
        t0 = time.perf_counter()
        done = sum(pool.map(_read_range, [data_dir] * workers, [name] * workers,
                            [w * per for w in range(workers)], [(w + 1) * per for w in range(workers)]))
        return done / (time.perf_counter() - t0)


COLUMNS = [("size", "size", "s"), ("kind", "workers are", "s"), ("workers", "workers", "d"),
           ("examples_per_s", "examples/s", ".1f"), ("vs_one", "vs 1 worker", ".2f")]


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m m2e_jax.benchmarks.input_cores",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--data_dir", required=True, help="TFDS data_dir holding the records")
    ap.add_argument("--name", default="folder_256x192", help="the dataset's config name (folder_HxW)")
    ap.add_argument("--reads", type=int, default=64, help="records read per measurement")
    ap.add_argument("--workers", default=f"1,2,{os.cpu_count()}", help="worker counts (default 1,2,all)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    counts = sorted(set(common.parse_ints(a.workers, "--workers")))
    from m2e_jax import tfds_source

    try:
        tfds_source.load_source(a.data_dir, a.name, "train")
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"--data_dir {a.data_dir}: {e}") from None
    info = common.machine_info()
    print(common.machine_line(info))
    rows = []
    for kind in ("threads", "processes"):
        base = None
        for k in counts:
            r = rate(a.data_dir, a.name, k, kind, a.reads)
            base = base or r
            rows.append({"size": a.name.rsplit("_", 1)[-1], "kind": kind, "workers": k,
                         "examples_per_s": r, "vs_one": r / base})
    print(f"record read + PNG decode (src[i]), {a.reads} reads per row, {os.cpu_count()} cores")
    print(common.format_table(rows, COLUMNS))
    common.write_json(a.json, "input_cores", info, rows)
    return rows


if __name__ == "__main__":
    main()
