"""The M2E TFDS dataset builder (m2e_dataset_dataset_builder.py), in the folder layout `tfds build`
expects. Reading the built records needs no builder code: m2e_jax.tfds_source opens them through
TFDS's self-describing format."""
