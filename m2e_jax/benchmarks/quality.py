"""The ablation table (the paper's table shape): trains per world preset, scores every method.

    python -m m2e_jax.benchmarks.quality [--presets medium,hard] [--workdir runs/quality]
        [--json benchmarks/quality.json] [--grids benchmarks/quality] [--set loss.l1_weight=5 ...]
    python -m m2e_jax.benchmarks.quality --quick     # smoke test: tiny networks, a few steps

For each preset of the synthetic world (m2e_jax/synthetic/effects.py) it trains three runs of
configs/synthetic.py (resuming a finished run instead of training it again):
  hybrid       the config as it is: staged schedule, paired and unpaired batches in stage 4
  paired_only  the same steps, stage 4 on paired batches only (schedule.unpaired_per_cycle = 0)
  pan_no_warp  PAN without the warp input (model.pan_inputs = "model_only")
and scores on the whole test split (paired and unpaired subsets), at the network's resolution,
through m2e_jax.scoring (the training loop's and evaluate's path):
  identity     P unchanged                        (baseline)
  warp_paste   the UV warp pasted into R_P * V    (baseline)
  pan_pasted   PAN's A pasted into FTN's region   (hybrid run)
  trn_pasted   TRN's T pasted into FTN's region   (hybrid run)
  tryon        M2E-TON, FTN's P'                  (hybrid run)
  pan_no_warp  P' of the pan_no_warp run
  paired_only  P' of the paired_only run
Metrics: SSIM, PSNR, LPIPS (AlexNet), whole image and inside the garment region R_P ("_masked"),
and the colour error in R_P (the light of P' against P*'s: relighting).
Writes the JSON (tables, steps, wall time per run, machine) and one PNG grid per preset: a row per
method over the first unpaired test examples, under rows M, P and the ground truth P*.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from m2e_jax import input_pipeline, schedule, scoring
from m2e_jax.benchmarks import common
from m2e_jax.models import tryon

VARIANTS: dict[str, dict[str, Any]] = {
    "hybrid": {},
    "paired_only": {"schedule.unpaired_per_cycle": 0},
    "pan_no_warp": {"model.pan_inputs": "model_only"},
}
# Row order of the tables and grids: (method key, label).
ROWS = (("identity", "P unchanged"), ("warp_paste", "UV warp pasted in R_P"),
        ("pan_pasted", "PAN only (A pasted)"), ("trn_pasted", "PAN + TRN (T pasted)"),
        ("tryon", "M2E-TON (PAN + TRN + FTN)"), ("pan_no_warp", "PAN without warp input"),
        ("paired_only", "paired-only training"))
GRID_EXAMPLES = 6


@dataclasses.dataclass
class Run:
    """One trained variant: its config, generator params (host) and training wall time."""
    config: ml_collections.ConfigDict
    params: dict
    wall_s: float
    steps: int
    resumed: bool


def parse_value(text: str) -> Any:
    """A --set value: JSON (numbers, true/false, quoted strings, lists), Python's True / False,
    or else the bare string."""
    if text in ("True", "False"):
        return text == "True"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """["loss.l1_weight=5", ...] (--set) -> {"loss.l1_weight": 5, ...}; a ValueError naming a bad item."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        settings[key] = parse_value(value)
    return settings


def apply_settings(config: ml_collections.ConfigDict, settings: dict[str, Any]) -> None:
    """config["a.b.c"] = value for each dotted key; an unknown key is an error naming it."""
    for key, value in settings.items():
        *groups, leaf = key.split(".")
        node = config
        for g in groups:
            if g not in node:
                raise ValueError(f"--set {key}: config has no group {g!r}")
            node = node[g]
        if leaf not in node:
            raise ValueError(f"--set {key}: config has no field {leaf!r}")
        try:
            node[leaf] = tuple(value) if isinstance(node[leaf], tuple) else value
        except TypeError:
            raise ValueError(f"--set {key}: {value!r} is not a {type(node[leaf]).__name__}, the field's "
                             f"type (now {node[leaf]!r})") from None


def base_config(preset: str, quick: bool, settings: dict[str, Any]) -> ml_collections.ConfigDict:
    """configs/synthetic.py (":test" sizes when `quick`) on world `preset`, with `settings` applied."""
    from configs import synthetic

    config = synthetic.get_config("test" if quick else None)
    config.dataset.world = preset
    if quick:  # one compiled train step per run (stage 4 only), scored once at the end
        config.dataset.update(num_train=8, num_test=6)
        config.schedule.update(pan_steps=0, trn_steps=0, ftn_steps=0, joint_steps=2)
        config.eval_every = config.image_every = config.checkpoint_every = 2
    apply_settings(config, settings)
    return config


def train_variant(config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Trains `config` in `workdir` (or finds it already trained there) and loads its generators."""
    from m2e_jax import checkpointing, train

    total = schedule.total_steps(config.schedule)
    wall_file = os.path.join(workdir, "quality_wall.json")
    done = os.path.exists(wall_file)
    if done:
        wall = json.load(open(wall_file))["wall_s"]
    else:
        start = time.perf_counter()
        train.train_and_evaluate(config, workdir)
        wall = time.perf_counter() - start
        with open(wall_file, "w") as f:
            json.dump({"wall_s": wall, "steps": total}, f)
    step_dir = checkpointing.find_step(workdir=workdir, step=total).step_dir(total)
    _, params = checkpointing.read_generators(step_dir, config)
    return Run(config, params, wall, total, done)


def to_uint8(x) -> np.ndarray:
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def variant_outputs(run: Run, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The forward pass's images `[N, H, W, 3]` in [-1, 1] over the stacked test `batch` (host)."""
    model_cfg = ml_collections.FrozenConfigDict(run.config.model)
    fwd = jax.jit(functools.partial(tryon.forward, model_cfg=model_cfg))
    return jax.device_get(fwd(run.params, batch))


def method_images(runs: dict[str, Run], batch: dict[str, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """({method: [N, H, W, 3] in [-1, 1]} for every method the runs provide, the two baselines'
    images as scoring computes them, for the grid)."""
    images = {}
    person = tryon.image_to_float(jax.numpy.asarray(batch["person_image"]))
    first = variant_outputs(next(iter(runs.values())), batch)
    baselines = jax.device_get(scoring.baseline_images({**first, "person_image": person}))
    if "hybrid" in runs:
        out = variant_outputs(runs["hybrid"], batch)
        images.update({k: np.asarray(v) for k, v in scoring.stage_images(out, person).items()})
        images["tryon"] = out["output"]
    for name in ("pan_no_warp", "paired_only"):
        if name in runs:
            images[name] = variant_outputs(runs[name], batch)["output"]
    return images, baselines


def image_grid(images: dict[str, np.ndarray], batch: dict[str, np.ndarray], path: str, title: str) -> None:
    """PNG: rows M, P, P* and then one per method (ROWS order) over the first unpaired examples."""
    from PIL import Image, ImageDraw

    idx = [i for i in range(len(batch["paired"])) if not batch["paired"][i] and batch["has_target"][i]]
    idx = idx[:GRID_EXAMPLES] or list(range(min(GRID_EXAMPLES, len(batch["paired"]))))
    labels = {**dict(ROWS), "M": "M (model photo)", "P": "P (person photo)", "target": "P* (ground truth)"}
    rows = [("M", batch["model_image"]), ("P", batch["person_image"]), ("target", batch["target_image"])]
    rows += [(k, to_uint8(images[k])) for k, _ in ROWS if k in images]
    h, w = batch["person_image"].shape[1:3]
    zoom, left, gap, top = 2, 170, 2, 14
    shape = (top + len(rows) * (h * zoom + gap), left + len(idx) * (w * zoom + gap), 3)
    sheet = np.full(shape, 255, np.uint8)
    for r, (_, imgs) in enumerate(rows):
        for c, i in enumerate(idx):
            y, x = top + r * (h * zoom + gap), left + c * (w * zoom + gap)
            sheet[y:y + h * zoom, x:x + w * zoom] = np.repeat(np.repeat(imgs[i], zoom, 0), zoom, 1)
    img = Image.fromarray(sheet)
    draw = ImageDraw.Draw(img)
    draw.text((2, 1), title, fill=(0, 0, 0))
    for r, (key, _) in enumerate(rows):
        draw.text((2, top + r * (h * zoom + gap) + h * zoom // 2 - 5), labels[key], fill=(0, 0, 0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)


def markdown(table: dict, title: str) -> str:
    """The table as markdown: rows = methods in ROWS order, columns per subset (scoring's schema)."""
    cols = [c for c in scoring.COLUMNS if c[0] not in ("fid", "is")]  # no feature extractor here
    lines = []
    for subset in scoring.SUBSETS:
        if subset not in table:
            continue
        entry = table[subset]
        lines += [f"{title}, {subset} test set ({entry['count_with_target']} examples with ground truth)", "",
                  "| method | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for key, label in ROWS:
            if key in entry:
                vals = [fmt.format(entry[key][m]) if m in entry[key] else "-" for m, _, fmt in cols]
                lines.append(f"| {label} | " + " | ".join(vals) + " |")
        lines.append("")
    return "\n".join(lines)


def run_preset(preset: str, workdir: str, quick: bool, settings: dict[str, Any], variants: Sequence[str],
               grid_path: str | None, log=print) -> dict:
    """Trains the variants of one preset and scores every method; returns the preset's JSON entry."""
    runs = {}
    for name in variants:
        config = base_config(preset, quick, settings)
        apply_settings(config, VARIANTS[name])
        runs[name] = train_variant(config, os.path.join(workdir, preset, name))
        log(f"[{preset}] {name}: {runs[name].steps} steps, {runs[name].wall_s:.0f} s"
            f"{' (trained before)' if runs[name].resumed else ''}")
    config = next(iter(runs.values())).config
    source = input_pipeline.open_source(config, config.dataset.test_split)
    n = len(source) if not config.num_eval_examples else min(len(source), config.num_eval_examples)
    batch = input_pipeline.stack_examples([source[i] for i in range(n)])
    images, baselines = method_images(runs, batch)
    start = time.perf_counter()
    table = scoring.score_methods(images, batch, config.model, lpips_net="alexnet")
    score_s = time.perf_counter() - start
    if grid_path:
        image_grid({**baselines, **images}, batch, grid_path, f"world '{preset}', unpaired test examples")
    return {"table": table, "score_s": score_s,
            "runs": {k: {"steps": r.steps, "wall_s": r.wall_s, "trained_before": r.resumed}
                     for k, r in runs.items()},
            "config": json.loads(next(iter(runs.values())).config.to_json_best_effort())}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m m2e_jax.benchmarks.quality",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="medium,hard", help="comma-separated world presets")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {tuple(VARIANTS)}")
    ap.add_argument("--workdir", default="runs/quality", help="one training workdir per preset and variant")
    ap.add_argument("--json", default="benchmarks/quality.json")
    ap.add_argument("--grids", default="benchmarks/quality", help="folder for <preset>.png image grids")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="config override for every run, e.g. loss.ftn_mask_weight=0.1 (repeatable)")
    ap.add_argument("--quick", action="store_true", help="smoke test: configs/synthetic.py:test sizes")
    a = common.parse_args(ap, argv)
    try:
        from m2e_jax.synthetic import effects

        presets = [p for p in a.presets.split(",") if p]
        for p in presets:
            effects.preset(p)
        variants = [v for v in a.variants.split(",") if v]
        bad = [v for v in variants if v not in VARIANTS]
        if bad or not variants:
            raise ValueError(f"--variants: unknown {bad}; expected some of {tuple(VARIANTS)}")
        settings = parse_settings(a.set)
        for p in presets:  # check the overrides before any training starts
            apply_settings(base_config(p, a.quick, settings), settings)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = common.machine_info()
    result = {"machine": common.machine_line(info), "quick": a.quick, "settings": settings, "presets": {}}
    start = time.perf_counter()
    for p in presets:
        grid = os.path.join(a.grids, f"{p}.png") if a.grids else None
        result["presets"][p] = entry = run_preset(p, a.workdir, a.quick, settings, variants, grid)
        print(markdown(entry["table"], f"world '{p}'"))
    result["wall_s"] = time.perf_counter() - start
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"{result['machine']}\nwrote {a.json} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
