"""models/summary.py: counts and FLOPs of the default networks (with the defaults' FTN inputs)."""

from m2e_jax.models import summary
from m2e_jax.models.defaults import model_config


def test_summarises_the_default_networks_at_a_tiny_size():
    """The defaults' FTN (paint map, relighting head fed M's photo) is built with its real inputs."""
    cfg = model_config()
    cfg.update(dict(height=32, width=32, base_channels=4, pan_blocks=1, trn_blocks=1, ftn_blocks=1,
                    d_channels=4, d_layers=2))
    lines = []
    rows = summary.summarise(cfg, log=lines.append)
    assert [r[0] for r in rows][:3] == ["PAN", "TRN", "FTN"]
    assert all(count > 0 and gflops > 0 for _, count, gflops in rows)
    assert lines[-1].startswith("| generators total |")
