"""Read rate of the input pipeline's source: examples/s per core through `load_source`.

    python -m data_prep.benchmark_read [--height 256 --width 192 --num 64 --data_dir DIR]

Builds a folder dataset of random photos + DensePose PNGs at the size (unless --data_dir holds one),
then times `src[i]` (PNG decode of 7 images + numpy conversion) in this one process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from data_prep import build, fixtures, m2e_dataset


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


def measure(data_dir: str, config: str, repeats: int = 2) -> float:
    src = m2e_dataset.load_source(data_dir, config, "train")
    src[0]  # warm up (opens files)
    t = time.perf_counter()
    for _ in range(repeats):
        for i in range(len(src)):
            src[i]
    return repeats * len(src) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data_prep.benchmark_read")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--num", type=int, default=64, help="examples to build and read")
    p.add_argument("--data_dir", default=None, help="an existing data_dir with folder_<H>x<W>")
    a = p.parse_args(argv)
    config = f"folder_{a.height}x{a.width}"
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = a.data_dir
        if data_dir is None:
            write_random_folder(Path(tmp) / "in", a.num, a.height, a.width)
            data_dir = str(Path(tmp) / "out")
            build.build("folder", Path(tmp) / "in", data_dir, a.height, a.width, num_unpaired=0)
        rate = measure(data_dir, config)
    print(f"load_source read rate at {a.height}x{a.width}: {rate:.1f} examples/s on one core")


if __name__ == "__main__":
    main()
