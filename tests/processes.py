"""The environment of the JAX processes the tests start (imported by conftest.py and the CLI tests).

Compile time, not arithmetic, is most of this suite's CPU time: its programs are tiny and run a few
steps. Most of a CPU compile is LLVM optimising the generated machine code, so the suite compiles at
LLVM's level 0 (`--xla_backend_optimization_level=0`): XLA's HLO passes, and so the program each
test checks, are unchanged; its kernels run slower, which tiny programs do not notice.
tests/test_train.py on one core: 234 s at XLA's default, 98 s at level 0 (157 s at level 1).
"""

from __future__ import annotations

import os

COMPILE_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a CPU process of the suite with `devices` simulated devices."""
    return f"--xla_force_host_platform_device_count={devices} {COMPILE_FLAGS}"


def cpu_env(devices: int = 1, environ: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """`environ` (default: this process's) for a CPU-only JAX subprocess with `devices` simulated
    devices and the suite's compile flags, plus `extra` variables."""
    base = dict(os.environ if environ is None else environ)
    return {**base, "XLA_FLAGS": xla_flags(devices), "JAX_PLATFORMS": "cpu", **extra}
