"""Test-session setup shared by every test module.

Four simulated CPU devices let the data-parallel tests run anywhere; single-device code is
unaffected (it runs on device 0). The flag must be set before JAX initialises its backend.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
