"""The generic folder layout (see m2e_jax/data_schema.py), also written by the synthetic world:

    ROOT/<split>/images/NAME.{png,jpg}   photos
    ROOT/<split>/images/NAME_IUV.png     Detectron IUV (+ optional NAME_INDS.png, NAME_parse.png),
                                         or one dump (densepose.pkl / results.pkl) in <split>/ or ROOT/
    ROOT/<split>/pairs.csv               `source,target` (+ optional `garment_kind`): paired examples
    ROOT/<split>/triplets.csv            `model,person,target` (+ optional `garment_kind`): ground truth
    ROOT/meta.json                       optional; its `garment_kind` is the default kind

A ROOT with `images/` directly is one pool of photos split into train/test by item. Items are the
connected groups of pairs.csv (a pair shows one person and garment twice).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from m2e_jax import densepose
from m2e_jax.readers import photos
from m2e_jax.readers.photos import ImageRef
from m2e_jax.records import densepose_files as dpf
from m2e_jax.records import pairing
from m2e_jax.records.catalog import ExampleRef, Problem, SplitCatalog


def parse_kind(value: str | int, where: str) -> int:
    """'upper' / 'lower' / 0 / 1 -> index into densepose.GARMENT_KINDS."""
    v = str(value).strip().lower()
    if v in densepose.GARMENT_KINDS:
        return densepose.GARMENT_KINDS.index(v)
    if v.isdigit() and int(v) < len(densepose.GARMENT_KINDS):
        return int(v)
    raise ValueError(f"{where}: garment kind {value!r} is not one of {densepose.GARMENT_KINDS} or 0/1")


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(row number, {column: value}) of a CSV as spreadsheets save it: a UTF-8 BOM, CRLF line ends and
    spaces around names are accepted; a missing column or non-UTF-8 bytes are one line naming the file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            reader.fieldnames = [n.strip() for n in reader.fieldnames or []]
            missing = [c for c in columns if c not in reader.fieldnames]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; header is {reader.fieldnames}")
            return [(i + 2, {k: (v or "").strip() for k, v in row.items() if k})
                    for i, row in enumerate(reader)]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text; save it as UTF-8 CSV") from None


def _scan_images(images_dir: Path, root: Path, dump: photos.DumpIndex | None) -> dict[str, ImageRef]:
    found: dict[str, Path] = {}
    for p in sorted(images_dir.iterdir()):
        if not (p.is_file() and dpf.is_photo(p)):
            continue
        if p.stem in found:
            raise ValueError(f"{p}: two photos named {p.stem!r} in {images_dir}")
        found[p.stem] = p
    iuvs = dpf.iuv_refs([(p, p.relative_to(root)) for p in found.values()], dump=dump)
    out = {}
    for (name, p), iuv in zip(found.items(), iuvs):
        parse = p.with_name(p.stem + "_parse.png")
        out[name] = ImageRef(name, str(p), name, iuv, str(parse) if parse.is_file() else None)
    return out


def _split_catalog(split: str, split_dir: Path, root: Path, default_kind: int, num_unpaired: int,
                   seed: int) -> SplitCatalog:
    dump, dump_problem = dpf.open_dump(split_dir, root)
    cat = SplitCatalog(images=_scan_images(split_dir / "images", root, dump))
    if dump_problem:
        cat.problems.append(dump_problem)
    pairs: list[tuple[str, str]] = []

    def known(name: str, csv_path: Path, row: int) -> str | None:
        s = photos.stem(name)
        if s in cat.images:
            return s
        cat.problems.append(Problem(str(csv_path), f"row {row}: partner file images/{name} missing", split))
        return None

    for fname, cols in (("pairs.csv", ("source", "target")), ("triplets.csv", ("model", "person", "target"))):
        path = split_dir / fname
        if not path.is_file():
            continue
        for row, rec in _read_csv(path, cols):
            names = [known(rec[c], path, row) for c in cols]
            if None in names:
                continue
            kind = parse_kind(rec["garment_kind"], f"{path} row {row}") if rec.get("garment_kind") \
                else default_kind
            where = f"{path} row {row}"
            if fname == "pairs.csv":
                pairs.append((names[0], names[1]))
                cat.examples.append(ExampleRef(names[0], names[1], names[1], True, kind, where))
            else:
                cat.examples.append(ExampleRef(names[0], names[1], names[2], False, kind, where))
    item_of = pairing.items_from_pairs(cat.images, pairs)
    cat.images = {n: ImageRef(r.name, r.image, item_of[n], r.iuv, r.parse) for n, r in cat.images.items()}
    cat.examples += pairing.unpaired(pairing.group_by_item(item_of), num_unpaired, seed, default_kind)
    return cat


def read_folder(root: str | Path, *, garment_kind: str | None = None, num_unpaired: int = 0, seed: int = 0,
                test_fraction: float = 0.1) -> dict[str, SplitCatalog]:
    """Lists a folder dataset: {split: SplitCatalog}.

    Args:
      garment_kind: "upper" / "lower" for rows without a `garment_kind` column; None -> meta.json's,
        else "upper".
      num_unpaired: unpaired (model, person) combinations to draw per split, from `seed`.
      test_fraction: for a ROOT with `images/` directly, the share of items put in "test".
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"folder dataset {root}: not a directory")
    if garment_kind is None:
        meta = root / "meta.json"
        garment_kind = json.loads(meta.read_text()).get("garment_kind") if meta.is_file() else None
        garment_kind = garment_kind or "upper"
    kind = parse_kind(garment_kind, "garment_kind")
    if (root / "images").is_dir():
        whole = _split_catalog("all", root, root, kind, 0, seed)
        return _split_by_item(whole, test_fraction, seed, num_unpaired, kind)
    splits = sorted(d.name for d in root.iterdir() if (d / "images").is_dir())
    if not splits:
        raise ValueError(f"folder dataset {root}: no <split>/images/ folders and no images/ folder")
    return {s: _split_catalog(s, root / s, root, kind, num_unpaired, seed) for s in splits}


def _split_by_item(whole: SplitCatalog, test_fraction: float, seed: int, num_unpaired: int,
                   kind: int) -> dict[str, SplitCatalog]:
    out = {s: SplitCatalog() for s in ("train", "test")}
    split_of = {n: pairing.item_split(r.item, test_fraction, seed) for n, r in whole.images.items()}
    for n, r in whole.images.items():
        out[split_of[n]].images[n] = r
    for ex in whole.examples:
        names = [ex.model, ex.person] + ([ex.target] if ex.target else [])
        splits = {split_of[n] for n in names}
        if len(splits) == 1:  # a triplet across items of two splits would leak: dropped
            out[splits.pop()].examples.append(ex)
    for s, cat in out.items():
        if s == "train":  # listing problems belong to no split; report them once
            cat.problems = [Problem(p.file, p.reason, s) for p in whole.problems]
        groups = pairing.group_by_item({n: r.item for n, r in cat.images.items()})
        cat.examples += pairing.unpaired(groups, num_unpaired, seed, kind)
    return {s: c for s, c in out.items() if c.images}
