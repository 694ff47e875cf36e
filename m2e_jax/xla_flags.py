"""XLA options chosen for speed; they must reach `XLA_FLAGS` before JAX starts its backend.

CPU convolutions (`config.cpu_convolutions`): jaxlib 0.10 hands float32 convolutions to YNNPACK,
which ran the narrow (64-channel), large-image convs of these networks and their weight gradients
on one thread of a 2-core x86_64 CPU (7x7 61->64 at 64x48, batch 4: 46 ms forward at 1.00 cores
busy) where XLA's Eigen kernels use every core (27 ms at 1.96). "eigen" removes
`individual_convolution` from XLA's YNNPACK fusion list, so every conv goes to Eigen: the PAN +
PatchGAN step of benchmarks/gan_step.py gets 13-15% faster (benchmarks/RESULTS.md). "xla_default"
leaves XLA's choice. Only the CPU backend reads the flag; GPUs and TPUs ignore it.

XLA aborts the process on a flag it does not know, so the flag is only added for jaxlib versions it
was checked on; on others we log and leave XLA's default. A flag the user already put in XLA_FLAGS
for the same option always wins.
"""

from __future__ import annotations

import logging
import os

CPU_CONVOLUTIONS = ("eigen", "xla_default")
EIGEN_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# jaxlib (major, minor) versions whose XLA knows EIGEN_CONV_FLAG (checked: 0.10.2).
CHECKED_JAXLIB = ((0, 10),)


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def cpu_convolution_flags(choice: str, jaxlib_version: str, xla_flags: str = "") -> list[str]:
    """The XLA flags `choice` ("eigen" / "xla_default") needs on top of `xla_flags` (pure)."""
    if choice not in CPU_CONVOLUTIONS:
        raise ValueError(f"config.cpu_convolutions: unknown value {choice!r}; expected one of "
                         f"{CPU_CONVOLUTIONS}")
    if choice == "xla_default" or "xla_cpu_experimental_ynn_fusion_type" in xla_flags:
        return []
    if _version(jaxlib_version) not in CHECKED_JAXLIB:
        return []
    return [EIGEN_CONV_FLAG]


def convs_on_ynnpack() -> bool:
    """Whether this process's convolutions run on XLA:CPU's YNNPACK kernels (jaxlib 0.10's choice
    unless "eigen" is configured). models/layers.py reads it at trace time to pick the formulation
    that is fast there; the alternatives are bit-identical, so results never depend on it."""
    import jax

    return jax.default_backend() == "cpu" and EIGEN_CONV_FLAG not in os.environ.get("XLA_FLAGS", "")


def add_argument(parser) -> None:
    """Adds `--cpu_convolutions` (as config.cpu_convolutions) to a command's argparse parser."""
    parser.add_argument("--cpu_convolutions", choices=CPU_CONVOLUTIONS, default="eigen",
                        help="XLA:CPU convolution kernels, as config.cpu_convolutions (m2e_jax/xla_flags.py)")


def configure(choice: str) -> list[str]:
    """Adds the flags for `choice` to the `XLA_FLAGS` environment variable; returns those added.

    Call it before anything asks JAX for a device; if the backend is already running (a notebook
    that computed something first) the flags could not take effect: we log that and add nothing.
    """
    import jaxlib
    from jax._src import xla_bridge

    current = os.environ.get("XLA_FLAGS", "")
    added = cpu_convolution_flags(choice, jaxlib.__version__, current)
    if choice == "eigen" and not added and EIGEN_CONV_FLAG not in current:
        logging.warning("cpu_convolutions='eigen': not applied (jaxlib %s is not one of the checked "
                        "versions %s, or XLA_FLAGS sets the YNNPACK fusion types already)",
                        jaxlib.__version__, CHECKED_JAXLIB)
    if not added:
        return []
    if xla_bridge.backends_are_initialized():
        logging.warning("cpu_convolutions=%r: JAX's backend is already running, so %s cannot take "
                        "effect; set it before the first JAX computation", choice, added)
        return []
    os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
