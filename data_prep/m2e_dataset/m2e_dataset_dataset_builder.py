"""The registered `m2e_dataset` builder (`tfds build data_prep/m2e_dataset`): m2e_jax's builder
(m2e_jax/records/builder.py: the folder layout, the synthetic world's folder, validation, records)
with the readers of the published releases added (data_prep/readers: DeepFashion In-shop, MVC)."""

from __future__ import annotations

from pathlib import Path

from data_prep.readers import deepfashion, mvc
from m2e_jax.records import builder
from m2e_jax.records.builder import BuildOptions, M2EConfig
from m2e_jax.records.catalog import SplitCatalog

__all__ = ["Builder", "BuildOptions", "M2EConfig"]


def _item_catalog(read):
    """A reader of an item-organised release (deepfashion.py / mvc.py) as a builder READERS entry:
    as many unpaired draws per split as the largest split has pairs unless `num_unpaired`."""

    def read_catalog(root: Path, opts: BuildOptions) -> dict[str, SplitCatalog]:
        kw = dict(garment_kind=opts.garment_kind, seed=opts.seed, test_fraction=opts.test_fraction,
                  max_pairs_per_item=opts.max_pairs_per_item)
        num_unpaired = opts.num_unpaired
        if num_unpaired is None:
            num_unpaired = builder.paired_count(read(root, **kw))
        return read(root, num_unpaired=num_unpaired, **kw)

    return read_catalog


class Builder(builder.Builder):
    """M2E-TON try-on examples from any of builder.SOURCES."""

    READERS = builder.Builder.READERS | {"deepfashion": _item_catalog(deepfashion.read_deepfashion),
                                         "mvc": _item_catalog(mvc.read_mvc)}
