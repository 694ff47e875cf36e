"""DeepFashion In-shop Clothes Retrieval as released, and the Pose-Transfer (PATN) crops of it.

1. The release: `Img/img/<GENDER>/<CATEGORY>/id_<ITEM>/<VV>_<n>_<view>.jpg` (Img/img.zip; or
   `img_highres/`) and `Eval/list_eval_partition.txt` (line 1 the count, line 2
   `image_name item_id evaluation_status`, then rows like
   `img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train`). One item id holds several
   colour variants: `VV` is the variant, so `01_1_front` and `02_1_front` of one id are different
   garments. Pairs are every two views of one (item, variant). `--manual_dir` may be the release root
   (with `Img/` and `Eval/`), `Img/`, or any folder holding `img/`; the partition is the first
   `list_eval_partition.txt` found in that folder, its `Eval/` or `Img/`, or the `Eval/` beside
   `Img/`. Its `train` rows go to train, `query` and `gallery` rows (the retrieval test sets) to test;
   photos it does not list are reported and skipped. Without it, (item, variant)s are split by a
   seeded hash (`test_fraction`).
2. PATN (Pose-Transfer's `fashion_data/`): `ROOT/{train,test}/<flat name>.jpg` and
   `ROOT/fasion-resize-pairs-{train,test}.csv` (`from,to`). Flat names are what its
   `tool/generate_fashion_datasets.py` makes of a release path: `img/MEN/Denim/id_00000080/01_1_front.jpg`
   -> `fashionMENDenimid0000008001_1front.jpg`. Items are (item, variant) here too, and the published
   split is used as it is (its train and test lists share item ids, in other variants).

DensePose for each photo: `STEM_IUV.png` beside it, under `densepose/` mirroring `img/` in the
folder that holds `img/`, or a dump there (`densepose.pkl` / `results.pkl` / `dump.pkl`; entries
matched by path). The garment kind follows the category (pants, shorts, skirts, leggings, denim ->
lower) unless forced.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from data_prep.readers import item_layout
from m2e_jax import densepose
from m2e_jax.records import densepose_files as dpf
from m2e_jax.records.catalog import Problem, SplitCatalog

LOWER_CATEGORIES = ("pants", "shorts", "skirts", "leggings", "denim")
IMAGE_DIRS = ("img", "img_highres")
PARTITION = "list_eval_partition.txt"
_VIEW = re.compile(r"^(\d+)_(\d+)_([A-Za-z]+)$")
_FLAT = re.compile(r"^fashion(MEN|WOMEN)(.+?)id(\d{8})(\d{2})_(\d+)([a-z]+)$")
_PAIR_CSVS = {"train": "fasion-resize-pairs-train.csv", "test": "fasion-resize-pairs-test.csv"}
_STATUS = {"train": "train", "query": "test", "gallery": "test"}


def category_kind(category: str, forced: str | None = None) -> int:
    if forced is not None:
        return densepose.GARMENT_KINDS.index(forced)
    lower = any(category.lower().startswith(c) for c in LOWER_CATEGORIES)
    return densepose.GARMENT_KINDS.index("lower" if lower else "upper")


def read_partition(path: Path) -> dict[str, str]:
    """list_eval_partition.txt -> {'img/.../02_1_front.jpg': 'train' | 'test'} (query, gallery -> test)."""
    split_of = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if len(parts) != 3 or not parts[0].startswith("img/"):
            continue  # the count and header lines
        status = parts[2].lower()
        if status not in _STATUS:
            raise ValueError(f"{path} line {n}: unknown evaluation status {parts[2]!r}")
        split_of[parts[0]] = _STATUS[status]
    return split_of


def find_image_tree(root: Path) -> Path | None:
    """The folder holding the release's `img/` (or `img_highres/`): root itself or root/Img."""
    for base in (root, root / "Img"):
        if any((base / d).is_dir() for d in IMAGE_DIRS):
            return base
    return None


def find_partition(root: Path, base: Path) -> Path | None:
    """The release's list_eval_partition.txt wherever it sits relative to the manual dir."""
    for d in (root, root / "Eval", root / "Img", base, base / "Eval", base.parent / "Eval"):
        if (d / PARTITION).is_file():
            return d / PARTITION
    return None


def read_deepfashion(root: str | Path, *, garment_kind: str | None = None, num_unpaired: int = 0,
                     seed: int = 0, test_fraction: float = 0.1,
                     max_pairs_per_item: int | None = None) -> dict[str, SplitCatalog]:
    """Lists a DeepFashion In-shop release or PATN folder: {split: SplitCatalog}. garment_kind None:
    by category."""
    root = Path(root)
    base = find_image_tree(root)
    if base is not None:
        return _read_tree(root, base, garment_kind, num_unpaired, seed, test_fraction, max_pairs_per_item)
    if any((root / f).is_file() for f in _PAIR_CSVS.values()):
        return _read_flat(root, garment_kind, num_unpaired, seed)
    raise ValueError(f"DeepFashion root {root}: found no img/ (In-shop release: point at its root or Img/) "
                     f"and no {sorted(_PAIR_CSVS.values())} (Pose-Transfer crops)")


def _read_tree(root: Path, base: Path, forced: str | None, num_unpaired: int, seed: int,
               test_fraction: float, max_pairs_per_item: int | None) -> dict[str, SplitCatalog]:
    def parse(p: Path):
        rel = p.relative_to(base).parts  # img, GENDER, CATEGORY, id_X, file
        m = _VIEW.match(p.stem)
        if len(rel) != 5 or rel[0] not in IMAGE_DIRS or not rel[3].startswith("id_") or m is None:
            return None
        name = "/".join(("img",) + rel[1:])[: -len(p.suffix)]  # as list_eval_partition.txt names it
        return name, f"{rel[3]}/{m.group(1)}", category_kind(rel[2], forced)

    image_dir = next(d for d in IMAGE_DIRS if (base / d).is_dir())  # img/ when both are there
    photos, problems = item_layout.scan(base, f"{image_dir}/**/*", parse)
    notes = []
    part = find_partition(root, base)
    if part is not None:
        split_of = read_partition(part)
        listed = []
        for name, p, item, _, kind in photos:
            split = split_of.get(name + p.suffix)
            if split is None:
                problems.append(Problem(str(p), f"not listed in {part}; skipped"))
            else:
                listed.append((name, p, item, split, kind))
        photos = listed
        notes.append(f"split from {part}: train -> train, query + gallery -> test")
    else:
        notes.append(f"no {PARTITION} at {root}, its Eval/ or Img/: (item, variant)s split by hash "
                     f"(test_fraction {test_fraction}, seed {seed})")
    out = item_layout.catalogs(photos, root=base, mirror=base / "densepose", num_unpaired=num_unpaired,
                               seed=seed, test_fraction=test_fraction, max_pairs_per_item=max_pairs_per_item,
                               dump_dirs=(base, root))
    first = out.setdefault("train", SplitCatalog())
    first.problems.extend(problems)
    first.notes.extend(notes)
    return out


def _read_flat(root: Path, forced: str | None, num_unpaired: int, seed: int) -> dict[str, SplitCatalog]:
    photos, problems, pairs = [], [], {}
    for split, csv_name in _PAIR_CSVS.items():
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for p in sorted(split_dir.iterdir()):
            if not (p.is_file() and dpf.is_photo(p)):
                continue
            m = _FLAT.match(p.stem)
            if m is None:
                problems.append(Problem(str(p), "not a DeepFashion flat name "
                                        "(fashion<GENDER><CATEGORY>id<8 digits><2 digits>_<k><view>)"))
                continue
            item = f"id_{m.group(3)}/{m.group(4)}"
            photos.append((p.stem, p, item, split, category_kind(m.group(2), forced)))
        csv_path = root / csv_name
        if csv_path.is_file():
            with open(csv_path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                reader.fieldnames = [n.strip() for n in reader.fieldnames or []]
                if not {"from", "to"} <= set(reader.fieldnames):
                    raise ValueError(f"{csv_path}: expected columns from,to; header is {reader.fieldnames}")
                pairs[split] = [(Path(r["from"].strip()).stem, Path(r["to"].strip()).stem,
                                 f"{csv_path} row {i + 2}") for i, r in enumerate(reader)]
    out = item_layout.catalogs(photos, root=root, mirror=root / "densepose", num_unpaired=num_unpaired,
                               seed=seed, test_fraction=0.0, explicit_pairs=pairs, check_disjoint=False)
    first = out.setdefault("train", SplitCatalog())
    first.problems.extend(problems)
    first.notes.append("split and pairs as published in " + ", ".join(
        n for n in _PAIR_CSVS.values() if (root / n).is_file()) + "; items are (item id, colour variant)")
    return out
