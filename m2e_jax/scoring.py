"""Scoring try-on results against ground truth: the one path behind the training loop's evaluation,
`python -m m2e_jax.evaluate` and the benchmarks.

Methods (images scored, `[B, H, W, 3]` in [-1, 1]):
  tryon       P', the generators' output
  identity    "P unchanged": the person photo as it is
  warp_paste  "UV warp pasted in R_P": the coarse warp W pasted into P where R_P * V = 1
  pan_pasted  "PAN only": PAN's A pasted into FTN's region of P      } which network limits: each
  trn_pasted  "PAN + TRN": TRN's T pasted into FTN's region of P     } earlier output as a try-on
  any other name a caller scores through `score_methods` (e.g. an ablation's outputs).
Subsets: "paired" (M and P the same person and garment in two poses; ground truth = P) and
"unpaired" (different people, ground truth P* where known, as in the synthetic world's triplets).
The baselines are left out of the paired subset: there "P unchanged" is the ground truth itself.

Metrics per example, against the ground truth, whole image and inside the garment region R_P
("_masked", m2e_jax/metrics.py): ssim, psnr (dB), colour_masked (how far the region's mean colour,
i.e. its light, is off), and with an LPIPS network lpips, lpips_masked.
With a feature extractor, also fid (against the real images: targets where known, else P) and is.

The table (one schema for every caller; JSON-ready; training writes it to eval/step_*.json,
evaluate to eval/metrics_<split>_step<step>.json):
  {subset: {"count": int,               examples of the subset (padding excluded)
            "count_with_target": int,   those with ground truth (the means below are over these)
            method: {metric: float}}}   means over the subset's examples with ground truth;
                                        fid / is over all the subset's examples (>= 2 needed)
Subsets without examples are absent.

Layers, each usable alone:
  method_images(out, inputs)            try-on + baselines from a forward pass
  image_scores(images, inputs, ...)     {method: {metric: [B]}}, jit-safe, per example
  summarize(rows)                       host rows (scores, paired, has_target, features) -> table
  Scorer(model_cfg, par, ...)           compiled once per run: .evaluate(gen_params, source) -> table
  score_methods(images, batch, ...)     arbitrary method outputs on one batch -> table
  markdown(table, title)                paper-style tables, rows methods, columns metrics
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from m2e_jax import input_pipeline, metrics, parallel
from m2e_jax.models import tryon as tryon_lib

METHODS = {"tryon": "M2E-TON (ours)", "identity": "P unchanged", "warp_paste": "UV warp pasted in R_P",
           "pan_pasted": "PAN only (A pasted)", "trn_pasted": "PAN + TRN (T pasted)"}
BASELINES = ("identity", "warp_paste")
SUBSETS = ("paired", "unpaired")
# (key, column title, format) in table order.
COLUMNS = (("ssim", "SSIM", "{:.4f}"), ("psnr", "PSNR", "{:.2f}"), ("lpips", "LPIPS", "{:.4f}"),
           ("ssim_masked", "SSIM (R_P)", "{:.4f}"), ("psnr_masked", "PSNR (R_P)", "{:.2f}"),
           ("lpips_masked", "LPIPS (R_P)", "{:.4f}"), ("colour_masked", "colour err (R_P)", "{:.4f}"),
           ("fid", "FID", "{:.2f}"), ("is", "IS", "{:.3f}"))

# images [B, H, W, 3] in [-1, 1] -> (features [B, D], class logits [B, K]); jit-safe.
Features = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


class ScoringError(ValueError):
    """Nothing to score (no examples), or method images that do not fit the batch."""


# ---------------------------------------------------------------- per example (jit-safe)

def baseline_images(inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """"P unchanged" and the coarse warp W pasted into R_P where V = 1, `[B, H, W, 3]` in [-1, 1].

    inputs: models.tryon.network_inputs output (person_image, warped, valid, region).
    """
    paste = inputs["region"] * inputs["valid"]
    person = inputs["person_image"]
    return {"identity": person, "warp_paste": person * (1.0 - paste) + inputs["warped"] * paste}


def stage_images(out: Mapping[str, jax.Array], person: jax.Array) -> dict[str, jax.Array]:
    """PAN's A and TRN's T each pasted into P over FTN's region (`out["ftn_region"]`), `[B, H, W, 3]`:
    the try-on each network would give alone, so an evaluation says which network limits."""
    r = out["ftn_region"]
    return {"pan_pasted": person * (1.0 - r) + out["aligned"] * r,
            "trn_pasted": person * (1.0 - r) + out["refined"] * r}


def method_images(out: Mapping[str, jax.Array], inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The images every evaluation scores: the try-on P' (`out["output"]`), PAN's and TRN's outputs
    pasted (`stage_images`) and the two baselines."""
    return {"tryon": out["output"], **stage_images(out, inputs["person_image"]), **baseline_images(inputs)}


def image_scores(images: Mapping[str, jax.Array], inputs: Mapping[str, jax.Array],
                 lpips_net: str | None = None, lpips_params: Any = None) -> dict[str, dict[str, jax.Array]]:
    """{method: {metric: [B] float32}} of each method's images against inputs["target_image"].

    Masked metrics use inputs["region"] (R_P, `[B, H, W, 1]`). LPIPS when `lpips_net` is given
    ("alexnet" | "vgg16"; `lpips_params` = metrics.lpips_params(net), an argument inside jit).
    Examples without ground truth get scores too; callers drop them by `has_target`.
    """
    target, region = inputs["target_image"], inputs["region"]
    scores = {method: metrics.image_metrics(pred, target, region) for method, pred in images.items()}
    if lpips_net and images:
        # One LPIPS pass over every method, whole and masked, stacked on the batch axis: one copy
        # of the network in the compiled program instead of two per method.
        names, b = list(images), target.shape[0]
        m = jnp.asarray(region, jnp.float32)
        whole = [jnp.asarray(images[k], jnp.float32) for k in names]
        pasted = [m * x + (1.0 - m) * target for x in whole]  # metrics.masked_lpips's definition
        d = metrics.lpips(jnp.concatenate(whole + pasted), jnp.tile(target, (2 * len(names), 1, 1, 1)),
                          lpips_net, lpips_params)
        for i, k in enumerate(names):
            scores[k]["lpips"] = d[i * b:(i + 1) * b]
            scores[k]["lpips_masked"] = d[(len(names) + i) * b:(len(names) + i + 1) * b]
    return scores


def _feature_rows(images: Mapping[str, jax.Array], inputs: Mapping[str, jax.Array],
                  features: Features) -> dict[str, tuple[jax.Array, jax.Array]]:
    """{method or "real": (features [B, D], class probabilities [B, K])}.

    "real" is the target where known, else P.
    """
    has = inputs["has_target"][:, None, None, None] > 0
    real = jnp.where(has, inputs["target_image"], inputs["person_image"])
    rows = {}
    for name, imgs in {**images, "real": real}.items():
        f, logits = features(imgs)
        rows[name] = (f, jax.nn.softmax(logits, axis=-1))
    return rows


def _rows(images, inputs, weight, lpips_net, lpips_params, features) -> dict:
    rows = {"scores": image_scores(images, inputs, lpips_net, lpips_params),
            "paired": inputs["paired"], "has_target": inputs["has_target"], "weight": weight}
    if features is not None:
        rows["features"] = _feature_rows(images, inputs, features)
    return rows


def _eval_rows(gen_params: dict, batch: dict, lpips_params: Any, *, model_cfg, lpips_net, features) -> dict:
    """Per device: the forward pass and every method's scores, gathered to the whole global batch
    (all_gather over AXIS, so the output is the same on every device)."""
    inputs = tryon_lib.network_inputs({k: v for k, v in batch.items() if k != "weight"}, model_cfg)
    out = tryon_lib.tryon_forward(gen_params, inputs, model_cfg, "ftn")
    rows = _rows(method_images(out, inputs), inputs, batch["weight"], lpips_net, lpips_params, features)
    return jax.lax.all_gather(rows, parallel.AXIS, tiled=True)


# ---------------------------------------------------------------- host: rows -> table

def _keep(rows: dict) -> dict:
    """Host numpy rows without the padding (weight 0)."""
    keep = np.flatnonzero(np.asarray(rows["weight"]) > 0)
    return jax.tree.map(lambda x: np.asarray(x)[keep], {k: v for k, v in rows.items() if k != "weight"})


def _concat(parts: Sequence[dict]) -> dict:
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *parts)


def summarize(rows: dict) -> dict[str, dict[str, Any]]:
    """The table (module docstring) from host rows of N examples (padding already removed):
    {"scores": {method: {metric: [N]}}, "paired": [N], "has_target": [N],
     optional "features": {method or "real": (features [N, D], probabilities [N, K])}}."""
    paired = np.asarray(rows["paired"]) > 0
    has_target = np.asarray(rows["has_target"]) > 0
    feats = rows.get("features")
    table: dict[str, dict[str, Any]] = {}
    for subset in SUBSETS:
        members = paired if subset == "paired" else ~paired
        if not members.any():
            continue
        scored = members & has_target
        entry: dict[str, Any] = {"count": int(members.sum()), "count_with_target": int(scored.sum())}
        for method, scores in rows["scores"].items():
            if subset == "paired" and method in BASELINES:
                continue
            vals = ({k: float(np.mean(np.asarray(v, np.float64)[scored])) for k, v in scores.items()}
                    if scored.any() else {})
            if feats is not None and members.sum() >= 2:
                vals["fid"] = metrics.fid(feats[method][0][members], feats["real"][0][members])
                vals["is"] = metrics.inception_score(feats[method][1][members])[0]
            entry[method] = vals
        table[subset] = entry
    return table


# ---------------------------------------------------------------- compiled scoring of a model

class Scorer:
    """The generators' scores on a data source, compiled once for the run that owns it.

    par: the DataParallel the parameters live on (the training loop's), default one local device.
    lpips_net: "alexnet" | "vgg16" | None (no LPIPS columns). features: an optional extractor for
    FID / IS. `evaluate(gen_params, source, num_examples, batch_size)` -> the table; gen_params
    in `par.put_state`'s layout (`put_params` puts host numpy there).
    """

    def __init__(self, model_cfg, par: parallel.DataParallel | None = None, lpips_net: str | None = "alexnet",
                 features: Features | None = None):
        if par is None:
            par = parallel.DataParallel("shard_map", devices=jax.local_devices()[:1])
        self.par = par
        cfg = ml_collections.FrozenConfigDict(model_cfg)
        self.lpips_net = lpips_net or None
        self.with_features = features is not None
        self.traces = 0  # traces of the scoring step; a trace is a compilation

        def step(gen_params, batch, lpips_params):
            self.traces += 1
            return _eval_rows(gen_params, batch, lpips_params, model_cfg=cfg, lpips_net=self.lpips_net,
                              features=features)

        self._step = self.par.compile(step, donate_state=False, num_replicated=1)
        self._lpips = self.par.put_state(metrics.lpips_params(self.lpips_net) if self.lpips_net else {})

    def put_params(self, gen_params: dict) -> Any:
        return self.par.put_state(gen_params)

    def batch_rows(self, gen_params: Any, batch: dict[str, np.ndarray], weight: np.ndarray) -> dict:
        """Host rows of one batch (this process's slice; weight [B_local], 0 for padding)."""
        out = self._step(gen_params, self.par.put_batch({**batch, "weight": weight}), self._lpips)
        return _keep(self.par.get_state(out))

    def evaluate(self, gen_params: Any, source, num_examples: int = 0, batch_size: int = 16) -> dict:
        """The table over the first `num_examples` of `source` (0: all); padding never counts."""
        batches = input_pipeline.eval_batches(source, batch_size, num_examples, jax.process_index(),
                                              jax.process_count())
        parts = [self.batch_rows(gen_params, batch, weight) for batch, weight in batches]
        if not parts or not len(parts[0]["paired"]):
            raise ScoringError("no examples to score")
        return summarize(_concat(parts))


def score_methods(images: Mapping[str, Any], batch: dict[str, Any], model_cfg,
                  lpips_net: str | None = "alexnet", with_baselines: bool = True,
                  features: Features | None = None) -> dict:
    """The table for arbitrary method outputs on one data_schema batch of N examples.

    images: {method name: [N, H, W, 3] float in [-1, 1] (or uint8)}, one image per example of
    `batch`; with_baselines adds "identity" and "warp_paste" computed from the batch. Compiles per
    call (benchmarks, one-off tables); a loop over many batches should gather rows via `Scorer`.
    """
    shape = tuple(np.shape(batch["person_image"]))
    n = shape[0]
    bad = {k: np.shape(v) for k, v in images.items() if tuple(np.shape(v)) != shape}
    if bad:
        raise ScoringError(f"method images must be [N, H, W, 3] like the batch's person_image {shape}, "
                           f"got {bad}")
    if n == 0:
        raise ScoringError("no examples to score")
    cfg = ml_collections.FrozenConfigDict(model_cfg)
    lpips_net = lpips_net or None

    @jax.jit
    def rows(imgs, b, lpips_params):
        inputs = tryon_lib.network_inputs(b, cfg)
        imgs = {k: tryon_lib.image_to_float(v) for k, v in imgs.items()}
        if with_baselines:
            imgs.update(baseline_images(inputs))
        return _rows(imgs, inputs, jnp.ones((n,), jnp.float32), lpips_net, lpips_params, features)

    lp = metrics.lpips_params(lpips_net) if lpips_net else {}
    return summarize(_keep(jax.device_get(rows(dict(images), batch, lp))))


# ---------------------------------------------------------------- tables

def flat_scalars(table: dict, prefix: str = "eval") -> dict[str, float]:
    """{"eval/unpaired/tryon/ssim": v, "eval/unpaired/count": n, ...} for metric writers."""
    flat = {}
    for subset, entry in table.items():
        for key, value in entry.items():
            if isinstance(value, dict):
                flat.update({f"{prefix}/{subset}/{key}/{m}": float(v) for m, v in value.items()})
            else:
                flat[f"{prefix}/{subset}/{key}"] = float(value)
    return flat


def markdown(table: dict, title: str) -> str:
    """Paper-style Markdown: one table per subset, rows methods, columns metrics."""
    lines = [f"## {title}", ""]
    for subset, entry in table.items():
        lines += [f"### {subset} (n = {entry['count']}, with ground truth {entry['count_with_target']})", ""]
        methods = [m for m in METHODS if m in entry] + [m for m in entry if isinstance(entry[m], dict)
                                                         and m not in METHODS]
        cols = [c for c in COLUMNS if any(c[0] in entry[m] for m in methods)]
        lines.append("| method | " + " | ".join(c[1] for c in cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for m in methods:
            cells = [fmt.format(entry[m][k]) if k in entry[m] else "-" for k, _, fmt in cols]
            lines.append(f"| {METHODS.get(m, m)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
