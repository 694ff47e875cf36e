"""Your own photos in the folder layout (README, "Train on your own photos").

Build the records first, at the config's size (`python -m data_prep.build --dataset folder
--manual_dir data/my_photos --data_dir data/my_tfds --height H --width W`), then
`python -m m2e_jax.main --config configs/folder.py[:ARG] --workdir runs/folder
 --config.dataset.data_dir=data/my_tfds`.
  (none)  paper scale, 256x192, batch 16 (a GPU's work).
  cpu     the demo's measured model, size (64x48) and budget (configs/synthetic.py): minutes on a
          laptop CPU.
  test    (or local) the demo's tiny smoke variant (32x32, 6 steps): checks the plumbing, learns
          nothing; it compiles the same programs as `configs/synthetic.py:test`.
"""

import ml_collections

from configs import default, synthetic


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg in ("cpu", "test", "local"):
        c = synthetic.get_config(None if arg == "cpu" else "test")
        c.dataset = default.get_config().dataset  # the world's fields do not apply to your photos
    elif arg:
        raise ValueError(f"configs/folder.py: unknown argument {arg!r}; expected 'cpu', 'test' or 'local'")
    else:
        c = default.get_config()
        c.model.update(height=256, width=192)
        c.batch_size = 16
    c.dataset.update(name="folder", source="tfds")
    return c
