"""MVC (Multi-View Clothing: several views of each garment), in the two forms copies come in:

1. One folder per item: `ROOT/<...>/<ITEM>/<view>.jpg` (every photo's parent folder names its item).
2. A flat download folder (the release ships JSON link lists, e.g. `image_links.json`, and download
   scripts save every image into one folder): the item is read from the file name `<ITEM>_<view>.jpg`,
   or, when a JSON link list sits in ROOT (`image_links.json`, `mvc_info.json`), from it: each of its
   records (a list of objects, or an object of lists) names an item (`itemN`, `item`, or `productId`
   with `colourId` when present) and image URLs, and a photo saved under a URL's file name belongs to
   that record's item. A flat folder whose photos' items cannot be read this way is refused, naming a
   photo, instead of being read as one item.

Items are split by a seeded hash; pairs are every two views of an item. DensePose as for DeepFashion:
`STEM_IUV.png` beside each photo, a `ROOT/densepose/` mirror, or a dump at ROOT (matched by path).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from data_prep.readers import item_layout
from m2e_jax import densepose
from m2e_jax.records.catalog import SplitCatalog

LINK_LISTS = ("image_links.json", "mvc_info.json")
_ITEM_VIEW = re.compile(r"^(?P<item>.+)_(?P<view>[^_]+)$")
_ITEM_KEYS = ("itemN", "item", "productId")
_COLOUR_KEYS = ("colourId", "colorId")


def items_from_links(path: Path) -> dict[str, str]:
    """A JSON link list -> {image file name (URL's last part, no query): item}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable JSON ({type(e).__name__}: {e})") from None
    if isinstance(data, dict):  # an object of parallel lists -> records
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        n = min((len(v) for v in lists.values()), default=0)
        data = [{k: v[i] for k, v in lists.items()} for i in range(n)]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a list of records (objects), got {type(data).__name__}")
    out: dict[str, str] = {}
    for n, rec in enumerate(data):
        key = next((k for k in _ITEM_KEYS if k in rec), None)
        if key is None:
            raise ValueError(f"{path}: record {n} names no item (none of {_ITEM_KEYS}; keys: {sorted(rec)})")
        item = str(rec[key])
        colour = next((str(rec[k]) for k in _COLOUR_KEYS if k in rec), None)
        if key == "productId" and colour is not None:
            item = f"{item}/{colour}"
        for v in rec.values():
            if isinstance(v, str) and "/" in v:
                name = os.path.basename(v.split("?")[0])
                if Path(name).suffix.lower() in (".jpg", ".jpeg", ".png"):
                    out[name] = item
    return out


def read_mvc(root: str | Path, *, garment_kind: str | None = None, num_unpaired: int = 0, seed: int = 0,
             test_fraction: float = 0.1, max_pairs_per_item: int | None = None) -> dict[str, SplitCatalog]:
    """Lists an MVC copy: {split: SplitCatalog}; garment_kind defaults to "upper"."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"MVC root {root}: not a directory")
    kind = densepose.GARMENT_KINDS.index(garment_kind or "upper")
    mirror = root / "densepose"
    links_path = next((root / n for n in LINK_LISTS if (root / n).is_file()), None)
    links = items_from_links(links_path) if links_path else {}

    def parse(p: Path):
        rel = p.relative_to(root)
        if len(rel.parts) > 1:  # item folders
            return str(rel.with_suffix("")), "/".join(rel.parts[:-1]), kind
        if p.name in links:
            return p.stem, links[p.name], kind
        m = _ITEM_VIEW.match(p.stem)
        return (p.stem, m.group("item"), kind) if m else None

    photos, problems = item_layout.scan(root, "**/*", parse, skip=mirror)
    flat_unread = [pr.file for pr in problems if Path(pr.file).parent == root]
    if flat_unread:
        how = f"not in {links_path.name}" if links_path else f"no {' or '.join(LINK_LISTS)} in the folder"
        raise ValueError(f"MVC root {root}: cannot tell the item of {len(flat_unread)} photo(s) in this flat "
                         f"folder, e.g. {flat_unread[0]} ({how}, and not named <item>_<view>.jpg); put "
                         "each item's views in its own folder, or add the release's image_links.json")
    if not photos:
        raise ValueError(f"MVC root {root}: no photos found (item folders, or <item>_<view>.jpg)")
    counts: dict[str, int] = {}
    for ph in photos:
        counts[ph[2]] = counts.get(ph[2], 0) + 1
    if max(counts.values()) < 2:
        raise ValueError(f"MVC root {root}: {len(photos)} photos, each its own item (e.g. {photos[0][1]}): "
                         "no two views of a garment to pair")
    out = item_layout.catalogs(photos, root=root, mirror=mirror, num_unpaired=num_unpaired, seed=seed,
                               test_fraction=test_fraction, max_pairs_per_item=max_pairs_per_item)
    first = out.setdefault("train", SplitCatalog())
    first.problems.extend(problems)
    first.notes.append(f"items from {links_path}" if links_path and links else
                       "items from item folders / <item>_<view> file names")
    return out


