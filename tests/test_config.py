"""Configs: every shipped config is valid; each bad value gives one clear error before compiling."""

import importlib
import time

import pytest

from configs import default, synthetic
from m2e_jax import config_validation

CONFIGS = ["default", "synthetic", "deepfashion", "mvc", "pod"]


VARIANTS = [("default", None)] + [(n, a) for n in CONFIGS[1:] for a in (None, "test")]


@pytest.mark.parametrize("name,arg", VARIANTS)
def test_shipped_configs_validate(name, arg):
    cfg = importlib.import_module(f"configs.{name}").get_config(arg)
    assert config_validation.problems(cfg) == []


def test_paper_scale_settings():
    from configs import deepfashion, mvc

    df, m = deepfashion.get_config(), mvc.get_config()
    assert (df.model.height, df.model.width, df.batch_size) == (256, 192, 16)
    assert (m.model.height, m.model.width, m.batch_size) == (256, 256, 16)
    assert (df.optim.g_lr, df.optim.b1, df.optim.b2) == (2e-4, 0.5, 0.999)


def test_unknown_config_argument():
    with pytest.raises(ValueError, match="unknown argument 'tiny'"):
        synthetic.get_config("tiny")


def _bad(path: str, value):
    cfg = synthetic.get_config("test")
    *groups, leaf = path.split(".")
    node = cfg
    for g in groups:
        node = node[g]
    with node.unlocked() if hasattr(node, "unlocked") else nullcontext():
        node[leaf] = value
    return cfg


class nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("path,value,needle", [
    ("optim.g_lr", -1e-4, "config.optim.g_lr: must be > 0"),
    ("optim.d_lr", 0.0, "config.optim.d_lr: must be > 0"),
    ("dataset.name", "imagenet", "config.dataset.name: unknown dataset 'imagenet'"),
    ("model.height", 34, "must be divisible by 4"),
    ("parallel", "gspmd", "config.parallel: unknown mode 'gspmd'"),
    ("loss.gan", "wgan", "config.loss.gan: unknown value 'wgan'"),
    ("schedule.pan_steps", -1, "config.schedule.pan_steps: must be >= 0"),
    ("ema_decay", 1.5, "config.ema_decay: must lie in [0, 1)"),
    ("batch_size", 0, "config.batch_size: must be > 0"),
])
def test_one_clear_error_per_bad_value(path, value, needle):
    found = config_validation.problems(_bad(path, value))
    assert len(found) == 1 and needle in found[0], found


def test_relight_needs_the_composite_ftn():
    cfg = _bad("model.ftn_relight", "ramp")
    assert config_validation.problems(cfg) == []
    cfg.model.ftn_mode = "direct"
    found = config_validation.problems(cfg)
    assert len(found) == 1 and "config.model.ftn_relight: needs model.ftn_mode = 'composite'" in found[0], \
        found


def test_unknown_keys_are_named():
    cfg = synthetic.get_config("test")
    cfg.learning_rate = 1e-3
    cfg.model.widht = 48
    found = config_validation.problems(cfg)
    assert len(found) == 2
    assert found[0].startswith("config.learning_rate: unknown key")
    assert found[1].startswith("config.model.widht: unknown key")


def test_every_problem_reported_together():
    cfg = _bad("optim.g_lr", -1.0)
    cfg.dataset.name = "nope"
    with pytest.raises(config_validation.ConfigError) as err:
        config_validation.validate(cfg)
    assert "g_lr" in str(err.value) and "'nope'" in str(err.value)


def test_train_rejects_bad_config_before_compiling(tmp_path, jax_events):
    from m2e_jax import train

    t0 = time.time()
    with pytest.raises(config_validation.ConfigError, match="config.optim.g_lr"):
        train.train_and_evaluate(_bad("optim.g_lr", -1.0), str(tmp_path))
    assert not jax_events  # nothing traced, let alone compiled
    assert time.time() - t0 < 5.0
    assert not list(tmp_path.iterdir())  # nothing written either


def test_default_has_every_field_the_others_use():
    ref = default.get_config()
    for name in CONFIGS[1:]:
        cfg = importlib.import_module(f"configs.{name}").get_config()
        assert set(cfg.keys()) == set(ref.keys())


def test_configs_import_as_a_package_without_path_edits(tmp_path):
    """configs/ is a package found like m2e_jax itself (the repository root on sys.path, or the
    project installed: pyproject packages it); no module edits sys.path to find it. The config
    file is loaded by path from another folder, as infer --config and checkpoints elsewhere do."""
    import os
    import subprocess
    import sys
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        assert "configs*" in tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    code = ("import sys; before = list(sys.path)\n"
            "import m2e_jax.main, m2e_jax.infer\n"
            "assert sys.path == before, set(sys.path) ^ set(before)\n"
            f"c = m2e_jax.infer.load_config_file({os.path.join(root, 'configs', 'synthetic.py:test')!r})\n"
            "print(c.model.height, c.dataset.name)\n")
    env = {**os.environ, "PYTHONPATH": root}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ["32", "synthetic"], r.stderr[-2000:]
