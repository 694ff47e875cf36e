"""Learning curves: quality against training budget, image size and network width (issue 27).

    python -m m2e_jax.benchmarks.curves --runs hard:64x48:1:5000      # train (or resume), then score
    python -m m2e_jax.benchmarks.curves --runs grid                   # the minimum grid, in order
    python -m m2e_jax.benchmarks.curves --report                      # score what is there, plot
    python -m m2e_jax.benchmarks.curves --quick                       # smoke run (the tests')

A run is WORLD:HxW:WIDTH:STEPS: configs/synthetic.py (the demo's model and losses, trained on the
users' road: the world as a folder dataset, its TFDS records, tfds_source) on world preset WORLD,
networks at HxW, every channel count times WIDTH, and a budget of STEPS with the demo's stage
shares (PAN 1/6, TRN 1/12, FTN 1/3, joint 5/12) and its learning rates, decayed over the last half
of the budget. Each run is its own workdir `<workdir>/<name>/`: kill it at any time, rerun the same
command and it resumes from its newest checkpoint (train.train_and_evaluate); finished runs and
scored checkpoints are never redone. Run it in the background:

    nohup python -m m2e_jax.benchmarks.curves --runs grid > runs/curves.log 2>&1 &

Every checkpoint along a run (`--points` of them, all kept) is scored twice, in the garment region
R_P, beside the two baselines (P unchanged, the UV warp pasted) and the per-network rows (PAN's A
pasted, TRN's T pasted: which network limits):
  network   the training loop's own evaluation (eval/step_*.json): the world's test split at the
            network's size (m2e_jax/scoring.py);
  photo     held-out unpaired triplets the networks never saw (their own seed, the run's world) at
            `--photo` size (default 128x96), tried on through infer's library at the photo's
            resolution (benchmarks/fullres.py's `full`), with parsing maps.
`--report` writes `--json` (every score, each run's training wall time on this machine), one PNG per
world (`<--plots>/<world>.png`: garment-region SSIM and LPIPS at the photo's size against steps) and
prints the markdown tables RESULTS.md quotes.

Note a point inside a run is not the same model as a run whose budget ends there: the learning rate
decays over the last half of each budget, so each budget is its own run, and the points along it
show where it was still rising.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from m2e_jax.benchmarks import common

# The minimum grid of issue 27, per world: the budget axis first, then width and image size (each run
# is resumable, so a grid cut short by a time slot goes on where it stopped). Run one grid at a time:
# two trainers on the 2-core CPU took 0.64 s/step each against 0.2 s/step alone (64x48, batch 8).
GRID_WORLDS = ("hard", "medium")
GRID_SPECS = ("64x48:1:1200", "64x48:1:5000", "64x48:1:20000", "64x48:2:5000", "128x96:1:5000")
# The demo's stage shares of its 1,200 steps (configs/synthetic.py: 200 / 100 / 400 / 500).
STAGE_SHARES = {"pan_steps": 200 / 1200, "trn_steps": 100 / 1200, "ftn_steps": 400 / 1200}
HELD_OUT_SEED = 20261206  # not a training seed: identities, garments and poses the networks never saw
METHODS = (("full", "tryon", "M2E-TON (PAN + TRN + FTN)"), ("trn", "trn_pasted", "PAN + TRN (T pasted)"),
           ("pan", "pan_pasted", "PAN only (A pasted)"), ("warp", "warp_paste", "UV warp pasted in R_P"),
           ("identity", "identity", "P unchanged"))  # (photo method, network method, label)


DEMO_TRAIN = 512  # configs/synthetic.py's training examples


@dataclasses.dataclass(frozen=True)
class RunSpec:
    world: str
    height: int
    width: int
    width_mult: int
    steps: int
    num_train: int = DEMO_TRAIN
    tag: str = ""  # names the --set overrides of a design experiment

    @property
    def name(self) -> str:
        name = f"{self.world}_{self.height}x{self.width}_w{self.width_mult}_{self.steps}"
        name += f"_n{self.num_train}" if self.num_train != DEMO_TRAIN else ""
        return name + (f"_{self.tag}" if self.tag else "")

    @property
    def label(self) -> str:
        label = f"{self.height}x{self.width}, width x{self.width_mult}, {self.steps} steps"
        label += f", {self.num_train} examples" if self.num_train != DEMO_TRAIN else ""
        return label + (f", {self.tag}" if self.tag else "")


def parse_run(text: str, tag: str = "") -> RunSpec:
    """"hard:64x48:1:5000[:NTRAIN]" -> RunSpec; a ValueError naming the item on bad input."""
    from m2e_jax.synthetic import effects

    try:
        world, size, mult, steps, *rest = text.split(":")
        h, w = (int(x) for x in size.split("x"))
        if len(rest) > 1:
            raise ValueError
        spec = RunSpec(world, h, w, int(mult), int(steps), int(rest[0]) if rest else DEMO_TRAIN, tag)
    except ValueError:
        raise ValueError(f"--runs {text!r}: expected WORLD:HxW:WIDTH:STEPS[:TRAIN_EXAMPLES], "
                         f"e.g. hard:64x48:1:5000") from None
    if (world not in effects.PRESETS or min(h, w, spec.width_mult, spec.steps, spec.num_train) <= 0
            or h % 4 or w % 4 or not (tag == "" or tag.isidentifier())):
        raise ValueError(f"--runs {text!r}: world one of {tuple(effects.PRESETS)}, sizes multiples of 4, "
                         f"width, steps and examples positive, a tag of letters, digits and _")
    return spec


def spec_of_name(name: str) -> RunSpec | None:
    """The RunSpec of a run's folder name ("hard_64x48_w1_5000[_n4096][_tag]"), None for any other."""
    parts = name.split("_", 4)
    if len(parts) < 4 or not parts[2].startswith("w"):
        return None
    rest = parts[4] if len(parts) > 4 else ""
    num, tag = "", rest
    if rest.startswith("n") and rest[1:].split("_")[0].isdigit():
        num, _, tag = rest[1:].partition("_")
    try:
        spec = parse_run(":".join(parts[:2] + [parts[2][1:], parts[3]] + ([num] if num else [])), tag)
    except ValueError:
        return None
    return spec if spec.name == name else None


def parse_runs(text: str) -> list[RunSpec]:
    items = [f"{w}:{s}" for w in GRID_WORLDS for s in GRID_SPECS] if text == "grid" else text.split(",")
    return [parse_run(t) for t in items if t]


def run_config(spec: RunSpec, points: int, quick: bool = False,
               settings: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
    """configs/synthetic.py for `spec` (":test" sizes when `quick`), checkpointed and evaluated
    `points` times along the budget, every checkpoint kept, with `settings` ({dotted field: value},
    a design experiment's overrides) applied last."""
    from configs import synthetic
    from m2e_jax.benchmarks import quality
    from m2e_jax.models import tryon

    config = synthetic.get_config("test" if quick else None)
    m = config.model
    scale = spec.height / m.height
    scaled = tryon.scaled_model_config(m, scale)  # pixel lengths and the UV tile scale with the image
    m.update({k: scaled[k] for k in ("garment_dilation", "soft_dilation", "feather", "warp_tile")})
    m.update(height=spec.height, width=spec.width, base_channels=m.base_channels * spec.width_mult,
             d_channels=m.d_channels * spec.width_mult)
    config.dataset.world = spec.world
    if spec.num_train != DEMO_TRAIN or not quick:
        config.dataset.num_train = spec.num_train
    shares = {k: int(round(spec.steps * f)) for k, f in STAGE_SHARES.items()}
    config.schedule.update(**shares, joint_steps=spec.steps - sum(shares.values()))
    every = max(1, spec.steps // points)
    config.eval_every = config.image_every = config.checkpoint_every = every
    # Every checkpoint is kept: the points, and the step each SIGTERM saves (with points + 1 kept, two
    # preemptions of the 20k-step run pushed out its first two points before they were scored).
    config.keep_checkpoints = spec.steps
    quality.apply_settings(config, settings or {})
    return config


def _read_json(path: str, default: Any) -> Any:
    """A run's JSON file through the workdir's paths (a disk or gs://), `default` when absent."""
    from m2e_jax import workdir as workdir_lib

    file = workdir_lib.path(path)
    return json.loads(file.read_text()) if file.exists() else default


def _write_json(path: str, value: Any) -> None:
    from m2e_jax import workdir as workdir_lib

    workdir_lib.write_atomic(path, json.dumps(value, indent=1).encode())


def run_settings(workdir: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The run's --set overrides: kept in <workdir>/curve_settings.json by its first invocation; a
    rerun with other overrides is refused (it would train another model into the same run)."""
    path = os.path.join(workdir, "curve_settings.json")
    kept = _read_json(path, None)
    if kept is None:
        _write_json(path, settings)
        return settings
    if settings and settings != kept:
        raise ValueError(f"{workdir} was trained with --set {kept}, not {settings}: give it another --tag")
    return kept


def train_run(spec: RunSpec, workdir: str, points: int, quick: bool = False,
              settings: dict[str, Any] | None = None, log=print) -> bool:
    """Trains (or resumes) the run; True when it reached its budget, False when it stopped early
    (SIGTERM: the trainer saved a checkpoint; rerun to resume). Each invocation that trained adds
    its steps and wall time to <workdir>/curve_wall.json."""
    from m2e_jax import checkpoints, schedule, train

    config = run_config(spec, points, quick, run_settings(workdir, settings or {}))
    total = schedule.total_steps(config.schedule)
    wall_file = os.path.join(workdir, "curve_wall.json")
    latest = lambda: max(checkpoints.complete_steps(os.path.join(workdir, "checkpoints")), default=0)
    done = latest()
    if done < total:
        log(f"[{spec.name}] training from step {done} to {total}")
        start = time.perf_counter()
        train.train_and_evaluate(config, workdir)
        wall = _read_json(wall_file, []) + [{"from_step": done, "to_step": latest(),
                                             "wall_s": time.perf_counter() - start,
                                             "machine": common.machine_line()}]
        _write_json(wall_file, wall)
    if latest() < total:
        log(f"[{spec.name}] stopped at step {latest()} of {total}: rerun the same command to resume")
        return False
    return True


def score_run(spec: RunSpec, workdir: str, photo: tuple[int, int], num: int, quick: bool = False,
              log=print) -> dict[str, Any]:
    """{step: {"network": {method: {ssim, lpips}}, "photo": {...}}} for every checkpoint of the run,
    scoring only those not in <workdir>/curve_scores.json yet."""
    from m2e_jax import checkpointing, checkpoints
    from m2e_jax.benchmarks import fullres

    path = os.path.join(workdir, "curve_scores.json")
    scores = _read_json(path, {})
    steps = checkpoints.complete_steps(os.path.join(workdir, "checkpoints"))
    for step in steps:
        key = str(step)
        if key in scores:
            continue
        t0 = time.perf_counter()
        config, params, _ = checkpointing.load_generators(checkpointing.find_step(workdir=workdir, step=step))
        factor = photo[0] / config.model.height
        if factor != int(factor) or photo[1] != config.model.width * factor:
            raise ValueError(f"--photo {photo}: not a whole multiple of the networks' "
                             f"{config.model.height}x{config.model.width}")
        rows = fullres.bench_scale(config, params, int(factor), num, HELD_OUT_SEED, with_conv=False,
                                   world=spec.world, parsings=(True,))
        entry = {"photo": {r["method"]: {"ssim": r["ssim_r"], "lpips": r["lpips_r"]} for r in rows},
                 "network": network_scores(workdir, step)}
        scores[key] = entry
        _write_json(path, scores)
        log(f"[{spec.name}] step {step}: photo SSIM(R_P) try-on {entry['photo']['full']['ssim']:.3f} "
            f"PAN {entry['photo']['pan']['ssim']:.3f} warp {entry['photo']['warp']['ssim']:.3f} "
            f"({time.perf_counter() - t0:.0f} s)")
    return scores


def network_scores(workdir: str, step: int) -> dict[str, dict[str, float]]:
    """{method: {ssim, lpips}} in R_P on the unpaired test split at the network's size, from the
    training loop's own evaluation at `step` (eval/step_<step>.json; empty where it has none)."""
    from m2e_jax import train

    record = _read_json(str(train.eval_file(workdir, step)), {})
    table = record.get("metrics", {}).get("unpaired", {})
    return {net: {"ssim": table[net]["ssim_masked"], "lpips": table[net].get("lpips_masked", float("nan"))}
            for _, net, _ in METHODS if net in table}


def ftn_start(steps: int) -> int:
    """The step at which a budget of `steps` starts training FTN (stage 3; run_config's shares)."""
    return sum(int(round(steps * STAGE_SHARES[k])) for k in ("pan_steps", "trn_steps"))


def final_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per run and method at the run's last scored step (the tables' rows)."""
    rows = []
    for name, run in results.items():
        if not run["scores"]:
            continue
        last = max(run["scores"], key=int)
        entry = run["scores"][last]
        for photo_m, net_m, label in METHODS:
            p, n = entry["photo"].get(photo_m, {}), entry["network"].get(net_m, {})
            rows.append({"run": name, "step": int(last), "method": label,
                         "ssim_photo": p.get("ssim"), "lpips_photo": p.get("lpips"),
                         "ssim_net": n.get("ssim"), "lpips_net": n.get("lpips"),
                         "train_min": run["wall_s"] / 60 if run["wall_s"] else None})
    return rows


ROW_COLUMNS = [("run", "run", "s"), ("step", "step", "d"), ("method", "method", "s"),
               ("ssim_photo", "SSIM R_P (photo)", ".3f"), ("lpips_photo", "LPIPS R_P (photo)", ".3f"),
               ("ssim_net", "SSIM R_P (network)", ".3f"), ("lpips_net", "LPIPS R_P (network)", ".3f"),
               ("train_min", "train min", ".0f")]
# Matplotlib's tab10 without its grey (the baselines are grey), then three dark hues: a world's dozen
# runs get a colour each (8 colours had two reds and two blues on the 10 runs of `hard`).
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194), (188, 189, 34), (0, 0, 128), (128, 0, 0), (0, 100, 0))


def plot_world(world: str, results: dict[str, Any], path: str, photo: str) -> None:
    """PNG: garment-region SSIM (left) and LPIPS (right) at the photo's size against training steps
    (log scale), a line per run (the try-on, solid; PAN alone, thin) and the two baselines dashed."""
    import math

    from PIL import Image, ImageDraw

    runs = {k: r for k, r in results.items() if r["world"] == world and r["scores"]}
    if not runs:
        return
    pw, ph, left, top, bottom, gap = 420, 300, 56, 40, 40, 60
    legend = 16 * (len(runs) + 3) + 10
    img = Image.new("RGB", (2 * (left + pw) + gap, top + ph + bottom + legend), "white")
    draw = ImageDraw.Draw(img)
    steps = [int(s) for r in runs.values() for s in r["scores"]]
    x0, x1 = math.log10(max(1, min(steps)) / 1.3), math.log10(max(steps) * 1.3)
    draw.text((4, 4), f"world '{world}': garment-region scores at {photo} (held-out triplets) against "
                      "training steps", fill=(0, 0, 0))
    for panel, (metric, title) in enumerate((("ssim", "SSIM in R_P (higher is better)"),
                                             ("lpips", "LPIPS in R_P (lower is better)"))):
        ox = left + panel * (left + pw + gap)
        vals = [e["photo"][m][metric] for r in runs.values() for s, e in r["scores"].items()
                for m in ("full", "pan", "warp", "identity")
                if m in e["photo"] and (m != "full" or int(s) > ftn_start(r["steps"]))]
        lo, hi = min(vals), max(vals)
        pad = (hi - lo) * 0.08 or 0.01
        lo, hi = lo - pad, hi + pad

        def xy(step, v, ox=ox, lo=lo, hi=hi):
            return (ox + (math.log10(step) - x0) / (x1 - x0) * pw, top + (hi - v) / (hi - lo) * ph)

        draw.rectangle([ox, top, ox + pw, top + ph], outline=(0, 0, 0))
        draw.text((ox, top - 14), title, fill=(0, 0, 0))
        for k in range(5):
            v = lo + (hi - lo) * k / 4
            y = xy(1, v)[1]
            draw.line([ox - 4, y, ox, y], fill=(0, 0, 0))
            draw.text((ox - 50, y - 6), f"{v:.3f}", fill=(0, 0, 0))
        for t in (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000):
            if x0 <= math.log10(t) <= x1:
                x = xy(t, lo)[0]
                draw.line([x, top + ph, x, top + ph + 4], fill=(0, 0, 0))
                draw.text((x - 12, top + ph + 6), f"{t:,}", fill=(0, 0, 0))
        draw.text((ox + pw // 2 - 30, top + ph + 20), "training steps", fill=(0, 0, 0))
        for i, run in enumerate(runs.values()):
            colour = COLOURS[i % len(COLOURS)]
            pts = sorted((int(s), e["photo"]) for s, e in run["scores"].items())
            for method, width in (("full", 3), ("pan", 1)):
                # Before stage 3 FTN is untrained: its try-on is noise, not a point of the curve.
                first = ftn_start(run["steps"]) if method == "full" else 0
                line = [xy(s, e[method][metric]) for s, e in pts if method in e and s > first]
                if len(line) > 1:
                    draw.line(line, fill=colour, width=width)
                for x, y in line:
                    draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        # The baselines do not train: one value per photo set (the same for every run), dashed.
        base = next(iter(runs.values()))
        last = base["scores"][max(base["scores"], key=int)]["photo"]
        for method, colour in (("warp", (90, 90, 90)), ("identity", (170, 170, 170))):
            y = xy(1, last[method][metric])[1]
            for x in range(int(ox), int(ox + pw), 10):
                draw.line([x, y, x + 5, y], fill=colour, width=2)
    ly = top + ph + bottom
    entries = [(COLOURS[i % len(COLOURS)], f"{r['label']} (thick: M2E-TON, thin: PAN only)")
               for i, r in enumerate(runs.values())]
    entries += [((90, 90, 90), "UV warp pasted (dashed)"), ((170, 170, 170), "P unchanged (dashed)")]
    for i, (colour, text) in enumerate(entries):
        draw.line([left, ly + 16 * i + 7, left + 24, ly + 16 * i + 7], fill=colour, width=3)
        draw.text((left + 30, ly + 16 * i), text, fill=(0, 0, 0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m m2e_jax.benchmarks.curves",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="", help="comma-separated WORLD:HxW:WIDTH:STEPS, or 'grid'")
    ap.add_argument("--report", action="store_true", help="score and report every run under --workdir")
    ap.add_argument("--workdir", default="runs/curves", help="one training workdir per run below it")
    ap.add_argument("--points", type=int, default=6, help="checkpoints scored along each run")
    ap.add_argument("--photo", default="128x96", help="HxW of the held-out photos scored")
    ap.add_argument("--num", type=int, default=24, help="held-out unpaired triplets scored per checkpoint")
    ap.add_argument("--json", default="benchmarks/curves.json")
    ap.add_argument("--plots", default="benchmarks/curves", help="folder for <world>.png")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: one tiny run, configs/synthetic.py:test sizes")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="config override of a design experiment (repeatable; needs --tag)")
    ap.add_argument("--tag", default="", help="names the --set runs apart (a suffix of their folders)")
    a = common.parse_args(ap, argv)
    try:
        from m2e_jax.benchmarks import quality

        settings = quality.parse_settings(a.set)
        if settings and not a.tag:
            raise ValueError("--set needs a --tag naming the experiment's runs")
        specs = [dataclasses.replace(s, tag=a.tag) for s in
                 parse_runs("easy:32x32:1:6" if a.quick and not a.runs else a.runs)]
        for spec in specs:  # every override checked before any training starts
            run_config(spec, a.points, a.quick, settings)
        (photo,) = common.parse_sizes(a.photo, "--photo")
        if a.points < 1 or a.num < 1:
            raise ValueError("--points and --num must be positive")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from absl import logging

    logging.set_verbosity(logging.INFO)  # the trainer's progress lines (steps/s) in the run's log
    from m2e_jax import train

    for spec in specs:
        workdir = os.path.join(a.workdir, spec.name)
        try:
            if not train_run(spec, workdir, a.points, a.quick, settings):
                return 0  # stopped (SIGTERM): the runs after it wait for the rerun
        except train.USER_ERRORS as e:
            print(f"error: [{spec.name}] {e}", file=sys.stderr)
            return 1
        score_run(spec, workdir, photo, a.num, a.quick)
    if not (a.report or a.quick):
        return 0
    results = {}
    from m2e_jax import workdir as workdir_lib

    root = workdir_lib.path(a.workdir)
    names = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    for name in names:
        spec = spec_of_name(name)
        if spec is None:
            continue
        workdir = os.path.join(a.workdir, name)
        scores = score_run(spec, workdir, photo, a.num, a.quick)
        wall = _read_json(os.path.join(workdir, "curve_wall.json"), [])
        results[name] = {**dataclasses.asdict(spec), "label": spec.label, "scores": scores,
                         "settings": _read_json(os.path.join(workdir, "curve_settings.json"), {}),
                         "wall_s": sum(w["wall_s"] for w in wall), "wall": wall}
    for world in sorted({r["world"] for r in results.values()}):
        plot_world(world, results, os.path.join(a.plots, f"{world}.png"), a.photo)
    info = common.machine_info()
    print(common.machine_line(info))
    print(common.format_table(final_rows(results), ROW_COLUMNS))
    common.write_json(a.json, "curves", info, final_rows(results), runs=results, photo=a.photo,
                      held_out_seed=HELD_OUT_SEED, num=a.num)
    return 0


if __name__ == "__main__":
    sys.exit(main())
