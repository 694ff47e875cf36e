"""PyTorch twin of the PAN generator + PatchGAN step, for the speed comparison only (torch optional).

    /tmp/torchenv/bin/python benchmarks/torch_twin.py [--height 64 --width 48 --batch 4] [--json P]

Needs only torch and numpy (no m2e_jax import), so it runs in a throwaway venv:
`python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy`.
`python -m m2e_jax.benchmarks.gan_step --torch_python /tmp/torchenv/bin/python` runs it after
the JAX step on the same shapes and prints the ratio.

The networks mirror m2e_jax.models (layers.ResnetGenerator as PAN, discriminators.PatchDiscriminator):
PAN input = M (3) + enc(I_M) (27) + enc(I_P) (27) + W (3) + V (1) = 61 channels; reflect-padded 7x7
conv, InstanceNorm (affine), ReLU; 3x3 stride-2 downsamples; residual blocks of two reflect-padded
3x3 convs; x2 upsampling (nearest + 3x3 conv, or a 3x3 stride-2 transposed conv); reflect-padded
7x7 head, tanh; convs followed by a norm have no bias. PatchGAN on image (3) + enc(I_P) (27):
4x4 convs, zero padding 1, LeakyReLU 0.2, InstanceNorm. The step: G loss LSGAN + 10 L1, D loss
LSGAN / 2 on real P and the detached fake, Adam(2e-4, 0.5, 0.999) for both, eager mode.
`--device cuda --amp` is the GPU comparison of the performance issue (bf16 autocast, float32
weights); gan_step passes both when JAX runs on a GPU with `--dtype bfloat16`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

PAN_IN, D_COND = 61, 27


def conv_norm_relu(cin: int, cout: int, k: int, reflect: bool = True, relu: bool = True) -> list[nn.Module]:
    pad = [nn.ReflectionPad2d(k // 2)] if reflect else []
    layers = pad + [nn.Conv2d(cin, cout, k, padding=0 if reflect else k // 2, bias=False),
                    nn.InstanceNorm2d(cout, affine=True)]
    return layers + ([nn.ReLU(inplace=True)] if relu else [])


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(*conv_norm_relu(c, c, 3), *conv_norm_relu(c, c, 3, relu=False))

    def forward(self, x):
        return x + self.body(x)


def resnet_generator(cin: int, cout: int, base: int, blocks: int, downs: int = 2,
                     upsample: str = "resize_conv") -> nn.Sequential:
    width = lambda level: base * 2 ** min(level, 3)
    layers = conv_norm_relu(cin, base, 7)
    for level in range(1, downs + 1):
        layers += [nn.Conv2d(width(level - 1), width(level), 3, stride=2, padding=1, bias=False),
                   nn.InstanceNorm2d(width(level), affine=True), nn.ReLU(inplace=True)]
    layers += [ResBlock(width(downs)) for _ in range(blocks)]
    for level in reversed(range(downs)):
        cin_l, cout_l = width(level + 1), width(level)
        if upsample == "resize_conv":
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(cin_l, cout_l, 3, padding=1, bias=False)]
        else:
            layers += [nn.ConvTranspose2d(cin_l, cout_l, 3, stride=2, padding=1, output_padding=1,
                                          bias=False)]
        layers += [nn.InstanceNorm2d(cout_l, affine=True), nn.ReLU(inplace=True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(base, cout, 7), nn.Tanh()]
    return nn.Sequential(*layers)


def patch_discriminator(cin: int, ch: int, num_layers: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, ch, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
    prev = ch
    for n in range(1, num_layers + 1):
        out = ch * min(2 ** n, 8)
        layers += [nn.Conv2d(prev, out, 4, 2 if n < num_layers else 1, 1, bias=False),
                   nn.InstanceNorm2d(out, affine=True), nn.LeakyReLU(0.2, inplace=True)]
        prev = out
    return nn.Sequential(*layers, nn.Conv2d(prev, 1, 4, 1, 1))


def make_step(a: argparse.Namespace):
    torch.manual_seed(0)
    g = resnet_generator(PAN_IN, 3, a.base_channels, a.blocks, upsample=a.upsample)
    d = patch_discriminator(3 + D_COND, a.d_channels, a.d_layers)
    g, d = g.to(a.device), d.to(a.device)
    if a.channels_last:
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    rng = np.random.default_rng(0)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    t = lambda c: torch.from_numpy(rng.uniform(-1, 1, (a.batch, c, a.height, a.width)).astype(
        np.float32)).to(a.device).contiguous(memory_format=fmt)
    x, cond, target = t(PAN_IN), t(D_COND), t(3)
    # --amp: bf16 autocast (float32 master weights, no loss scaling needed), like our model.dtype.
    autocast = lambda: torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.amp)

    def step() -> float:
        with autocast():
            fake = g(x)
            g_loss = (((d(torch.cat([fake, cond], 1)).float() - 1) ** 2).mean()
                      + 10 * (fake.float() - target).abs().mean())
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        with autocast():
            real_logits = d(torch.cat([target, cond], 1))
            fake_logits = d(torch.cat([fake.detach(), cond], 1))
            d_loss = 0.5 * (((real_logits.float() - 1) ** 2).mean() + (fake_logits.float() ** 2).mean())
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        if a.device == "cuda":
            torch.cuda.synchronize()  # the timing covers the whole step, not its launch
        return float(g_loss.detach())

    params = sum(p.numel() for p in g.parameters()), sum(p.numel() for p in d.parameters())
    return step, params


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="benchmarks/torch_twin.py", description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=48)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--base_channels", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=9)
    ap.add_argument("--d_channels", type=int, default=64)
    ap.add_argument("--d_layers", type=int, default=3)
    ap.add_argument("--upsample", choices=("resize_conv", "transpose"), default="resize_conv")
    ap.add_argument("--channels_last", action="store_true", help="NHWC memory format")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (float32 weights)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.height % 8 or a.width % 8:
        raise SystemExit(f"--height/--width: {a.height}x{a.width} must be divisible by 8")
    if a.threads:
        torch.set_num_threads(a.threads)
    step, (g_params, d_params) = make_step(a)
    t0 = time.perf_counter()
    step()
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    row = {"framework": f"torch {torch.__version__} eager", "size": f"{a.height}x{a.width}",
           "batch": a.batch, "upsample": a.upsample, "first_step_s": first_s, "ms_per_step": ms,
           "images_per_s": a.batch / (ms / 1e3), "g_params": g_params, "d_params": d_params,
           "threads": torch.get_num_threads(), "device": a.device, "amp": a.amp,
           "device_name": torch.cuda.get_device_name() if a.device == "cuda" else platform.machine()}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.platform()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"PAN + PatchGAN step {a.height}x{a.width} batch {a.batch} ({a.upsample}): "
          f"{ms:.1f} ms/step median of {a.repeats} (first step {first_s:.2f} s), "
          f"{row['images_per_s']:.2f} img/s; G {g_params:,} / D {d_params:,} params")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(row, f, indent=2)
    return row


if __name__ == "__main__":
    main(sys.argv[1:])
