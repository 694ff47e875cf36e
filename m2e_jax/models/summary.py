"""Parameter count and forward FLOPs per network at a given image size (default config: 256x192).

    python -m m2e_jax.models.summary [--height 256 --width 192 --batch 1 --verbose]

Parameters are counted with `clu.parameter_overview` on abstract shapes (`jax.eval_shape`, nothing
is allocated); FLOPs are XLA's estimate, `jax.jit(apply).lower(...).cost_analysis()["flops"]`, for
one forward pass of `--batch` examples. `--verbose` prints clu's per-variable table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from clu import parameter_overview

from m2e_jax.models.defaults import model_config
from m2e_jax.models.discriminators import PatchDiscriminator
from m2e_jax.models.ftn import FTN
from m2e_jax.models.pan import PAN
from m2e_jax.models.trn import TRN
from m2e_jax.models.vgg import VGG16_CFG, VGG16_TAPS, VggTrunk


def _networks(cfg, b: int) -> list[tuple[str, object, tuple, dict]]:
    """(name, network, positional inputs, keyword inputs) as abstract shapes."""
    h, w = cfg.height, cfg.width
    img = jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32)
    one = jax.ShapeDtypeStruct((b, h, w, 1), jnp.float32)
    # FTN's paint map with model.ftn_paint, M's photo for its relighting head with model.ftn_relight.
    ftn_extra = dict(paint=one if cfg.ftn_paint else None, model_image=img)
    return [
        ("PAN", PAN.from_config(cfg), (img, img, img, img, one), {}),
        ("TRN", TRN.from_config(cfg), (img, img, one, one, img), {}),
        ("FTN", FTN.from_config(cfg), (img, img, one, one, img), ftn_extra),
        ("D (each of pan, final)", PatchDiscriminator.from_config(cfg), (img, img), {}),
        ("VGG16 trunk (loss, frozen)", VggTrunk(VGG16_CFG, VGG16_TAPS), (img,), {}),
    ]


def summarise(cfg, batch: int = 1, log: Callable[[str], None] = print,
              verbose: bool = False) -> list[tuple[str, int, float]]:
    """Returns and prints rows (name, parameter count, forward GFLOPs)."""
    rows = []
    for name, net, args, kwargs in _networks(cfg, batch):
        variables = jax.eval_shape(net.init, jax.random.key(0), *args, **kwargs)
        params = variables["params"]
        count = parameter_overview.count_parameters(params)
        cost = jax.jit(net.apply).lower(variables, *args, **kwargs).cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        rows.append((name, count, float(cost["flops"]) / 1e9))
        if verbose:
            log(f"{name}\n{parameter_overview.get_parameter_overview(params, include_stats=False)}")
    log(f"Image {cfg.height}x{cfg.width}, batch {batch}, base_channels {cfg.base_channels}, blocks "
        f"PAN {cfg.pan_blocks} / TRN {cfg.trn_blocks} / FTN {cfg.ftn_blocks}, d_layers {cfg.d_layers}, "
        f"{cfg.upsample}")
    log("| network | parameters | forward GFLOPs |")
    log("|---|---:|---:|")
    for name, count, gflops in rows:
        log(f"| {name} | {count:,} | {gflops:.1f} |")
    gen = rows[:3]
    log(f"| generators total | {sum(r[1] for r in gen):,} | {sum(r[2] for r in gen):.1f} |")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m m2e_jax.models.summary")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    cfg = model_config()
    cfg.update(dict(height=a.height, width=a.width))
    summarise(cfg, a.batch, verbose=a.verbose)


if __name__ == "__main__":
    main()
