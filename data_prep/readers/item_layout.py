"""Datasets organised by item id (DeepFashion In-shop, MVC): photos with an item id and maybe a split,
turned into split catalogs with same-item pairs and seeded unpaired draws."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from m2e_jax.readers.photos import ImageRef
from m2e_jax.records import densepose_files as dpf
from m2e_jax.records import pairing
from m2e_jax.records.catalog import ExampleRef, Problem, SplitCatalog


def catalogs(photos: Sequence[tuple[str, Path, str, str | None, int]], *, root: Path,
             mirror: Path | None, num_unpaired: int, seed: int, test_fraction: float,
             explicit_pairs: dict[str, list[tuple[str, str, str]]] | None = None,
             max_pairs_per_item: int | None = None, check_disjoint: bool = True,
             dump_dirs: tuple[Path, ...] | None = None) -> dict[str, SplitCatalog]:
    """Split catalogs from photos given as (name, path, item, split or None, garment kind).

    A photo without a split goes by `pairing.item_split(item)`. Pairs are every ordered pair of photos
    of one item unless `explicit_pairs` ({split: [(source, target, where)]}) are given. Items are
    checked to be in one split only unless `check_disjoint` is False (a published split taken as is).
    A dump is looked for in `dump_dirs` (default: root).
    """
    dump, dump_problem = dpf.open_dump(*(dump_dirs or (root,)))
    out: dict[str, SplitCatalog] = {}
    kind_of: dict[str, int] = {}
    paths = [ph[1] for ph in photos]
    rels = [p.relative_to(root) if p.is_relative_to(root) else Path(p.name) for p in paths]
    iuvs = dpf.iuv_refs(list(zip(paths, rels)), mirror, dump)
    for (name, path, item, split, kind), iuv in zip(photos, iuvs):
        split = split or pairing.item_split(item, test_fraction, seed)
        cat = out.setdefault(split, SplitCatalog())
        parse = path.with_name(path.stem + "_parse.png")
        cat.images[name] = ImageRef(name, str(path), item, iuv, str(parse) if parse.is_file() else None, kind)
        kind_of[name] = kind
    if dump_problem:
        out.setdefault("train", SplitCatalog()).problems.append(dump_problem)
    if check_disjoint:
        pairing.check_disjoint({s: {r.item for r in c.images.values()} for s, c in out.items()})
    for split, cat in out.items():
        groups = pairing.group_by_item({n: r.item for n, r in cat.images.items()})
        if explicit_pairs is None:
            cat.examples += pairing.item_pairs(groups, kind_of, max_per_item=max_pairs_per_item)
        else:
            for a, b, where in explicit_pairs.get(split, []):
                missing = [n for n in (a, b) if n not in cat.images]
                if missing:
                    cat.problems.append(Problem(where, f"partner file {missing[0]} missing", split))
                else:
                    cat.examples.append(ExampleRef(a, b, b, True, kind_of[a], where))
        cat.examples += pairing.unpaired(groups, num_unpaired, seed, kind_of)
    return out


def scan(root: Path, pattern: str, parse_path: Callable[[Path], tuple[str, str, int] | None],
         skip: Path | None = None) -> tuple[list[tuple[str, Path, str, None, int]], list[Problem]]:
    """Photos under `root` matching `pattern` (not under `skip`): parse_path(path) -> (name, item,
    kind) or None (skipped, reported as a problem)."""
    photos, problems = [], []
    for p in sorted(root.glob(pattern)):
        if not (p.is_file() and dpf.is_photo(p)) or (skip is not None and p.is_relative_to(skip)):
            continue
        parsed = parse_path(p)
        if parsed is None:
            problems.append(Problem(str(p), "file name does not follow the dataset's layout; skipped"))
            continue
        name, item, kind = parsed
        photos.append((name, p, item, None, kind))
    return photos, problems
