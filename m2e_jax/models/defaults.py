"""Default `config.model` and `config.loss` (the trainer's configs/*.py start from these).

config.model:
  height, width        256, 192   image size; divisible by 2**num_downsamples and 2**d_layers
  base_channels        64         generator width after the 7x7 input conv
  num_downsamples      2          stride-2 downsamples (width doubles each, capped at 8x)
  pan_blocks, trn_blocks, ftn_blocks   9, 3, 6   residual blocks per generator
  ftn_mode             "composite" | "direct"   FTN edits the pasted composite through a mask, or
                                    paints R~ from scratch (method.md's formula); see models/ftn.py
  ftn_mask_offset      3.0        added to the mask logit: m ~ sigmoid(3) = 0.95 at initialisation
  pan_inputs           "model_and_warp" | "model_only"   PAN sees the coarse warp W, V (ours) or
                                  only M, I_M, I_P (the paper's PAN; the ablation "PAN without warp")
  parse_region         False      FTN replaces only warp(M's garment mask) | P's garment mask inside R_P
                                  and keeps P's uncovered skin (needs model_mask / person_mask data);
                                  examples without parsing masks (both empty) replace R_P itself
  parse_dropout        0.0        share of training examples whose parsing masks are dropped (both
                                  zeroed), so one network serves photos with and without parsing maps
                                  (DensePose alone); 0 with parse_region: the checkpoint needs them
  ftn_paint            False      with parse_region: FTN sees T only where M's warped garment lands and
                                  paints the rest of its region (P's old garment there: skin, holes)
                                  from P's own context (models/tryon.py `paint_region`); an example
                                  with M's parsing map but not P's gets all of R_P to replace
  person_parse_dropout 0.0        share of training examples that lose P's parsing mask only (M's is
                                  kept): with ftn_paint, FTN then repaints P's bare arms from P's hands
                                  and face, the skill a sleeve change needs (paired data has none)
  ftn_relight          "none" | "gain" | "ramp"   FTN relights T to P's photo by a gain map from
                                  M's and P's whole photos (models/ftn.py `RelightHead`: per channel,
                                  "ramp" times a linear ramp across the frame), applied before FTN sees T
                                  and in its composite; starts at gain 1
  norm                 "instance" | "group" | "none"
  upsample             "resize_conv" | "transpose" | "pixel_shuffle"
  iuv_encoding         "onehot" (27 channels) | "raw" (3 channels)
  dtype                "float32" | "bfloat16" (compute dtype; params and outputs stay float32)
  garment_kind         "upper" | "lower": used when a batch has no garment_kind field
  garment_dilation     2   pixels R_P grows beyond the DensePose parts
  soft_dilation, feather   3, 2   R~ = box_blur(dilate(R_P, soft_dilation), feather)
  warp_tile, warp_fill_iters   32, 2   ops.uv_warp settings (atlas tile size, hole filling)
  d_channels, d_layers 64, 3  PatchGAN width and stride-2 layers (3 = 70x70 receptive field)
  spectral_norm        False  spectral norm in the discriminators (see discriminators.py)
config.loss: see m2e_jax/losses.py; also ftn_mask_weight (1.0): L1 of FTN's composition mask toward 1
inside R~ (losses.generator_terms), which keeps the garment's pixels passing through.
"""

from __future__ import annotations

import ml_collections


def model_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        height=256, width=192, base_channels=64, num_downsamples=2, pan_blocks=9, trn_blocks=3,
        ftn_blocks=6, ftn_mode="composite", ftn_mask_offset=3.0, pan_inputs="model_and_warp",
        parse_region=False, parse_dropout=0.0, ftn_paint=False, person_parse_dropout=0.0,
        ftn_relight="none",
        norm="instance", upsample="resize_conv",
        iuv_encoding="onehot", dtype="float32",
        garment_kind="upper", garment_dilation=2, soft_dilation=3, feather=2, warp_tile=32,
        warp_fill_iters=2, d_channels=64, d_layers=3, spectral_norm=False,
    ))


def loss_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        gan="lsgan", adv_weight=1.0, l1_weight=10.0, perceptual_weight=10.0, consistency_weight=10.0,
        alpha_weight=1.0, ftn_mask_weight=1.0, consistency_relight=False, vgg="lpips_vgg16",
        vgg16_layer_weights=(1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0),
    ))
