"""Your own photos: a dataset in the folder layout, built into records by data_prep (README, "Train
on your own photos").

    python -m data_prep.build --dataset folder --manual_dir data/my_photos --data_dir data/my_tfds \
        --height 64 --width 48
    python -m m2e_jax.main --config configs/folder.py --workdir runs/folder \
        --config.dataset.data_dir=data/my_tfds

The default trains the demo's networks at 64x48 on a CPU in minutes (configs/synthetic.py's
cpu_scale): the setting measured on a folder dataset of another renderer's photos (issue 26: 400
pairs, per-photo light, DensePose errors; garment-region SSIM 0.579 against 0.537 for the pasted
warp). `:paper` trains the paper-scale networks at 256x192 (build with `--height 256 --width 192`; an
accelerator's job). `:local` / `:test` is the demo's tiny smoke variant (32x32, a few steps): it checks
the plumbing, learns nothing, and compiles the same programs as `configs/synthetic.py:test`. The
model and losses are the defaults (m2e_jax/config_schema.py).
"""

import ml_collections

from configs import default
from configs.synthetic import cpu_scale, smoke_scale


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default.get_config()
    c.dataset.update(name="folder", source="tfds", data_dir="data")
    if arg in (None, "local", "test"):
        cpu_scale(c)
    if arg in ("local", "test"):
        smoke_scale(c)
    elif arg == "paper":
        c.model.update(height=256, width=192)
    elif arg:
        raise ValueError(f"configs/folder.py: unknown argument {arg!r}; expected 'paper', 'local' or 'test'")
    return c
