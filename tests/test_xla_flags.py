"""config.cpu_convolutions: the XLA flag is added only where it is known, and it moves convs to Eigen."""

import logging
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from m2e_jax import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flags_for_each_choice_and_version():
    assert xla_flags.cpu_convolution_flags("eigen", "0.10.2") == [xla_flags.EIGEN_CONV_FLAG]
    assert xla_flags.cpu_convolution_flags("xla_default", "0.10.2") == []
    # XLA aborts on unknown flags: versions the flag was not checked on get nothing.
    assert xla_flags.cpu_convolution_flags("eigen", "0.11.0") == []
    assert xla_flags.cpu_convolution_flags("eigen", "0.9.1") == []
    # A user's own setting of the same option wins.
    mine = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    assert xla_flags.cpu_convolution_flags("eigen", "0.10.2", mine) == []
    with pytest.raises(ValueError, match="config.cpu_convolutions"):
        xla_flags.cpu_convolution_flags("onednn", "0.10.2")


def test_configure_after_backend_start_warns_and_changes_nothing(monkeypatch, caplog):
    jax.devices()  # the backend is running in this process
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    with caplog.at_level(logging.WARNING):
        assert xla_flags.configure("eigen") == []
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"
    assert "already running" in caplog.text


_PROBE = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp
    from m2e_jax import xla_flags
    xla_flags.configure(sys.argv[1])
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x, w = jnp.ones((1, 16, 16, 32)), jnp.ones((3, 3, 32, 8))
    hlo = jax.jit(conv).lower(x, w).compile().as_text()
    print("YNN" if "__ynn_fusion" in hlo else "EIGEN", float(conv(x, w)[0, 8, 8, 0]))
""")


def _probe(choice: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", _PROBE, choice], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


@pytest.mark.skipif(xla_flags._version(__import__("jaxlib").__version__) not in xla_flags.CHECKED_JAXLIB,
                    reason="the flag is only added on checked jaxlib versions")
def test_eigen_moves_convolutions_off_ynnpack_with_equal_results():
    # In a fresh process (the flag must precede the backend): XLA's default puts the conv in a
    # YNNPACK fusion, "eigen" does not, and the numbers agree (an all-ones 3x3x32 window = 288).
    kind_default, value_default = _probe("xla_default")
    kind_eigen, value_eigen = _probe("eigen")
    assert (kind_default, kind_eigen) == ("YNN", "EIGEN")
    assert float(value_default) == float(value_eigen) == 288.0


def test_convs_on_ynnpack_follows_the_configured_flag(monkeypatch):
    # The test session configures "eigen" (conftest), as every entry point does by default.
    assert not xla_flags.convs_on_ynnpack()
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    assert xla_flags.convs_on_ynnpack()
