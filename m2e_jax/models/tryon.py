"""The whole generator pipeline: batch -> UV warp -> PAN -> TRN -> FTN.

`prepare_batch(batch)` turns a data_schema batch (uint8 `[B, ...]`) into float network inputs.
`TryOnNet(model_cfg)` holds the three generators as submodules named exactly `pan`, `trn`, `ftn`,
so its parameter tree is `{"pan": ..., "trn": ..., "ftn": ...}`.

Separate parameter trees per network group (the trainer's choice): the subtrees of that tree are
each network's own parameters, so the trainer keeps three trees and calls the pure function
`tryon_forward({"pan": p, "trn": t, "ftn": f}, inputs, model_cfg)`; the schedule's stages 1 and 2
run a prefix of the pipeline (`upto="pan"` / `"trn"`) and need only those subtrees. One network alone:
`TryOnNet(cfg).apply({"params": {"pan": p}}, ..., method=TryOnNet.run_pan)` (also `run_trn`,
`run_ftn`), or the modules `PAN` / `TRN` / `FTN` directly.

The one forward pass every caller uses (training, image grids, infer, evaluate, the benchmarks):
`forward(params, batch, model_cfg, upto)` on a data_schema batch, or its two halves
`network_inputs(batch, model_cfg)` (prepare_batch + the UV warp) and `tryon_forward(params, inputs,
model_cfg, upto)` when the caller also needs the inputs (the losses and scores read them).
The warp W, V = uv_warp(M, I_M -> I_P) has no parameters: `network_inputs` computes it once per
batch outside the generators' gradient (`coarse_warp`); TryOnNet computes it only when `inputs`
lacks `warped` / `valid`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from m2e_jax import densepose
from m2e_jax.models.defaults import model_config
from m2e_jax.models.discriminators import PatchDiscriminator
from m2e_jax.models.ftn import FTN, fit_output
from m2e_jax.models.pan import PAN
from m2e_jax.models.trn import TRN, blend_texture
from m2e_jax.ops.uv_warp import uv_warp

# The three generators in pipeline order (also the keys of their parameter trees). The schedule's
# stages 1..4 (schedule.py) are something else: which of these networks train when.
NETWORKS = ("pan", "trn", "ftn")
# The networks' maps that `recompose` resizes to another resolution (ftn_gain only with model.ftn_relight).
RESOLUTION_FREE = ("aligned", "texture", "alpha", "ftn_generated", "ftn_mask", "ftn_gain")
# Largest UV atlas tile of `scaled_model_config` (24 x 256 x 256 texels: ~25 MB of float32 planes).
MAX_WARP_TILE = 256


def image_to_float(x):
    """uint8 `[..., 3]` in 0..255 -> float32 in [-1, 1]; float input is returned as float32."""
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 127.5 - 1.0
    return x.astype(jnp.float32)


def prepare_batch(batch: dict[str, Any], model_cfg: Any = None) -> dict[str, jax.Array]:
    """data_schema batch -> float network inputs (jit-friendly; numpy or jax input).

    Returns model_image, person_image, target_image `[B, H, W, 3]` in [-1, 1]; model_iuv,
    person_iuv float IUV `[B, H, W, 3]` (densepose.iuv_to_float); model_mask, person_mask
    `[B, H, W, 1]` float {0, 1}; has_target, paired `[B]` float; region R_P (the garment parts of
    each example's garment_kind, dilated by model.garment_dilation, joined with person_mask) and
    soft_region R~ `[B, H, W, 1]` float. `model_cfg` (config.model) defaults to defaults.model_config().
    """
    cfg = model_cfg if model_cfg is not None else model_config()
    missing = [k for k in ("model_image", "model_iuv", "person_image", "person_iuv") if k not in batch]
    if missing:
        raise ValueError(f"prepare_batch: batch lacks fields {missing} (see m2e_jax/data_schema.py)")
    b = {k: jnp.asarray(v) for k, v in batch.items()}
    out = {k: image_to_float(b[k]) for k in ("model_image", "person_image", "target_image") if k in b}
    out["model_iuv"] = densepose.iuv_to_float(b["model_iuv"])
    out["person_iuv"] = densepose.iuv_to_float(b["person_iuv"])
    n, h, w = out["person_image"].shape[:3]
    for k in ("model_mask", "person_mask"):
        out[k] = b[k].astype(jnp.float32) if k in b else jnp.zeros((n, h, w, 1), jnp.float32)
    for k in ("has_target", "paired"):
        if k in b:
            out[k] = b[k].astype(jnp.float32)
    default_kind = densepose.GARMENT_KINDS.index(cfg.garment_kind)
    kind = b["garment_kind"] if "garment_kind" in b else jnp.full((n,), default_kind, jnp.int32)
    regions = [densepose.garment_region(out["person_iuv"], k, cfg.garment_dilation, out["person_mask"])
               for k in densepose.GARMENT_KINDS]
    region = regions[0]
    for index, r in enumerate(regions[1:], start=1):
        region = jnp.where((kind == index)[:, None, None, None], r, region)
    out["region"] = region
    out["soft_region"] = densepose.soft_region(region, cfg.soft_dilation, cfg.feather)
    return out


def check_image_size(model_cfg, height: int, width: int) -> None:
    """ValueError unless H, W are divisible by the generators' and discriminators' total stride."""
    factor = max(2 ** model_cfg.num_downsamples, 2 ** model_cfg.d_layers)
    if height % factor or width % factor:
        raise ValueError(f"image size {height}x{width} must be divisible by {factor} "
                         f"(2**model.num_downsamples = {2 ** model_cfg.num_downsamples}, "
                         f"2**model.d_layers = {2 ** model_cfg.d_layers}); resize or crop the images")


def has_parsing(model_mask: jax.Array, person_mask: jax.Array) -> jax.Array:
    """`[B]` bool: the example carries parsing masks (either photo's mask has a garment pixel).

    A photo without a parsing map has an all-zero mask (data_schema), so an example whose two masks
    are both empty has no parsing information at all: DensePose alone, as most users have it.
    model_mask, person_mask: `[B, H, W, 1]` (the two may differ in size).
    """
    return (jnp.max(model_mask, axis=(1, 2, 3)) > 0) | (jnp.max(person_mask, axis=(1, 2, 3)) > 0)


def replace_region(region: jax.Array, new_garment: jax.Array, person_mask: jax.Array,
                   parsed: jax.Array) -> jax.Array:
    """FTN's replace region with model.parse_region `[B, H, W, 1]` in [0, 1].

    With parsing masks (`parsed` `[B]` bool, see `has_parsing`): R_P * (1 - (1 - g) * (1 - mask_P)),
    g = `new_garment` (M's garment mask warped into P's pose, times V), mask_P = `person_mask`.
    Pixels that neither the new garment nor P's old garment cover are P's own skin in the result
    too, so FTN keeps them from P instead of painting them with M's skin (our design choice, as in
    parsing-guided try-on such as CP-VTON). Without parsing masks that formula is 0 everywhere
    (FTN would return P unchanged), so those examples get the DensePose-only region R_P itself.
    """
    parsed_region = region * (1.0 - (1.0 - new_garment) * (1.0 - person_mask))
    return jnp.where(parsed[:, None, None, None], parsed_region, region)


def paint_region(region: jax.Array, ftn_region: jax.Array, new_garment: jax.Array, model_mask: jax.Array,
                 person_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(FTN's replace region F, the part of it FTN paints) with model.ftn_paint, `[B, H, W, 1]` in [0, 1].

    M's garment mask warped into P's pose (`new_garment` g, already times the warp's validity V)
    says where M's garment verifiably lands. Elsewhere in F, P* shows P's own skin (a short sleeve
    onto a long one's arm: M's photo shows bare arm there, and T would carry M's skin in M's light)
    or surface M never showed (V = 0: T is TRN's guess there). So FTN paints F * (1 - g) itself
    from P's context (hands, face, the kept photo) and the garment around it, instead of editing T
    (our design choice; measured against painting F * (V - g) only, which leaves the holes to TRN:
    benchmarks/RESULTS.md section 9). Examples with M's parsing map but not P's replace all of R_P
    (`region`): P's old garment is unknown, so FTN repaints every garment-part pixel g does not
    cover. Without M's map g is unknown and nothing is painted (F = `ftn_region`, see
    `replace_region`).
    model_mask, person_mask: `[B, H, W, 1]` parsing masks, all-zero for a photo without one.
    """
    model_parsed = jnp.max(model_mask, axis=(1, 2, 3)) > 0
    person_parsed = jnp.max(person_mask, axis=(1, 2, 3)) > 0
    f = jnp.where((model_parsed & ~person_parsed)[:, None, None, None], region, ftn_region)
    paint = jnp.where(model_parsed[:, None, None, None], f * (1.0 - new_garment), 0.0)
    return f, paint


def _frozen(cfg) -> ml_collections.FrozenConfigDict:
    return cfg if isinstance(cfg, ml_collections.FrozenConfigDict) else ml_collections.FrozenConfigDict(cfg)


class TryOnNet(nn.Module):
    """PAN -> TRN -> FTN on `prepare_batch` output. `__call__(inputs, upto="ftn") -> dict`.

    Output keys (float32): warped W `[B, H, W, 3]`, valid V `[B, H, W, 1]`, region, soft_region
    `[B, H, W, 1]`, aligned A; with upto >= "trn": texture T_g, alpha `[B, H, W, 1]`, refined T;
    with upto == "ftn": ftn_region (the part of R_P that FTN replaces, `replace_region`), output P'
    `[B, H, W, 3]`, ftn_generated (FTN's own image G_img `[B, H, W, 3]`), ftn_mask `[B, H, W, 1]`
    in [0, 1], with model.ftn_relight ftn_gain (T's relighting
    gain `[B, H, W, 3]`, models/ftn.py) and, with model.ftn_paint, ftn_paint (the part
    of ftn_region FTN paints, `paint_region`) `[B, H, W, 1]`.
    Images in [-1, 1].
    """

    model_cfg: ml_collections.FrozenConfigDict

    def setup(self):
        cfg = self.model_cfg
        self.pan = PAN.from_config(cfg)
        self.trn = TRN.from_config(cfg)
        self.ftn = FTN.from_config(cfg)

    def warp(self, inputs) -> tuple[jax.Array, jax.Array]:
        if "warped" in inputs and "valid" in inputs:
            return inputs["warped"], inputs["valid"]
        return coarse_warp(inputs, self.model_cfg)

    def run_pan(self, inputs, warped, valid):
        return self.pan(inputs["model_image"], inputs["model_iuv"], inputs["person_iuv"], warped, valid)

    def run_trn(self, inputs, aligned, warped, valid):
        return self.trn(aligned, warped, valid, inputs["region"], inputs["person_iuv"])

    def ftn_regions(self, inputs, valid) -> tuple[jax.Array, jax.Array | None]:
        """(the part of R_P that FTN replaces, the part of that FTN paints or None), `[B, H, W, 1]`.

        The first is R_P itself, or with model.parse_region the parsing-guided region (module
        function `replace_region`; g = M's garment mask warped into P's pose, times V) for examples
        that have parsing masks, R_P for those without. The second is None unless model.ftn_paint
        (module function `paint_region`, which also widens the first for examples with M's map only).
        """
        cfg = self.model_cfg
        if not cfg.parse_region:
            return inputs["region"], None
        g, _ = uv_warp(inputs["model_mask"], inputs["model_iuv"], inputs["person_iuv"],
                       tile_size=cfg.warp_tile, fill_iters=cfg.warp_fill_iters)
        g = jax.lax.stop_gradient(jnp.clip(g.astype(jnp.float32), 0.0, 1.0) * valid)
        f = replace_region(inputs["region"], g, inputs["person_mask"],
                           has_parsing(inputs["model_mask"], inputs["person_mask"]))
        if not cfg.ftn_paint:
            return f, None
        return paint_region(inputs["region"], f, g, inputs["model_mask"], inputs["person_mask"])

    def replace_region(self, inputs, valid) -> jax.Array:
        """The part of R_P that FTN replaces `[B, H, W, 1]` in [0, 1] (see `ftn_regions`)."""
        return self.ftn_regions(inputs, valid)[0]

    def run_ftn(self, inputs, refined, region=None, paint=None):
        """FTN's dict: `output` P', `ftn_generated` G_img and `ftn_mask` (composition mask m).

        region: the part of R_P to replace (default R_P; see `ftn_regions`); paint: the part of it
        FTN paints from P's context (model.ftn_paint), None otherwise.
        """
        region = inputs["region"] if region is None else region
        parts = self.ftn(inputs["person_image"], refined, region, inputs["soft_region"], inputs["person_iuv"],
                         paint=paint, with_parts=True, model_image=inputs["model_image"])
        out = {"output": parts["output"], "ftn_generated": parts["generated"], "ftn_mask": parts["mask"]}
        if paint is not None:
            out["ftn_paint"] = paint
        if "gain" in parts:
            out["ftn_gain"] = parts["gain"]
        return out

    def __call__(self, inputs, upto: str = "ftn"):
        if upto not in NETWORKS:
            raise ValueError(f"TryOnNet: upto must be one of {NETWORKS}, got {upto!r}")
        check_image_size(self.model_cfg, *inputs["person_image"].shape[1:3])
        warped, valid = self.warp(inputs)
        warped = warped.astype(jnp.float32)
        valid = valid.astype(jnp.float32)
        out = {"warped": warped, "valid": valid, "region": inputs["region"],
               "soft_region": inputs["soft_region"]}
        out["aligned"] = self.run_pan(inputs, warped, valid)
        if upto == "pan":
            return out
        out.update(self.run_trn(inputs, out["aligned"], warped, valid))
        if upto == "trn":
            return out
        out["ftn_region"], paint = self.ftn_regions(inputs, valid)
        out.update(self.run_ftn(inputs, out["refined"], out["ftn_region"], paint))
        return out


def coarse_warp(inputs: dict[str, jax.Array], model_cfg) -> tuple[jax.Array, jax.Array]:
    """The UV warp of M into P's pose: W `[B, H, W, 3]` in [-1, 1] and V `[B, H, W, 1]` in {0, 1}, float32.

    Parameter-free, so no gradient is taken through it (stop_gradient keeps XLA from building one).
    """
    warped, valid = uv_warp(inputs["model_image"], inputs["model_iuv"], inputs["person_iuv"],
                            tile_size=model_cfg.warp_tile, fill_iters=model_cfg.warp_fill_iters)
    return (jax.lax.stop_gradient(warped.astype(jnp.float32)),
            jax.lax.stop_gradient(valid.astype(jnp.float32)))


def network_inputs(batch: dict[str, Any], model_cfg) -> dict[str, jax.Array]:
    """prepare_batch output plus the coarse warp `warped` W and `valid` V (jit-friendly)."""
    inputs = prepare_batch(batch, model_cfg)
    inputs["warped"], inputs["valid"] = coarse_warp(inputs, model_cfg)
    return inputs


def forward(params: dict[str, Any], batch: dict[str, Any], model_cfg,
            upto: str = "ftn") -> dict[str, jax.Array]:
    """data_schema batch (uint8 `[B, ...]`) -> TryOnNet outputs; the forward pass of every caller.

    Pure and jit-friendly: callers jit it themselves (`jax.jit(forward, static_argnames=
    ("model_cfg", "upto"))` with a FrozenConfigDict, so jax's cache shares one compilation per
    config and batch shape).
    """
    return tryon_forward(params, network_inputs(batch, model_cfg), model_cfg, upto)


def make_tryon(model_cfg) -> TryOnNet:
    return TryOnNet(_frozen(model_cfg))


def init_params(model_cfg, rng: jax.Array, batch_size: int = 1) -> dict[str, Any]:
    """Random parameters `{"pan": ..., "trn": ..., "ftn": ...}` for images model.height x model.width."""
    net = make_tryon(model_cfg)
    # jit: eager init dispatches op by op and is ~10x slower on CPU.
    return jax.jit(net.init)(rng, dummy_inputs(model_cfg, batch_size))["params"]


def dummy_inputs(model_cfg, batch_size: int = 1) -> dict[str, jax.Array]:
    """All-zero `prepare_batch`-shaped inputs (with warped / valid) for init and shape checks."""
    h, w = model_cfg.height, model_cfg.width
    img = jnp.zeros((batch_size, h, w, 3), jnp.float32)
    mask = jnp.zeros((batch_size, h, w, 1), jnp.float32)
    return {"model_image": img, "person_image": img, "model_iuv": img, "person_iuv": img,
            "warped": img, "valid": mask, "region": mask, "soft_region": mask, "model_mask": mask,
            "person_mask": mask}


def tryon_forward(params: dict[str, Any], inputs: dict[str, jax.Array], model_cfg,
                  upto: str = "ftn") -> dict[str, jax.Array]:
    """Pure forward pass from per-network parameter trees `{"pan": p, "trn": t, "ftn": f}`.

    Only the networks up to `upto` need parameters.
    """
    needed = NETWORKS[: NETWORKS.index(upto) + 1] if upto in NETWORKS else NETWORKS
    missing = [k for k in needed if k not in params]
    if missing:
        raise ValueError(f"tryon_forward(upto={upto!r}): no parameters for {missing}")
    return make_tryon(model_cfg).apply({"params": {k: params[k] for k in needed}}, inputs, upto=upto)


def build_discriminators(model_cfg, **overrides) -> dict[str, PatchDiscriminator]:
    """The two pose-conditional PatchGANs: "pan" scores A, "final" scores P' (both with enc(I_P))."""
    return {name: PatchDiscriminator.from_config(model_cfg, **overrides)
            for name in ("pan", "final")}


def discriminate(model_cfg, name: str, params: Any, image: jax.Array, person_iuv: jax.Array) -> jax.Array:
    """Patch logits of discriminator `name` ("pan" | "final") on `image` `[B, H, W, 3]` in pose I_P."""
    return build_discriminators(model_cfg)[name].apply({"params": params}, image, person_iuv)


# ---------------------------------------------------------------- other resolutions

def scaled_model_config(model_cfg, scale: float) -> ml_collections.FrozenConfigDict:
    """model_cfg for the same networks' formulas on images `scale` times the network's size.

    The pixel lengths scale with the image (model.garment_dilation, soft_dilation, feather, rounded)
    and the UV atlas tile with it (model.warp_tile, capped at MAX_WARP_TILE), so a full-resolution
    photo gets the regions and the warp detail the network size had, at its own pixel density.
    height / width are left as they are: nothing here runs a network.
    """
    cfg = ml_collections.ConfigDict(_frozen(model_cfg))
    if scale <= 0:
        raise ValueError(f"scaled_model_config: scale must be positive, got {scale}")
    for name in ("garment_dilation", "soft_dilation", "feather"):
        cfg[name] = int(round(cfg[name] * scale))
    cfg.warp_tile = int(min(MAX_WARP_TILE, max(cfg.warp_tile, round(cfg.warp_tile * scale))))
    return _frozen(cfg)


def recompose(maps: dict[str, jax.Array], inputs: dict[str, jax.Array], model_cfg) -> dict[str, jax.Array]:
    """TRN's and FTN's output formulas evaluated at the resolution of `inputs`.

    TRN's T = R_P (alpha W + (1 - alpha) T_g) + (1 - R_P) A and FTN's composite (ftn.fit_output) are
    pixel-wise, so with the networks' resolution-free maps resized to a photo's size (`maps`:
    RESOLUTION_FREE keys, `[B, h, w, C]`; ftn_gain absent without model.ftn_relight) and the warp W, V,
    regions and P computed at that size (`inputs`: prepare_batch output at any size, with warped and
    valid), the garment keeps the warp's full-resolution detail where TRN's alpha and FTN's mask pass
    it through, and the networks' own pixels (T_g, G_img, A) arrive upsampled where they paint.
    Returns refined T, ftn_region and output P' `[B, h, w, C]` float32 in [-1, 1].
    """
    refined = blend_texture(maps["aligned"], inputs["warped"], maps["texture"], maps["alpha"],
                            inputs["region"])
    net = make_tryon(model_cfg)
    region, paint = net.apply({"params": {}}, inputs, inputs["valid"], method=TryOnNet.ftn_regions)
    output = fit_output(inputs["person_image"], refined, region, inputs["soft_region"],
                        maps["ftn_generated"], maps["ftn_mask"], paint, maps.get("ftn_gain"))
    return {"refined": refined, "ftn_region": region, "output": output}


def full_resolution_tryon(maps: dict[str, jax.Array], batch: dict[str, Any],
                          model_cfg) -> dict[str, jax.Array]:
    """The try-on at the photos' own resolution from the networks' maps (see `recompose`).

    batch: data_schema fields at the photos' sizes (uint8; M's fields may have another size than
    P's), one batch per size; model_cfg: `scaled_model_config` for P's scale. Returns warped, valid,
    region, soft_region, aligned (PAN's A, upsampled), refined, ftn_region, output at P's size (float32).
    """
    cfg = _frozen(model_cfg)
    inputs = network_inputs(batch, cfg)
    return {"warped": inputs["warped"], "valid": inputs["valid"], "region": inputs["region"],
            "soft_region": inputs["soft_region"], "aligned": maps["aligned"], **recompose(maps, inputs, cfg)}
