"""Overfitting check: PAN + TRN + FTN trained on one paired synthetic example must fit it.

    python -m m2e_jax.benchmarks.overfit [--steps 400 --height 64 --width 48 --base_channels 16]

Paired example (same person and garment, two poses): every network's target is P. Pixel loss
= L1(A, P) + L1(T, P | R_P) + L1(P', P | R~ > 0) (losses.l1_loss, masked means). Prints the loss
every 50 steps and the initial / final ratio; exits non-zero when it falls less than --min_ratio.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from m2e_jax import losses
from m2e_jax.benchmarks import common
from m2e_jax.models import tryon
from m2e_jax.models.defaults import model_config


def pixel_loss(out, inputs) -> jax.Array:
    target = inputs["person_image"]
    return (losses.l1_loss(out["aligned"], target)
            + losses.l1_loss(out["refined"], target, inputs["region"])
            + losses.l1_loss(out["output"], target, (inputs["soft_region"] > 0).astype(jnp.float32)))


def run(steps: int = 400, height: int = 64, width: int = 48, base_channels: int = 16, blocks: int = 2,
        lr: float = 2e-3, seed: int = 0, log_every: int = 50, log=print) -> tuple[float, float]:
    """Trains on one example; returns (initial, final) pixel loss."""
    from m2e_jax.synthetic.dataset import make_example

    cfg = model_config()
    cfg.update(dict(height=height, width=width, base_channels=base_channels, pan_blocks=blocks,
                    trn_blocks=blocks, ftn_blocks=blocks))
    ex = make_example(seed, "train", 0, height, width, kind="paired")
    batch = {k: np.asarray(ex[k])[None] for k in ("model_image", "model_iuv", "model_mask", "person_image",
                                                  "person_iuv", "person_mask", "garment_kind")}
    inputs = jax.jit(lambda b: tryon.network_inputs(b, cfg))(batch)  # the warp once, outside the gradient
    params = tryon.init_params(cfg, jax.random.key(seed))
    opt = optax.adam(lr, b1=0.5, b2=0.999)
    opt_state = opt.init(params)

    loss_fn = lambda p: pixel_loss(tryon.tryon_forward(p, inputs, cfg), inputs)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    first = last = None
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state)
        if i == 0:
            first = float(loss)
            log(f"step 0: pixel loss {first:.4f} (compile + first step {time.perf_counter() - start:.1f} s)")
            start = time.perf_counter()
        if (i + 1) % log_every == 0 or i + 1 == steps:
            log(f"step {i + 1}: pixel loss {float(loss):.4f}")
    last = float(jax.jit(loss_fn)(params))
    log(f"{steps} steps, {height}x{width}, base {base_channels}, {blocks} blocks: "
        f"{(time.perf_counter() - start) / max(steps - 1, 1) * 1e3:.0f} ms/step; "
        f"loss {first:.4f} -> {last:.4f} ({first / last:.1f}x lower) on {jax.devices()[0].platform}")
    return first, last


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m m2e_jax.benchmarks.overfit")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--base_channels", type=int, default=16)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min_ratio", type=float, default=10.0)
    a = common.parse_args(p, argv)
    first, last = run(a.steps, a.height, a.width, a.base_channels, a.blocks, a.lr)
    return 0 if first / last >= a.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
