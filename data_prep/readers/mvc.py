"""MVC (Multi-View Clothing), as a tree of item folders: `ROOT/<...>/<ITEM_ID>/<view>.jpg`, i.e. every
photo's parent folder names its item (several views per item). Items are split by hash; pairs are
every two views of an item. DensePose as for DeepFashion: `STEM_IUV.png` beside each photo, a
`ROOT/densepose/` mirror, or a dump at ROOT. (The release's own index files are not read: check the
layout of your copy and arrange it this way.)
"""

from __future__ import annotations

from pathlib import Path

from data_prep.catalog import SplitCatalog
from data_prep.readers import item_layout
from m2e_jax import densepose


def read_mvc(root: str | Path, *, garment_kind: str | None = None, num_unpaired: int = 0, seed: int = 0,
             test_fraction: float = 0.1, max_pairs_per_item: int | None = None) -> dict[str, SplitCatalog]:
    """Lists an MVC tree: {split: SplitCatalog}; garment_kind defaults to "upper"."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"MVC root {root}: not a directory")
    kind = densepose.GARMENT_KINDS.index(garment_kind or "upper")
    mirror = root / "densepose"

    def parse(p: Path):
        if p.is_relative_to(mirror):
            return None
        rel = p.relative_to(root)
        return str(rel.with_suffix("")), "/".join(rel.parts[:-1]), kind

    photos, problems = item_layout.scan(root, "**/*", parse)
    photos = [ph for ph in photos if not ph[1].is_relative_to(mirror)]
    if not photos:
        raise ValueError(f"MVC root {root}: no photos found in item folders")
    out = item_layout.catalogs(photos, root=root, mirror=mirror, num_unpaired=num_unpaired, seed=seed,
                               test_fraction=test_fraction, max_pairs_per_item=max_pairs_per_item)
    if problems:
        out.setdefault("train", SplitCatalog()).problems.extend(problems)
    return out
