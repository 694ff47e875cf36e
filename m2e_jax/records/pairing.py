"""Paired and unpaired examples, item grouping and item-disjoint splits (all deterministic).

- paired: model and person are the same item (person/garment) in two poses; target = person.
- unpaired: model from item i, person from item j != i, drawn from a seed; no ground truth.
- splits: by item, so no garment is in two splits.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from m2e_jax.records.catalog import ExampleRef


def items_from_pairs(names: Iterable[str], pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Item id per name: names joined by a pair are one item (connected components, union-find).

    The item id is the component's smallest name, so it does not depend on input order.
    """
    parent = {n: n for n in names}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for a, b in pairs:
        if a in parent and b in parent:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return {n: root(n) for n in parent}


def group_by_item(item_of: Mapping[str, str]) -> dict[str, list[str]]:
    """{item: sorted names}, items sorted."""
    groups: dict[str, list[str]] = {}
    for name in sorted(item_of):
        groups.setdefault(item_of[name], []).append(name)
    return dict(sorted(groups.items()))


def item_pairs(groups: Mapping[str, Sequence[str]], garment_kind: Mapping[str, int] | int,
               where: str = "item ids", max_per_item: int | None = None) -> list[ExampleRef]:
    """Every ordered pair of distinct photos of the same item (at most `max_per_item` per item)."""
    out = []
    for item, names in groups.items():
        pairs = list(itertools.permutations(sorted(names), 2))[:max_per_item]
        for a, b in pairs:
            kind = garment_kind if isinstance(garment_kind, int) else garment_kind[a]
            out.append(ExampleRef(a, b, b, True, kind, f"{where}: {item}"))
    return out


def unpaired(groups: Mapping[str, Sequence[str]], num: int, seed: int,
             garment_kind: Mapping[str, int] | int, where: str = "unpaired draw") -> list[ExampleRef]:
    """`num` distinct (model, person) combinations with model item != person item, from `seed`.

    Draws are made over the sorted items, so the result depends only on (groups, num, seed). Fewer
    than `num` come back when the pool has fewer distinct combinations.
    """
    items = sorted(i for i, names in groups.items() if names)
    if num <= 0 or len(items) < 2:
        return []
    members = {i: sorted(groups[i]) for i in items}
    total = sum(len(v) for v in members.values())
    capacity = total * total - sum(len(v) ** 2 for v in members.values())
    want = min(num, capacity)
    rng = np.random.default_rng([seed, 0x5EED])
    seen: set[tuple[str, str]] = set()
    out = []
    while len(out) < want:
        a, b = rng.choice(len(items), 2, replace=False)
        m = members[items[a]][rng.integers(len(members[items[a]]))]
        p = members[items[b]][rng.integers(len(members[items[b]]))]
        if (m, p) in seen:
            continue
        seen.add((m, p))
        kind = garment_kind if isinstance(garment_kind, int) else garment_kind[m]
        out.append(ExampleRef(m, p, None, False, kind, f"{where} (seed {seed})"))
    return out


def item_split(item: str, test_fraction: float, seed: int = 0) -> str:
    """"train" or "test" for an item, from a hash of (seed, item): stable across runs and machines."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1], got {test_fraction}")
    h = int.from_bytes(hashlib.sha256(f"{seed}:{item}".encode()).digest()[:8], "big") / 2.0**64
    return "test" if h < test_fraction else "train"


def check_disjoint(items_by_split: Mapping[str, Iterable[str]]) -> None:
    """Raises ValueError naming an item that appears in two splits."""
    owner: dict[str, str] = {}
    for split, items in items_by_split.items():
        for item in items:
            if owner.setdefault(item, split) != split:
                raise ValueError(f"item {item!r} is in both {owner[item]!r} and {split!r} splits")
