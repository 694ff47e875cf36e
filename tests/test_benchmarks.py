"""Benchmarks: each script's main runs at the tiniest size (so none can rot), helpers compute the
right numbers, and bfloat16 compute tracks float32 on a short training run. No timing is asserted."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2e_jax.benchmarks import (
    common,
    convs,
    fullres,
    gan_step,
    inference,
    profile,
    scaling,
    train_step,
)

TINY = ["--base_channels", "8", "--blocks", "1", "--d_channels", "8"]


def test_flops_of_a_matmul_is_two_mnk():
    m, k, n = 16, 32, 8
    exe = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert common.flops_of(exe) == pytest.approx(2 * m * k * n, rel=0.01)


def test_peak_tflops_override_table_and_unknown():
    class Dev:
        def __init__(self, kind):
            self.device_kind = kind

    assert common.peak_tflops(Dev("NVIDIA H100 80GB HBM3"), "bfloat16") == 989.0
    assert common.peak_tflops(Dev("NVIDIA A100-SXM4-40GB"), "float32") == 19.5
    assert common.peak_tflops(Dev("cpu"), "float32") is None
    assert common.peak_tflops(Dev("cpu"), "float32", override=1.5) == 1.5


def test_parse_and_table_errors_name_the_flag():
    assert common.parse_sizes("64x48,128X96") == [(64, 48), (128, 96)]
    with pytest.raises(SystemExit, match="--sizes.*'64by48'"):
        common.parse_sizes("64by48")
    with pytest.raises(SystemExit, match="--batches"):
        common.parse_ints("1,0", "--batches")
    assert common.parse_dtypes("float32,bfloat16") == ["float32", "bfloat16"]
    with pytest.raises(SystemExit, match=r"--dtypes: unknown \['fp16'\]"):
        common.parse_dtypes("float32,fp16")
    table = common.format_table([{"a": 1.234, "b": None}], [("a", "A", ".1f"), ("b", "B", ".1f")])
    assert table.splitlines()[1].split() == ["1.2", "-"]


def test_json_tables_go_to_a_file_or_a_bucket(tmp_path, fake_gcs, gcs_env):
    """--json PATH of every benchmark: a local file (its folder made) or a gs:// object, the same JSON."""
    rows = [{"batch": 2, "ms_per_step": 1.5}]
    local = tmp_path / "new" / "t.json"
    common.write_json(str(local), "t", {"cpu_cores": 2}, rows, note="x")
    bucket = fake_gcs.bucket("m2e-bench")
    common.write_json(f"{bucket}/tables/t.json", "t", {"cpu_cores": 2}, rows, note="x")
    remote = json.loads(fake_gcs.read("m2e-bench", "tables/t.json"))
    assert remote == json.loads(local.read_text()) == {"benchmark": "t", "machine": {"cpu_cores": 2},
                                                        "rows": rows, "note": "x"}
    assert os.listdir(local.parent) == ["t.json"]  # no temporary left beside it
    common.write_json(None, "t", {}, rows)  # no --json: nothing written, no error


@pytest.fixture(scope="module")
def train_rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "train_step.json"
    train_step.main(["--sizes", "32x32", "--batches", "2", "--dtypes", "float32,bfloat16", "--repeats", "3",
                     "--json", str(path), "--widths", "demo", *TINY])
    return json.loads(path.read_text())


@pytest.mark.slow  # two joint-step compiles (~15 s each on an idle 2-core CPU)
def test_train_step_main_writes_rows_with_flops(train_rows):
    assert train_rows["benchmark"] == "train_step" and train_rows["machine"]["cpu_cores"] >= 1
    rows = train_rows["rows"]
    assert [(r["dtype"], r["batch"]) for r in rows] == [("float32", 2), ("bfloat16", 2)]
    for r in rows:
        assert r["ms_per_step"] > 0 and r["images_per_s"] == pytest.approx(2e3 / r["ms_per_step"])
        assert r["gflops_per_step"] > 0  # XLA's cost analysis saw the convolutions
        assert len(r["g_total"]) == 4 and np.all(np.isfinite(r["g_total"]))  # warm-up + 3 timed


@pytest.mark.slow
def test_bfloat16_loss_curve_tracks_float32(train_rows):
    """Same initial parameters and batch: 4 joint steps in bf16 compute stay within 3% of float32."""
    f32, bf16 = (np.array(r["g_total"]) for r in train_rows["rows"])
    assert f32[-1] < f32[0]  # the run learns, so the curve is a real comparison
    np.testing.assert_allclose(bf16, f32, rtol=0.03)
    assert bf16[-1] < bf16[0]


def test_gan_step_main_quick(tmp_path):
    path = tmp_path / "gan.json"
    (row,) = gan_step.main(["--quick", "--repeats", "1", "--rounds", "2", "--json", str(path)])
    assert row["variant"] == "resize_conv" and row["ms_per_step"] > 0 and row["gflops_per_step"] > 0
    assert row["images_per_s"] == pytest.approx(2e3 / row["ms_per_step"])
    assert json.loads(path.read_text())["rows"][0]["g_params"] == row["g_params"] > 0


def test_torch_twin_main_runs_when_torch_is_installed(tmp_path):
    pytest.importorskip("torch")
    sys.path.insert(0, str(gan_step.TWIN.rsplit("/", 1)[0]))
    import torch_twin

    row = torch_twin.main(["--height", "16", "--width", "16", "--batch", "1", "--base_channels", "4",
                           "--blocks", "1", "--d_channels", "4", "--d_layers", "2", "--repeats", "1"])
    assert row["ms_per_step"] > 0 and row["g_params"] > 0


def test_inference_main_quick(tmp_path):
    path = tmp_path / "inf.json"
    rows = inference.main(["--sizes", "32x32", "--batches", "2", "--repeats", "1", "--widths", "demo",
                           "--base_channels", "8", "--blocks", "1", "--json", str(path)])
    (r,) = rows
    assert r["ms_per_tryon"] == pytest.approx(r["ms_per_batch"] / 2)
    assert r["tryons_per_s"] == pytest.approx(2e3 / r["ms_per_batch"])
    assert r["gflops_per_tryon"] > 0
    assert json.loads(path.read_text())["rows"][0]["size"] == "32x32"


@pytest.mark.slow
def test_scaling_main_two_simulated_devices(tmp_path):
    """A subprocess with its own XLA_FLAGS: 2 simulated devices (tests have 4) share a batch of 2."""
    out = scaling.main(["--devices", "2", "--size", "32x32", "--per_device_batch", "1", "--sizes", "",
                        "--repeats", "1", "--widths", "demo", *TINY, "--json", str(tmp_path / "s.json")])
    assert [(r["devices"], r["batch"]) for r in out["devices"]] == [(2, 2)]
    assert np.isfinite(out["devices"][0]["g_total"]).all() and out["sizes"] == []


@pytest.mark.slow
def test_profile_main_parts(tmp_path):
    rows = profile.main(["--size", "32x32", "--batch", "1", "--repeats", "1", "--widths", "demo",
                         "--skip_whole", *TINY])
    parts = [r["part"] for r in rows]
    assert parts[0].startswith("prepare_batch") and parts[-1] == "sum of the parts"
    assert rows[-1]["ms"] == pytest.approx(sum(r["ms"] for r in rows[:-1]))
    # FTN's gradient also runs PAN and TRN forward, so it costs more FLOPs than PAN's alone.
    flops = {p.split()[0]: r["gflops"] for p, r in zip(parts, rows)}
    assert flops["FTN"] > flops["PAN"] > 0


def test_convs_main_quick_times_fwd_and_both_gradients(tmp_path):
    out = tmp_path / "convs.json"
    rows = convs.main(["--quick", "--json", str(out)])
    assert [r["conv"] for r in rows][:2] == ["head 7x7", "down 3x3 s2"]
    # Shapes follow the generator: the residual conv keeps 8x8x32, each upsample doubles the size.
    by_name = {(r["conv"], r["input"]): r for r in rows}
    assert by_name[("residual 3x3", "8x8x32")]["output"] == "8x8x32"
    assert by_name[("up transpose", "16x16x16")]["output"] == "32x32x8"
    for r in rows:
        assert all(r[k] > 0 for k in ("fwd_ms", "dw_ms", "dx_ms"))
        assert r["total_ms"] == pytest.approx(r["fwd_ms"] + r["dw_ms"] + r["dx_ms"])
    assert json.loads(out.read_text())["cpu_convolutions"] == "eigen"


def test_fullres_workdir_without_checkpoints_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        fullres.main(["--workdir", str(tmp_path / "nowhere"), "--quick"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and "nowhere" in err and "no such checkpoint directory" in err


def test_fullres_main_quick_scores_every_path(tmp_path):
    """Random networks (the scores mean nothing) on photos twice the network's size: rows for every
    method and both parsing conditions, and a latency row per infer resolution. (At the network's
    size the full-resolution path is the network path: tests/test_infer.py, the batch CLI test.)"""
    path = tmp_path / "fullres.json"
    out = fullres.main(["--quick", "--no_conv", "--num", "1", "--scales", "2", "--json", str(path)])
    rows = {(r["scale"], r["parsing"], r["method"]): r for r in out["rows"]}
    methods = ("network", "full", "pan", "trn", "warp", "identity")
    assert set(rows) == {("2x", p, m) for p in ("yes", "no") for m in methods}
    for r in rows.values():
        assert -1 <= r["ssim_r"] <= 1 and r["lpips_r"] >= 0 and r["photo"] == "64x64"
    assert rows[("2x", "yes", "identity")]["lpips_r"] > 0  # P is not the true try-on: a real comparison
    assert rows[("2x", "yes", "full")]["ssim_r"] != rows[("2x", "yes", "network")]["ssim_r"]
    # PAN alone and PAN + TRN are try-ons of their own (random networks: far from P', and from P).
    assert len({round(rows[("2x", "yes", m)]["ssim_r"], 6) for m in ("pan", "trn", "full", "identity")}) == 4
    assert [r["method"] for r in out["latency"]] == ["full", "network"]
    assert all(r["ms"] > 0 for r in out["latency"])
    assert json.loads(path.read_text())["benchmark"] == "fullres"
