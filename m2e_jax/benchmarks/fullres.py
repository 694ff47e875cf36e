"""Try-on at the photo's resolution: `python -m m2e_jax.benchmarks.fullres --workdir W [--quick]`.

Held-out synthetic unpaired triplets (their own seed; `--preset` world, default easy; rendered at 1x,
2x and 4x the network's size, with exact ground truth P*) go through the infer command's library
(m2e_jax.tryon_pipeline: TryOn's steps), and each try-on is scored against P* inside the person's
garment region R_P at the photo's size (masked SSIM, higher is better; masked LPIPS AlexNet, lower
is better), with and without parsing maps (DensePose alone). Methods:

  network    letterbox -> networks at their size -> paste back (`infer --resolution network`)
  full       networks at their size, then the warp, regions and TRN / FTN formulas at the photo's
             size with the networks' maps upsampled (`infer --resolution full`, the default)
  conv       the fully convolutional networks themselves run at the photo's size (warp tile and
             region pixel lengths scaled as in `full`); compared, not offered by infer
  pan        PAN's A (upsampled) pasted into FTN's region of P at the photo's size: PAN alone
  trn        TRN's T (made at the photo's size as in `full`) pasted the same way: PAN + TRN
  warp       the UV warp pasted into R_P at the photo's size (no network; baseline)
  identity   P unchanged (baseline)

Then the latency of one try-on of a `--latency_size` photo pair (default 512x384) from decoded
arrays to the uint8 result, per infer path: median of `--repeats` after a warm-up call (results
fetched to the host, which blocks until ready). Without `--workdir` the networks get random
parameters (for a smoke run only: the scores then mean nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from m2e_jax import checkpointing, densepose, metrics, preprocess
from m2e_jax import tryon_pipeline as pipeline
from m2e_jax.benchmarks import common
from m2e_jax.models import tryon as tryon_lib

METHODS = ("network", "full", "conv", "pan", "trn", "warp", "identity")
DEFAULT_SEED = 20261201  # not a training seed: identities, garments and poses the networks never saw


def load_networks(workdir: str | None, quick: bool,
                  step: int | None = None) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, generator params): the workdir's checkpoint `step` (default: its latest), else random
    parameters for configs/synthetic.py (its `test` variant with --quick). Raises
    checkpointing.CheckpointError (one line) where the workdir has no such checkpoint."""
    if workdir:
        config, params, _ = checkpointing.load_generators(checkpointing.find_step(workdir, step=step))
        return config, params
    from configs import synthetic

    config = synthetic.get_config("test" if quick else None)
    return config, jax.device_get(tryon_lib.init_params(config.model, jax.random.key(0)))


def load_networks_or_exit(ap: argparse.ArgumentParser, workdir: str | None, quick: bool,
                          step: int | None = None) -> tuple[ml_collections.ConfigDict, dict]:
    """load_networks for a command line: a workdir without that checkpoint ends the command in one
    line naming it (exit 2), not a traceback."""
    try:
        return load_networks(workdir, quick, step)
    except checkpointing.CheckpointError as e:
        ap.exit(2, f"{ap.prog}: error: {' '.join(str(e).split())}\n")


def held_out(seed: int, num: int, height: int, width: int, kind: str, world: str = "easy") -> list[dict]:
    """`num` unpaired test triplets with ground truth at height x width (synthetic world `world`)."""
    from m2e_jax.synthetic import dataset

    return dataset.make_examples(seed, "test", num, height, width, paired_fraction=0.0, garment_kind=kind,
                                 world_cfg=world)


def pair_of(ex: dict, parsing: bool) -> pipeline.Pair:
    """The example's two photos as infer reads them: parsing label maps (kind + 1 on the garment), or
    none (DensePose alone)."""
    model, person = pipeline.example_photos(ex)
    if not parsing:
        model, person = (dataclasses.replace(p, parse=None) for p in (model, person))
    return pipeline.Pair(model, person)


def conv_config(config: ml_collections.ConfigDict, height: int, width: int, scale: float):
    """The config with the networks at height x width and the pixel lengths scaled by `scale`."""
    scaled = ml_collections.ConfigDict(tryon_lib.scaled_model_config(config.model, scale))
    out = ml_collections.ConfigDict(config)
    out.model = scaled
    out.model.update(height=height, width=width)
    return out


def score_region(person_iuv: np.ndarray, person_mask: np.ndarray, model_cfg, kind: str, scale: float):
    """R_P `[B, h, w, 1]` at the photos' size: the DensePose garment parts (dilation scaled) joined with
    the person's true garment mask, the same pixels for every method and parsing condition."""
    cfg = tryon_lib.scaled_model_config(model_cfg, scale)
    region = densepose.garment_region(jnp.asarray(person_iuv), kind, cfg.garment_dilation,
                                      jnp.asarray(person_mask, jnp.float32))
    return region


def bench_scale(config, params, factor: int, num: int, seed: int, lpips_net: str = "alexnet",
                with_conv: bool = True, world: str = "easy", parsings: Sequence[bool] = (True, False)
                ) -> list[dict]:
    """Rows {scale, parsing, method, ssim_r, lpips_r, count} for photos `factor` x the network size,
    with parsing maps and / or without (`parsings`)."""
    h, w = config.model.height * factor, config.model.width * factor
    kind_name = config.model.garment_kind
    kind = densepose.GARMENT_KINDS.index(kind_name)
    examples = held_out(seed, num, h, w, kind_name, world)
    net = pipeline.TryOn(config, params)
    conv_net = None
    if with_conv and factor > 1:
        conv_net = pipeline.TryOn(conv_config(config, h, w, float(factor)), params)
    target = jnp.asarray(np.stack([preprocess.to_float(ex["target_image"]) for ex in examples]))
    region = score_region(np.stack([ex["person_iuv"] for ex in examples]),
                          np.stack([ex["person_mask"] for ex in examples]), config.model, kind_name, factor)
    lp = metrics.lpips_params(lpips_net)
    rows = []
    for parsing in parsings:
        pairs = [pair_of(ex, parsing) for ex in examples]
        images: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
        for pair, fit, out, full in photo_tryons(net, pairs, kind):
            images["network"].append(net.compose(pair.model, pair.person, fit, out, kind, "network")[0])
            person = pair.person.image
            images["full"].append(preprocess.keep_person(person, full["output"], full["soft_region"]))
            r = full["ftn_region"]
            for method, key in (("pan", "aligned"), ("trn", "refined")):
                pasted = preprocess.to_float(person) * (1 - r) + full[key] * r
                images[method].append(preprocess.to_uint8(pasted))
            paste = full["region"] * full["valid"]
            images["warp"].append(preprocess.to_uint8(preprocess.to_float(person) * (1 - paste)
                                                      + full["warped"] * paste))
            images["identity"].append(person)
        if conv_net is not None:
            results = conv_net.tryon(pairs, kind, "network", batch_size=1)
            images["conv"] = [r.image for r in results]
        elif factor == 1:
            images["conv"] = images["network"]  # at the network's size the two are one path
        for method in METHODS:
            if not images[method]:
                continue
            pred = np.stack([preprocess.to_float(x) for x in images[method]])
            rows.append({"photo": f"{h}x{w}", "scale": f"{factor}x", "parsing": "yes" if parsing else "no",
                         "method": method, **region_scores(pred, target, region, lpips_net, lp),
                         "count": num})
    return rows


def photo_tryons(net: pipeline.TryOn, pairs: Sequence[pipeline.Pair], kind: int, batch_size: int = 8
                 ) -> list[tuple[pipeline.Pair, tuple, dict, dict]]:
    """(pair, fitted, out, full) per pair: the networks' outputs `out` at their size (TryOn.run on
    the letterboxed pair `fitted`) and the try-on at the photo's size `full` (TryOn.full_resolution:
    output, warped, valid, region, refined, ...). One forward pass per example serves both infer
    resolutions and the warp baseline: the pipeline's steps one by one (TryOn.tryon would run the
    networks once per resolution)."""
    fitted = [net.fit(pair) for pair in pairs]
    outs = net.run([pipeline.make_example(m, p, kind) for m, p in fitted],
                   batch_size=min(batch_size, len(pairs)))
    return [(pair, fit, out, net.full_resolution(pair.model, pair.person, out, fit[1].box, kind))
            for pair, fit, out in zip(pairs, fitted, outs)]


def region_scores(pred, target, region, lpips_net: str, lpips_params=None) -> dict[str, float]:
    """{ssim_r, lpips_r}: means over the batch of masked SSIM and masked LPIPS (`lpips_net`; NaN when
    "") of `pred` against `target` (float `[B, h, w, 3]` in [-1, 1]) inside `region` `[B, h, w, 1]`."""
    pred, target = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
    lpips = (float(jnp.mean(metrics.masked_lpips(pred, target, region, lpips_net, lpips_params)))
             if lpips_net else float("nan"))
    return {"ssim_r": float(jnp.mean(metrics.masked_ssim(pred, target, region))), "lpips_r": lpips}


def bench_latency(config, params, size: tuple[int, int], repeats: int, seed: int,
                  with_conv: bool = True) -> list[dict]:
    """ms for one try-on of a photo pair of `size`, from decoded arrays to the uint8 result, per
    method: infer's two resolutions, and (with_conv) the networks run at the photo's size."""
    kind_name = config.model.garment_kind
    kind = densepose.GARMENT_KINDS.index(kind_name)
    (ex,) = held_out(seed + 1, 1, size[0], size[1], kind_name)
    pair = pair_of(ex, parsing=False)
    net = pipeline.TryOn(config, params)
    runs = [(resolution, net, resolution) for resolution in pipeline.RESOLUTIONS]
    stride = 2 ** max(config.model.num_downsamples, config.model.d_layers)
    if with_conv and size[0] % stride == 0 and size[1] % stride == 0:
        scale = min(size[0] / config.model.height, size[1] / config.model.width)
        runs.append(("conv", pipeline.TryOn(conv_config(config, size[0], size[1], scale), params), "network"))
    rows = []
    for method, tryon, resolution in runs:
        def one(tryon=tryon, resolution=resolution):
            return tryon.tryon([pair], kind, resolution)[0].image

        t0 = time.perf_counter()
        jax.block_until_ready(one())
        first_s = time.perf_counter() - t0
        rows.append({"photo": f"{size[0]}x{size[1]}", "method": method, "first_call_s": first_s,
                     "ms": common.median_ms(one, repeats, warmup=1)})
    return rows


SCORE_COLUMNS = [("photo", "photo", "s"), ("scale", "scale", "s"), ("parsing", "parsing", "s"),
                 ("method", "method", "s"), ("ssim_r", "SSIM (R_P)", ".4f"),
                 ("lpips_r", "LPIPS (R_P)", ".4f"), ("count", "n", "d")]
LATENCY_COLUMNS = [("photo", "photo", "s"), ("method", "method", "s"),
                   ("first_call_s", "first call s", ".1f"), ("ms", "ms/try-on", ".0f")]


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m m2e_jax.benchmarks.fullres",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="trained workdir (default: random parameters)")
    ap.add_argument("--num", type=int, default=None, help="held-out triplets per size (default 24, quick 2)")
    ap.add_argument("--scales", default=None, help="photo sizes in network sizes (default 1,2,4; quick 1,2)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="synthetic world seed of the held-out set")
    ap.add_argument("--preset", default="easy", help="world preset of the held-out set: easy, medium, hard")
    ap.add_argument("--latency_size", default=None, help="HxW of the timed try-on (default 512x384)")
    ap.add_argument("--repeats", type=int, default=None, help="timed try-ons (default 5, quick 1)")
    ap.add_argument("--no_conv", action="store_true", help="skip the networks-at-photo-size method")
    ap.add_argument("--no_scores", action="store_true", help="latency only")
    ap.add_argument("--quick", action="store_true",
                    help="tiny smoke run: 2 triplets, 1x and 2x, 64x64 latency")
    ap.add_argument("--json", default=None)
    a = common.parse_args(ap, argv)
    num = a.num or (2 if a.quick else 24)
    scales = common.parse_ints(a.scales or ("1,2" if a.quick else "1,2,4"), "--scales")
    (latency_size,) = common.parse_sizes(a.latency_size or ("64x64" if a.quick else "512x384"),
                                         "--latency_size")
    repeats = a.repeats or (1 if a.quick else 5)
    info = common.machine_info()
    print(common.machine_line(info))
    config, params = load_networks_or_exit(ap, a.workdir, a.quick)
    print(f"networks: {config.model.height}x{config.model.width}, "
          f"{'checkpoint of ' + a.workdir if a.workdir else 'random parameters'}; held-out seed {a.seed}, "
          f"world {a.preset!r}")
    t0 = time.perf_counter()
    rows = [] if a.no_scores else [
        r for f in scales for r in bench_scale(config, params, f, num, a.seed, with_conv=not a.no_conv,
                                               world=a.preset)]
    if rows:
        print(f"garment-region scores against the true try-on P*, {num} unpaired triplets per size "
              f"({time.perf_counter() - t0:.0f} s)")
        print(common.format_table(rows, SCORE_COLUMNS))
    latency = bench_latency(config, params, latency_size, repeats, a.seed, with_conv=not a.no_conv)
    print(f"one try-on (decoded arrays -> uint8 result), median of {repeats} after warm-up")
    print(common.format_table(latency, LATENCY_COLUMNS))
    common.write_json(a.json, "fullres", info, rows, latency=latency, workdir=a.workdir, seed=a.seed,
                      preset=a.preset)
    return {"rows": rows, "latency": latency}


if __name__ == "__main__":
    main()
