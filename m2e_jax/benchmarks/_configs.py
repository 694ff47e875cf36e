"""configs/default.py for the benchmarks, importable from any working directory (as main.py does)."""

from __future__ import annotations

import os
import sys

import ml_collections

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _configs():
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)
    import configs.default
    import configs.synthetic

    return configs


def default_config() -> ml_collections.ConfigDict:
    """A fresh configs/default.py config (the paper-scale training settings)."""
    return _configs().default.get_config()


def preset_config(widths: str) -> ml_collections.ConfigDict:
    """"paper": configs/default.py; "demo": default with configs/synthetic.py's model and loss.

    The demo widths (base 16, 2/1/1 blocks, d 16x2 layers, no perceptual loss) are what a CPU user
    trains; the paper widths (base 64, 9/3/6 blocks, d 64x3, VGG16 perceptual) are for accelerators.
    """
    c = default_config()
    if widths == "paper":
        return c
    if widths != "demo":
        raise ValueError(f"--widths: unknown preset {widths!r}; expected 'paper' or 'demo'")
    demo = _configs().synthetic.get_config()
    c.model, c.loss = demo.model, demo.loss
    return c
