"""Test-session setup shared by every test module.

- Four simulated CPU devices let the data-parallel tests run anywhere; single-device code is
  unaffected (it runs on device 0). The flag must be set before JAX initialises its backend.
- The "eigen" CPU convolution flag of m2e_jax/xla_flags.py, as in every entry point.
- A persistent XLA compilation cache: compile time dominates this suite on CPU, and many tests
  (and the subprocesses of the CLI, kill/resume and multi-process tests, which inherit these
  variables) compile the same programs. A cache hit returns the identical executable, so results
  do not depend on it. M2E_TEST_COMPILATION_CACHE=0 turns it off.
"""

import collections
import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# JAX reads these when it is first imported (xla_flags.configure below imports it): set them first,
# or this process runs without the cache and only its subprocesses use it.
if os.environ.get("M2E_TEST_COMPILATION_CACHE", "1") != "0":
    _cache = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache",
                          "jax_compilation_cache")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The convolution kernels every entry point picks by default (config.cpu_convolutions): tests run
# the production path, and the CLI subprocesses they compare against pick the same kernels.
from m2e_jax import xla_flags  # noqa: E402  (XLA_FLAGS must be set before JAX starts)

xla_flags.configure("eigen")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture
def jax_events():
    """Counts jax's own compilation events during the test (jax.monitoring), e.g.
    jax_events["/jax/core/compile/jaxpr_trace_duration"] (a trace precedes every compilation)."""
    import jax

    counts: collections.Counter = collections.Counter()
    listener = lambda event, seconds, **kwargs: counts.update([event])
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
