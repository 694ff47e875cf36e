"""Every training field at its default: the paper-scale model the ablation kept; other configs edit it.

Usage: `python -m m2e_jax.main --config configs/default.py --workdir DIR [--config.batch_size=8 ...]`.
The fields, their defaults, allowed values and meanings are declared once in m2e_jax/config_schema.py
(`python -m m2e_jax.main --describe` lists them).
"""

import ml_collections

from m2e_jax import config_schema


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg:
        raise ValueError(f"configs/default.py: unknown argument {arg!r}; it takes none")
    return config_schema.defaults()
