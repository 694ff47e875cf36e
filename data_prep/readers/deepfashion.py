"""DeepFashion In-shop Clothes Retrieval, in either of its common forms:

1. The release tree: `ROOT/img/<GENDER>/<CATEGORY>/id_<ITEMID>/<NN>_<k>_<view>.jpg` with optional
   `ROOT/list_eval_partition.txt` (rows `image_name item_id evaluation_status`; train -> train,
   query/gallery -> test). Without it, items are split by hash. Pairs: every two photos of an item.
2. Pose-transfer crops: `ROOT/{train,test}/<flat name>.jpg` with `ROOT/fasion-resize-pairs-{train,test}.csv`
   (`from,to`), flat names like `fashionMENDenimid0000008001_1front.jpg`.

DensePose for each photo: `STEM_IUV.png` beside it, or under `ROOT/densepose/` mirroring `img/`, or
a dump (`ROOT/densepose.pkl` / `results.pkl`). The garment kind follows the category (trousers,
shorts, skirts, leggings, denim -> lower) unless forced.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from data_prep.catalog import Problem, SplitCatalog
from data_prep.readers import densepose_files as dpf
from data_prep.readers import item_layout
from m2e_jax import densepose

LOWER_CATEGORIES = ("pants", "shorts", "skirts", "leggings", "denim")
_FLAT = re.compile(r"^fashion(MEN|WOMEN)(.+?)id(\d{8})(\d{2})_(\d+)([a-z]+)$")
_PAIR_CSVS = {"train": "fasion-resize-pairs-train.csv", "test": "fasion-resize-pairs-test.csv"}


def category_kind(category: str, forced: str | None = None) -> int:
    if forced is not None:
        return densepose.GARMENT_KINDS.index(forced)
    lower = any(category.lower().startswith(c) for c in LOWER_CATEGORIES)
    return densepose.GARMENT_KINDS.index("lower" if lower else "upper")


def _partition(path: Path) -> dict[str, str]:
    split_of = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if len(parts) != 3 or not parts[0].startswith("img/"):
            continue  # the count and header lines
        status = parts[2].lower()
        if status not in ("train", "query", "gallery"):
            raise ValueError(f"{path} line {n}: unknown evaluation status {parts[2]!r}")
        split_of[parts[0]] = "train" if status == "train" else "test"
    return split_of


def read_deepfashion(root: str | Path, *, garment_kind: str | None = None, num_unpaired: int = 0,
                     seed: int = 0, test_fraction: float = 0.1,
                     max_pairs_per_item: int | None = None) -> dict[str, SplitCatalog]:
    """Lists a DeepFashion In-shop tree: {split: SplitCatalog}. garment_kind None: by category."""
    root = Path(root)
    if (root / "img").is_dir():
        return _read_tree(root, garment_kind, num_unpaired, seed, test_fraction, max_pairs_per_item)
    if any((root / f).is_file() for f in _PAIR_CSVS.values()):
        return _read_flat(root, garment_kind, num_unpaired, seed)
    raise ValueError(f"DeepFashion root {root}: found neither img/ nor {sorted(_PAIR_CSVS.values())}")


def _read_tree(root: Path, forced: str | None, num_unpaired: int, seed: int, test_fraction: float,
               max_pairs_per_item: int | None) -> dict[str, SplitCatalog]:
    def parse(p: Path):
        rel = p.relative_to(root).parts  # img, GENDER, CATEGORY, id_X, file
        if len(rel) != 5 or not rel[3].startswith("id_"):
            return None
        return "/".join(rel)[: -len(p.suffix)], rel[3], category_kind(rel[2], forced)

    photos, problems = item_layout.scan(root, "img/**/*", parse)
    part = root / "list_eval_partition.txt"
    if part.is_file():
        split_of = _partition(part)
        photos = [(n, p, item, split_of.get(str(p.relative_to(root))), k) for n, p, item, _, k in photos]
    out = item_layout.catalogs(photos, root=root, mirror=root / "densepose", num_unpaired=num_unpaired,
                               seed=seed, test_fraction=test_fraction, max_pairs_per_item=max_pairs_per_item)
    if problems:
        out.setdefault("train", SplitCatalog()).problems.extend(problems)
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
            photos.append((p.stem, p, f"id_{m.group(3)}", split, category_kind(m.group(2), forced)))
        csv_path = root / csv_name
        if csv_path.is_file():
            with open(csv_path, newline="") as f:
                reader = csv.DictReader(f)
                if not {"from", "to"} <= set(reader.fieldnames or []):
                    raise ValueError(f"{csv_path}: expected columns from,to; header is {reader.fieldnames}")
                pairs[split] = [(Path(r["from"].strip()).stem, Path(r["to"].strip()).stem,
                                 f"{csv_path} row {i + 2}") for i, r in enumerate(reader)]
    out = item_layout.catalogs(photos, root=root, mirror=root / "densepose", num_unpaired=num_unpaired,
                               seed=seed, test_fraction=0.0, explicit_pairs=pairs)
    if problems:
        out.setdefault("train", SplitCatalog()).problems.extend(problems)
    return out
