"""Pod plan: `python -m m2e_jax.benchmarks.pod_plan --config configs/pod.py --targets v5e:2x2 --per_chip 4,8`.

Compiles the real joint train step (`train.train_step`, stage 4, data-parallel through
`parallel.DataParallel` exactly as training does) ahead of time for TPU chips nobody here has, and
reports per chip what XLA's compiled program says: FLOPs per step and per example (cost analysis),
HBM (arguments = parameters + optimizer state + batch, outputs, temporaries, the peak they imply)
against the chip's HBM, bytes all-reduced per step (the all-reduce ops of the compiled program) and
their time on the chip's ICI, and projected step time / images per second at 30 / 40 / 50% MFU.

Targets: a TPU topology ("v5e:2x2", "v4:2x2x1", "v5p:2x2x1", "v6e:2x2") compiled through libtpu's
compile-only devices (`jax.experimental.topologies.get_topology_desc`, as MaxText's
train_compile.py does); or "cpu:N", the CPU backend's compile of an N-device mesh, which stands in
for GPUs (no compile-only GPU target exists without a GPU): its FLOPs are the program's, its memory
is the CPU's buffer assignment, not a GPU's. TPU targets need libtpu, which lives in its own
environment (requirements-tpu-aot.txt); run this module with `.venv-tpu-aot/bin/python`. It sets
JAX_PLATFORMS=cpu and TPU_SKIP_MDS_QUERY=1 first: without them libtpu asks the cloud metadata
server, and nothing here may leave the machine.

The joint stage runs every network forward and trains all of them, so it bounds the FLOPs and the
memory of stages 1-3 (`--stage` compiles another). Compiling the paper-scale step takes ~10 min per
point on a 2-core CPU, so every compiled point's numbers go to a JSON cache (`--cache`) keyed by
(config, target, per-chip batch, dtype, stage, remat); `--search` finds the largest per-chip
batch whose peak fits the chip's HBM less `--margin` (led by the line through the compiled
peaks nearest the edge, bisecting a bracket where the line does not decide it), reusing cached
points; `--report` prints the table from the cache without compiling. A point that does not fit
is cached as such; one past its chip's HBM less the margin is read against that chip only (near
its HBM XLA lays the program out for that chip: see `squeezed`).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import json
import multiprocessing
import os
import pickle
import re
import resource
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

GIB = 2**30
MFUS = (0.3, 0.4, 0.5)
DEFAULT_MARGIN = 0.1  # fraction of HBM kept free: the runtime, fragmentation, the input buffers
FLATTEST_BEND = 0.25  # the search's line rises at least this part of the mean rise (search_projection)
T = TypeVar("T")


class Chip(NamedTuple):
    """One accelerator's published figures (per chip)."""

    name: str
    hbm_gib: float
    peak_bf16_tflops: float
    ici_gbytes_s: float  # bidirectional interconnect bandwidth per chip (ICI / NVLink)
    chips_per_host: int
    source: str


# Cloud TPU system-architecture pages (docs.cloud.google.com/tpu/docs/v4, v5e, v5p, v6e) and NVIDIA's
# data sheets. v4's per-chip ICI is not on its Cloud page: 6 links x 50 GB/s (Jouppi et al., "TPU v4",
# ISCA 2023). The bf16 peaks equal common.PEAK_TFLOPS (MFU of the measured benchmarks).
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 32, 275, 300, 4, "cloud.google.com/tpu/docs/v4; ICI: Jouppi et al. 2023"),
    "v5e": Chip("TPU v5e", 16, 197, 400, 8, "cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("TPU v5p", 95, 459, 1200, 4, "cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("TPU v6e", 32, 918, 800, 8, "cloud.google.com/tpu/docs/v6e"),
    "h100": Chip("H100 SXM 80GB", 80e9 / GIB, 989, 900, 8, "NVIDIA H100 data sheet (dense bf16, NVLink 4)"),
    "a100": Chip("A100 SXM 80GB", 80e9 / GIB, 312, 600, 8, "NVIDIA A100 data sheet (dense bf16, NVLink 3)"),
}
# The topology of each TPU's smallest multi-chip slice (one host), the default target of a chip name.
TOPOLOGIES = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
MEGACORE = ("v4", "v5p")
# The oldest libtpu that compiles for a chip, where older ones fail: 0.0.42.1 (jax[tpu] 0.10.2's own
# pin) dies with SIGSEGV in a compiler thread on v6e, whatever the stack limit (RESULTS.md 10).
MIN_LIBTPU = {"v6e": (0, 0, 43)}
# Chips the CPU compile of an N-device mesh is read against.
CPU_STANDS_FOR = ("h100", "a100")

# Bytes per element of the HLO types an all-reduce can carry.
_HLO_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
              "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_ALL_REDUCE = re.compile(r"=\s*(.*?)\s+all-reduce(?:-start)?\(")
_ARRAY_TYPE = re.compile(r"\b(" + "|".join(_HLO_BYTES) + r")\[([\d,]*)\]")


class PlanError(Exception):
    """Bad input (a flag, a config, a missing libtpu); the message is one line naming it."""


# ---------------------------------------------------------------- environment

def offline_tpu_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables libtpu must see to compile without a TPU and without asking the cloud metadata
    server: JAX on the CPU backend, metadata queries skipped, and several processes allowed to load
    libtpu at once (by default the first holds /tmp/libtpu_lockfile, which guards a real TPU; with
    compile-only devices there is none). Updates `environ` (default os.environ)."""
    env = os.environ if environ is None else environ
    env["JAX_PLATFORMS"] = "cpu"
    env["TPU_SKIP_MDS_QUERY"] = "1"
    env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
    if environ is None and "jax" in sys.modules:  # JAX reads JAX_PLATFORMS when it is imported
        sys.modules["jax"].config.update("jax_platforms", "cpu")
    return env


def chip_of(target: str) -> str:
    """"v5e:2x2" -> "v5e"; "cpu:8" -> "cpu"."""
    return target.split(":", 1)[0].lower()


def parse_target(target: str) -> tuple[str, int]:
    """("tpu" | "cpu", number of chips) of a target; PlanError naming it when malformed.

    "v5e:2x2" -> ("tpu", 4), "v4:2x2x1" -> ("tpu", 4), "cpu:8" -> ("cpu", 8)."""
    chip, _, shape = target.partition(":")
    try:
        dims = [int(x) for x in shape.lower().split("x")]
    except ValueError:
        raise PlanError(f"--targets: {target!r} is not CHIP:AxB[xC] or cpu:N") from None
    if chip.lower() == "cpu" and len(dims) == 1 and dims[0] > 0:
        return "cpu", dims[0]
    if chip.lower() not in TOPOLOGIES or len(dims) < 2 or min(dims) <= 0:
        raise PlanError(f"--targets: {target!r} is not cpu:N or one of {sorted(TOPOLOGIES)} with a "
                        "topology AxB[xC] (e.g. v5e:2x2)")
    return "tpu", int(functools.reduce(lambda a, b: a * b, dims))


def libtpu_error(chip: str, version: str | None) -> str | None:
    """Why this libtpu cannot compile for `chip` (None if it can, or if libtpu's version is unknown:
    a TPU VM's libtpu need not come from pip). "0.0.42.1" -> (0, 0, 42) against MIN_LIBTPU."""
    need = MIN_LIBTPU.get(chip)
    if need is None or version is None:
        return None
    have = tuple(int(x) for x in re.findall(r"\d+", version)[:len(need)])
    if have >= need:
        return None
    return (f"libtpu {version} cannot compile for {chip} (it crashes); it needs libtpu >= "
            f"{'.'.join(map(str, need))}: .venv-tpu-aot/bin/pip install -r requirements-tpu-aot.txt")


def target_devices(target: str) -> list:
    """Devices to compile for: libtpu's compile-only devices of a TPU topology, or the first N CPU
    devices (the process must have been started with that many: see `main`)."""
    import jax

    kind, n = parse_target(target)
    if kind == "cpu":
        devs = jax.devices("cpu")
        if len(devs) < n:
            raise PlanError(f"--targets {target}: JAX sees {len(devs)} CPU devices; set "
                            f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts")
        return devs[:n]
    from jax.experimental import topologies

    try:
        version = importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        version = None
    if (why := libtpu_error(chip_of(target), version)) is not None:
        raise PlanError(f"--targets {target}: {why}")
    # v4 (and v5p) chips hold two TensorCores, which JAX drives as one device per chip ("megacore",
    # as MaxText's train_compile.py asks for); v4's default config would give a device per core.
    kwargs = {"chip_config_name": "megacore"} if chip_of(target) in MEGACORE else {}
    try:
        desc = topologies.get_topology_desc(target, platform="tpu", **kwargs)
    except Exception as e:  # noqa: BLE001 -- libtpu absent, or a topology it does not know
        raise PlanError(f"--targets {target}: no compile-only TPU devices ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); TPU targets need libtpu: "
                        "python3 -m venv .venv-tpu-aot && .venv-tpu-aot/bin/pip install -r "
                        "requirements-tpu-aot.txt, then run with .venv-tpu-aot/bin/python") from None
    if len(desc.devices) != n:
        raise PlanError(f"--targets {target}: libtpu gave {len(desc.devices)} devices for {n} chips")
    return list(desc.devices)


# ---------------------------------------------------------------- config

def load_config(spec: str):
    """"configs/NAME.py[:ARG]" -> configs.NAME.get_config(ARG), imported from the repository root."""
    from m2e_jax.benchmarks import _configs

    path, _, arg = spec.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    if not path.endswith(".py") or not os.path.isfile(os.path.join(_configs._ROOT, "configs", name + ".py")):
        raise PlanError(f"--config {spec}: expected configs/NAME.py[:ARG] of this repository")
    _configs._configs()  # puts the repository root on sys.path
    try:
        return importlib.import_module(f"configs.{name}").get_config(arg or None)
    except Exception as e:  # noqa: BLE001 -- a user's config: one line, no traceback
        raise PlanError(f"--config {spec}: {type(e).__name__}: {e}") from None


def plan_config(config, per_chip: int, chips: int, dtype: str | None = None, remat: bool | None = None):
    """A copy of `config` with global batch per_chip * chips, and dtype / model.remat when given."""
    c = config.copy_and_resolve_references()
    c.batch_size = per_chip * chips
    if dtype:
        c.model.dtype = dtype
    if remat is not None:
        if "remat" not in c.model:
            raise PlanError("--remat: this checkout's config.model has no `remat` field")
        c.model.remat = remat
    return c


# ---------------------------------------------------------------- compile and read the program

def _abstract(tree: Any, sharding) -> Any:
    """Arrays -> ShapeDtypeStructs with `sharding` (nothing is put on the compile-only devices)."""
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def batch_shapes(height: int, width: int, batch: int, sharding) -> dict:
    """data_schema's fields for a global batch of `batch` images, sharded along the batch axis."""
    import jax

    from m2e_jax import data_schema

    return {k: jax.ShapeDtypeStruct((batch, *shape), dtype, sharding=sharding)
            for k, (shape, dtype) in data_schema.spec(height, width).items()}


def lower_step(config, devices: list, stage: int = 4):
    """The lowered data-parallel train step of `stage` for `devices` (global batch config.batch_size)
    and the host state it was lowered for. The state and the VGG weights are initialised on the host
    CPU (their shapes are the program's arguments); the batch is shapes only."""
    from m2e_jax import losses, parallel, train

    par = parallel.DataParallel("shard_map", devices=devices)
    vgg = losses.load_perceptual_vgg(config.loss)

    def step(state, batch, *vgg):
        return train.train_step(state, batch, *vgg, config=config, stage=stage)

    fn = par.compile(step, num_replicated=1 if vgg is not None else 0)
    state = train.init_state(config)
    args = [_abstract(state, par.replicated),
            batch_shapes(config.model.height, config.model.width, config.batch_size, par.batch_sharding)]
    if vgg is not None:
        args.append(_abstract(vgg, par.replicated))
    return fn.lower(*args), state


def model_flops(config, chips: int, stage: int = 4) -> float | None:
    """FLOPs per device of the step's math: XLA's cost analysis of the program lowered for a CPU mesh
    of `chips` devices, before any backend's rewriting. TPU's cost analysis of its compiled program
    counts more for the same convolutions (its rewritten, padded forms: +16-19% on 3x3 / 7x7 convs at
    64x48), the CPU's compiled count skips SAME padding's zero taps; MFU is defined on this one."""
    import jax

    cpus = jax.devices("cpu")
    if len(cpus) < chips:
        return None
    cost = lower_step(config, cpus[:chips], stage)[0].cost_analysis()
    return float(cost["flops"]) if cost and cost.get("flops") else None


def all_reduce_bytes(hlo_text: str) -> int:
    """Bytes of every all-reduce result in a compiled HLO module's text (per device).

    A line `%x = (f32[64]{0}, bf16[3,3,64,64]{...}) all-reduce(...)` counts 64*4 + 3*3*64*64*2;
    all-reduce-start counts once (its -done carries the same buffers)."""
    total = 0
    for line in hlo_text.splitlines():
        m = _ALL_REDUCE.search(line)
        if not m:
            continue
        for dtype, dims in _ARRAY_TYPE.findall(m.group(1)):
            n = 1
            for d in filter(None, dims.split(",")):
                n *= int(d)
            total += n * _HLO_BYTES[dtype]
    return total


def tree_bytes(tree: Any) -> int:
    import jax
    import numpy as np

    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


def read_compiled(compiled, state: dict, trained: Sequence[str]) -> dict[str, Any]:
    """Per-device numbers of a compiled step: XLA's FLOPs, its memory analysis (bytes), the bytes its
    all-reduces carry, and the parameter / optimizer-state / trained-gradient bytes of `state`."""
    from m2e_jax.benchmarks import common

    mem = compiled.memory_analysis()
    args, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
    peak = getattr(mem, "peak_memory_in_bytes", 0) or 0
    return {"flops": common.flops_of(compiled), "argument_bytes": args, "output_bytes": out,
            "alias_bytes": alias, "temp_bytes": temp,
            "generated_code_bytes": int(mem.generated_code_size_in_bytes),
            # the donated state's outputs reuse its argument buffers (alias): live at once are the
            # arguments, the outputs that are new, and the temporaries.
            # XLA's own peak where it reports one (TPU: above this sum; CPU: below it), at least the sum.
            "peak_bytes": max(int(peak), args + out - alias + temp), "xla_peak_bytes": int(peak),
            "all_reduce_bytes": all_reduce_bytes(compiled.as_text()),
            "param_bytes": tree_bytes(state["params"]), "opt_bytes": tree_bytes(state["opt"]),
            "ema_bytes": tree_bytes(state.get("ema", {})),
            "grad_bytes": tree_bytes({k: state["params"][k] for k in trained})}


def compile_point(config_spec: str, target: str, per_chip: int, dtype: str | None = None, stage: int = 4,
                  remat: bool | None = None) -> dict[str, Any]:
    """Compiles one point and returns its cache row (a row with "fits": False where XLA reports the
    program does not fit the device's memory)."""
    from m2e_jax import train

    platform, n = parse_target(target)
    cfg = plan_config(load_config(config_spec), per_chip, n, dtype, remat)
    row = point_key_fields(config_spec, target, per_chip, cfg.model.dtype, stage,
                           bool(cfg.model.get("remat", False)))
    row.update(size=f"{cfg.model.height}x{cfg.model.width}", chips=n, global_batch=cfg.batch_size)
    devices = target_devices(target)
    row["device_kind"] = devices[0].device_kind
    if platform == "tpu":  # the compiler that laid the program out (v6e needs >= 0.0.43)
        row["libtpu"] = importlib.metadata.version("libtpu")
    t0 = time.perf_counter()
    try:
        lowered, state = lower_step(cfg, devices, stage)
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 -- XLA's out-of-memory at compile time is an answer
        if "RESOURCE_EXHAUSTED" not in str(e) and "Ran out of memory" not in str(e):
            raise
        row.update(compile_s=time.perf_counter() - t0, fits=False,
                   error=next((ln for ln in str(e).splitlines() if ln.strip()), "")[:300])
        return row
    row["compile_s"] = time.perf_counter() - t0
    gens, discs, _ = train.stage_groups(stage, cfg.schedule.freeze_earlier)
    row.update(read_compiled(compiled, state, gens + discs))
    row["model_flops"] = model_flops(cfg, n, stage)
    import jax

    row["jax"] = jax.__version__
    # What compiling needs of the host: the process's peak resident memory (this point's own where
    # it ran in a fresh process, as `in_fresh_process` runs it; ru_maxrss is in KiB on Linux).
    row["host_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def in_fresh_process(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` run in a new Python process (spawned: no JAX or libtpu state inherited), its
    value or exception handed back; the process ends with it.

    Why: a compile's host memory does not come back to the process that compiled. A --search
    process compiling configs/pod.py for v6e held 16.5 GB resident and 14 GB of swap at its third
    point, with JAX's caches cleared after each, and was killed at its fourth (33), which a fresh
    process then compiled in 11.7 GB: on a 24 GiB machine each point must start from nothing.
    A process that ends without an answer is one line, `PlanError`, saying how (`how_it_died`)."""
    ctx = multiprocessing.get_context("spawn")
    answers, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_answer, args=(sender, fn, args))
    child.start()
    sender.close()  # the child holds the only sender: its death ends the pipe
    try:
        ok, value = answers.recv()
    except EOFError:
        child.join()
        raise PlanError(f"the process running {fn.__name__}{args} {how_it_died(child.exitcode)}") from None
    child.join()
    if not ok:
        raise value
    return value


def _answer(sender: Any, fn: Callable[..., Any], args: tuple) -> None:
    """In the child: `fn(*args)`'s value, or the exception it raised, sent back as (ok, value)."""
    try:
        answer = (True, fn(*args))
    except Exception as e:  # every error goes back to the parent, which raises it
        answer = (False, e)
    try:
        sender.send(answer)
    except (pickle.PicklingError, TypeError, AttributeError) as e:  # an answer that cannot travel
        sender.send((False, PlanError(f"{fn.__name__}{args}: its answer could not be sent back ({e}): "
                                      f"{answer[1]}")))


def how_it_died(exitcode: int | None) -> str:
    """A child process's end without an answer, in words: its signal (negative `exitcode`, as
    multiprocessing reports it) or its exit status. SIGKILL is the kernel's out-of-memory killer's
    signal, and also `kill -9`'s; a person stopping the run sends SIGTERM or SIGINT."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        guess = " (the out-of-memory killer's signal: out of host memory?)" if name == "SIGKILL" else ""
        return f"was killed by {name} without an answer{guess}"
    return f"exited with status {exitcode} without an answer"


def compile_point_in_fresh_process(config_spec: str, target: str, per_chip: int, dtype: str | None = None,
                                   stage: int = 4, remat: bool | None = None) -> dict[str, Any]:
    """`compile_point`, in its own process (`in_fresh_process`): what the command line compiles with."""
    return in_fresh_process(compile_point, config_spec, target, per_chip, dtype, stage, remat)


# ---------------------------------------------------------------- cache

def point_key_fields(config_spec: str, target: str, per_chip: int, dtype: str, stage: int,
                     remat: bool) -> dict[str, Any]:
    return {"config": config_spec, "target": target, "per_chip": per_chip, "dtype": dtype,
            "stage": stage, "remat": remat}


def point_key(row: dict[str, Any]) -> str:
    return "|".join(str(row[k]) for k in ("config", "target", "per_chip", "dtype", "stage", "remat"))


def load_cache(path: str | None) -> dict[str, dict]:
    """{point key: row} from a cache file ({} when the file does not exist)."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            rows = json.load(f)["points"]
        return {point_key(r): r for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PlanError(f"--cache {path}: not a pod_plan cache ({type(e).__name__}: {e})") from None


def save_cache(path: str | None, cache: dict[str, dict]) -> None:
    """Writes the cache atomically (a killed compile never leaves half a file)."""
    if not path:
        return
    rows = sorted(cache.values(), key=lambda r: (r["config"], r["target"], r["dtype"], r["stage"],
                                                 r["remat"], r["per_chip"]))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"benchmark": "pod_plan", "points": rows}, f, indent=1, default=float)
    os.replace(tmp, path)


# ---------------------------------------------------------------- the plan (pure arithmetic)

def chips_for(target: str, project: Sequence[str] = ()) -> tuple[str, ...]:
    """The published chips a target's compile is read against: its own TPU, or the GPUs of
    CPU_STANDS_FOR for a CPU mesh; a TPU compile is also read against the TPUs in `project`."""
    chip = chip_of(target)
    if chip == "cpu":
        return CPU_STANDS_FOR
    return (chip, *(c for c in project if c != chip and c in TOPOLOGIES))


def chips_of_point(row: dict[str, Any], project: Sequence[str] = (),
                   margin: float = DEFAULT_MARGIN) -> tuple[str, ...]:
    """`chips_for` a cached point: a compile that did not fit its own chip (`squeezed`) says nothing
    about another chip, so it is read against its own chip(s) only."""
    return chips_for(row["target"], () if squeezed(row, margin) else project)


def numbers_for(target: str, chip_name: str) -> str:
    """Where a plan row's numbers come from: this chip's own compile, another TPU's, or a CPU mesh."""
    own = chip_of(target)
    if own == chip_name:
        return "compiled"
    return "CPU mesh (proxy)" if own == "cpu" else f"projected from {own}"


def peak_of(row: dict[str, Any]) -> int:
    """A compiled point's peak bytes: XLA's reported peak or arguments + new outputs + temporaries,
    whichever is larger (rows cached before read_compiled took the larger kept XLA's alone)."""
    live = (row["argument_bytes"] + row.get("output_bytes", 0) - row.get("alias_bytes", 0)
            + row["temp_bytes"])
    return max(int(row["peak_bytes"]), int(live))


def fits(row: dict[str, Any], chip: Chip, margin: float = DEFAULT_MARGIN) -> bool:
    """Whether a compiled point's peak is within the chip's HBM less `margin`."""
    return bool(row.get("fits", True)) and peak_of(row) <= (1 - margin) * chip.hbm_gib * GIB


def squeezed(row: dict[str, Any], margin: float = DEFAULT_MARGIN) -> bool:
    """Whether a compiled point is its own chip's answer only: it did not fit, or it is a TPU compile
    whose peak is past its chip's HBM less `margin`. Near its HBM XLA:TPU lays the program out to fit
    the chip it compiles for, off the line through the points below (v4, configs/pod.py: 0.59 GiB per
    example from 16 to 40 per chip, then 29.16 GiB at 42, 2.6 above the line, and 29.3 flat to 44;
    v5e: 14.7 GiB at 22 below 21's 14.9). Such a peak is neither the program's need on a larger TPU
    nor a point of the line, so it is not projected onto other chips nor fitted."""
    if row.get("fits", True) is False:
        return True
    own = chip_of(row["target"])
    return own in TOPOLOGIES and not fits(row, CHIPS[own], margin)


def all_reduce_seconds(nbytes: float, chips: int, chip: Chip) -> float:
    """A ring all-reduce of `nbytes` over `chips`: each chip sends and receives 2 (n-1)/n of it, at
    the chip's bidirectional interconnect bandwidth (an optimistic bound: every link busy)."""
    return 2 * (chips - 1) / chips * nbytes / (chip.ici_gbytes_s * 1e9)


def plan_row(row: dict[str, Any], chip_name: str, margin: float = DEFAULT_MARGIN) -> dict[str, Any]:
    """A compiled point read against one chip: HBM use, fit, all-reduce time, projected speed."""
    chip = CHIPS[chip_name]
    out = {k: row.get(k) for k in ("config", "target", "dtype", "per_chip", "remat", "stage", "size")}
    out["chip"] = chip_name
    out["compiled_for"] = numbers_for(row["target"], chip_name)
    if row.get("fits") is False:
        return {**out, "fits": "no (XLA: out of memory)"}
    flops = row.get("model_flops") or 0.0  # the math; MFU's numerator
    compiled = row.get("flops") or 0.0
    out.update(gflop_step=flops / 1e9 if flops else None,
               gflop_example=flops / 1e9 / row["per_chip"] if flops else None,
               compiled_gflop_step=compiled / 1e9 if compiled else None,
               args_gib=row["argument_bytes"] / GIB, temp_gib=row["temp_bytes"] / GIB,
               peak_gib=peak_of(row) / GIB, hbm_gib=chip.hbm_gib,
               hbm_use=peak_of(row) / (chip.hbm_gib * GIB),
               fits="yes" if fits(row, chip, margin) else "no",
               all_reduce_mib=row["all_reduce_bytes"] / 2**20,
               all_reduce_ms=1e3 * all_reduce_seconds(row["all_reduce_bytes"], row["chips"], chip))
    for mfu in MFUS:
        step_s = flops / (mfu * chip.peak_bf16_tflops * 1e12) if flops else None
        out[f"step_ms_{int(mfu * 100)}"] = step_s * 1e3 if step_s else None
        out[f"img_s_{int(mfu * 100)}"] = row["per_chip"] / step_s if step_s else None
    out["host_img_s_40"] = (out["img_s_40"] or 0) * chip.chips_per_host or None
    return out


def linear_memory_fit(rows: Sequence[dict], margin: float = DEFAULT_MARGIN) -> tuple[float, float] | None:
    """(bytes at batch 0, bytes per example) of peak memory through the compiled points of one
    (config, target, dtype, stage, remat) that are not `squeezed`, least squares; None with fewer
    than two batch sizes."""
    pts = sorted({(r["per_chip"], peak_of(r)) for r in rows if not squeezed(r, margin)})
    if len({b for b, _ in pts}) < 2:
        return None
    n = len(pts)
    mb, mp = sum(b for b, _ in pts) / n, sum(p for _, p in pts) / n
    slope = sum((b - mb) * (p - mp) for b, p in pts) / sum((b - mb) ** 2 for b, _ in pts)
    return mp - slope * mb, slope


def projected_max_batch(rows: Sequence[dict], chip: Chip, margin: float = DEFAULT_MARGIN) -> int | None:
    """Largest per-chip batch whose linearly extrapolated peak fits the chip less `margin` (None
    without two compiled batch sizes). A projection: the compiler's layout changes with the batch."""
    fit = linear_memory_fit(rows, margin)
    return None if fit is None else edge_on_line(*fit, chip, margin)


def edge_on_line(base: float, per_example: float, chip: Chip, margin: float = DEFAULT_MARGIN) -> int | None:
    """Largest batch whose peak on the line `base + per_example * batch` (bytes) fits the chip's HBM
    less `margin`; None for a line that does not rise."""
    if per_example <= 0:
        return None
    return max(0, int(((1 - margin) * chip.hbm_gib * GIB - base) // per_example))


def search_projection(rows: Sequence[dict], chip: Chip, margin: float = DEFAULT_MARGIN) -> int | None:
    """The search's guide: where the line through two compiled peaks puts the chip's edge (HBM less
    `margin`). The two are the largest batch that fits and the smallest above it that compiled past
    the margin (a point whose peak XLA reported), else the two largest that fit (not `squeezed`).
    Near its HBM the compiler's peak bends off the line through all the points (v5p, configs/pod.py:
    0.52 GiB per example from 16 to 148 per chip, 0.21 from 166 to 170), and that line would lead
    the search up a few batches per compile; the nearest points follow the bend.

    The bend is bounded: the line rises at least `FLATTEST_BEND` times the mean rise per example
    from the smallest batch that fits to the largest (v5p's bend above is 0.46 of its mean). Two
    adjacent batches that XLA laid out alike lie on a near-flat line that says nothing about the
    batches above (configs/deepfashion.py on v6e: 27.90 GiB at 31, 27.91 at 32, a line that put
    the edge at 205 per chip; a quarter of the mean rise from 4, 0.80 GiB per example, puts it at
    35)."""
    ok = {r["per_chip"]: r for r in rows if not squeezed(r, margin)}
    if not ok:
        return None
    over = [r for r in rows if r.get("fits", True) and r["per_chip"] > max(ok)]
    pair = sorted(ok.items())[-2:] if not over else [
        (max(ok), ok[max(ok)]), min(((r["per_chip"], r) for r in over), key=lambda x: x[0])]
    if len(pair) < 2:
        return None
    (b0, r0), (b1, r1) = pair
    slope = (peak_of(r1) - peak_of(r0)) / (b1 - b0)
    if len(ok) > 1:
        mean = (peak_of(ok[max(ok)]) - peak_of(ok[min(ok)])) / (max(ok) - min(ok))
        slope = max(slope, FLATTEST_BEND * mean)
    return edge_on_line(peak_of(r0) - slope * b0, slope, chip, margin)


def next_search_batch(known: dict[int, bool], start: int = 4, projection: int | None = None) -> int | None:
    """The next per-chip batch to compile when searching the largest that fits, from {batch: fits}
    of the points compiled so far: double from `start` until one does not fit, then bisect between
    the largest that fits and the smallest that does not. None when they are adjacent (done).

    With `projection` (`search_projection` of the points compiled so far) the line leads: its
    batch while nothing has failed yet, the batch just above the largest that fits whenever the
    line puts the edge there (once per bracket: after that, bisection), and, after the first
    failure above it, the batch just below that failure whenever the line through the two puts the
    edge there. Peaks grow nearly linearly with the batch and a compile takes 10-30 minutes on this
    CPU, so two points and the line find the edge in four compiles where doubling and bisection
    took seven (v5e, configs/pod.py). Elsewhere a bracket is bisected: near the chip's HBM XLA
    lays the program out for the chip, peaks jump and then stay flat, and the line misleads (v4:
    it led to 45, and 42-44 did not fit either; v6e: from 16 and 36 it led to 35, at 29.28 GiB
    against 36's 29.29)."""
    ok = [b for b, f in known.items() if f]
    bad = [b for b, f in known.items() if not f]
    lo = max(ok) if ok else 0
    hi = min((b for b in bad if b > lo), default=None)
    if ok and projection is not None:
        if hi is None and projection > lo and projection not in known:
            return projection
        # once per bracket: where the batch below the largest that fits also fitted, the line has
        # put the edge at the largest that fits before and been wrong, and with a failure above it
        # would creep up one batch per compile (deepfashion.py on v4: 39, 40, 41 from 44's failure)
        crept = hi is not None and known.get(lo - 1, False)
        if projection == lo and (hi is None or lo + 1 < hi) and lo + 1 not in known and not crept:
            return lo + 1
        first_failure = len([b for b in bad if b > lo]) == 1
        if first_failure and projection == hi - 1 > lo and projection not in known:
            return projection
    if hi is None:
        nxt = lo * 2 if lo else start
        return nxt if nxt not in known else None
    if not ok:
        nxt = max(1, hi // 2)
        return None if nxt == hi or nxt in known else nxt
    return None if hi - lo <= 1 else (lo + hi) // 2


# ---------------------------------------------------------------- tables

COLUMNS = [("config", "config", "s"), ("chip", "chip", "s"), ("compiled_for", "numbers", "s"),
           ("dtype", "dtype", "s"),
           ("per_chip", "batch/chip", "d"), ("gflop_step", "GFLOP/step", ".0f"),
           ("gflop_example", "GFLOP/ex", ".0f"),
           ("compiled_gflop_step", "compiled GFLOP/step", ".0f"), ("args_gib", "args GiB", ".2f"),
           ("temp_gib", "temp GiB", ".2f"), ("peak_gib", "peak GiB", ".2f"), ("hbm_gib", "HBM GiB", ".0f"),
           ("hbm_use", "HBM use", ".0%"), ("fits", "fits", "s"), ("all_reduce_mib", "all-reduce MiB", ".1f"),
           ("all_reduce_ms", "all-reduce ms", ".2f"), ("step_ms_30", "ms @30%", ".0f"),
           ("step_ms_40", "ms @40%", ".0f"), ("step_ms_50", "ms @50%", ".0f"),
           ("img_s_30", "img/s @30%", ".1f"), ("img_s_40", "img/s @40%", ".1f"),
           ("img_s_50", "img/s @50%", ".1f"), ("host_img_s_40", "host img/s @40%", ".0f")]


def plan_rows(cache: dict[str, dict], margin: float = DEFAULT_MARGIN,
              project: Sequence[str] = ()) -> list[dict]:
    """Every cached point read against its chip(s) (and TPU points against the TPUs in `project`:
    the same program's FLOPs, its memory as compiled for the other TPU, which the compiler lays out
    alike but not identically), except where that TPU's own compile of the point is cached: its
    numbers replace the projection."""
    read = readings(cache, project, margin)
    rows = []
    for r in sorted(cache.values(), key=lambda r: (r["config"], r["target"], r["dtype"], r["remat"],
                                                   r["per_chip"])):
        rows += [plan_row(r, chip, margin) for chip in read(r)]
    return rows


def readings(cache: dict[str, dict], project: Sequence[str] = (),
             margin: float = DEFAULT_MARGIN) -> Callable[[dict], list[str]]:
    """row -> the chips the plan reads that cached point against (`chips_of_point`). A TPU compile
    is projected onto another TPU only where that TPU says nothing better and the projection says
    something: the TPU has not compiled the same point itself, nor two batches of the same program
    (its own line then leads: the same program's peak differs by up to 29% between TPUs,
    RESULTS.md 10), and the point fits it (a projected "no" is only the larger batch of a smaller
    chip). Where several TPUs compiled a point, only the compile with the largest peak is projected
    (one row per chip, the conservative one)."""
    def point(r: dict[str, Any], chip: str | None) -> tuple:
        return r["config"], chip, r["per_chip"], r["dtype"], r["stage"], r["remat"]

    def program(r: dict[str, Any], chip: str) -> tuple:
        return r["config"], chip, r["dtype"], r["stage"], r["remat"]

    compiled = {point(r, chip_of(r["target"])) for r in cache.values()}
    batches: dict[tuple, set[int]] = {}
    source: dict[tuple, dict] = {}
    for r in cache.values():
        if chip_of(r["target"]) not in TOPOLOGIES or squeezed(r, margin):
            continue
        batches.setdefault(program(r, chip_of(r["target"])), set()).add(r["per_chip"])
        key = point(r, None)
        if key not in source or peak_of(r) > peak_of(source[key]):
            source[key] = r
    lined = {k for k, b in batches.items() if len(b) >= 2}

    def against(r: dict[str, Any]) -> list[str]:
        own = chip_of(r["target"])
        if own not in TOPOLOGIES:  # a CPU mesh, read against the GPUs it stands for
            return list(chips_of_point(r, project, margin))
        return [chip for chip in chips_of_point(r, project, margin)
                if chip == own or (source.get(point(r, None)) is r and point(r, chip) not in compiled
                                   and program(r, chip) not in lined and fits(r, CHIPS[chip], margin))]

    return against


def max_batch_rows(cache: dict[str, dict], margin: float = DEFAULT_MARGIN,
                   project: Sequence[str] = ()) -> list[dict]:
    """Per (config, target, dtype, stage, remat) and chip: the largest compiled batch that fits, the
    smallest compiled one that does not, and the linear projection of the largest that fits."""
    groups: dict[tuple, list[dict]] = {}
    for r in cache.values():
        groups.setdefault((r["config"], r["target"], r["dtype"], r["stage"], r["remat"]), []).append(r)
    against = readings(cache, project, margin)
    out = []
    for (config, target, dtype, _, remat), rows in sorted(groups.items()):
        for name in chips_for(target, project):
            chip = CHIPS[name]
            read = [r for r in rows if name in against(r)]
            if not read:  # every point of the group compiled for this chip too: its own rows say it
                continue
            ok = [r["per_chip"] for r in read if r.get("fits", True) and fits(r, chip, margin)]
            bad = [r["per_chip"] for r in read if not (r.get("fits", True) and fits(r, chip, margin))]
            out.append({"config": config, "chip": name, "dtype": dtype, "remat": "on" if remat else "off",
                        "compiled_for": numbers_for(target, name),
                        "compiled": ",".join(str(b) for b in sorted(r["per_chip"] for r in read)),
                        "max_fit_compiled": max(ok) if ok else None,
                        "min_nofit_compiled": min(bad) if bad else None,
                        "max_fit_projected": projected_max_batch(rows, chip, margin)})
    return out


MAX_COLUMNS = [("config", "config", "s"), ("chip", "chip", "s"), ("compiled_for", "numbers", "s"),
           ("dtype", "dtype", "s"),
               ("remat", "remat", "s"), ("compiled", "compiled batches/chip", "s"),
               ("max_fit_compiled", "largest fitting (compiled)", "d"),
               ("min_nofit_compiled", "smallest not fitting (compiled)", "d"),
               ("max_fit_projected", "largest fitting (linear projection)", "d")]


# ---------------------------------------------------------------- command line

def _point(a: argparse.Namespace, cache: dict[str, dict], compile_fn: Callable[..., dict],
           config_spec: str, target: str, dtype: str | None, per_chip: int) -> dict:
    """One point's row: from the cache, else compiled (and the cache saved at once)."""
    chips = parse_target(target)[1]
    probe = plan_config(load_config(config_spec), per_chip, chips, dtype, a.remat)
    key = point_key(point_key_fields(config_spec, target, per_chip, probe.model.dtype, a.stage,
                                     bool(probe.model.get("remat", False))))
    if key in cache and not a.recompile:
        if cache[key].get("fits", True) and cache[key].get("model_flops") is None:
            # a point compiled before model_flops was recorded: lowering only, no compile
            cache[key]["model_flops"] = model_flops(probe, chips, a.stage)
            save_cache(a.cache, cache)
        return cache[key]
    print(f"compiling {key} ...", file=sys.stderr, flush=True)
    row = compile_fn(config_spec, target, per_chip, dtype, a.stage, a.remat)
    cache[key] = row
    save_cache(a.cache, cache)
    print(f"  {row.get('compile_s', 0):.0f} s: peak {row.get('peak_bytes', 0) / GIB:.2f} GiB, "
          f"fits={row.get('fits', True)}", file=sys.stderr, flush=True)
    return row


def _points(a: argparse.Namespace, cache: dict[str, dict], compile_fn: Callable[..., dict]) -> None:
    """Compiles the requested points (and with --search the largest batch that fits)."""
    for config_spec in a.config:
        for target in a.targets:
            chip = CHIPS[chips_for(target)[0]]
            for dtype in a.dtypes or [None]:
                known, rows = {}, []
                for b in a.per_chip:
                    rows.append(_point(a, cache, compile_fn, config_spec, target, dtype, b))
                    known[b] = rows[-1].get("fits", True) and fits(rows[-1], chip, a.margin)
                while a.search and (b := next_search_batch(
                        known, a.per_chip[0], search_projection(rows, chip, a.margin))) is not None:
                    rows.append(_point(a, cache, compile_fn, config_spec, target, dtype, b))
                    known[b] = rows[-1].get("fits", True) and fits(rows[-1], chip, a.margin)


def main(argv: Sequence[str] | None = None,
         compile_fn: Callable[..., dict] = compile_point_in_fresh_process) -> dict:
    ap = argparse.ArgumentParser(prog="python -m m2e_jax.benchmarks.pod_plan",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", default=None,
                    help="configs/NAME.py[:ARG] (repeatable; default configs/pod.py)")
    ap.add_argument("--targets", default="v5e:2x2",
                    help="comma-separated TPU topologies (v4:2x2x1, v5e:2x2, v5p:2x2x1, v6e:2x2) or cpu:N")
    ap.add_argument("--per_chip", default="4", help="per-chip batch sizes to compile, e.g. 4,8")
    ap.add_argument("--dtypes", default=None, help="override config.model.dtype: float32,bfloat16")
    ap.add_argument("--stage", type=int, default=4, choices=(1, 2, 3, 4), help="4 = joint (all networks)")
    ap.add_argument("--remat", action=argparse.BooleanOptionalAction, default=None,
                    help="set config.model.remat (rematerialised residual blocks)")
    ap.add_argument("--search", action="store_true",
                    help="search the largest per-chip batch that fits the chip's HBM less --margin")
    ap.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="fraction of HBM kept free")
    ap.add_argument("--cache", default=None, help="JSON cache of compiled points (read and written)")
    ap.add_argument("--recompile", action="store_true", help="compile points already in the cache")
    ap.add_argument("--report", action="store_true", help="print the tables from --cache only")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables (for RESULTS.md)")
    ap.add_argument("--project", default="",
                    help="also read TPU compiles against these TPUs (e.g. v4,v5p,v6e), marked projected")
    a = ap.parse_args(argv)
    if not a.report:
        offline_tpu_env()  # before anything imports JAX
    try:
        a.config = a.config or ["configs/pod.py"]
        a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
        for t in a.targets:
            parse_target(t)
        from m2e_jax.benchmarks import common

        a.per_chip = common.parse_ints(a.per_chip, "--per_chip")
        a.dtypes = common.parse_dtypes(a.dtypes) if a.dtypes else None
        if not 0 <= a.margin < 1:
            raise PlanError(f"--margin: expected a fraction in [0, 1), got {a.margin}")
        cache = load_cache(a.cache)
        if not a.report:
            # CPU devices for cpu:N targets and for model_flops' lowering (before JAX starts its backend)
            n = max(parse_target(t)[1] for t in a.targets)
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                       f" --xla_force_host_platform_device_count={n}").strip()
            _points(a, cache, compile_fn)
    except PlanError as e:
        raise SystemExit(f"pod_plan: {e}") from None
    if not cache:
        raise SystemExit("pod_plan: nothing compiled and no cached points (--cache)")
    project = [c.strip() for c in a.project.split(",") if c.strip()]
    bad = [c for c in project if c not in TOPOLOGIES]
    if bad:
        raise SystemExit(f"pod_plan: --project: unknown {bad}; expected some of {sorted(TOPOLOGIES)}")
    rows, maxes = plan_rows(cache, a.margin, project), max_batch_rows(cache, a.margin, project)
    from m2e_jax.benchmarks import common

    table = common.markdown_table if a.markdown else common.format_table
    print(table(rows, COLUMNS))
    print()
    print(table(maxes, MAX_COLUMNS))
    return {"points": list(cache.values()), "plan": rows, "max_batch": maxes}


if __name__ == "__main__":
    main()
