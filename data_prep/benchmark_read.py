"""Input pipeline benchmark: `python -m data_prep.benchmark_read [--quick] [--json PATH]`.

Builds a folder dataset of random photos + DensePose PNGs into TFDS array_record files
(write_random_folder, data_prep.build), then measures in this one process, i.e. per
core: (1) `load_source` reads (`src[i]`: record read + PNG decode of 7 images), (2) training
batches (`input_pipeline.TrainData.batch`: reads + stacking, paired and unpaired steps), (3) the
same batches through `TrainData.iterate(prefetch=...)` with a device put. Compare examples/s with
the train step's images/s (train_step benchmark) to see whether input can keep up.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from data_prep import build, fixtures
from m2e_jax import input_pipeline, tfds_source
from m2e_jax.benchmarks import common
from m2e_jax.benchmarks._configs import default_config

DEFAULT_SIZES, QUICK_SIZES = "128x96,256x192", "64x48"


def write_random_folder(root: Path, num: int, height: int, width: int, seed: int = 0) -> None:
    """`num` pairs of random photos with blocky DensePose maps, in the generic folder layout."""
    rng = np.random.default_rng(seed)
    d = root / "train" / "images"
    d.mkdir(parents=True)
    rows = []
    for i in range(2 * num):
        # smooth-ish photos: random pixels would not compress like real ones
        small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        fixtures.write_rgb(d / f"p{i}.png", np.kron(small, np.ones((8, 8, 1), np.uint8)))
        fixtures.write_iuv_png(d / f"p{i}_IUV.png", fixtures.person_iuv(
            height, width, (height // 10, width // 4, height - height // 10, width - width // 4), seed=i))
        if i % 2:
            rows.append(f"p{i - 1},p{i}\n")
    (root / "train" / "pairs.csv").write_text("source,target\n" + "".join(rows))


def build_dataset(root: Path, num: int, height: int, width: int) -> str:
    """Random folder dataset of `num` pairs built to TFDS records under root; returns the data_dir."""
    write_random_folder(root / "in", num, height, width)
    build.build("folder", root / "in", root / "out", height, width, num_unpaired=0)
    return str(root / "out")


def _rate(n: int, fn) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def bench_one(data_dir: str, height: int, width: int, batch: int, steps: int, prefetch: int) -> dict:
    src = tfds_source.load_source(data_dir, f"folder_{height}x{width}", "train")
    src[0]  # opens the files
    n = len(src)
    read = _rate(n, lambda: [src[i] for i in range(n)])
    config = default_config()
    config.batch_size = batch
    # Alternate paired / unpaired steps from step 0 so both kinds of batch are timed.
    config.schedule.update(pan_steps=0, trn_steps=0, ftn_steps=0, joint_steps=10 ** 6)
    data = input_pipeline.TrainData(src, config)
    data.batch(0)
    batches = _rate(steps * batch, lambda: [data.batch(s) for s in range(1, 1 + steps)])

    def iterate():
        for _, b in data.iterate(1, 1 + steps, put=jax.device_put, prefetch=prefetch):
            jax.block_until_ready(b)
    iterated = _rate(steps * batch, iterate)
    return {"size": f"{height}x{width}", "examples": n, "batch": batch, "read_per_s": read,
            "batch_examples_per_s": batches, "iterate_examples_per_s": iterated, "prefetch": prefetch}


COLUMNS = [("size", "size", "s"), ("examples", "records", "d"), ("batch", "batch", "d"),
           ("read_per_s", "src[i]/s", ".1f"), ("batch_examples_per_s", "batch ex/s", ".1f"),
           ("iterate_examples_per_s", "iterate+put ex/s", ".1f")]


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m data_prep.benchmark_read",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=None, help=f"HxW list (default {DEFAULT_SIZES})")
    ap.add_argument("--num", type=int, default=None, help="pairs to build (default 32, quick 8)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="batches timed (default 8, quick 2)")
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    sizes = common.parse_sizes(a.sizes or (QUICK_SIZES if a.quick else DEFAULT_SIZES))
    num = a.num or (8 if a.quick else 32)
    steps = a.steps or (2 if a.quick else 8)
    if num < 2:
        raise SystemExit("--num: need at least 2 pairs (unpaired batches combine two pairs)")
    info = common.machine_info()
    print(common.machine_line(info))
    rows = []
    for h, w in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(bench_one(build_dataset(Path(tmp), num, h, w), h, w, a.batch, steps, a.prefetch))
    print("input pipeline from TFDS array_record (one process = one core; PNG decode dominates)")
    print(common.format_table(rows, COLUMNS))
    common.write_json(a.json, "input_pipeline", info, rows)
    return rows


if __name__ == "__main__":
    main()
