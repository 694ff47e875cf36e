"""Default `config.model` and `config.loss`: the schema's groups (m2e_jax/config_schema.py declares
every field once, with its meaning; `python -m m2e_jax.main --describe` lists them)."""

from __future__ import annotations

import ml_collections

from m2e_jax import config_schema


def model_config() -> ml_collections.ConfigDict:
    return config_schema.group_defaults("model")


def loss_config() -> ml_collections.ConfigDict:
    return config_schema.group_defaults("loss")
