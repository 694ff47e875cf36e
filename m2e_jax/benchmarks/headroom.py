"""What bounds the try-on's garment-region scores at the photo's size:
`python -m m2e_jax.benchmarks.headroom --workdir W [--preset hard] [--scale 2]`.

The held-out unpaired triplets of `curves` (their own seed, photos `--scale` x the networks' size,
exact truth P*) are scored inside R_P (masked SSIM, higher is better; masked LPIPS AlexNet, lower is
better; fullres.score_region) for two kinds of image:
- references made from the truth alone, no network: P* brought down to the networks' size and back
  up (what a perfect network-size image becomes at the photo's size: bilinear, as infer's `full`
  upsamples its maps, and bicubic), P* blurred (Gaussian, sigma 0.5 and 1 px) and shifted (1, 2 and
  3 px to the right), and R_P filled with its mean colour: how each metric weighs blur against
  misalignment;
- composites of the checkpoint's full-resolution try-on P' (infer's `full`), its UV warp W where the
  warp is valid in the garment region (V R_P > 0.5) and the truth: W where valid and P* elsewhere
  (the warp's own errors), P* where valid and P' elsewhere (the filling of what the warp lacks), W
  where valid and P' elsewhere (TRN's alpha and FTN's mask at 1), and a per-pixel oracle taking W or
  P', whichever is nearer P* in L1 (the best any composition mask between the two could do).
and what FTN does to TRN's T (model.ftn_paint, model.ftn_relight): P' with FTN's relight left out
(gain 1; only with a relighting checkpoint) and T pasted into FTN's region with no FTN at all.
With them: the share of R_P the warp covers, the share of those pixels where W is nearer P* than
P', and TRN's mean alpha there and FTN's mean composition mask m over R_P (the networks' own choice;
m before the paint map: where FTN paints, `models.ftn.fit_output`, its G_img is P' whatever m is).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from m2e_jax import densepose, metrics, preprocess, scoring
from m2e_jax import tryon_pipeline as pipeline
from m2e_jax.benchmarks import common, curves, fullres

COLUMNS = (("image", "image", "s"), ("ssim_r", "SSIM R_P", ".3f"), ("lpips_r", "LPIPS R_P", ".4f"))


def shift_right(x: np.ndarray, pixels: int) -> np.ndarray:
    """`[B, h, w, C]` moved `pixels` to the right, the left edge column repeated."""
    return np.concatenate([np.repeat(x[:, :, :1], pixels, axis=2), x[:, :, :-pixels]], axis=2)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """`[B, h, w, C]` blurred by a separable Gaussian (radius 3 sigma, edges repeated)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="edge")
        n = x.shape[axis]
        x = sum(k * np.take(padded, np.arange(i, i + n), axis=axis) for i, k in enumerate(kernel))
    return x.astype(np.float32)


def truth_references(target: np.ndarray, region: np.ndarray, factor: int) -> dict[str, np.ndarray]:
    """Images made from the truth alone (module docstring), float `[B, h, w, 3]` in [-1, 1]; the
    round trips through the networks' size only when the photo is `factor` > 1 times larger."""
    b, h, w, c = target.shape
    mean = (target * region).sum((1, 2), keepdims=True) / np.maximum(region.sum((1, 2), keepdims=True), 1.0)
    refs = {"P* (itself)": target}
    if factor > 1:
        small = jax.image.resize(jnp.asarray(target), (b, h // factor, w // factor, c), "linear",
                                 antialias=True)
        for method in ("linear", "cubic"):
            up = jax.image.resize(small, target.shape, method)
            refs[f"P* at the networks' size, {method} up"] = np.clip(np.asarray(up), -1.0, 1.0)
    refs.update({f"P* blurred, sigma {s} px": gaussian_blur(target, s) for s in (0.5, 1.0)})
    refs.update({f"P* shifted {d} px": shift_right(target, d) for d in (1, 2, 3)})
    refs["R_P filled with its mean colour"] = np.broadcast_to(mean, target.shape)
    return refs


def nearer(a: np.ndarray, b: np.ndarray, target: np.ndarray) -> np.ndarray:
    """bool `[B, h, w, 1]`: where `a` is nearer `target` than `b` (L1 over the channels)."""
    return np.abs(a - target).mean(-1, keepdims=True) < np.abs(b - target).mean(-1, keepdims=True)


def composites(tryon: np.ndarray, warped: np.ndarray, valid: np.ndarray, target: np.ndarray
               ) -> dict[str, np.ndarray]:
    """The try-on, the warp and the truth combined (module docstring); float `[B, h, w, 3]`.
    `valid`: bool `[B, h, w, 1]`, the pixels of R_P the warp covers."""
    return {
        "W where valid, P* elsewhere": np.where(valid, warped, target),
        "P* where valid, P' elsewhere": np.where(valid, target, tryon),
        "W where valid, P' elsewhere (alpha = m = 1)": np.where(valid, warped, tryon),
        "per-pixel oracle: W or P', the nearer":
            np.where(valid & nearer(warped, tryon, target), warped, tryon),
    }


def share(values: np.ndarray, where: np.ndarray) -> float:
    """Mean of `values` over the pixels where `where` holds (broadcast)."""
    where = np.broadcast_to(where, values.shape)
    return float(values[where].mean()) if where.any() else float("nan")


def as_seen(pair, output: np.ndarray, soft_region: np.ndarray) -> np.ndarray:
    """A full-resolution try-on `output` (float `[h, w, 3]`) as infer writes it: P's own bytes outside
    R~ (`preprocess.keep_person`), back as float in [-1, 1]."""
    return preprocess.to_float(preprocess.keep_person(pair.person.image, output, soft_region))


def measure(config, params, factor: int, num: int, seed: int, world: str, lpips_net: str = "alexnet"
            ) -> tuple[list[dict], dict[str, float]]:
    """(rows {image, ssim_r, lpips_r}, shares) on `num` held-out triplets of `world` at `factor` x
    the networks' size (parsing maps given, as `curves` scores)."""
    h, w = config.model.height * factor, config.model.width * factor
    kind_name = config.model.garment_kind
    kind = densepose.GARMENT_KINDS.index(kind_name)
    examples = fullres.held_out(seed, num, h, w, kind_name, world)
    target = np.stack([preprocess.to_float(ex["target_image"]) for ex in examples])
    region = np.asarray(fullres.score_region(np.stack([ex["person_iuv"] for ex in examples]),
                                             np.stack([ex["person_mask"] for ex in examples]),
                                             config.model, kind_name, factor))
    net = pipeline.TryOn(config, params)
    pairs = [fullres.pair_of(ex, True) for ex in examples]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("tryon", "unlit", "trn", "warped", "covered",
                                                           "alpha", "mask")}
    for pair, fit, out, full in fullres.photo_tryons(net, pairs, kind):
        parts["tryon"].append(as_seen(pair, full["output"], full["soft_region"]))
        if "ftn_gain" in out:  # the same maps without FTN's gain: recompose leaves T unlit
            unlit = {k: v for k, v in out.items() if k != "ftn_gain"}
            full_unlit = net.full_resolution(pair.model, pair.person, unlit, fit[1].box, kind)
            parts["unlit"].append(as_seen(pair, full_unlit["output"], full["soft_region"]))
        person = preprocess.to_float(pair.person.image)
        parts["trn"].append(np.asarray(scoring.stage_images(full, person)["trn_pasted"]))
        parts["warped"].append(full["warped"])
        parts["covered"].append(full["valid"] * full["region"])
        maps = preprocess.upsample_maps(out, fit[1].box, ("alpha", "ftn_mask"))
        parts["alpha"].append(maps["alpha"])
        parts["mask"].append(maps["ftn_mask"])
    tryon, warped, alpha, mask = (np.stack(parts[k]) for k in ("tryon", "warped", "alpha", "mask"))
    valid = np.stack(parts["covered"]) > 0.5
    person = np.stack([preprocess.to_float(pair.person.image) for pair in pairs])
    images = {"P' (the try-on, infer's full)": tryon, "W pasted where valid (the warp baseline)":
              np.where(valid, warped, person),
              "T pasted in FTN's region (TRN's output, no FTN)": np.stack(parts["trn"]),
              **({"P' with FTN's relight left out (gain 1)": np.stack(parts["unlit"])}
                 if parts["unlit"] else {}),
              **composites(tryon, warped, valid, target),
              **truth_references(target, region, factor)}
    lp = metrics.lpips_params(lpips_net) if lpips_net else None
    rows = [{"image": name, **fullres.region_scores(img, target, region, lpips_net, lp)}
            for name, img in images.items()]
    inside = region > 0.5
    shares = {"warp_covers_region": share(valid.astype(np.float32), inside),
              "warp_nearer_where_valid": share(nearer(warped, tryon, target).astype(np.float32),
                                               inside & valid),
              "trn_alpha_where_valid": share(alpha, inside & valid),
              "ftn_mask_in_region": share(mask, inside)}
    return rows, shares


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m m2e_jax.benchmarks.headroom",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="trained workdir (default: random parameters)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    ap.add_argument("--preset", default="hard", help="world preset of the held-out set: easy, medium, hard")
    ap.add_argument("--scale", type=int, default=2, help="photo size in network sizes")
    ap.add_argument("--num", type=int, default=None, help="held-out triplets (default 24, quick 2)")
    ap.add_argument("--seed", type=int, default=curves.HELD_OUT_SEED, help="world seed of the held-out set")
    ap.add_argument("--lpips_net", default="alexnet", help="alexnet, vgg16, or '' for SSIM only")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: random configs/synthetic.py:test networks")
    ap.add_argument("--json", default=None)
    a = common.parse_args(ap, argv)
    if a.scale < 1:
        ap.error("--scale must be at least 1")
    if a.lpips_net and a.lpips_net not in metrics.LPIPS_NETS:
        ap.error(f"--lpips_net: expected one of {metrics.LPIPS_NETS} or ''")
    num = a.num or (2 if a.quick else 24)
    info = common.machine_info()
    print(common.machine_line(info))
    config, params = fullres.load_networks_or_exit(ap, a.workdir, a.quick, a.step)
    t0 = time.perf_counter()
    rows, shares = measure(config, params, a.scale, num, a.seed, a.preset, a.lpips_net)
    print(f"{num} held-out triplets of world {a.preset!r} (seed {a.seed}) at {a.scale}x the networks' "
          f"{config.model.height}x{config.model.width}, {a.workdir or 'random parameters'} "
          f"({time.perf_counter() - t0:.0f} s)")
    print(common.format_table(rows, COLUMNS))
    print("; ".join(f"{k}: {v:.3f}" for k, v in shares.items()))
    common.write_json(a.json, "headroom", info, rows, shares=shares, workdir=a.workdir, step=a.step,
                      preset=a.preset, scale=a.scale, seed=a.seed)
    return {"rows": rows, "shares": shares}


if __name__ == "__main__":
    main()
