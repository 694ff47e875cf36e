"""The scoring library: one table schema for the loop, the evaluate command and arbitrary methods.

(The Scorer over a checkpoint and a data source is exercised end to end by tests/test_evaluate.py;
the training loop's tables by tests/test_train.py.)
"""

import numpy as np
import pytest

from configs import synthetic
from m2e_jax import input_pipeline, metrics, scoring
from m2e_jax.synthetic import dataset


def _unit(x):
    return np.asarray(x, np.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def batch():
    """Six synthetic examples, paired and unpaired, every one with its exact ground truth."""
    cfg = synthetic.get_config("test")
    ex = dataset.make_examples(3, "test", 6, cfg.model.height, cfg.model.width, paired_fraction=0.5)
    b = input_pipeline.stack_examples(ex)
    assert 0 < b["paired"].sum() < 6 and b["has_target"].all()
    return cfg, b


def test_score_methods_takes_any_method_and_adds_the_baselines(batch):
    cfg, b = batch
    oracle = _unit(b["target_image"])
    blurred = 0.5 * oracle  # a worse, different method
    # LPIPS columns are checked against direct calls in tests/test_evaluate.py; off here (compile time).
    table = scoring.score_methods({"oracle": oracle, "half": blurred}, b, cfg.model, lpips_net=None)
    n_paired = int(b["paired"].sum())
    assert table["paired"]["count"] == table["paired"]["count_with_target"] == n_paired
    assert table["unpaired"]["count"] == 6 - n_paired
    # Baselines only where they mean something: on paired examples P is the target itself.
    assert set(table["paired"]) == {"count", "count_with_target", "oracle", "half"}
    assert set(table["unpaired"]) == {"count", "count_with_target", "oracle", "half", "identity",
                                      "warp_paste"}
    for subset in ("paired", "unpaired"):
        o = table[subset]["oracle"]
        assert set(o) == {"ssim", "psnr", "ssim_masked", "psnr_masked", "colour_masked"}
        keys = ("ssim", "psnr", "ssim_masked", "psnr_masked", "colour_masked")
        np.testing.assert_allclose([o[k] for k in keys], [1.0, metrics.MAX_PSNR, 1.0, metrics.MAX_PSNR, 0.0],
                                   atol=1e-4)
        assert table[subset]["half"]["ssim"] < 0.99 and table[subset]["half"]["psnr_masked"] < 40
    # "P unchanged" is the mean over the unpaired examples of the direct metric calls.
    un = b["paired"] == 0
    p, t = _unit(b["person_image"][un]), _unit(b["target_image"][un])
    row = table["unpaired"]["identity"]
    np.testing.assert_allclose(row["ssim"], np.mean(metrics.ssim(p, t)), rtol=1e-5)
    np.testing.assert_allclose(row["psnr"], np.mean(metrics.psnr(p, t)), rtol=1e-5)


def test_score_methods_rejects_images_that_do_not_fit_the_batch(batch):
    cfg, b = batch
    with pytest.raises(scoring.ScoringError, match=r"like the batch's person_image \(6, 32, 32, 3\)"):
        scoring.score_methods({"x": np.zeros((5, 32, 32, 3), np.float32)}, b, cfg.model, lpips_net=None)


def test_summarize_counts_padding_and_examples_without_ground_truth():
    """Means are over examples with ground truth; counts over all real (non-padding) examples."""
    a = np.array
    rows = {"scores": {"tryon": {"ssim": a([0.5, 0.7, 0.9, 0.1]), "psnr": a([10.0, 20.0, 30.0, 40.0])},
                       "identity": {"ssim": a([1.0, 0.2, 0.4, 0.3]), "psnr": a([1.0, 2.0, 3.0, 4.0])}},
            "paired": np.array([1, 0, 0, 0]), "has_target": np.array([1, 1, 1, 0]),
            "weight": np.array([1.0, 1.0, 1.0, 1.0])}
    table = scoring.summarize(scoring._keep(rows))
    assert table == {"paired": {"count": 1, "count_with_target": 1, "tryon": {"ssim": 0.5, "psnr": 10.0}},
                     "unpaired": {"count": 3, "count_with_target": 2,
                                  "tryon": {"ssim": pytest.approx(0.8), "psnr": 25.0},
                                  "identity": {"ssim": pytest.approx(0.3), "psnr": 2.5}}}
    padded = dict(rows, weight=np.array([1.0, 1.0, 1.0, 0.0]))  # the example without target is padding
    assert scoring.summarize(scoring._keep(padded))["unpaired"]["count"] == 2
    assert scoring.flat_scalars(table)["eval/unpaired/tryon/psnr"] == 25.0
    assert scoring.flat_scalars(table)["eval/unpaired/count_with_target"] == 2.0


def test_markdown_rows_are_methods_and_columns_metrics():
    table = {"unpaired": {"count": 2, "count_with_target": 2, "ablation": {"ssim": 0.4, "psnr": 15.0},
                          "tryon": {"ssim": 0.5, "psnr": 20.0}, "identity": {"ssim": 0.25, "psnr": 10.0}}}
    md = scoring.markdown(table, "synthetic / test (step 5)")
    lines = md.splitlines()
    assert lines[0] == "## synthetic / test (step 5)"
    assert "| method | SSIM | PSNR |" in lines
    assert "| M2E-TON (ours) | 0.5000 | 20.00 |" in lines and "| P unchanged | 0.2500 | 10.00 |" in lines
    # The named methods first, in their fixed order, then the caller's own by name.
    assert lines.index("| P unchanged | 0.2500 | 10.00 |") < lines.index("| ablation | 0.4000 | 15.00 |")


def test_warp_paste_baseline_keeps_p_over_the_warps_holes():
    """"UV warp pasted in R_P" replaces P by W only where the warp filled the texel (R_P * V = 1):
    inside R_P over the warp's holes (V = 0) and outside R_P it is P exactly."""
    rng = np.random.default_rng(0)
    shape = (2, 6, 5)
    person, warped = (rng.uniform(-1, 1, shape + (3,)).astype(np.float32) for _ in range(2))
    region = (rng.uniform(size=shape + (1,)) < 0.6).astype(np.float32)
    valid = (rng.uniform(size=shape + (1,)) < 0.6).astype(np.float32)
    paste = (region * valid)[..., 0] == 1
    assert paste.any() and (region[..., 0] * (1 - valid[..., 0])).any()  # both cases inside R_P
    out = scoring.baseline_images({"person_image": person, "warped": warped, "valid": valid,
                                   "region": region})
    np.testing.assert_array_equal(out["identity"], person)
    got = np.asarray(out["warp_paste"])
    np.testing.assert_array_equal(got[paste], warped[paste])
    np.testing.assert_array_equal(got[~paste], person[~paste])


def test_stage_images_paste_pan_and_trn_into_ftns_region_only():
    """"PAN only" and "PAN + TRN" are A and T pasted into P over FTN's region (a soft region blends):
    outside it P exactly, inside it the network's own image; every evaluation scores them
    (method_images), so a table says which network limits."""
    rng = np.random.default_rng(1)
    shape = (2, 6, 5)
    person, aligned, refined, output = (rng.uniform(-1, 1, shape + (3,)).astype(np.float32) for _ in range(4))
    region = np.where(rng.uniform(size=shape + (1,)) < 0.5, 1.0, 0.0).astype(np.float32)
    region[0, 0, 0] = 0.25  # a soft edge
    out = {"aligned": aligned, "refined": refined, "ftn_region": region, "output": output}
    got = scoring.stage_images(out, person)
    inside, outside = region[..., 0] == 1, region[..., 0] == 0
    for name, image in (("pan_pasted", aligned), ("trn_pasted", refined)):
        g = np.asarray(got[name])
        np.testing.assert_array_equal(g[inside], image[inside])
        np.testing.assert_array_equal(g[outside], person[outside])
        np.testing.assert_allclose(g[0, 0, 0], 0.75 * person[0, 0, 0] + 0.25 * image[0, 0, 0], rtol=1e-6)
    inputs = {"person_image": person, "warped": aligned, "valid": region, "region": region}
    assert set(scoring.method_images(out, inputs)) == {"tryon", "pan_pasted", "trn_pasted", "identity",
                                                        "warp_paste"}
