"""Checks a training config before anything is compiled: one clear error per problem.

`validate(config)` raises `ConfigError` listing every problem found (each names the field), so a
typo costs seconds, not a compile. Reference for known keys: configs/default.py.
"""

from __future__ import annotations

import re
from typing import Any

import ml_collections

from m2e_jax import xla_flags

DATASETS = ("synthetic", "deepfashion", "mvc", "folder")
# "synthetic_memory": the name runs saved before the synthetic world went through records use for "synthetic"
SOURCES = ("tfds", "synthetic", "synthetic_memory")
SYNTHETIC_SOURCES = ("synthetic", "synthetic_memory")
# synthetic/effects.PRESETS (named here: validation runs before JAX is imported; a test keeps them equal)
WORLD_PRESETS = ("easy", "medium", "hard")
PARALLEL = ("shard_map", "pmap")


class ConfigError(ValueError):
    """A training config value is invalid; the message names the field(s)."""


def _reference() -> ml_collections.ConfigDict:
    from configs import default  # local: configs/ sits at the repository root, not in the package.

    return default.get_config()


def _unknown_keys(cfg: Any, ref: Any, prefix: str = "config") -> list[str]:
    problems = []
    for key in cfg.keys():
        name = f"{prefix}.{key}"
        if key not in ref:
            problems.append(f"{name}: unknown key (known: {', '.join(sorted(ref.keys()))})")
        elif isinstance(ref[key], ml_collections.ConfigDict):
            if not isinstance(cfg[key], ml_collections.ConfigDict):
                problems.append(f"{name}: must be a group of fields, got {cfg[key]!r}")
            else:
                problems.extend(_unknown_keys(cfg[key], ref[key], name))
    return problems


def problems(config: ml_collections.ConfigDict) -> list[str]:
    """Every problem with `config`, one message each (empty list when it is valid)."""
    out = _unknown_keys(config, _reference())
    if out:  # the checks below read fields that may be misspelt
        return out

    def check(ok: bool, msg: str) -> None:
        if not ok:
            out.append(msg)

    def positive(name: str, value: Any, allow_zero: bool = False) -> None:
        ok = isinstance(value, int | float) and (value >= 0 if allow_zero else value > 0)
        check(ok, f"config.{name}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")

    d, m, s, o = config.dataset, config.model, config.schedule, config.optim
    check(d.name in DATASETS, f"config.dataset.name: unknown dataset {d.name!r}; expected one of {DATASETS}")
    check(d.source in SOURCES,
          f"config.dataset.source: unknown source {d.source!r}; expected one of {SOURCES}")
    if d.name in DATASETS and d.source in SYNTHETIC_SOURCES:
        check(d.name == "synthetic",
              f"config.dataset.source: {d.source!r} builds only the synthetic world, not {d.name!r}")
    if d.source in SYNTHETIC_SOURCES:
        positive("dataset.num_train", d.num_train)
        positive("dataset.num_test", d.num_test)
        check(0.0 <= d.paired_fraction <= 1.0,
              f"config.dataset.paired_fraction: must lie in [0, 1], got {d.paired_fraction!r}")
    check(d.get("world", "easy") in WORLD_PRESETS,  # used by source "synthetic"; a typo elsewhere too
          f"config.dataset.world: unknown preset {d.get('world')!r}; expected one of {WORLD_PRESETS}")
    check(config.parallel in PARALLEL,
          f"config.parallel: unknown mode {config.parallel!r}; expected one of {PARALLEL}")
    for name in ("g_lr", "d_lr", "eps"):
        positive(f"optim.{name}", o[name])
    for name in ("b1", "b2"):
        check(0.0 <= o[name] < 1.0, f"config.optim.{name}: must lie in [0, 1), got {o[name]!r}")
    check(0.0 <= o.decay_start <= 1.0, f"config.optim.decay_start: must lie in [0, 1], got {o.decay_start!r}")
    check(0.0 <= config.ema_decay < 1.0, f"config.ema_decay: must lie in [0, 1), got {config.ema_decay!r}")
    for name in ("pan_steps", "trn_steps", "ftn_steps", "joint_steps", "unpaired_per_cycle"):
        positive(f"schedule.{name}", s[name], allow_zero=True)
    positive("schedule.paired_per_cycle", s.paired_per_cycle)
    trains = s.get("unpaired_trains", ("pan", "trn", "ftn"))
    check(isinstance(trains, list | tuple) and all(t in ("pan", "trn", "ftn") for t in trains),
          f"config.schedule.unpaired_trains: must list networks of ('pan', 'trn', 'ftn'), got {trains!r}")
    check(s.pan_steps + s.trn_steps + s.ftn_steps + s.joint_steps > 0,
          "config.schedule: all stage lengths are 0, nothing to train")
    for name in ("batch_size", "eval_batch_size", "log_every", "eval_every", "image_every",
                 "checkpoint_every", "keep_checkpoints", "height", "width", "base_channels"):
        group = m if name in ("height", "width", "base_channels") else config
        positive(f"{'model.' if group is m else ''}{name}", group[name])
    positive("distributed.heartbeat_timeout_s", config.distributed.heartbeat_timeout_s)
    spike = config.loss_spike_factor
    check(isinstance(spike, int | float) and (spike == 0 or spike > 1),
          f"config.loss_spike_factor: must be 0 (off) or > 1, got {config.loss_spike_factor!r}")
    for name in ("prefetch", "num_eval_examples", "num_image_examples"):
        positive(name, config[name], allow_zero=True)
    sizes = (m.height, m.width, m.num_downsamples, m.d_layers)
    if all(isinstance(v, int) and v > 0 for v in sizes):
        stride = 2 ** max(m.num_downsamples, m.d_layers)
        check(m.height % stride == 0 and m.width % stride == 0,
              f"config.model.height x width = {m.height}x{m.width}: must be divisible by {stride} "
              f"(generator 2**num_downsamples = {2 ** m.num_downsamples}, "
              f"discriminator 2**d_layers = {2 ** m.d_layers})")
        d_out = min(m.height, m.width) // 2 ** m.d_layers - 2
        check(d_out >= 1, f"config.model: {m.height}x{m.width} is too small for a PatchGAN with "
                          f"d_layers={m.d_layers} (needs min side >= {3 * 2 ** m.d_layers})")
    from m2e_jax.models.layers import DTYPES, NORMS, UPSAMPLES  # noqa: I001 (choices live with the layers)
    from m2e_jax.losses import GANS
    from m2e_jax.densepose import GARMENT_KINDS, IUV_ENCODINGS

    for name, value, choices in (("model.norm", m.norm, NORMS), ("model.upsample", m.upsample, UPSAMPLES),
                                 ("model.dtype", m.dtype, tuple(DTYPES)), ("loss.gan", config.loss.gan, GANS),
                                 ("model.iuv_encoding", m.iuv_encoding, IUV_ENCODINGS),
                                 ("model.garment_kind", m.garment_kind, GARMENT_KINDS),
                                 ("dataset.garment_kind", d.garment_kind, GARMENT_KINDS)):
        check(value in choices, f"config.{name}: unknown value {value!r}; expected one of {choices}")
    # Spectral norm keeps power-iteration state in a batch_stats collection the train step does not carry.
    check(not m.spectral_norm, "config.model.spectral_norm: not supported by the trainer yet (use False)")
    for name in ("adv_weight", "l1_weight", "perceptual_weight", "consistency_weight", "alpha_weight",
                 "ftn_mask_weight"):
        positive(f"loss.{name}", config.loss[name], allow_zero=True)
    _check_remaining(config, check, positive)
    return out


def _check_remaining(config, check, positive) -> None:
    """The fields the checks above leave out: sizes, free-form strings, distributed settings."""
    import math

    from m2e_jax.models.ftn import FTN_MODES, RELIGHT_MODES  # noqa: I001
    from m2e_jax.models.pan import PAN_INPUTS

    d, m, dist, w = config.dataset, config.model, config.distributed, config.loss
    for name in ("pan_blocks", "trn_blocks", "ftn_blocks", "d_channels", "d_layers", "num_downsamples",
                 "warp_tile"):
        positive(f"model.{name}", m[name])
    for name in ("garment_dilation", "soft_dilation", "feather", "warp_fill_iters"):
        positive(f"model.{name}", m[name], allow_zero=True)
    check(isinstance(m.ftn_mask_offset, int | float) and math.isfinite(m.ftn_mask_offset),
          f"config.model.ftn_mask_offset: must be a finite number, got {m.ftn_mask_offset!r}")
    for name in ("parse_dropout", "person_parse_dropout"):
        drop = m.get(name, 0.0)
        check(isinstance(drop, int | float) and not isinstance(drop, bool) and 0.0 <= drop <= 1.0,
              f"config.model.{name}: must be a share in [0, 1], got {drop!r}")
    check(not m.get("ftn_paint", False) or m.get("parse_region", False),
          "config.model.ftn_paint: needs model.parse_region = True (it paints part of the parsing-guided "
          "region)")
    check(m.get("ftn_relight", "none") in RELIGHT_MODES,
          f"config.model.ftn_relight: unknown value {m.get('ftn_relight')!r}; expected one of "
          f"{RELIGHT_MODES}")
    check(m.get("ftn_relight", "none") == "none" or m.ftn_mode == "composite",
          "config.model.ftn_relight: needs model.ftn_mode = 'composite' (the gain relights T in FTN's "
          "composite)")
    check(m.ftn_mode in FTN_MODES, f"config.model.ftn_mode: unknown value {m.ftn_mode!r}; expected one of "
                                   f"{FTN_MODES}")
    check(m.get("pan_inputs", "model_and_warp") in PAN_INPUTS,
          f"config.model.pan_inputs: unknown value {m.get('pan_inputs')!r}; expected one of {PAN_INPUTS}")
    check(w.vgg == "lpips_vgg16" or w.vgg.endswith(".npz"),
          f"config.loss.vgg: must be 'lpips_vgg16' or a path to converted VGG19 weights (.npz), "
          f"got {w.vgg!r}")
    check(all(isinstance(x, int | float) and x >= 0 for x in w.vgg16_layer_weights),
          f"config.loss.vgg16_layer_weights: must all be >= 0, got {w.vgg16_layer_weights!r}")
    positive("seed", config.seed, allow_zero=True)
    if d.source not in SYNTHETIC_SOURCES:  # unused there, but a negative count is still a typo
        positive("dataset.num_train", d.num_train, allow_zero=True)
        positive("dataset.num_test", d.num_test, allow_zero=True)
        check(0.0 <= d.paired_fraction <= 1.0,
              f"config.dataset.paired_fraction: must lie in [0, 1], got {d.paired_fraction!r}")
    for name in ("data_dir", "train_split", "test_split"):
        check(bool(d[name]) and d[name].strip() == d[name],
              f"config.dataset.{name}: must be a non-empty name without surrounding spaces, got {d[name]!r}")
    from m2e_jax.metrics import LPIPS_NETS

    check(config.eval_lpips_net in ("",) + LPIPS_NETS,
          f"config.eval_lpips_net: must be one of {LPIPS_NETS} or '' (no LPIPS), got "
          f"{config.eval_lpips_net!r}")
    check(config.cpu_convolutions in xla_flags.CPU_CONVOLUTIONS,
          f"config.cpu_convolutions: must be one of {xla_flags.CPU_CONVOLUTIONS}, got "
          f"{config.cpu_convolutions!r}")
    check(config.compilation_cache_dir.strip() == config.compilation_cache_dir,
          f"config.compilation_cache_dir: must be a path without surrounding spaces (or empty for off), "
          f"got {config.compilation_cache_dir!r}")
    if d.tfds_config:  # data_prep's builder names; "" = <name>_<H>x<W>
        check(re.fullmatch(rf"({'|'.join(DATASETS)})_\d+x\d+", d.tfds_config) is not None,
              f"config.dataset.tfds_config: must be <dataset>_<H>x<W> (e.g. deepfashion_256x192), got "
              f"{d.tfds_config!r}")
    check(d.train_split != d.test_split,
          f"config.dataset.test_split: must differ from train_split, got {d.test_split!r} for both")
    for name in ("num_processes", "process_id"):
        check(isinstance(dist[name], int) and dist[name] >= -1,
              f"config.distributed.{name}: must be >= 0, or -1 to auto-detect, got {dist[name]!r}")
    if dist.num_processes > 0 and dist.process_id >= 0:
        check(dist.process_id < dist.num_processes,
              f"config.distributed.process_id: must be < num_processes={dist.num_processes}, got "
              f"{dist.process_id}")
    address = dist.coordinator_address
    check(not address or (":" in address and address.rsplit(":", 1)[1].isdigit()),
          f"config.distributed.coordinator_address: must be host:port (or empty to auto-detect), "
          f"got {address!r}")
    check(all(isinstance(x, int) and x >= 0 for x in dist.local_device_ids),
          f"config.distributed.local_device_ids: must be device numbers >= 0, got {dist.local_device_ids!r}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError with every problem in `config`, one per line."""
    found = problems(config)
    if found:
        raise ConfigError("invalid config:\n  " + "\n  ".join(found))
