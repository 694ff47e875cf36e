"""Your own photos in the folder layout (README, "Train on your own photos"): 256x192, batch 16.

Build the records first, at this size:
  python -m data_prep.build --dataset folder --manual_dir data/my_photos --data_dir data/my_tfds
then `python -m m2e_jax.main --config configs/folder.py --workdir runs/folder
 --config.dataset.data_dir=data/my_tfds`. `:local` (or `:test`) shrinks everything for a smoke run
(64x48 records: build them with `--height 64 --width 48`).
"""

import ml_collections

from configs import default
from configs.deepfashion import shrink_for_smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default.get_config()
    c.dataset.update(name="folder", source="tfds")
    c.model.update(height=256, width=192)
    c.batch_size = 16
    if arg in ("local", "test"):
        shrink_for_smoke(c)
        c.eval_lpips_net = ""  # its AlexNet's compile would dominate a smoke run (evaluate still scores it)
    elif arg:
        raise ValueError(f"configs/folder.py: unknown argument {arg!r}; expected 'local' or 'test'")
    return c
