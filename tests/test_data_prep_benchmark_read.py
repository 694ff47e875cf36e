"""The input pipeline benchmark runs at the tiniest size (so it cannot rot). No timing is asserted."""

import json

import pytest

from data_prep import benchmark_read


def test_benchmark_read_main_quick(tmp_path):
    path = tmp_path / "ip.json"
    rows = benchmark_read.main(["--sizes", "32x32", "--num", "3", "--batch", "2", "--steps", "2",
                                "--json", str(path)])
    (r,) = rows
    assert r["examples"] == 3 and r["size"] == "32x32"
    assert min(r["read_per_s"], r["batch_examples_per_s"], r["iterate_examples_per_s"]) > 0
    assert json.loads(path.read_text())["rows"][0]["size"] == "32x32"
    with pytest.raises(SystemExit, match="--num"):
        benchmark_read.main(["--num", "1"])
