"""Where the joint train step's time goes: `python -m m2e_jax.benchmarks.profile [--trace DIR]`.

Splits the step of train_step into its parts and gives each one's forward + backward FLOPs (XLA
cost analysis) and median time, jitted on its own: the input preparation + UV warp, PAN, TRN, FTN
(each generator's value_and_grad of a sum of its outputs), one PatchGAN (fwd + bwd on a batch),
the VGG16 perceptual loss (fwd + bwd through x), and the five Adam updates + finiteness check.
The whole step comes last for comparison (parts overlap and fuse differently, so they need not
add up exactly). `--trace DIR` also writes a `jax.profiler` trace of three whole steps
(TensorBoard / Perfetto).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from m2e_jax import losses
from m2e_jax.benchmarks import common
from m2e_jax.benchmarks import train_step as ts


def _measure(name: str, fn, args, repeats: int) -> dict:
    exe, compile_s = common.compile_timed(jax.jit(fn), *args)
    ms = common.median_ms(lambda: exe(*args), repeats, warmup=1)
    flops = common.flops_of(exe)
    return {"part": name, "compile_s": compile_s, "ms": ms, "gflops": flops / 1e9 if flops else None}


def parts(config, repeats: int, vgg=None, whole: bool = True) -> list[dict]:
    """One row per part of the joint step (see the module docstring); the last row is the whole
    step (whole=True) or the sum of the parts."""
    from m2e_jax import optimizer, train
    from m2e_jax.models import tryon

    h, w, b = config.model.height, config.model.width, config.batch_size
    batch = jax.device_put(ts.paired_batch(h, w, b))
    state = jax.device_put(train.init_state(config))
    params = state["params"]
    prepare = lambda bt: tryon.network_inputs(bt, config.model)
    rows = [_measure("prepare_batch + UV warp", prepare, (batch,), repeats)]
    inputs = jax.jit(prepare)(batch)
    out = jax.jit(lambda p, i: tryon.tryon_forward(p, i, config.model))(params, inputs)

    def gen_grad(net):
        def loss(p_net):
            o = tryon.tryon_forward({**params, net: p_net}, inputs, config.model)
            key = {"pan": "aligned", "trn": "refined", "ftn": "output"}[net]
            return jnp.sum(o[key])
        return lambda p_net: jax.value_and_grad(loss)(p_net)

    # Each generator's grad also runs the networks before it forward (they feed it).
    for net in ("pan", "trn", "ftn"):
        rows.append(_measure(f"{net.upper()} fwd+bwd (+ earlier nets fwd)", gen_grad(net), (params[net],),
                             repeats))

    def d_grad(p_d, image):
        return jax.value_and_grad(lambda p: jnp.sum(tryon.discriminate(config.model, "pan", p, image,
                                                                       inputs["person_iuv"])))(p_d)
    rows.append(_measure("PatchGAN fwd+bwd (one of 6 passes)", d_grad, (params["d_pan"], out["aligned"]),
                         repeats))
    if vgg is not None:
        def perceptual(x):
            return jax.value_and_grad(lambda y: losses.vgg_perceptual(
                vgg, y, inputs["target_image"], config.loss.vgg16_layer_weights))(x)
        rows.append(_measure("VGG16 perceptual fwd+bwd (one of 2)", perceptual, (out["aligned"],), repeats))
    def adam(p, opt):
        new = optimizer.update(p, opt, p, state["step"], config)
        return new, optimizer.all_finite(p)
    rows.append(_measure("Adam x5 + finite check", adam, (params, state["opt"]), repeats))
    if whole:
        step = ts.bench_one(config, 4, repeats, None, vgg)
        rows.append({"part": "whole joint step", "compile_s": step["compile_s"], "ms": step["ms_per_step"],
                     "gflops": step["gflops_per_step"]})
    else:
        rows.append({"part": "sum of the parts", "compile_s": sum(r["compile_s"] for r in rows),
                     "ms": sum(r["ms"] for r in rows), "gflops": sum(r["gflops"] or 0 for r in rows)})
    return rows


def trace(config, logdir: str, vgg=None, steps: int = 3) -> None:
    """Writes a jax.profiler trace of `steps` joint train steps (after one untraced warm-up)."""
    from m2e_jax import parallel, train

    par = parallel.DataParallel(config.parallel, devices=jax.devices()[:1])
    fn = par.compile(functools.partial(train.train_step, config=config, stage=4, vgg=vgg))
    state = par.put_state(train.init_state(config))
    batch = par.put_batch(ts.paired_batch(config.model.height, config.model.width, config.batch_size))
    state, m = fn(state, batch)
    jax.block_until_ready(m)
    with jax.profiler.trace(logdir):
        for _ in range(steps):
            state, m = fn(state, batch)
        jax.block_until_ready(m)


COLUMNS = [("part", "part", "s"), ("compile_s", "compile s", ".1f"), ("ms", "ms", ".1f"),
           ("gflops", "GFLOP", ".2f"), ("share", "share of step ms", ".0%")]


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m m2e_jax.benchmarks.profile",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="64x48")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trace", default=None, help="also write a jax.profiler trace here")
    ap.add_argument("--skip_whole", action="store_true", help="do not compile the whole step (faster)")
    ap.add_argument("--json", default=None)
    ts.add_width_flags(ap)
    a = common.parse_args(ap, argv)
    (h, w), = common.parse_sizes(a.size, "--size")
    widths = a.widths or ts.default_widths()
    config = ts.bench_config(h, w, a.dtype, a.batch, widths, a.base_channels, a.blocks, a.d_channels,
                          not a.no_perceptual)
    vgg = losses.load_perceptual_vgg(config.loss)
    info = common.machine_info()
    print(common.machine_line(info))
    rows = parts(config, a.repeats, vgg, whole=not a.skip_whole)
    for r in rows:
        r["share"] = r["ms"] / rows[-1]["ms"]
    print(f"joint step parts, {widths} widths, {a.size}, batch {a.batch}, {a.dtype}")
    print(common.format_table(rows, COLUMNS))
    if a.trace:
        trace(config, a.trace, vgg)
        print(f"trace written to {a.trace}")
    common.write_json(a.json, "profile", info, rows, widths=widths)
    return rows


if __name__ == "__main__":
    main()
