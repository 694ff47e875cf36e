"""Config: every field of the config has a check that rejects a bad value by name, before anything
compiles; the config saved in the workdir and in each checkpoint reloads into a valid, equal config."""

import json

import ml_collections
import numpy as np
import pytest

from configs import default, pod, synthetic
from m2e_jax import checkpoints, config_schema


def leaves(cfg, prefix=""):
    for key, value in cfg.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def bad_values(name: str, value) -> list:
    """Values of the field's own type that no run can use."""
    if isinstance(value, bool):
        return []  # only True / False type-check, and both are valid
    if name in ("distributed.num_processes", "distributed.process_id"):
        return [-2]  # -1 means auto-detect
    if isinstance(value, int):
        return [-1]
    if isinstance(value, float):
        return [-1.0, float("nan")] if name != "model.ftn_mask_offset" else [float("nan"), float("inf")]
    if isinstance(value, str):
        return ["nope:port" if name == "distributed.coordinator_address" else " "]
    if isinstance(value, tuple):
        return [(-1,) * max(len(value), 1)]
    raise AssertionError(f"{name}: no bad value for {value!r}")


def set_field(cfg, name: str, value) -> None:
    *groups, leaf = name.split(".")
    node = cfg
    for g in groups:
        node = node[g]
    node[leaf] = value


BOOLS = {"distributed.enabled", "distributed.cpu_collectives", "schedule.freeze_earlier",
         "async_checkpointing", "profile", "model.parse_region", "model.ftn_paint"}


@pytest.mark.parametrize("name", [n for n, _ in leaves(default.get_config())])
def test_every_field_rejects_a_bad_value_by_name(name):
    ref = dict(leaves(default.get_config()))
    cases = bad_values(name, ref[name])
    if not cases:
        assert name in BOOLS, f"{name}: a field without a bad value must be a bool"
    for bad in cases:
        for make in (synthetic.get_config, lambda: pod.get_config("test")):  # memory and tfds sources
            cfg = make()
            set_field(cfg, name, bad)
            found = config_schema.problems(cfg)
            assert any(p.startswith(f"config.{name}") or f"config.{name}:" in p for p in found), \
                (name, bad, found)


def test_shipped_values_of_new_checks_are_valid():
    for cfg in (default.get_config(), synthetic.get_config("test"), pod.get_config("test")):
        assert config_schema.problems(cfg) == []
    cfg = pod.get_config("test")
    cfg.distributed.update(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1)
    cfg.dataset.tfds_config = "deepfashion_64x48"
    assert config_schema.problems(cfg) == []
    cfg.distributed.process_id = 2
    assert config_schema.problems(cfg) == [
        "config.distributed.process_id: must be < num_processes=2, got 2"]


def test_unknown_keys_rejected_at_every_depth():
    cfg = synthetic.get_config("test")
    with cfg.distributed.unlocked() if hasattr(cfg.distributed, "unlocked") else _null():
        cfg.distributed.heartbeat_timeout = 5
    cfg.loss_spike = 2.0
    found = config_schema.problems(cfg)
    assert [p.split(":")[0] for p in found] == ["config.distributed.heartbeat_timeout", "config.loss_spike"]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_saved_config_reloads_valid_and_equal(tmp_path):
    cfg = synthetic.get_config("test")
    cfg.optim.g_lr = 3e-4
    cfg.distributed.local_device_ids = (0, 1)
    path = checkpoints.write_config(str(tmp_path), cfg)
    with open(path) as f:
        reloaded = config_schema.from_saved(json.load(f), path)
    with checkpoints.Checkpointer(str(tmp_path / "ck"), async_save=False) as ck:
        ck.save(1, {"w": np.zeros(2, np.float32)}, cfg)
        from_ckpt = config_schema.from_saved(ck.restore_config(1), "checkpoint 1")
    for got in (reloaded, from_ckpt):
        # JSON has no tuples: a reloaded config validates and equals the original field by field.
        assert config_schema.problems(got) == []
        for name, value in leaves(cfg):
            value_back = dict(leaves(got))[name]
            assert (tuple(value_back) if isinstance(value, tuple) else value_back) == value, name
        assert got.optim.g_lr == 3e-4
