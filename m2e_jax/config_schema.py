"""The training config, declared once: every field with its default, allowed values, meaning and check.

Everything about config fields comes from `SCHEMA` below: `defaults()` is configs/default.py (the
other configs/*.py edit it), `problems` / `validate` check a config before anything compiles (one
line per problem, naming the field), `describe()` lists every field with its meaning
(`python -m m2e_jax.main --describe`), and `from_saved` turns the config saved with an older
checkpoint into a current one (a field the code gained since gets the behaviour the code had
before it; a field since removed is dropped if its value is what the code now does).

Adding a field: one `Field` here, read as `config.group.name` where it is used. Adding a loss term:
its weight here and its formula in m2e_jax/losses.py `generator_terms`.

This module imports neither JAX nor the model code (configs/*.py import it, and the config is checked
before JAX starts); the choices that modules also name (layers.NORMS, losses.GANS, ...) are written
here and tests/test_config.py keeps the two equal.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import ml_collections

DATASETS = ("synthetic", "deepfashion", "mvc", "folder")
SOURCES = ("tfds", "synthetic")
WORLD_PRESETS = ("easy", "medium", "hard")       # synthetic/effects.PRESETS
PARALLEL = ("shard_map", "pmap")                 # parallel.DataParallel
GARMENT_KINDS = ("upper", "lower")               # densepose.GARMENT_KINDS
NORMS = ("instance", "group", "none")            # models/layers.NORMS
UPSAMPLES = ("resize_conv", "transpose", "pixel_shuffle")  # models/layers.UPSAMPLES
DTYPES = ("float32", "bfloat16")                 # models/layers.DTYPES
PAN_INPUTS = ("model_and_warp", "model_only")    # models/pan.PAN_INPUTS
RELIGHT_MODES = ("none", "gain", "ramp")         # models/ftn.RELIGHT_MODES
GANS = ("lsgan", "hinge", "nonsaturating")       # losses.GANS
LPIPS_NETS = ("alexnet", "vgg16")                # metrics.LPIPS_NETS
PAN_REGIONS = ("image", "body")                  # losses.PAN_REGIONS
CPU_CONVOLUTIONS = ("eigen", "xla_default")      # xla_flags.CPU_CONVOLUTIONS


class ConfigError(ValueError):
    """A training config value is invalid; the message names the field(s)."""


# ---------------------------------------------------------------- what a field is

@dataclasses.dataclass(frozen=True)
class Rule:
    """The values a field accepts: `ok(value)`, and `text` saying which (for errors and --describe)."""

    text: str
    ok: Callable[[Any], bool]
    # The message for a bad value, e.g. "unknown value 'x'; expected one of (...)"; default
    # "must be <text>, got <value>".
    message: Callable[[Any], str] | None = None

    def problem(self, value: Any) -> str | None:
        if self.ok(value):
            return None
        return self.message(value) if self.message else f"must be {self.text}, got {value!r}"


_UNSET = object()


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field: its default, the values it accepts, what it means, and `before`: what a
    saved config without it meant (the behaviour the code had before the field existed; default:
    the field's default)."""

    default: Any
    rule: Rule
    meaning: str
    before: Any = _UNSET

    @property
    def value_before(self) -> Any:
        return self.default if self.before is _UNSET else self.before


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def choice(options: tuple[str, ...]) -> Rule:
    return Rule(f"one of {options}", lambda v: v in options,
                lambda v: f"unknown value {v!r}; expected one of {options}")


def count(low: int = 0) -> Rule:
    """An int >= low."""
    return Rule(f"an int >= {low}" if low else "an int >= 0", lambda v: _is_int(v) and v >= low,
                lambda v: f"must be {'> 0' if low == 1 else f'>= {low}'}, got {v!r}")


def number(low: float = 0.0, strict: bool = False) -> Rule:
    """A finite number > low (strict) or >= low."""
    sign = ">" if strict else ">="
    return Rule(f"a number {sign} {low:g}", lambda v: _is_number(v) and (v > low if strict else v >= low),
                lambda v: f"must be {sign} {low:g}, got {v!r}")


def share(closed: bool = True) -> Rule:
    """A number in [0, 1] (or [0, 1) when not `closed`)."""
    text = "[0, 1]" if closed else "[0, 1)"
    return Rule(f"a number in {text}",
                lambda v: _is_number(v) and 0.0 <= v and (v <= 1.0 if closed else v < 1.0),
                lambda v: f"must lie in {text}, got {v!r}")


FLAG = Rule("True or False", lambda v: isinstance(v, bool))
FINITE = Rule("a finite number", _is_number)
NAME = Rule("a non-empty name without surrounding spaces",
            lambda v: isinstance(v, str) and bool(v) and v.strip() == v)
PATH_OR_EMPTY = Rule("a path without surrounding spaces, or '' (off)",
                     lambda v: isinstance(v, str) and v.strip() == v)


def _sequence(item: Callable[[Any], bool], text: str) -> Rule:
    return Rule(text, lambda v: isinstance(v, list | tuple) and all(item(x) for x in v))


# ---------------------------------------------------------------- the fields

def _fields(**fields: Field) -> dict[str, Field]:
    return fields


SCHEMA: dict[str, Any] = dict(
    seed=Field(0, count(), "random seed of parameters, data order and augmentation"),
    parallel=Field("shard_map", choice(PARALLEL), "data parallelism: jit + shard_map on a mesh, or pmap"),
    distributed=_fields(
        enabled=Field(False, FLAG, "multi-process run (also auto-enabled by Slurm, Open MPI or "
                                   "JAX_COORDINATOR_ADDRESS)"),
        coordinator_address=Field("", Rule("host:port, or '' (auto-detect)",
                                           lambda v: isinstance(v, str) and (not v or (
                                               ":" in v and v.rsplit(":", 1)[1].isdigit()))),
                                  "process 0's address"),
        num_processes=Field(-1, count(-1), "number of processes; -1 auto-detects",),
        process_id=Field(-1, count(-1), "this process's number; -1 auto-detects"),
        local_device_ids=Field((), _sequence(lambda x: _is_int(x) and x >= 0, "device numbers >= 0"),
                               "devices this process uses; () = all"),
        cpu_collectives=Field(False, FLAG, "collectives between CPU processes (gloo)"),
        # jax's default is 100 s.
        heartbeat_timeout_s=Field(60, number(strict=True), "a process silent this long is declared "
                                  "dead and every other process exits with an error (not a hang)"),
    ),
    dataset=_fields(
        name=Field("deepfashion", choice(DATASETS), "which dataset (names the records to read)"),
        source=Field("tfds", choice(SOURCES), "tfds: data_prep's records; synthetic: write the synthetic "
                                              "world as a folder dataset and build its records on first use "
                                              "(m2e_jax/synthetic/records.py), read like tfds's"),
        data_dir=Field("data", NAME, "TFDS data_dir (synthetic: where its folder and records are kept)"),
        tfds_config=Field("", Rule(f"<dataset>_<H>x<W> with <dataset> one of {DATASETS}, or '' (derived)",
                                   lambda v: v == "" or (isinstance(v, str) and re.fullmatch(
                                       rf"({'|'.join(DATASETS)})_\d+x\d+", v) is not None)),
                          "data_prep builder config; '' means <name>_<height>x<width>"),
        train_split=Field("train", NAME, "split trained on"),
        test_split=Field("test", NAME, "split evaluated on"),
        num_train=Field(0, count(), "synthetic: training examples to write"),
        num_test=Field(0, count(), "synthetic: test examples to write"),
        paired_fraction=Field(0.5, share(), "synthetic: share of paired examples"),
        garment_kind=Field("upper", choice(GARMENT_KINDS), "synthetic: garment rendered"),
        world=Field("easy", choice(WORLD_PRESETS), "synthetic: world preset "
                                                   "(m2e_jax/synthetic/effects.py)"),
    ),
    model=_fields(
        height=Field(256, count(1), "image height; divisible by 2**num_downsamples and 2**d_layers"),
        width=Field(192, count(1), "image width; same rule"),
        base_channels=Field(64, count(1), "generator width after the 7x7 input conv"),
        num_downsamples=Field(2, count(1), "stride-2 downsamples in each generator (width doubles "
                                           "each, capped at 8x)"),
        pan_blocks=Field(9, count(1), "PAN's residual blocks"),
        trn_blocks=Field(3, count(1), "TRN's residual blocks"),
        ftn_blocks=Field(6, count(1), "FTN's residual blocks"),
        ftn_mask_offset=Field(1.0, FINITE, "added to FTN's mask logit: m ~ sigmoid(1) = 0.73 at "
                                           "initialisation (a weak pull toward the warp, RESULTS.md 8)",
                              before=3.0),
        pan_inputs=Field("model_and_warp", choice(PAN_INPUTS),
                         "PAN sees the warp W, V too (ours), or only M, I_M, I_P (the paper's; an "
                         "ablation row)"),
        parse_region=Field(True, FLAG, "FTN replaces only M's warped garment | P's garment inside R_P "
                                       "and keeps P's skin (needs parsing masks; without, all of R_P)",
                           before=False),
        parse_dropout=Field(0.5, share(), "share of training examples whose parsing masks are dropped, "
                                          "so the checkpoint also serves DensePose-only photos",
                            before=0.0),
        ftn_paint=Field(True, FLAG, "with parse_region: FTN paints, from P's context, the part of its "
                                    "region M's garment does not cover (RESULTS.md 9)", before=False),
        person_parse_dropout=Field(0.5, share(), "share of training examples that lose P's parsing mask "
                                                 "only, so FTN learns that painting on paired data",
                                   before=0.0),
        ftn_relight=Field("ramp", choice(RELIGHT_MODES), "FTN relights T to P's photo by a gain map (per "
                                                         "channel; ramp: times a ramp across the frame) "
                                                         "(RESULTS.md 9a)", before="none"),
        norm=Field("instance", choice(NORMS), "normalisation layer of generators and discriminators"),
        upsample=Field("resize_conv", choice(UPSAMPLES), "generator upsampling"),
        dtype=Field("float32", choice(DTYPES), "compute dtype (parameters and outputs stay float32)"),
        garment_kind=Field("upper", choice(GARMENT_KINDS), "garment when a batch has no garment_kind"),
        garment_dilation=Field(2, count(), "pixels R_P grows beyond the DensePose parts"),
        soft_dilation=Field(3, count(), "R~ = box_blur(dilate(R_P, soft_dilation), feather)"),
        feather=Field(2, count(), "see soft_dilation"),
        warp_tile=Field(32, count(1), "UV atlas tile size of the warp (ops/uv_warp.py)"),
        warp_fill_iters=Field(2, count(), "hole-filling passes of the warp"),
        d_channels=Field(64, count(1), "PatchGAN width"),
        d_layers=Field(3, count(1), "PatchGAN stride-2 layers (3: 70x70 receptive field)"),
    ),
    loss=_fields(
        gan=Field("lsgan", choice(GANS), "adversarial formulation"),
        adv_weight=Field(1.0, number(), "generators' adversarial terms"),
        l1_weight=Field(10.0, number(), "L1 to the target (paired batches)"),
        perceptual_weight=Field(10.0, number(), "VGG perceptual loss to the target (paired batches)"),
        pan_region=Field("image", choice(PAN_REGIONS), "where PAN's L1 / perceptual terms compare A with "
                                                       "the target: the whole image (the paper's) or P's "
                                                       "body (DensePose foreground; M shows no background)"),
        consistency_weight=Field(1.0, number(), "unpaired: T agrees with W where V = 1 inside R_P (a weak "
                                                "pull toward the warp, RESULTS.md 8)"),
        alpha_weight=Field(0.1, number(), "pulls TRN's alpha toward V inside R_P (weak: RESULTS.md 8)"),
        ftn_mask_weight=Field(0.1, number(), "L1 of FTN's composite mask toward 1 inside R~ (weak: "
                                             "RESULTS.md 8)", before=0.0),
        vgg=Field("lpips_vgg16", Rule("'lpips_vgg16' or a path to converted VGG19 weights (.npz)",
                                      lambda v: isinstance(v, str) and (v == "lpips_vgg16"
                                                                        or v.endswith(".npz"))),
                  "perceptual loss network"),
        vgg16_layer_weights=Field((1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0),
                                  _sequence(lambda x: _is_number(x) and x >= 0, "numbers >= 0"),
                                  "perceptual loss weight of relu1_2..relu5_3"),
    ),
    batch_size=Field(16, count(1), "global batch, over all devices and hosts"),
    eval_batch_size=Field(16, count(1), "evaluation batch"),
    optim=_fields(
        g_lr=Field(2e-4, number(strict=True), "generators' Adam learning rate"),
        d_lr=Field(2e-4, number(strict=True), "discriminators' Adam learning rate"),
        b1=Field(0.5, share(closed=False), "Adam beta1"),
        b2=Field(0.999, share(closed=False), "Adam beta2"),
        eps=Field(1e-8, number(strict=True), "Adam epsilon"),
        decay_start=Field(0.5, share(), "share of the steps after which the learning rates decay "
                                        "linearly to 0"),
    ),
    schedule=_fields(
        pan_steps=Field(20_000, count(), "stage 1: PAN alone"),
        trn_steps=Field(20_000, count(), "stage 2: + TRN"),
        ftn_steps=Field(20_000, count(), "stage 3: + FTN (paired batches only)"),
        joint_steps=Field(140_000, count(), "stage 4: all three, paired and unpaired batches alternating"),
        paired_per_cycle=Field(1, count(1), "stage 4: paired batches per cycle"),
        unpaired_per_cycle=Field(1, count(), "stage 4: unpaired batches per cycle (0: paired only)"),
        freeze_earlier=Field(True, FLAG, "stages 2-3 train only the newly added network"),
    ),
    loss_spike_factor=Field(50.0, Rule("0 (off) or a number > 1",
                                       lambda v: _is_number(v) and (v == 0 or v > 1)),
                            "stop when g_total exceeds this many times its running mean"),
    ema_decay=Field(0.0, share(closed=False), "> 0 keeps an EMA of the generator weights (evaluated)"),
    log_every=Field(100, count(1), "steps between logged metrics"),
    eval_every=Field(5_000, count(1), "steps between evaluations"),
    image_every=Field(5_000, count(1), "steps between image grids"),
    checkpoint_every=Field(5_000, count(1), "steps between checkpoints"),
    keep_checkpoints=Field(3, count(1), "newest checkpoints kept"),
    async_checkpointing=Field(True, FLAG, "save checkpoints in the background"),
    prefetch=Field(2, count(), "batches prepared ahead"),
    input_threads=Field(1, count(1), "threads assembling those batches, a whole batch each (decoding "
                                     "scales over cores in threads: RESULTS.md 11); at most prefetch + 1 "
                                     "are busy"),
    num_eval_examples=Field(256, count(), "first N test examples evaluated (all if fewer)"),
    eval_lpips_net=Field("alexnet", Rule(f"one of {LPIPS_NETS} or '' (no LPIPS)",
                                         lambda v: v in ("",) + LPIPS_NETS),
                         "LPIPS columns of the loop's evaluation (m2e_jax/scoring.py)"),
    num_image_examples=Field(4, count(), "examples in each image grid"),
    profile=Field(False, FLAG, "clu Profile around a few steps (TensorBoard trace)"),
    compilation_cache_dir=Field("", PATH_OR_EMPTY, "persistent XLA compilation cache: a restarted job "
                                                   "loads its compiled steps ('' = off)"),
    cpu_convolutions=Field("eigen", choice(CPU_CONVOLUTIONS), "XLA:CPU convolution kernels: eigen is "
                                                              "13-15% faster (benchmarks/RESULTS.md); "
                                                              "CPU only"),
)

# The model / loss fields a dataset config (configs/*.py) may set; every other model and loss field
# keeps its default there, so each dataset trains the model the ablation measured (tests/test_config.py):
# the image size, the pixel lengths and atlas tile that depend on it, the networks' widths, the
# compute dtype, and the terms a compute budget drops or weakens (the perceptual loss on CPU, the
# adversarial weight of small discriminators).
SCALE_FIELDS = (
    "model.height", "model.width", "model.warp_tile", "model.garment_dilation", "model.soft_dilation",
    "model.feather", "model.base_channels", "model.num_downsamples", "model.pan_blocks",
    "model.trn_blocks", "model.ftn_blocks", "model.d_channels", "model.d_layers", "model.dtype",
    "loss.perceptual_weight", "loss.adv_weight",
)

# Fields removed after losing or tying their measurements, with the value that means what the code
# now does: a saved config holding that value loads (the field dropped), any other value is refused.
REMOVED: dict[str, tuple[Any, str]] = {
    "loss.consistency_relight": (False, "lost (benchmarks/RESULTS.md section 9a)"),
    "schedule.unpaired_trains": (("pan", "trn", "ftn"), "tied or lost (benchmarks/RESULTS.md sections "
                                                        "9, 9a): unpaired batches train all three"),
    "model.spectral_norm": (False, "never supported by the trainer"),
    "model.ftn_mode": ("composite", "lost: FTN painting R~ from scratch (method.md's formula) scored below "
                                    "the pasted warp (models/ftn.py)"),
    "model.iuv_encoding": ("onehot", "no config set another value and no measurement used one"),
    "model.trn_offset": (0.0, "lost: TRN moving the warp by a predicted offset field scored below the "
                              "same model without it at the photo's size, unregularised and smoothed "
                              "(benchmarks/RESULTS.md 12)"),
    "loss.trn_offset_smoothness": (0.0, "went with model.trn_offset (benchmarks/RESULTS.md 12)"),
}

# Values renamed since a checkpoint was saved: {field: {old value: current value}}.
RENAMED_VALUES: dict[str, dict[Any, Any]] = {
    # the synthetic world was rendered in memory before it went through records (the same examples)
    "dataset.source": {"synthetic_memory": "synthetic"},
}


# ---------------------------------------------------------------- derived: defaults, listing, saved configs

def _walk(schema: dict, prefix: str = ""):
    """(dotted name, Field) of every field, in declaration order."""
    for key, item in schema.items():
        if isinstance(item, dict):
            yield from _walk(item, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", item


def fields() -> dict[str, Field]:
    """Every field by dotted name ("model.height"), in declaration order."""
    return dict(_walk(SCHEMA))


def _build(schema: dict, value: Callable[[Field], Any]) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({k: _build(v, value) if isinstance(v, dict) else value(v)
                                      for k, v in schema.items()})


def defaults() -> ml_collections.ConfigDict:
    """A fresh config with every field at its default (configs/default.py)."""
    return _build(SCHEMA, lambda f: f.default)


def group_defaults(group: str) -> ml_collections.ConfigDict:
    """One group's defaults, e.g. group_defaults("model")."""
    return _build(SCHEMA[group], lambda f: f.default)


def describe() -> str:
    """Every field, one line each: name, default, allowed values, meaning (for --describe); the
    fields a dataset config may change (SCALE_FIELDS) are marked "[per dataset]"."""
    lines = []
    for name, f in fields().items():
        mark = "  [per dataset]" if name in SCALE_FIELDS else ""
        lines.append(f"{name} = {f.default!r}  ({f.rule.text})  {f.meaning}{mark}")
    return "\n".join(lines)


def from_saved(raw: dict, where: str) -> ml_collections.ConfigDict:
    """The config saved by a checkpoint (`raw`, its JSON) as a current config.

    A field the saved config lacks gets its `before` value (what the code did before the field
    existed); a removed field (REMOVED) is dropped when its value is what the code now does.
    Raises ConfigError naming `where` and the field for a removed field with another value, or a
    field this code does not know.
    """
    def merge(saved: dict, schema: dict, prefix: str) -> dict:
        out = {}
        for key, value in saved.items():
            name = f"{prefix}{key}"
            if name in REMOVED:
                now, why = REMOVED[name]
                if not _same(value, now):
                    raise ConfigError(f"{where}: config.{name} = {value!r}: this checkpoint was trained with "
                                      f"a setting since removed ({why}); this code has only {now!r}")
            elif key not in schema:
                raise ConfigError(f"{where}: config.{name}: unknown field (a checkpoint of a newer m2e_jax?)")
            elif isinstance(schema[key], dict):
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: config.{name}: must be a group of fields, got {value!r}")
                out[key] = merge(value, schema[key], f"{name}.")
            elif isinstance(value, list):
                out[key] = tuple(value)
            else:
                out[key] = RENAMED_VALUES.get(name, {}).get(value, value)
        for key, item in schema.items():
            if key not in out:
                out[key] = (_build(item, lambda f: f.value_before).to_dict() if isinstance(item, dict)
                            else item.value_before)
        return out

    return ml_collections.ConfigDict(merge(dict(raw), SCHEMA, ""))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return sorted(a) == sorted(b)
    return a == b


# ---------------------------------------------------------------- validation

def _unknown_keys(cfg: Any, schema: dict, prefix: str = "config") -> list[str]:
    out = []
    for key in cfg.keys():
        name = f"{prefix}.{key}"
        if key not in schema:
            out.append(f"{name}: unknown key (known: {', '.join(sorted(schema))})")
        elif isinstance(schema[key], dict):
            if not isinstance(cfg[key], ml_collections.ConfigDict | dict):
                out.append(f"{name}: must be a group of fields, got {cfg[key]!r}")
            else:
                out.extend(_unknown_keys(cfg[key], schema[key], name))
    return out


def _missing_keys(cfg: Any) -> list[str]:
    out = []
    for name in fields():
        node = cfg
        for part in name.split("."):
            if part not in node:
                out.append(f"config.{name}: missing (configs/*.py start from configs/default.py)")
                break
            node = node[part]
    return out


def _relations(c: Any) -> list[str]:
    """The checks that involve several fields (each field's own values are its Field's rule)."""
    out = []

    def check(ok: bool, msg: str) -> None:
        if not ok:
            out.append(msg)

    d, m, s, dist = c.dataset, c.model, c.schedule, c.distributed
    if d.source == "synthetic":
        check(d.name == "synthetic",
              f"config.dataset.source: 'synthetic' builds only the synthetic world, not {d.name!r}")
        # Its folder and records are written under a file lock (m2e_jax/synthetic/records.py): a
        # local folder; records for a bucket are built locally and staged (README "Pods and clusters").
        check("://" not in str(d.data_dir),
              f"config.dataset.data_dir: the synthetic world is built into a local folder, not "
              f"{d.data_dir!r}; build records with data_prep.build and read them with source 'tfds'")
        check(d.num_train > 0, f"config.dataset.num_train: must be > 0, got {d.num_train!r}")
        check(d.num_test > 0, f"config.dataset.num_test: must be > 0, got {d.num_test!r}")
    check(d.train_split != d.test_split,
          f"config.dataset.test_split: must differ from train_split, got {d.test_split!r} for both")
    check(s.pan_steps + s.trn_steps + s.ftn_steps + s.joint_steps > 0,
          "config.schedule: all stage lengths are 0, nothing to train")
    stride = 2 ** max(m.num_downsamples, m.d_layers)
    check(m.height % stride == 0 and m.width % stride == 0,
          f"config.model.height x width = {m.height}x{m.width}: must be divisible by {stride} "
          f"(generator 2**num_downsamples = {2 ** m.num_downsamples}, "
          f"discriminator 2**d_layers = {2 ** m.d_layers})")
    check(min(m.height, m.width) // 2 ** m.d_layers - 2 >= 1,
          f"config.model: {m.height}x{m.width} is too small for a PatchGAN with d_layers={m.d_layers} "
          f"(needs min side >= {3 * 2 ** m.d_layers})")
    check(not m.ftn_paint or m.parse_region,
          "config.model.ftn_paint: needs model.parse_region = True (it paints part of the parsing-guided "
          "region)")
    if dist.num_processes > 0 and dist.process_id >= 0:
        check(dist.process_id < dist.num_processes,
              f"config.distributed.process_id: must be < num_processes={dist.num_processes}, got "
              f"{dist.process_id}")
    return out


def problems(config: ml_collections.ConfigDict) -> list[str]:
    """Every problem with `config`, one message each naming the field (empty when it is valid)."""
    out = _unknown_keys(config, SCHEMA) + _missing_keys(config)
    if out:  # the checks below read fields that may be misspelt
        return out
    for name, f in fields().items():
        value = config
        for part in name.split("."):
            value = value[part]
        problem = f.rule.problem(value)
        if problem:
            out.append(f"config.{name}: {problem}")
    if out:  # the relations compare values that may have the wrong type
        return out
    return _relations(config)


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError with every problem in `config`, one per line."""
    found = problems(config)
    if found:
        raise ConfigError("invalid config:\n  " + "\n  ".join(found))
