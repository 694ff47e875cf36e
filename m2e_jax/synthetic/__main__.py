"""Writes a synthetic try-on dataset folder.

  python -m m2e_jax.synthetic --out DIR --seed 0 --height 128 --width 96 --num_train 1000 \\
      --num_test 100 [--paired_fraction 0.5] [--garment_kind upper] [--preset easy|medium|hard] \
      [--contact_sheet PATH] [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
import time

from m2e_jax.synthetic import contact_sheet, dataset, effects


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m m2e_jax.synthetic", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--num_train", type=int, default=1000)
    p.add_argument("--num_test", type=int, default=100)
    p.add_argument("--paired_fraction", type=float, default=0.5)
    p.add_argument("--garment_kind", default="upper", choices=("upper", "lower"))
    p.add_argument("--preset", default="easy", choices=tuple(effects.PRESETS),
                   help="the world's difficulties (m2e_jax/synthetic/effects.py); easy = exact IUV")
    p.add_argument("--contact_sheet", default=None, help="also write a PNG grid of test examples here")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        meta = dataset.write_dataset(args.out, args.seed, args.height, args.width, args.num_train,
                                     args.num_test, args.paired_fraction, args.garment_kind, args.overwrite,
                                     args.preset)
        if args.contact_sheet:
            examples = dataset.make_examples(args.seed, "test", 6, args.height, args.width,
                                             args.paired_fraction, args.garment_kind, args.preset)
            contact_sheet.contact_sheet(examples, args.contact_sheet)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{s}: {c['examples']} examples, {c['images']} images"
                       for s, c in meta["counts"].items())
    print(f"wrote {args.out} ({counts}) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
