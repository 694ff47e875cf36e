"""The evaluate command: metric tables that agree with direct metric calls, padding-independent
means, baselines on the unpaired subset, FID / IS through a user-supplied .npz extractor."""

import json

import jax
import numpy as np
import pytest

from configs import synthetic
from m2e_jax import evaluate, input_pipeline, metrics
from tests.test_infer import write_checkpoint

NUM = 7


def write_extractor(path, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, **{"conv0/kernel": rng.normal(0, 0.3, (3, 3, 3, 8)), "conv0/bias": np.zeros(8),
                      "conv0/stride": np.int32(2), "conv1/kernel": rng.normal(0, 0.2, (3, 3, 8, 6)),
                      "conv1/bias": rng.normal(0, 0.1, 6), "conv1/stride": np.int32(1),
                      "logits/kernel": rng.normal(0, 1.0, (6, 5)), "logits/bias": np.zeros(5),
                      "input_size": np.array([24, 24])})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    cfg = synthetic.get_config("test")
    cfg.dataset.update(data_dir=str(root / "data"), num_test=NUM)
    params = write_checkpoint(root / "work", cfg, 5, seed=2)
    source = input_pipeline.open_source(cfg, "test")
    write_extractor(root / "feats.npz")
    extractor = evaluate.load_feature_extractor(str(root / "feats.npz"))
    table = evaluate.evaluate(cfg, params, "test", batch_size=3, features=extractor, source=source)
    return {"root": root, "cfg": cfg, "params": params, "source": source, "table": table,
            "extractor": extractor}


def _subset(source, paired: bool):
    rows = [source[i] for i in range(len(source)) if bool(source[i]["paired"]) == paired]
    return input_pipeline.stack_examples(rows)


def test_table_layout_and_counts(setup):
    table, source = setup["table"], setup["source"]
    n_paired = int(sum(bool(source[i]["paired"]) for i in range(len(source))))
    assert 0 < n_paired < NUM
    assert table["paired"]["count"] == n_paired and table["unpaired"]["count"] == NUM - n_paired
    assert set(table["paired"]) == {"count", "count_with_target", "tryon", "pan_pasted", "trn_pasted"}
    assert {"tryon", "pan_pasted", "trn_pasted", "identity", "warp_paste"} <= set(table["unpaired"])
    assert set(table["unpaired"]["tryon"]) == {"ssim", "psnr", "lpips", "ssim_masked", "psnr_masked",
                                               "colour_masked", "lpips_masked", "fid", "is"}


def test_baseline_scores_equal_direct_metric_calls(setup):
    """The P-unchanged row is the mean over unpaired examples of metrics(P, P*), whatever the padding."""
    b = _subset(setup["source"], paired=False)
    p = b["person_image"].astype(np.float32) / 127.5 - 1
    t = b["target_image"].astype(np.float32) / 127.5 - 1
    row = setup["table"]["unpaired"]["identity"]
    np.testing.assert_allclose(row["ssim"], np.mean(metrics.ssim(p, t)), rtol=1e-5)
    np.testing.assert_allclose(row["psnr"], np.mean(metrics.psnr(p, t)), rtol=1e-5)
    np.testing.assert_allclose(row["lpips"], np.mean(metrics.lpips(p, t)), rtol=1e-4)
    # FID / IS through the .npz extractor: the identity method's images are P, the real ones P*.
    fp, lp = jax.device_get(setup["extractor"](p))
    ft, _ = jax.device_get(setup["extractor"](t))
    np.testing.assert_allclose(row["fid"], metrics.fid(fp, ft), rtol=1e-4)
    np.testing.assert_allclose(row["is"], metrics.inception_score(jax.nn.softmax(lp, -1))[0], rtol=1e-5)
    # The warp pasted into R_P changes only the garment region: the same LPIPS whole and masked.
    w = setup["table"]["unpaired"]["warp_paste"]
    np.testing.assert_allclose(w["lpips"], w["lpips_masked"], rtol=1e-4)


def test_batch_size_does_not_change_the_table(setup):
    other = evaluate.evaluate(setup["cfg"], setup["params"], "test", batch_size=4, source=setup["source"])
    for subset, entry in other.items():
        for method, scores in entry.items():
            if isinstance(scores, dict):
                for k, v in scores.items():
                    np.testing.assert_allclose(v, setup["table"][subset][method][k], rtol=1e-4, atol=1e-6)


def test_cli_writes_json_and_markdown(setup, capsys):
    root = setup["root"]
    rc = evaluate.main(["--workdir", str(root / "work"), "--split", "test", "--batch_size", "3",
                        "--num_examples", "4", "--data_dir", setup["cfg"].dataset.data_dir])
    assert rc == 0, capsys.readouterr().err
    saved = json.loads((root / "work" / "eval" / "metrics_test_step5.json").read_text())
    assert saved["step"] == 5 and saved["dataset"] == "synthetic"
    counts = sum(e["count"] for e in saved["metrics"].values())
    assert counts == 4
    md = (root / "work" / "eval" / "metrics_test_step5.md").read_text()
    assert "| M2E-TON (ours) |" in md


def test_cli_bad_extractor_is_one_line(setup, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{"conv0/kernel": np.zeros((3, 3, 3, 4))})
    capsys.readouterr()
    rc = evaluate.main(["--workdir", str(setup["root"] / "work"), "--inception_weights", str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and "bad.npz: missing arrays" in err, err
