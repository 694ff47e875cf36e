"""DeepFashion In-shop at paper scale (method.md): 256x192, batch 16, full-width networks.

Build the records first (data_prep, see datasets.md), then
`python -m m2e_jax.main --config configs/deepfashion.py --workdir runs/deepfashion
 --config.dataset.data_dir=/path/to/tfds`. `:local` shrinks everything for a smoke run.
The model and losses are the defaults (the choices the ablation kept, m2e_jax/config_schema.py).
"""

import ml_collections

from configs import default


def shrink_for_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A tiny variant of a real-data config: checks the plumbing on a laptop, learns nothing."""
    c.model.update(height=64, width=64 if c.model.width == c.model.height else 48, base_channels=8,
                   pan_blocks=1, trn_blocks=1, ftn_blocks=1, d_channels=8, d_layers=2, warp_tile=8)
    # The VGG16 perceptual loss would cost more than the tiny generators together on a laptop CPU.
    c.loss.perceptual_weight = 0.0
    c.batch_size = c.eval_batch_size = 4
    c.schedule.update(pan_steps=2, trn_steps=2, ftn_steps=2, joint_steps=4)
    c.log_every = c.eval_every = c.image_every = c.checkpoint_every = 5
    c.num_eval_examples = 8
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default.get_config()
    c.dataset.update(name="deepfashion", source="tfds")
    c.model.update(height=256, width=192)
    c.batch_size = 16
    if arg in ("local", "test"):
        shrink_for_smoke(c)
    elif arg:
        raise ValueError(f"configs/deepfashion.py: unknown argument {arg!r}; expected 'local' or 'test'")
    return c
