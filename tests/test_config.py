"""Configs: every shipped config is valid; each bad value gives one clear error before compiling."""

import importlib
import json
import time

import pytest

from configs import default, synthetic
from m2e_jax import config_schema

CONFIGS = ["default", "synthetic", "deepfashion", "mvc", "pod", "folder"]


VARIANTS = [("default", None), ("folder", "paper")] + [(n, a) for n in CONFIGS[1:] for a in (None, "test")]


@pytest.mark.parametrize("name,arg", VARIANTS)
def test_shipped_configs_validate(name, arg):
    cfg = importlib.import_module(f"configs.{name}").get_config(arg)
    assert config_schema.problems(cfg) == []


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
    ("dataset.name", "imagenet", "config.dataset.name: unknown value 'imagenet'"),
    ("model.height", 34, "must be divisible by 4"),
    ("parallel", "gspmd", "config.parallel: unknown value 'gspmd'"),
    ("loss.gan", "wgan", "config.loss.gan: unknown value 'wgan'"),
    ("schedule.pan_steps", -1, "config.schedule.pan_steps: must be >= 0"),
    ("ema_decay", 1.5, "config.ema_decay: must lie in [0, 1)"),
    ("batch_size", 0, "config.batch_size: must be > 0"),
    ("dataset.data_dir", "gs://bucket/synthetic", "the synthetic world is built into a local folder"),
])
def test_one_clear_error_per_bad_value(path, value, needle):
    found = config_schema.problems(_bad(path, value))
    assert len(found) == 1 and needle in found[0], found


def test_unknown_keys_are_named():
    cfg = synthetic.get_config("test")
    cfg.learning_rate = 1e-3
    cfg.model.widht = 48
    found = config_schema.problems(cfg)
    assert len(found) == 2
    assert found[0].startswith("config.learning_rate: unknown key")
    assert found[1].startswith("config.model.widht: unknown key")


def test_every_problem_reported_together():
    cfg = _bad("optim.g_lr", -1.0)
    cfg.dataset.name = "nope"
    with pytest.raises(config_schema.ConfigError) as err:
        config_schema.validate(cfg)
    assert "g_lr" in str(err.value) and "'nope'" in str(err.value)


def test_train_rejects_bad_config_before_compiling(tmp_path, jax_events):
    from m2e_jax import train

    t0 = time.time()
    with pytest.raises(config_schema.ConfigError, match="config.optim.g_lr"):
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
            "import m2e_jax.main, m2e_jax.infer, m2e_jax.tryon_pipeline as pipeline\n"
            "assert sys.path == before, set(sys.path) ^ set(before)\n"
            f"c = pipeline.load_config_file({os.path.join(root, 'configs', 'synthetic.py:test')!r})\n"
            "print(c.model.height, c.dataset.name)\n")
    env = {**os.environ, "PYTHONPATH": root}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ["32", "synthetic"], r.stderr[-2000:]


@pytest.mark.parametrize("name,arg", VARIANTS)
def test_shipped_configs_train_the_default_model_and_losses(name, arg):
    """Every config trains the model the ablation kept: its model and loss sections equal the
    defaults outside config_schema.SCALE_FIELDS (size, widths, dtype, budget-driven loss weights)."""
    cfg = importlib.import_module(f"configs.{name}").get_config(arg)
    ref = default.get_config()
    for group in ("model", "loss"):
        for key, value in cfg[group].items():
            if f"{group}.{key}" not in config_schema.SCALE_FIELDS:
                assert value == ref[group][key], f"configs/{name}.py:{arg}: {group}.{key} = {value!r}"


def test_scale_fields_are_fields():
    assert set(config_schema.SCALE_FIELDS) <= set(config_schema.fields())
    assert not set(config_schema.REMOVED) & set(config_schema.fields())


def test_choices_equal_the_modules_own():
    """The schema names the choices without importing the model code; they stay the modules'."""
    from m2e_jax import densepose, losses, metrics, xla_flags
    from m2e_jax.models import ftn, layers, pan
    from m2e_jax.synthetic import effects

    s = config_schema
    assert s.NORMS == layers.NORMS and s.UPSAMPLES == layers.UPSAMPLES
    assert s.DTYPES == tuple(layers.DTYPES)
    assert s.GARMENT_KINDS == densepose.GARMENT_KINDS
    assert (s.RELIGHT_MODES, s.PAN_INPUTS) == (ftn.RELIGHT_MODES, pan.PAN_INPUTS)
    assert (s.GANS, s.LPIPS_NETS, s.PAN_REGIONS) == (losses.GANS, metrics.LPIPS_NETS, losses.PAN_REGIONS)
    assert s.CPU_CONVOLUTIONS == xla_flags.CPU_CONVOLUTIONS
    assert s.WORLD_PRESETS == tuple(effects.PRESETS)


def test_describe_lists_every_field(capsys):
    """`python -m m2e_jax.main --describe`: one line per field with its default and meaning, exit 0,
    without --config or --workdir."""
    from m2e_jax import main

    with pytest.raises(SystemExit) as done:
        main.parse_flags(["main", "--describe"])
    assert done.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" = ")[0] for line in lines] == list(config_schema.fields())
    assert "model.ftn_relight = 'ramp'  (one of ('none', 'gain', 'ramp'))  FTN relights" in "\n".join(lines)
    assert lines[[line.split(" = ")[0] for line in lines].index("model.width")].endswith("[per dataset]")


def _older_saved_config() -> dict:
    """A config as a checkpoint written before model.parse_region .. ftn_relight and
    loss.ftn_mask_weight existed saved it (JSON: lists for tuples), with the fields since removed
    at the only values the code ever trained with."""
    from m2e_jax import checkpoints

    raw = checkpoints.config_to_json(synthetic.get_config("test"))
    for key in ("parse_region", "parse_dropout", "ftn_paint", "person_parse_dropout", "ftn_relight"):
        del raw["model"][key]
    del raw["loss"]["ftn_mask_weight"]
    raw["model"].update(spectral_norm=False, ftn_mode="composite", iuv_encoding="onehot")
    raw["loss"]["consistency_relight"] = False
    raw["schedule"]["unpaired_trains"] = ["ftn", "pan", "trn"]
    return raw


def test_older_saved_config_loads_with_the_behaviour_it_was_trained_with():
    cfg = config_schema.from_saved(_older_saved_config(), "ck/config.json")
    assert config_schema.problems(cfg) == []
    m = cfg.model
    assert (m.parse_region, m.parse_dropout, m.ftn_paint, m.person_parse_dropout, m.ftn_relight) == \
        (False, 0.0, False, 0.0, "none")
    assert cfg.loss.ftn_mask_weight == 0.0  # the term did not exist
    assert not {"spectral_norm", "ftn_mode", "iuv_encoding"} & set(m)
    assert "consistency_relight" not in cfg.loss
    assert cfg.distributed.local_device_ids == ()  # JSON's list back to the declared tuple
    current = synthetic.get_config("test")
    assert config_schema.from_saved(json.loads(current.to_json()), "x").to_json() == current.to_json()


@pytest.mark.parametrize("edit,needle", [
    (lambda raw: raw["loss"].update(consistency_relight=True),
     "ck/config.json: config.loss.consistency_relight = True: this checkpoint was trained with a setting "
     "since removed"),
    (lambda raw: raw["schedule"].update(unpaired_trains=["trn"]),
     "config.schedule.unpaired_trains = ['trn']"),
    (lambda raw: raw["model"].update(spectral_norm=True), "config.model.spectral_norm = True"),
    (lambda raw: raw["model"].update(ftn_mode="direct"), "config.model.ftn_mode = 'direct'"),
    (lambda raw: raw["model"].update(widht=3), "ck/config.json: config.model.widht: unknown field"),
])
def test_older_saved_config_with_another_behaviour_is_refused_in_one_line(edit, needle):
    raw = _older_saved_config()
    edit(raw)
    with pytest.raises(config_schema.ConfigError) as err:
        config_schema.from_saved(raw, "ck/config.json")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_readers_fill_in_older_saved_configs(tmp_path):
    """checkpointing.saved_config (what infer, evaluate and the web page read) goes through
    from_saved; a removed setting is a CheckpointError naming the file."""
    from m2e_jax import checkpointing

    step_dir = tmp_path / "checkpoints" / "7"
    step_dir.mkdir(parents=True)
    raw = _older_saved_config()
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert checkpointing.saved_config(str(step_dir)).model.parse_region is False
    raw["loss"]["consistency_relight"] = True
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(checkpointing.CheckpointError, match="config.json: config.loss.consistency_relight"):
        checkpointing.saved_config(str(step_dir))
