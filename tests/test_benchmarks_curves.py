"""benchmarks.curves: each run trains the demo's model at its budget, size and width, every checkpoint
along it is scored once (resuming skips what is done), and the report plots what is there."""

import json

import numpy as np
import pytest
from PIL import Image

from configs import synthetic
from m2e_jax import checkpoints, config_schema, schedule, train
from m2e_jax.benchmarks import curves


def test_run_names_round_trip_and_bad_runs_are_named():
    spec = curves.parse_run("hard:128x96:2:5000")
    assert (spec.world, spec.height, spec.width, spec.width_mult, spec.steps) == ("hard", 128, 96, 2, 5000)
    assert spec.name == "hard_128x96_w2_5000"
    assert curves.spec_of_name(spec.name) == spec
    assert curves.spec_of_name("notes") is None
    tagged = curves.parse_run("hard:64x48:1:5000:4096", tag="pan_body")
    assert tagged.name == "hard_64x48_w1_5000_n4096_pan_body" and curves.spec_of_name(tagged.name) == tagged
    assert curves.spec_of_name("hard_64x48_w1_5000_body").tag == "body"
    grid = curves.parse_runs("grid")
    assert len(grid) == len(curves.GRID_WORLDS) * len(curves.GRID_SPECS) and grid[0].world == "hard"
    for bad in ("hard:64x48:1", "mars:64x48:1:100", "hard:64x47:1:100", "hard:64x48:0:100",
                "hard:64x48:1:100:0"):
        with pytest.raises(ValueError, match=bad):
            curves.parse_run(bad)


def test_the_demo_budget_is_the_demo_and_larger_runs_scale_it():
    """The 1.2k run at 64x48 trains configs/synthetic.py's own model and schedule (only the world and
    how often it is scored differ); other budgets keep the stage shares, 128x96 scales the UV tile,
    width 2 doubles every channel count, and every scored checkpoint is kept."""
    demo = synthetic.get_config()
    run = curves.run_config(curves.parse_run("hard:64x48:1:1200"), points=6)
    assert run.model.to_dict() == demo.model.to_dict() and run.loss.to_dict() == demo.loss.to_dict()
    assert run.schedule.to_dict() == demo.schedule.to_dict() and run.optim.to_dict() == demo.optim.to_dict()
    assert run.dataset.world == "hard" and run.checkpoint_every == run.eval_every == 200
    assert run.keep_checkpoints >= 1200 // 200
    assert curves.ftn_start(1200) == demo.schedule.pan_steps + demo.schedule.trn_steps
    big = curves.run_config(curves.parse_run("medium:128x96:2:5000"), points=5)
    config_schema.validate(big)
    s = big.schedule
    assert schedule.total_steps(s) == 5000 and (s.pan_steps, s.trn_steps, s.ftn_steps) == (833, 417, 1667)
    assert (big.model.height, big.model.width, big.model.warp_tile) == (128, 96, 2 * demo.model.warp_tile)
    assert (big.model.base_channels, big.model.d_channels) == (32, 32)
    assert big.keep_checkpoints * big.checkpoint_every >= 5000
    more = curves.run_config(curves.parse_run("hard:64x48:1:5000:4096"), 5,
                             settings={"loss.pan_region": "body"})
    assert more.dataset.num_train == 4096 and more.loss.pan_region == "body"


def test_a_run_keeps_its_overrides_and_refuses_others(tmp_path):
    workdir = str(tmp_path / "run")
    assert curves.run_settings(workdir, {"loss.pan_region": "body"}) == {"loss.pan_region": "body"}
    assert curves.run_settings(workdir, {}) == {"loss.pan_region": "body"}  # a plain rerun resumes it
    with pytest.raises(ValueError, match="another --tag"):
        curves.run_settings(workdir, {"loss.pan_region": "image"})
    assert curves.main(["--runs", "hard:64x48:1:100", "--set", "loss.pan_region=body"]) == 2  # no --tag


def _scores(step, full, pan):
    photo = {"full": {"ssim": full, "lpips": 0.1 - full / 10}, "pan": {"ssim": pan, "lpips": 0.08},
             "warp": {"ssim": 0.3, "lpips": 0.07}, "identity": {"ssim": 0.25, "lpips": 0.1}}
    return {"photo": photo, "network": {"tryon": {"ssim": full + 0.05, "lpips": 0.05}}}


def test_report_rows_take_each_runs_last_point_and_the_plot_draws_every_run(tmp_path):
    results = {}
    for i, spec in enumerate(curves.parse_runs("hard:64x48:1:1200,hard:64x48:1:5000,medium:64x48:1:1200")):
        steps = (spec.steps // 2, spec.steps)
        results[spec.name] = {"world": spec.world, "label": spec.label, "wall_s": 600.0 * (i + 1),
                              "steps": spec.steps,
                              "scores": {str(s): _scores(s, 0.3 + 0.01 * i + s / 1e5, 0.2) for s in steps}}
    rows = curves.final_rows(results)
    assert len(rows) == 3 * len(curves.METHODS)
    last = [r for r in rows if r["run"] == "hard_64x48_w1_5000" and r["method"].startswith("M2E")]
    assert last[0]["step"] == 5000 and last[0]["ssim_photo"] == pytest.approx(0.36)
    assert last[0]["ssim_net"] == pytest.approx(0.41) and last[0]["train_min"] == 20
    assert last[0]["lpips_net"] == 0.05
    path = tmp_path / "hard.png"
    curves.plot_world("hard", results, str(path), "128x96")
    img = np.asarray(Image.open(path).convert("RGB"))
    for colour in curves.COLOURS[:2]:  # one colour per run of the world, none for the other world's
        assert (img == colour).all(-1).sum() > 50
    assert (img == curves.COLOURS[2]).all(-1).sum() == 0


def test_score_run_scores_each_checkpoint_once(tmp_path):
    """Checkpoints of a (tiny, untrained) run are scored on held-out photos and read the training
    loop's evaluation; a second call finds them scored and scores only the new checkpoint."""
    spec = curves.parse_run("easy:32x32:1:4")
    config = curves.run_config(spec, points=2, quick=True)
    workdir = str(tmp_path / spec.name)
    state = train.init_state(config)
    with checkpoints.Checkpointer(f"{workdir}/checkpoints", 5, async_save=False) as ckpt:
        ckpt.save(2, state, config)
    table = {"unpaired": {"tryon": {"ssim_masked": 0.5, "lpips_masked": 0.2}}}
    train._write_eval(workdir, 2, {"step": 2, "wall_s": 1.0, "metrics": table})
    logged = []
    scores = curves.score_run(spec, workdir, (64, 64), num=1, log=logged.append)
    assert list(scores) == ["2"] and len(logged) == 1
    assert scores["2"]["network"] == {"tryon": {"ssim": 0.5, "lpips": 0.2}}
    photo = scores["2"]["photo"]
    assert set(photo) == {"network", "full", "pan", "trn", "warp", "identity"}
    assert all(-1 <= v["ssim"] <= 1 and v["lpips"] >= 0 for v in photo.values())
    with checkpoints.Checkpointer(f"{workdir}/checkpoints", 5, async_save=False) as ckpt:
        ckpt.save(4, state, config)
    again = curves.score_run(spec, workdir, (64, 64), num=1, log=logged.append)
    assert sorted(again, key=int) == ["2", "4"] and len(logged) == 2
    assert again["2"] == json.loads((tmp_path / spec.name / "curve_scores.json").read_text())["2"]
