"""The ablation benchmark (m2e_jax/benchmarks/quality.py): its smoke run trains, scores every row
through m2e_jax.scoring and writes the JSON and the image grid; bad arguments give one line."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from m2e_jax.benchmarks import quality


@pytest.mark.slow
def test_quick_run_writes_every_row(tmp_path, capsys):
    out = tmp_path / "q.json"
    # One variant keeps the suite cheap (each run compiles its own train step); the other two
    # differ only in config fields (tests/test_pan.py covers model.pan_inputs).
    argv = ["--quick", "--presets", "medium", "--variants", "hybrid", "--workdir",
            str(tmp_path / "runs"), "--json", str(out), "--grids", str(tmp_path / "grids"),
            "--set", f"dataset.data_dir={tmp_path / 'data'}"]
    assert quality.main(argv) == 0
    result = json.loads(out.read_text())
    entry = result["presets"]["medium"]
    assert entry["config"]["dataset"]["world"] == "medium"
    assert set(entry["runs"]) == {"hybrid"} and entry["runs"]["hybrid"]["steps"] == 2
    unpaired, paired = entry["table"]["unpaired"], entry["table"]["paired"]
    rows = {"identity", "warp_paste", "pan_pasted", "trn_pasted", "tryon"}
    assert rows <= set(unpaired) and "warp_paste" not in paired and "tryon" in paired
    for method in rows:
        for metric in ("ssim", "psnr", "lpips", "ssim_masked", "psnr_masked", "lpips_masked"):
            assert math.isfinite(unpaired[method][metric]), (method, metric)
    # P unchanged is not the ground truth of an unpaired example: the garment region differs.
    assert unpaired["identity"]["ssim_masked"] < 0.95 and unpaired["identity"]["lpips_masked"] > 0
    grid = np.asarray(Image.open(tmp_path / "grids" / "medium.png"))
    assert grid.shape[0] == 14 + 8 * (2 * 32 + 2)  # title; rows M, P, P*, 2 baselines, 3 methods
    printed = capsys.readouterr().out
    assert "| M2E-TON (PAN + TRN + FTN) |" in printed and "machine:" in printed
    # A second call finds both runs trained and only scores again.
    assert quality.main(argv) == 0
    again = json.loads(out.read_text())["presets"]["medium"]
    assert again["runs"]["hybrid"]["trained_before"]
    assert again["table"]["unpaired"]["tryon"] == pytest.approx(unpaired["tryon"])


@pytest.mark.parametrize("args, message", [
    (["--presets", "extreme"], "unknown 'extreme'"),
    (["--variants", "hybrid,gan_only"], "--variants: unknown ['gan_only']"),
    (["--set", "loss.no_such_weight=1"], "config has no field 'no_such_weight'"),
    (["--set", "loss.l1_weight"], "expected FIELD=VALUE"),
    (["--set", "schedule.freeze_earlier=yes"], "'yes' is not a bool, the field's type (now True)"),
])
def test_bad_arguments_give_one_line(args, message, capsys):
    assert quality.main(["--quick", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_settings_reach_the_config():
    config = quality.base_config("hard", True, {"loss.l1_weight": 5, "model.pan_inputs": "model_only"})
    assert config.loss.l1_weight == 5 and config.model.pan_inputs == "model_only"
    assert config.dataset.world == "hard"
    assert quality.parse_value("0.5") == 0.5 and quality.parse_value("model_only") == "model_only"
    assert quality.parse_value("True") is True and quality.parse_value("false") is False
