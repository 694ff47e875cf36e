"""Multi-host example: DeepFashion on a TPU pod slice or a GPU cluster, global batch 64.

Start the same command on every host; `jax.distributed.initialize()` finds its peers on TPU pods,
under Slurm and Open MPI. Elsewhere pass them explicitly, e.g. on two machines:
  python -m m2e_jax.main --config configs/pod.py --workdir gs://bucket/run \
    --config.distributed.coordinator_address=10.0.0.1:1234 --config.distributed.num_processes=2 \
    --config.distributed.process_id=0   # 1 on the second machine
The workdir must be shared storage every host can write (checkpoints are written collectively).
`:local` is a 2-process CPU smoke variant of the same settings.
"""

import ml_collections

from configs import default
from configs.deepfashion import shrink_for_smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default.get_config()
    c.dataset.update(name="deepfashion", source="tfds")
    c.model.update(height=256, width=192)
    c.model.dtype = "bfloat16"  # TPUs / GPUs: loss curves track float32 within 0.5% (RESULTS.md)
    c.distributed.enabled = True
    c.parallel = "shard_map"
    c.batch_size = 64
    c.eval_batch_size = 64
    c.optim.update(g_lr=4e-4, d_lr=4e-4)  # linear scaling from batch 16 at 2e-4, capped at 2x
    # A v5e host feeds 8 chips ~690 examples/s, ~5 cores of batch assembly at 138 ex/s each
    # (benchmarks/RESULTS.md 11): 8 threads with 8 batches ahead leave room on its 224 vCPUs.
    c.update(prefetch=8, input_threads=8)
    if arg in ("local", "test"):
        shrink_for_smoke(c)
        c.model.dtype = "float32"  # bfloat16 is slower on CPU (no native arithmetic, RESULTS.md)
        c.distributed.cpu_collectives = True
    elif arg:
        raise ValueError(f"configs/pod.py: unknown argument {arg!r}; expected 'local' or 'test'")
    return c
