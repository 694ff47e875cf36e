"""Unwritable workdir and full disk: a clear error naming the workdir before any training step is
compiled.

Tests run as root, where a read-only mode bit does not stop writes: unwritable is a workdir below a
regular file (and, for other users, a chmod 0o500 folder). Disk full is the free-space check against
the size of keep_checkpoints + 1 checkpoints, with `shutil.disk_usage` reporting 1 MiB free (mounting
a tiny tmpfs needs privileges the CI does not have).
"""

import os

import pytest

from configs import synthetic
from m2e_jax import train


@pytest.fixture
def config(tmp_path):
    c = synthetic.get_config("test")
    c.dataset.data_dir = str(tmp_path / "data")
    return c


def unwritable_workdirs(tmp_path) -> list[str]:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    dirs = [str(blocker / "workdir")]
    if os.geteuid() != 0:
        ro = tmp_path / "read_only"
        ro.mkdir(mode=0o500)
        dirs.append(str(ro / "workdir"))
    return dirs


def test_unwritable_workdir_fails_before_anything_runs(tmp_path, config):
    for workdir in unwritable_workdirs(tmp_path):
        before = sum(train.TRACES.values())
        with pytest.raises(train.WorkdirError, match=rf"workdir {workdir}: not writable \(.+\); nothing"):
            train.train_and_evaluate(config, workdir)
        assert sum(train.TRACES.values()) == before
    assert not (tmp_path / "data").exists()  # not even the dataset was rendered


def test_check_workdir_cleans_its_probe(tmp_path):
    train.check_workdir(str(tmp_path / "new" / "dir"))
    assert os.listdir(tmp_path / "new" / "dir") == []


def test_full_disk_fails_before_the_first_step(tmp_path, config, monkeypatch):
    real = train.shutil.disk_usage
    monkeypatch.setattr(train.shutil, "disk_usage", lambda p: real(p)._replace(free=2**20))
    before = {k: n for k, n in train.TRACES.items() if k[0] == "train"}
    with pytest.raises(train.WorkdirError, match=r"1.0 MiB free, checkpoints need [\d.]+ MiB \(3 kept \+ 1"):
        train.train_and_evaluate(config, str(tmp_path / "w"))
    assert {k: n for k, n in train.TRACES.items() if k[0] == "train"} == before
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_free_space_requirement_is_the_checkpoint_size(tmp_path, monkeypatch):
    import numpy as np

    state = {"a": np.zeros((1024, 256), np.float32)}  # 1 MiB
    real = train.shutil.disk_usage
    monkeypatch.setattr(train.shutil, "disk_usage", lambda p: real(p)._replace(free=3 * 2**20 + 1))
    train.check_free_space(str(tmp_path), state, keep=2)  # 3 MiB needed, 3 MiB + 1 byte free
    with pytest.raises(train.WorkdirError, match="3.0 MiB free, checkpoints need 4.0 MiB"):
        train.check_free_space(str(tmp_path), state, keep=3)
