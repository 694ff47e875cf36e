"""Shared building blocks of every network: padded convs, norms, residual blocks, resampling.

This is the one place for the XLA-on-CPU workarounds of shared/design/stack.md, each behind a
`fast` flag whose `False` setting is the plain form the tests compare against:
- `ReflectConv`: a conv after reflection padding normally has no padding of its own, which hits a
  ~3x slower XLA:CPU path for 7x7 kernels. We convolve with padding ((1, 0), (1, 0)) and drop the
  first output row and column instead: bit-identical, fast path.
- `Upsample("transpose")`: `nn.ConvTranspose` (input-dilated conv) is ~5x slower on CPU than
  inserting the zeros with `lax.pad` and running a stride-1 conv with the same kernel.
- `Upsample("resize_conv")` (default): nearest x2 then 3x3 conv, fast and free of checkerboard
  artefacts (Odena et al. 2016).

All modules take NHWC inputs; `dtype` is the compute dtype, parameters stay float32.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from m2e_jax import densepose

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

    fast=True uses the CPU padding trick (see module docstring); fast=False is the plain
    reflect-pad + VALID conv. Both share the parameter tree, so one can check the other.
    """

    features: int
    kernel_size: int
    use_bias: bool = True
    fast: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = reflect_pad(x, self.kernel_size // 2)
        padding = ((1, 0), (1, 0)) if self.fast else "VALID"
        y = nn.Conv(self.features, (self.kernel_size,) * 2, padding=padding, use_bias=self.use_bias,
                    dtype=self.dtype, name="conv")(x)
        return y[:, 1:, 1:] if self.fast else y


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


def zero_insert_transpose_conv(x, conv: nn.Module):
    """The 3x3 stride-2 "SAME" transposed conv as zero insertion (`lax.pad`) + a stride-1 VALID conv.

    Equals `nn.ConvTranspose(F, (3, 3), strides=(2, 2), padding="SAME")` with the same kernel:
    interior padding 1 dilates the input, edge padding (2, 1) reproduces flax's "SAME" placement
    (measured; the (1, 2) of stack.md matches PyTorch's flipped-kernel convention, not flax's).
    """
    zero = jnp.zeros((), x.dtype)
    dilated = lax.pad(x, zero, ((0, 0, 0), (2, 1, 1), (2, 1, 1), (0, 0, 0)))
    return conv(dilated)


def depth_to_space(x, factor: int = 2):
    """`[B, H, W, C * f * f]` -> `[B, H * f, W * f, C]` (sub-pixel shuffle)."""
    b, h, w, c = x.shape
    oc = c // (factor * factor)
    x = x.reshape(b, h, w, factor, factor, oc)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * factor, w * factor, oc)


class Upsample(nn.Module):
    """x2 upsampling -> norm -> ReLU: `[B, H, W, C]` -> `[B, 2H, 2W, F]`.

    mode: "resize_conv" (nearest x2 + 3x3 conv), "transpose" (3x3 stride-2 transposed conv; fast=True
    computes it by zero insertion, fast=False with nn.ConvTranspose) or "pixel_shuffle" (3x3 conv to
    4F channels + depth-to-space).
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
        if self.mode == "resize_conv":
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=bias,
                        dtype=self.dtype, name="conv")(x)
        elif self.mode == "transpose":
            if self.fast:
                conv = nn.Conv(self.features, (3, 3), padding="VALID", use_bias=bias, dtype=self.dtype,
                               name="conv")
                x = zero_insert_transpose_conv(x, conv)
            else:
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
    iuv_encoding: str = "onehot"
    dtype: str = "float32"
    fast: bool = True

    # The config field holding this network's residual block count.
    blocks_field = ""

    @classmethod
    def from_config(cls, model_cfg, **overrides):
        """Builds the network from `config.model` (see models/defaults.py for the fields)."""
        fields = dict(base_channels=model_cfg.base_channels, num_downsamples=model_cfg.num_downsamples,
                      num_blocks=model_cfg[cls.blocks_field], norm=model_cfg.norm,
                      upsample=model_cfg.upsample, iuv_encoding=model_cfg.iuv_encoding,
                      dtype=model_cfg.dtype)
        fields.update(overrides)
        return cls(**fields)

    def encode(self, iuv):
        """enc(IUV) of method.md in the compute dtype: float IUV `[B, H, W, 3]` -> `[B, H, W, 27 or 3]`."""
        return densepose.encode_iuv(iuv, self.iuv_encoding, dtype=compute_dtype(self.dtype))

    def generate(self, x, out_channels: int):
        """The ResNet generator on `[B, H, W, Cin]` -> float32 `[B, H, W, out_channels]` logits."""
        dt = compute_dtype(self.dtype)
        return ResnetGenerator(out_channels, self.base_channels, self.num_downsamples, self.num_blocks,
                               self.norm, self.upsample, self.fast, dt, name="net")(x.astype(dt))
