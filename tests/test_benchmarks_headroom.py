"""m2e_jax.benchmarks.headroom: the truth-made references and the warp / try-on composites."""

import json

import numpy as np
import pytest

from m2e_jax.benchmarks import headroom


def _images(seed: int, shape=(2, 8, 6, 3)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def test_shift_right_moves_columns_and_repeats_the_edge():
    x = _images(0)
    out = headroom.shift_right(x, 2)
    np.testing.assert_array_equal(out[:, :, 2:], x[:, :, :-2])
    np.testing.assert_array_equal(out[:, :, :2], np.repeat(x[:, :, :1], 2, axis=2))


def test_gaussian_blur_keeps_constants_and_smooths():
    flat = np.full((1, 9, 9, 3), 0.25, np.float32)
    np.testing.assert_allclose(headroom.gaussian_blur(flat, 1.0), flat, atol=1e-6)
    spike = np.zeros((1, 9, 9, 1), np.float32)
    spike[0, 4, 4] = 1.0
    out = headroom.gaussian_blur(spike, 1.0)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)  # no mass lost away from the edges
    assert out[0, 4, 4, 0] < 0.2 and out[0, 4, 5, 0] == pytest.approx(out[0, 5, 4, 0])
    assert out[0, 4, 5, 0] > out[0, 4, 6, 0] > 0


def test_truth_references_hold_the_truth_and_stay_in_range():
    target = _images(1, (2, 16, 12, 3))
    region = np.ones((2, 16, 12, 1), np.float32)
    refs = headroom.truth_references(target, region, 2)
    np.testing.assert_array_equal(refs["P* (itself)"], target)
    for name, img in refs.items():
        assert img.shape == target.shape and np.abs(img).max() <= 1.0 + 1e-6, name
    assert "P* at the networks' size, cubic up" in refs
    assert not any("networks' size" in name for name in headroom.truth_references(target, region, 1))
    mean = refs["R_P filled with its mean colour"]
    np.testing.assert_allclose(mean[:, 0, 0], target.mean((1, 2)), atol=1e-5)


def test_oracle_composite_is_nearer_the_truth_than_either_part():
    target, tryon, warped = _images(2), _images(3), _images(4)
    valid = np.random.default_rng(5).uniform(size=target.shape[:3] + (1,)) > 0.4
    comps = headroom.composites(tryon, warped, valid, target)
    err = lambda x: np.abs(x - target).mean(-1, keepdims=True)
    oracle = err(comps["per-pixel oracle: W or P', the nearer"])
    assert np.all(oracle <= err(tryon) + 1e-7)
    assert np.all(np.where(valid, oracle <= err(warped) + 1e-7, True))
    np.testing.assert_array_equal(np.where(valid, 0, comps["W where valid, P* elsewhere"] - target), 0)
    np.testing.assert_array_equal(np.where(valid, comps["P* where valid, P' elsewhere"] - target, 0), 0)


def test_main_quick_scores_every_image(tmp_path):
    """The command end to end on random `:test` networks (SSIM only: no AlexNet compile)."""
    path = tmp_path / "headroom.json"
    out = headroom.main(["--quick", "--num", "1", "--lpips_net", "", "--preset", "easy", "--json", str(path)])
    rows = {r["image"]: r for r in out["rows"]}
    assert rows["P* (itself)"]["ssim_r"] == pytest.approx(1.0, abs=1e-4)
    assert rows["P* shifted 3 px"]["ssim_r"] < rows["P* shifted 1 px"]["ssim_r"] < 1.0
    assert all(0.0 <= v <= 1.0 for v in out["shares"].values())
    # What FTN does to T: T pasted with no FTN, and P' unlit (the :test networks relight, "ramp").
    no_ftn, unlit = rows["T pasted in FTN's region (TRN's output, no FTN)"], rows[
        "P' with FTN's relight left out (gain 1)"]
    assert 0.0 < no_ftn["ssim_r"] < 1.0 and 0.0 < unlit["ssim_r"] < 1.0
    # RelightHead's gain is exactly 1 at initialisation (zero-init last layer): leaving it out of the
    # same maps must give the same try-on.
    assert unlit["ssim_r"] == pytest.approx(rows["P' (the try-on, infer's full)"]["ssim_r"], abs=1e-6)
    saved = json.loads(path.read_text())
    assert saved["benchmark"] == "headroom" and len(saved["rows"]) == len(rows)


def test_a_workdir_without_checkpoints_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        headroom.main(["--workdir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and "nowhere" in err and "no such checkpoint directory" in err
