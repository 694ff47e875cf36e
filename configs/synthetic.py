"""The embedded demo: writes the synthetic try-on world as a folder dataset on first use, builds its
TFDS records with the builder `python -m data_prep.build` runs (m2e_jax/synthetic/records.py) and
trains from them on a laptop CPU: the road users' own photos take.

`python -m m2e_jax.main --config configs/synthetic.py --workdir runs/synthetic` (about 10 minutes on
a 2-core CPU). `--config configs/synthetic.py:test` is a tiny smoke variant (tests use it).
The model and losses are the defaults (m2e_jax/config_schema.py, the choices the ablation kept); this
file sets only the data, the sizes and widths a CPU affords, and the step budget.
"""

import ml_collections

from configs import default


def cpu_scale(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The demo's image size, widths and budget (what benchmarks/RESULTS.md measured), on `c`."""
    c.model.update(height=64, width=48, base_channels=16, num_downsamples=1, pan_blocks=2, trn_blocks=1,
                   ftn_blocks=2, d_channels=16, d_layers=2, warp_tile=16)
    # No region margins: the DensePose parts already bound the garment (painted on the body surface),
    # so at 64x48 a margin only adds background pixels to repaint, each costing SSIM.
    c.model.update(garment_dilation=0, soft_dilation=0, feather=0)
    # The VGG16 perceptual loss costs more than the three generators together at this size on CPU.
    c.loss.perceptual_weight = 0.0
    # The 16-channel, 2-layer PatchGANs cannot tell P' from P at 64x48, so at full weight their
    # gradients are mostly noise: 0.1 (unpaired SSIM 0.498 -> 0.507, benchmarks/RESULTS.md section 9).
    c.loss.adv_weight = 0.1
    c.batch_size = 8
    c.eval_batch_size = 16
    # Short PAN / TRN stages: the try-on is FTN's output, which needs the most steps.
    c.schedule.update(pan_steps=200, trn_steps=100, ftn_steps=400, joint_steps=500)
    # A 1,200-step budget: the generators learn at 2.5x the paper-scale rate.
    c.optim.update(g_lr=5e-4, d_lr=2e-4)
    c.log_every = 50
    c.eval_every = c.image_every = c.checkpoint_every = 400
    c.num_eval_examples = 64
    return c


def smoke_scale(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A tiny variant of the demo (the tests' `:test`): checks the plumbing in seconds, learns nothing."""
    c.model.update(height=32, width=32, base_channels=8, pan_blocks=1, trn_blocks=1, ftn_blocks=1,
                   d_channels=8, d_layers=2, warp_tile=8)
    c.batch_size = c.eval_batch_size = 4
    c.schedule.update(pan_steps=2, trn_steps=1, ftn_steps=1, joint_steps=2)
    c.log_every = c.eval_every = c.image_every = c.checkpoint_every = 3
    c.num_eval_examples = 8
    c.num_image_examples = 2
    # No LPIPS columns in the smoke runs: its AlexNet adds ~50% to the eval step's compile time at
    # this size (25.6 -> 38.7 s measured on a loaded 2-core x86_64 CPU); evaluate still scores it.
    c.eval_lpips_net = ""
    c.async_checkpointing = False
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = cpu_scale(default.get_config())
    # The "medium" world (m2e_jax/synthetic/effects.py): DensePose errors, back views, loose tops,
    # long hair, per-photo lighting, JPEG inputs. On the "easy" world (exact IUV, one lighting) the
    # UV warp is already the answer and the networks learn to pass it through.
    c.dataset.update(name="synthetic", source="synthetic", data_dir="data/synthetic",
                     num_train=512, num_test=64, paired_fraction=0.5, garment_kind="upper", world="medium")
    if arg in ("test", "local"):
        c.dataset.update(num_train=16, num_test=8, world="easy")
        smoke_scale(c)
    elif arg:
        raise ValueError(f"configs/synthetic.py: unknown argument {arg!r}; expected 'test' or 'local'")
    return c
