"""Your own photos: a dataset in the folder layout, built into records by data_prep.

    python -m data_prep.build --dataset folder --manual_dir ~/photos --data_dir data --height 64 --width 48
    python -m m2e_jax.main --config configs/folder.py --workdir runs/folder

(the folder layout: README "Datasets"; `--config.dataset.data_dir` where the build's `--data_dir` is
elsewhere). The default trains the demo's networks at 64x48 on a CPU in minutes: the setting measured
on a folder dataset of another renderer's photos (issue 26: 400 pairs, per-photo light, DensePose
errors; garment-region SSIM 0.579 against 0.537 for the pasted warp). `:paper` trains the paper-scale
networks at 256x192 (build with `--height 256 --width 192`; an accelerator's job). `:local` / `:test`
is a tiny smoke variant. The model and losses are the defaults (m2e_jax/config_schema.py).
"""

import ml_collections

from configs import default
from configs.deepfashion import shrink_for_smoke
from configs.synthetic import cpu_scale


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default.get_config()
    c.dataset.update(name="folder", source="tfds", data_dir="data")
    if arg in (None, "local", "test"):
        cpu_scale(c)
    if arg in ("local", "test"):
        shrink_for_smoke(c)
    elif arg == "paper":
        c.model.update(height=256, width=192)
    elif arg:
        raise ValueError(f"configs/folder.py: unknown argument {arg!r}; expected 'paper', 'local' or 'test'")
    return c
