"""MVC at paper scale (method.md): 256x256, batch 16. `:local` for a smoke run.

The model and losses are the defaults (the choices the ablation kept, m2e_jax/config_schema.py).
"""

import ml_collections

from configs import default
from configs.deepfashion import shrink_for_smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default.get_config()
    c.dataset.update(name="mvc", source="tfds")
    c.model.update(height=256, width=256)
    c.batch_size = 16
    if arg in ("local", "test"):
        shrink_for_smoke(c)
    elif arg:
        raise ValueError(f"configs/mvc.py: unknown argument {arg!r}; expected 'local' or 'test'")
    return c
