"""Shared building blocks of every network: padded convs, norms, residual blocks, resampling.

This is the one place for the conv formulations that make XLA fast (shared/design/stack.md;
benchmarks/RESULTS.md has the measurements), each behind a `fast` flag whose `False` setting is the
plain form the tests compare against (same parameter tree, equal outputs and gradients):
- `ReflectConv`: a 7x7 conv after reflection padding has no padding of its own, which XLA:CPU's
  YNNPACK kernels run ~3x slower. There (`xla_flags.convs_on_ynnpack()`: config.cpu_convolutions =
  "xla_default") we convolve with padding ((1, 0), (1, 0)) and drop the first output row and
  column instead: bit-identical, fast path. Everywhere else (Eigen kernels, the default; GPUs) and
  for 3x3 kernels the plain VALID conv is faster (the trick adds up to 15% work and slower weight
  gradients: 7x7 head at 64x48 fwd + dW 58 vs 70 ms on Eigen).
- `Upsample`: both x2 modes are computed on the low-resolution grid, one small conv per output phase
  (row parity x column parity), then interleaved with depth-to-space (the sub-pixel view of
  Shi et al. 2016). "transpose" (3x3 stride-2 transposed conv) needs 9 multiply-adds per input pixel
  instead of 36 with zero insertion, "resize_conv" (nearest x2 + 3x3 conv) 16 instead of 36; both
  are exact rewrites of the same kernel. `nn.ConvTranspose` itself (an input-dilated conv) is ~5x
  slower on CPU.
- `Upsample("resize_conv")` is the default: free of checkerboard artefacts (Odena et al. 2016).

All modules take NHWC inputs; `dtype` is the compute dtype, parameters stay float32.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from m2e_jax import densepose, xla_flags

NORMS = ("instance", "group", "none")
UPSAMPLES = ("resize_conv", "transpose", "pixel_shuffle")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

Dtype = Any


def compute_dtype(name: str) -> Dtype:
    """Config string ("float32" / "bfloat16") -> jnp dtype."""
    if name not in DTYPES:
        raise ValueError(f"model.dtype: unknown compute dtype {name!r}; expected one of {tuple(DTYPES)}")
    return DTYPES[name]


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raises a ValueError naming the config field when `value` is not one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name}: unknown value {value!r}; expected one of {choices}")


def check_divisible(height: int, width: int, factor: int, what: str) -> None:
    """Raises a ValueError unless both image sides are divisible by `factor`."""
    if height % factor or width % factor:
        raise ValueError(f"{what}: image size {height}x{width} must be divisible by {factor} "
                         f"(2**number of stride-2 layers); resize or crop the images")


def reflect_pad(x, pad: int):
    """Reflection-pads the two spatial axes of `[B, H, W, C]` by `pad` pixels."""
    if pad == 0:
        return x
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


class Norm(nn.Module):
    """Instance norm, group norm or identity over `[B, H, W, C]`; statistics in float32."""

    kind: str = "instance"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        check_choice("model.norm", self.kind, NORMS)
        if self.kind == "instance":
            return nn.InstanceNorm(dtype=self.dtype)(x)
        if self.kind == "group":
            # gcd keeps tiny test widths (8 channels) valid while real widths get 32 groups.
            return nn.GroupNorm(num_groups=math.gcd(32, x.shape[-1]), dtype=self.dtype)(x)
        return x


class ReflectConv(nn.Module):
    """Stride-1 conv after reflection padding by kernel_size // 2 (output size = input size).

    fast=True uses the padding trick for kernels larger than 3 on YNNPACK (see module docstring);
    fast=False is the plain reflect-pad + VALID conv. Same parameter tree and bit-identical outputs.
    """

    features: int
    kernel_size: int
    use_bias: bool = True
    fast: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = reflect_pad(x, self.kernel_size // 2)
        trick = self.fast and self.kernel_size > 3 and xla_flags.convs_on_ynnpack()
        padding = ((1, 0), (1, 0)) if trick else "VALID"
        y = nn.Conv(self.features, (self.kernel_size,) * 2, padding=padding, use_bias=self.use_bias,
                    dtype=self.dtype, name="conv")(x)
        return y[:, 1:, 1:] if trick else y


class ConvNormAct(nn.Module):
    """ReflectConv -> Norm -> ReLU (conv bias only without a norm: a norm would cancel it)."""

    features: int
    kernel_size: int = 3
    norm: str = "instance"
    act: bool = True
    fast: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = ReflectConv(self.features, self.kernel_size, use_bias=self.norm == "none",
                        fast=self.fast, dtype=self.dtype)(x)
        x = Norm(self.norm, self.dtype)(x)
        return nn.relu(x) if self.act else x


class ResBlock(nn.Module):
    """x + (3x3 conv-norm-ReLU -> 3x3 conv-norm)(x), reflection padded (pix2pix/CycleGAN)."""

    norm: str = "instance"
    fast: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        y = ConvNormAct(c, 3, self.norm, True, self.fast, self.dtype)(x)
        y = ConvNormAct(c, 3, self.norm, False, self.fast, self.dtype)(y)
        return x + y


class Downsample(nn.Module):
    """3x3 stride-2 conv (zero padding 1) -> norm -> ReLU: `[B, H, W, C]` -> `[B, H/2, W/2, F]`."""

    features: int
    norm: str = "instance"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                    use_bias=self.norm == "none", dtype=self.dtype)(x)
        return nn.relu(Norm(self.norm, self.dtype)(x))


def depth_to_space(x, factor: int = 2):
    """`[B, H, W, C * f * f]` -> `[B, H * f, W * f, C]` (sub-pixel shuffle)."""
    b, h, w, c = x.shape
    oc = c // (factor * factor)
    x = x.reshape(b, h, w, factor, factor, oc)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * factor, w * factor, oc)


def _conv_valid(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _fold(kernel, axis: int, phase: int):
    """Folds 3 taps along `axis` into the 2 a nearest-x2 phase sees: (w0, w1 + w2) for even output
    rows (they read x[n-1], x[n], x[n]), (w0 + w1, w2) for odd ones (x[n], x[n], x[n+1])."""
    a, b, c = (lax.index_in_dim(kernel, i, axis, keepdims=False) for i in range(3))
    return jnp.stack([a, b + c] if phase == 0 else [a + b, c], axis=axis)


def phase_upsample(x, kernel, mode: str):
    """x2 upsample + 3x3 conv of `x` `[B, H, W, C]` with `kernel` `[3, 3, C, F]` -> `[B, 2H, 2W, F]`.

    Computes each output phase (row parity r, column parity s) as a small VALID conv on the
    low-resolution input, then interleaves them with depth_to_space. mode "resize_conv": equals
    nearest x2 then a zero-padded ("SAME") 3x3 conv; every phase is a 2x2 conv with folded taps.
    mode "transpose": equals `nn.ConvTranspose(F, (3, 3), strides=(2, 2), padding="SAME")`, whose
    output row 2n is x[n-1] w0 + x[n] w2 and row 2n+1 is x[n] w1 (same for columns), so the phases
    are 2x2, 2x1, 1x2 and 1x1 convs. Taps are folded in the kernel's dtype, then cast to x's.
    """
    h, w = x.shape[1], x.shape[2]
    if mode == "resize_conv":
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        taps = {(r, s): (_fold(_fold(kernel, 0, r), 1, s), r, s) for r in (0, 1) for s in (0, 1)}
    else:
        xp = jnp.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)))
        sub = (slice(0, 3, 2), slice(1, 2))  # kernel taps of even / odd output phases
        taps = {(r, s): (kernel[sub[r]][:, sub[s]], r, s) for r in (0, 1) for s in (0, 1)}
    phases = []
    for r in (0, 1):
        for s in (0, 1):
            k, r0, c0 = taps[(r, s)]
            window = xp[:, r0:r0 + h + k.shape[0] - 1, c0:c0 + w + k.shape[1] - 1]
            phases.append(_conv_valid(window, k.astype(x.dtype)))
    return depth_to_space(jnp.concatenate(phases, axis=-1), 2)


class UpsampleConv(nn.Module):
    """The 3x3 conv of a x2 upsampling, computed by `phase_upsample`; parameters named and
    initialised as `nn.Conv(features, (3, 3))`'s (kernel `[3, 3, C, F]`, optional bias)."""

    features: int
    mode: str
    use_bias: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features))
        y = phase_upsample(x.astype(self.dtype), kernel, self.mode)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(self.dtype)
        return y


class Upsample(nn.Module):
    """x2 upsampling -> norm -> ReLU: `[B, H, W, C]` -> `[B, 2H, 2W, F]`.

    mode: "resize_conv" (nearest x2 + 3x3 conv), "transpose" (3x3 stride-2 transposed conv) or
    "pixel_shuffle" (3x3 conv to 4F channels + depth-to-space). fast=True computes the first two
    per output phase on the low-resolution grid (`phase_upsample`); fast=False is the plain form
    (jnp.repeat + nn.Conv, nn.ConvTranspose). Same parameters either way.
    """

    features: int
    mode: str = "resize_conv"
    norm: str = "instance"
    fast: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        check_choice("model.upsample", self.mode, UPSAMPLES)
        bias = self.norm == "none"
        if self.mode != "pixel_shuffle" and self.fast:
            x = UpsampleConv(self.features, self.mode, bias, self.dtype, name="conv")(x)
        elif self.mode == "resize_conv":
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=bias,
                        dtype=self.dtype, name="conv")(x)
        elif self.mode == "transpose":
            x = nn.ConvTranspose(self.features, (3, 3), strides=(2, 2), padding="SAME",
                                 use_bias=bias, dtype=self.dtype, name="conv")(x)
        else:
            x = nn.Conv(4 * self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=bias,
                        dtype=self.dtype, name="conv")(x)
            x = depth_to_space(x, 2)
        return nn.relu(Norm(self.norm, self.dtype)(x))


class ResnetGenerator(nn.Module):
    """The ResNet generator of PAN / TRN / FTN (method.md "Our design" 2).

    7x7 conv `base_channels` -> `num_downsamples` stride-2 downsamples doubling the width (capped at
    8 * base) -> `num_blocks` residual blocks -> as many x2 upsamples -> 7x7 conv to `out_channels`.
    Reflection padding; the head is left linear (callers apply tanh / sigmoid).

    Input `[B, H, W, Cin]` (any float dtype, H and W divisible by 2**num_downsamples); returns float32
    `[B, H, W, out_channels]` pre-activations.
    """

    out_channels: int
    base_channels: int = 64
    num_downsamples: int = 2
    num_blocks: int = 9
    norm: str = "instance"
    upsample: str = "resize_conv"
    fast: bool = True
    dtype: Dtype = jnp.float32

    def width(self, level: int) -> int:
        return self.base_channels * 2 ** min(level, 3)

    @nn.compact
    def __call__(self, x):
        check_choice("model.norm", self.norm, NORMS)
        check_choice("model.upsample", self.upsample, UPSAMPLES)
        check_divisible(x.shape[1], x.shape[2], 2 ** self.num_downsamples, "generator")
        x = x.astype(self.dtype)
        x = ConvNormAct(self.base_channels, 7, self.norm, True, self.fast, self.dtype)(x)
        for level in range(1, self.num_downsamples + 1):
            x = Downsample(self.width(level), self.norm, self.dtype)(x)
        for _ in range(self.num_blocks):
            x = ResBlock(self.norm, self.fast, self.dtype)(x)
        for level in reversed(range(self.num_downsamples)):
            x = Upsample(self.width(level), self.upsample, self.norm, self.fast, self.dtype)(x)
        x = ReflectConv(self.out_channels, 7, use_bias=True, fast=self.fast, dtype=self.dtype,
                        name="head")(x)
        return x.astype(jnp.float32)


class GeneratorNet(nn.Module):
    """Fields shared by PAN, TRN and FTN (read from `config.model` by `from_config`).

    Subclasses concatenate their inputs and call `self.generate(x, out_channels)`.
    """

    base_channels: int = 64
    num_downsamples: int = 2
    num_blocks: int = 9
    norm: str = "instance"
    upsample: str = "resize_conv"
    dtype: str = "float32"
    fast: bool = True

    # The config field holding this network's residual block count.
    blocks_field = ""

    @classmethod
    def from_config(cls, model_cfg, **overrides):
        """Builds the network from `config.model` (see models/defaults.py for the fields)."""
        fields = dict(base_channels=model_cfg.base_channels, num_downsamples=model_cfg.num_downsamples,
                      num_blocks=model_cfg[cls.blocks_field], norm=model_cfg.norm,
                      upsample=model_cfg.upsample,
                      dtype=model_cfg.dtype)
        fields.update(overrides)
        return cls(**fields)

    def encode(self, iuv):
        """enc(IUV) of method.md in the compute dtype: float IUV `[B, H, W, 3]` -> `[B, H, W, 27 or 3]`."""
        return densepose.encode_iuv(iuv, dtype=compute_dtype(self.dtype))

    def generate(self, x, out_channels: int):
        """The ResNet generator on `[B, H, W, Cin]` -> float32 `[B, H, W, out_channels]` logits."""
        dt = compute_dtype(self.dtype)
        return ResnetGenerator(out_channels, self.base_channels, self.num_downsamples, self.num_blocks,
                               self.norm, self.upsample, self.fast, dt, name="net")(x.astype(dt))
