"""Every training field with its default (paper-scale DeepFashion-like settings); other configs edit it.

Usage: `python -m m2e_jax.main --config configs/default.py --workdir DIR [--config.batch_size=8 ...]`.
Fields of config.model / config.loss are documented in m2e_jax/models/defaults.py and losses.py.
"""

import ml_collections

from m2e_jax.models.defaults import loss_config, model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.parallel = "shard_map"  # "shard_map" (jit + shard_map on a mesh) | "pmap"
    c.distributed = ml_collections.ConfigDict(dict(
        enabled=False,  # also auto-enabled by launcher variables (Slurm, Open MPI, JAX_COORDINATOR_ADDRESS)
        coordinator_address="", num_processes=-1, process_id=-1, local_device_ids=(), cpu_collectives=False,
        # A process silent this long is declared dead and every other process exits with an error
        # (instead of blocking in a collective); jax's default is 100 s.
        heartbeat_timeout_s=60,
    ))

    c.dataset = ml_collections.ConfigDict(dict(
        name="deepfashion",       # synthetic | deepfashion | mvc | folder
        # tfds: records built by `python -m data_prep.build`; synthetic: the trainer writes the synthetic
        # world as a folder dataset and builds its records with the same builder on first use
        # (m2e_jax/synthetic/records.py). Both are read by m2e_jax/tfds_source.py.
        source="tfds",            # tfds | synthetic
        data_dir="data",          # TFDS data_dir (synthetic: where its folder and records are kept)
        tfds_config="",           # data_prep builder config; "" means "<name>_<height>x<width>"
        train_split="train", test_split="test",
        num_train=0, num_test=0,  # synthetic only: examples to write
        paired_fraction=0.5,      # synthetic only
        garment_kind="upper",     # synthetic only
        world="easy",             # synthetic only: easy | medium | hard (m2e_jax/synthetic/effects.py)
    ))
    c.model = model_config()
    c.loss = loss_config()

    c.batch_size = 16        # global, over all devices and hosts
    c.eval_batch_size = 16
    c.optim = ml_collections.ConfigDict(dict(
        g_lr=2e-4, d_lr=2e-4, b1=0.5, b2=0.999, eps=1e-8,
        decay_start=0.5,  # fraction of the total steps after which the lr decays linearly to 0
    ))
    # Stage lengths in steps: 1 PAN alone, 2 + TRN, 3 + FTN (paired only), 4 all three end to end
    # with paired and unpaired batches alternating paired_per_cycle : unpaired_per_cycle.
    c.schedule = ml_collections.ConfigDict(dict(
        pan_steps=20_000, trn_steps=20_000, ftn_steps=20_000, joint_steps=140_000,
        paired_per_cycle=1, unpaired_per_cycle=1,
        freeze_earlier=True,  # stages 2-3 train only the newly added network
        # The generators an unpaired batch of stage 4 updates (the discriminators always train).
        unpaired_trains=("pan", "trn", "ftn"),
    ))
    c.loss_spike_factor = 50.0  # stop when g_total exceeds this many times its running mean (0: off)
    c.ema_decay = 0.0  # > 0 keeps an EMA of the generator weights (used for evaluation)

    c.log_every = 100
    c.eval_every = 5_000
    c.image_every = 5_000
    c.checkpoint_every = 5_000
    c.keep_checkpoints = 3
    c.async_checkpointing = True
    c.prefetch = 2
    c.num_eval_examples = 256   # first N test examples (all of them if fewer)
    c.eval_lpips_net = "alexnet"  # LPIPS columns of the loop's evaluation (m2e_jax/scoring.py); "" = off
    c.num_image_examples = 4
    c.profile = False           # clu Profile around a few steps (TensorBoard trace)
    # Persistent XLA compilation cache ("" = off): a restarted or resumed job (and a second job with
    # the same shapes) loads its compiled steps instead of compiling them again (minutes on CPU).
    c.compilation_cache_dir = ""
    # Which XLA:CPU kernels run the convolutions (m2e_jax/xla_flags.py): "eigen" (multithreaded;
    # 13-15% faster training steps on CPU, measured in benchmarks/RESULTS.md) or "xla_default".
    # CPU only; GPUs and TPUs ignore it.
    c.cpu_convolutions = "eigen"
    return c
