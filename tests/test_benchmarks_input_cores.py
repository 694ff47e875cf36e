"""m2e_jax/benchmarks/input_cores.py: the decode-scaling table runs on tiny records (built as
data_prep.benchmark_read builds them), with threads and with spawned worker processes (no timing is
asserted)."""

import json

import pytest

from data_prep import benchmark_read
from m2e_jax.benchmarks import input_cores


def test_main_reads_with_threads_and_processes(tmp_path):
    data_dir = benchmark_read.build_dataset(tmp_path / "records", 2, 64, 48)
    path = tmp_path / "cores.json"
    rows = input_cores.main(["--data_dir", data_dir, "--name", "folder_64x48", "--reads", "4",
                             "--workers", "1", "--json", str(path)])
    assert [(r["kind"], r["workers"], r["size"]) for r in rows] == [("threads", 1, "64x48"),
                                                                    ("processes", 1, "64x48")]
    assert all(r["examples_per_s"] > 0 and r["vs_one"] == 1 for r in rows)
    assert json.loads(path.read_text())["benchmark"] == "input_cores"


def test_missing_dataset_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no built dataset at .*folder_256x192"):
        input_cores.main(["--data_dir", str(tmp_path)])
