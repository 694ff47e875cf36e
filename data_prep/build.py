"""Build the M2E TFDS dataset without Apache Beam:

    python -m data_prep.build --dataset folder --manual_dir DIR --data_dir DIR --height 256 --width 192 \
        [--strict] [--num_unpaired N] [--seed S] [--workers W]

A `gs://BUCKET/tfds` data_dir is built on this host's disk and uploaded, resumably
(m2e_jax.records.builder.build_for_bucket).

`tfds build data_prep/m2e_dataset --manual_dir DIR --data_dir DIR --config folder_256x192` builds the
same records where the tfds command line's extra needs are installed (requirements-tfds-build.txt).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from m2e_jax import storage_clients, workdir
from m2e_jax.readers import images
from m2e_jax.records import builder as records_builder


def build(dataset: str, manual_dir: str | os.PathLike, data_dir: str | os.PathLike, height: int, width: int,
          *, strict: bool = False, num_unpaired: int | None = None, seed: int = 0,
          select: str | int = "largest", garment_kind: str | None = None, workers: int = 0,
          overwrite: bool = False, max_pixels: int = images.MAX_PIXELS,
          synthetic_counts: tuple[int, int] = (64, 16), test_fraction: float = 0.1) -> str:
    """Builds (or reuses) one config; returns its folder DATA_DIR/m2e_dataset/<dataset>_<H>x<W>/1.0.0.

    m2e_jax.records.builder.build with data_prep's builder (every layout). For "synthetic", an
    empty/missing `manual_dir` is first filled by m2e_jax.synthetic.dataset.write_dataset
    (`synthetic_counts` = (num_train, num_test) examples, this `seed` and size; the trainer's own
    synthetic records come from m2e_jax.synthetic.records). An existing build is reused unless
    `overwrite`.
    """
    from data_prep.m2e_dataset import m2e_dataset_dataset_builder as mb

    manual = Path(manual_dir).expanduser()
    if dataset == "synthetic" and not (manual.is_dir() and any(manual.iterdir())):
        from m2e_jax.synthetic import dataset as synthetic

        synthetic.write_dataset(manual, seed, height, width, *synthetic_counts, overwrite=manual.exists(),
                                **({"garment_kind": garment_kind} if garment_kind else {}))
    options = mb.BuildOptions(strict=strict, num_unpaired=num_unpaired, seed=seed, select=select,
                              garment_kind=garment_kind, workers=workers, test_fraction=test_fraction,
                              max_pixels=max_pixels)
    return records_builder.build(dataset, manual, data_dir, height, width, options, overwrite=overwrite,
                                 builder_cls=mb.Builder)


def _select(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=("synthetic", "deepfashion", "mvc", "folder"))
    p.add_argument("--manual_dir", required=True, help="the photos and DensePose outputs")
    p.add_argument("--data_dir", required=True, help="where TFDS writes m2e_dataset/<config>/<version>; "
                   "a gs:// folder is built on this disk ($M2E_STAGE_DIR) and uploaded")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--strict", action="store_true", help="stop at the first bad record")
    p.add_argument("--num_unpaired", type=int, default=None, help="unpaired draws per split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--select", type=_select, default="largest",
                   help="person to keep: largest | central | score (top detection) | a number "
                        "(INDS value or dump detection index)")
    p.add_argument("--garment_kind", choices=("upper", "lower"), default=None)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--max_pixels", type=int, default=images.MAX_PIXELS,
                   help="refuse (skip, or stop with --strict) images of more pixels, before decoding them")
    a = p.parse_args(argv)
    storage_clients.install()  # before any path is built (--data_dir may be gs://)
    logging.getLogger("absl").setLevel(logging.ERROR)  # TFDS's notes ("Using custom data configuration")
    try:
        path = build(a.dataset, a.manual_dir, a.data_dir, a.height, a.width, strict=a.strict,
                     num_unpaired=a.num_unpaired, seed=a.seed, select=a.select, garment_kind=a.garment_kind,
                     workers=a.workers, overwrite=a.overwrite, max_pixels=a.max_pixels)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    report = workdir.path(path) / "build_report.json"  # in the bucket for a gs:// --data_dir
    if report.is_file():
        for note in json.loads(report.read_text())["counts"].get("notes", []):
            print(f"note: {note}")
    print(f"built {path}; report: {os.path.join(path, 'build_report.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
