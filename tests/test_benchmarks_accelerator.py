"""m2e_jax/benchmarks/accelerator.py: `--quick` runs every part of the accelerator table on this
machine's devices and writes the JSON and Markdown reports (a smoke test: no timing is asserted)."""

import json

from m2e_jax.benchmarks import accelerator


def test_quick_writes_json_and_markdown(tmp_path):
    report = accelerator.main(["--quick", "--out", str(tmp_path)])
    sections = json.loads((tmp_path / "accelerator.json").read_text())["sections"]
    assert [(r["dtype"], r["batch"]) for r in sections["train_step"]] == [("float32", 2)]
    assert all(r["ms_per_step"] > 0 and r["gflops_per_step"] > 0 for r in sections["train_step"])
    assert [(r["dtype"], r["batch"]) for r in sections["inference"]] == [("float32", 2)]
    assert sections["scaling"] == "skipped: fewer than 2 accelerators"  # CPU devices share the cores
    assert sections["torch_twin"] == "skipped: no --torch_python"
    md = (tmp_path / "accelerator.md").read_text()
    assert "### train_step" in md and "| 32x32 | float32 | 2 |" in md
    assert report["quick"] is True


def test_plan_uses_every_real_device_and_the_twin():
    import argparse

    a = argparse.Namespace(quick=False, batches="16,32", infer_batches="1,16", dtypes="float32,bfloat16",
                           torch_python="/venv/bin/python")
    p = accelerator.plan(a, 8)
    assert p["scaling"][:3] == ["--real", "--devices", "1,2,4,8"]
    assert p["train_step"][:2] == ["--sizes", "256x192"] and "paper" in p["train_step"]
    assert p["torch_twin"][-2:] == ["--torch_python", "/venv/bin/python"] and "--dtype" in p["torch_twin"]
    assert accelerator.plan(a, 1)["scaling"] is None
