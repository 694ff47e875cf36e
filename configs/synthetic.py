"""The embedded demo: writes the synthetic try-on world as a folder dataset on first use, builds its
TFDS records with the builder `python -m data_prep.build` runs (m2e_jax/synthetic/records.py) and
trains from them on a laptop CPU: the road users' own photos take.

`python -m m2e_jax.main --config configs/synthetic.py --workdir runs/synthetic` (about 10 minutes on
a 2-core CPU). `--config configs/synthetic.py:test` is a tiny smoke variant (tests use it).
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default.get_config()
    # The "medium" world (m2e_jax/synthetic/effects.py): DensePose errors, back views, loose tops,
    # long hair, per-photo lighting, JPEG inputs. On the "easy" world (exact IUV, one lighting) the
    # UV warp is already the answer and the networks learn to pass it through.
    c.dataset.update(name="synthetic", source="synthetic", data_dir="data/synthetic",
                     num_train=512, num_test=64, paired_fraction=0.5, garment_kind="upper", world="medium")
    # No region margins: the synthetic IUV is exact and garments are painted on the body surface, so
    # the DensePose parts bound the garment and every pixel outside them is already right in P (a
    # margin only adds background pixels to repaint; at 64x48 each costs SSIM). The parsing masks
    # exist, so FTN keeps P's skin where neither garment lies (model.parse_region); half of the
    # training examples lose them (model.parse_dropout), so the checkpoint also serves photos with
    # DensePose alone (R_P replaced), as most users have them. FTN paints, from P's own context, the
    # part of its region M's garment does not cover (model.ftn_paint: P's skin where sleeves change,
    # which only FTN can know); half of the other examples lose P's mask alone, so FTN learns that
    # painting on paired data (medium world, unpaired garment-region SSIM 0.489 -> 0.498,
    # benchmarks/RESULTS.md section 9). FTN relights T to P's photo by a gain map (per channel, times
    # a ramp across the frame) from both whole photos (model.ftn_relight): T carries M's light and
    # FTN's convolutions see a few dozen pixels each (colour error in R_P 0.064 -> 0.050, LPIPS
    # 0.032 -> 0.030, section 9a).
    c.model.update(height=64, width=48, base_channels=16, num_downsamples=1, pan_blocks=2, trn_blocks=1,
                   ftn_blocks=2, d_channels=16, d_layers=2, warp_tile=16, garment_dilation=0,
                   soft_dilation=0, feather=0, parse_region=True, parse_dropout=0.5, ftn_paint=True,
                   person_parse_dropout=0.5, ftn_relight="ramp")
    # The VGG16 perceptual loss costs more than the three generators together at this size on CPU.
    c.loss.perceptual_weight = 0.0
    # Weaker pulls toward the warp (defaults: alpha 1, consistency 10, FTN mask 1): the warp carries
    # M's lighting and DensePose's errors, so anchoring T and P' to it caps what the networks can
    # fix (medium world, 1,200 steps: unpaired garment-region SSIM 0.462 -> 0.490 against 0.445 for
    # the pasted warp, benchmarks/RESULTS.md section 8). FTN's mask starts at sigmoid(1) = 0.73.
    # Adversarial weight 0.1 (default 1): the 16-channel, 2-layer PatchGANs cannot tell P' from P
    # at 64x48 (D_final's loss sits at LSGAN's 0.25), so their gradients are mostly noise at the
    # weight of the L1 term; a stronger D (3 layers, 32 channels) made SSIM worse (0.498 -> 0.429).
    # 0.1: unpaired garment-region SSIM 0.498 -> 0.507, LPIPS 0.034 -> 0.032 (RESULTS.md section 9).
    c.loss.update(alpha_weight=0.1, consistency_weight=1.0, ftn_mask_weight=0.1, adv_weight=0.1)
    c.model.ftn_mask_offset = 1.0
    c.batch_size = 8
    c.eval_batch_size = 16
    # Short PAN / TRN stages: the try-on is FTN's output, which needs the most steps.
    c.schedule.update(pan_steps=200, trn_steps=100, ftn_steps=400, joint_steps=500)
    c.optim.update(g_lr=5e-4, d_lr=2e-4)
    c.log_every = 50
    c.eval_every = 400
    c.image_every = 400
    c.checkpoint_every = 400
    c.num_eval_examples = 64
    if arg in ("test", "local"):
        c.dataset.update(num_train=16, num_test=8, world="easy")
        c.model.update(height=32, width=32, base_channels=8, pan_blocks=1, trn_blocks=1, ftn_blocks=1,
                       d_channels=8, d_layers=2, warp_tile=8)
        c.batch_size = 4
        c.eval_batch_size = 4
        c.schedule.update(pan_steps=2, trn_steps=1, ftn_steps=1, joint_steps=2)
        c.log_every = c.eval_every = c.image_every = c.checkpoint_every = 3
        c.num_eval_examples = 8
        c.num_image_examples = 2
        # No LPIPS columns in the smoke runs: its AlexNet adds ~50% to the eval step's compile time at
        # this size (25.6 -> 38.7 s measured on a loaded 2-core x86_64 CPU); evaluate still scores it.
        c.eval_lpips_net = ""
        c.async_checkpointing = False
    elif arg:
        raise ValueError(f"configs/synthetic.py: unknown argument {arg!r}; expected 'test' or 'local'")
    return c
