"""PAN + TRN + FTN can fit one paired synthetic example (m2e_jax.benchmarks.overfit, tiny size)."""

import pytest

from m2e_jax.benchmarks import overfit


@pytest.mark.slow
def test_pipeline_overfits_one_example():
    first, last = overfit.run(steps=400, height=32, width=32, base_channels=8, blocks=1, log_every=100)
    assert first / last >= 10.0, (first, last)
