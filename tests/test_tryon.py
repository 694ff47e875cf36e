"""The try-on pipeline: batch preparation, PAN -> TRN -> FTN with the real UV warp, per-network
parameter trees, gradients, bfloat16 compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2e_jax import densepose
from m2e_jax.models import tryon
from tests.model_fixtures import all_leaves_nonzero, random_batch, tiny_model_config


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_model_config()
    inputs = tryon.prepare_batch(random_batch(seed=1), cfg)
    params = tryon.init_params(cfg, jax.random.key(0), batch_size=2)
    forward = jax.jit(lambda p, i: tryon.tryon_forward(p, i, cfg))
    return cfg, inputs, params, forward, forward(params, inputs)


def test_prepare_batch_values():
    batch = random_batch(seed=2)
    batch["model_image"][0, 0, 0] = (0, 255, 128)
    batch["garment_kind"][1] = 1  # second example swaps a lower garment
    batch["person_mask"][0, 0, :4] = 1  # parsing mask joins the region
    cfg = tiny_model_config()
    out = tryon.prepare_batch(batch, cfg)
    np.testing.assert_allclose(out["model_image"][0, 0, 0], [-1.0, 1.0, 128 / 127.5 - 1], atol=1e-6)
    np.testing.assert_allclose(out["person_iuv"], densepose.iuv_to_float(batch["person_iuv"]))
    upper = densepose.garment_region(out["person_iuv"][:1], "upper", cfg.garment_dilation,
                                     out["person_mask"][:1])
    lower = densepose.garment_region(out["person_iuv"][1:], "lower", cfg.garment_dilation)
    np.testing.assert_array_equal(out["region"][:1], upper)
    np.testing.assert_array_equal(out["region"][1:], lower)
    assert float(out["region"][0, 0, 0, 0]) == 1.0 and float(jnp.sum(upper)) != float(jnp.sum(lower))
    np.testing.assert_allclose(out["soft_region"],
                               densepose.soft_region(out["region"], cfg.soft_dilation, cfg.feather))
    with pytest.raises(ValueError, match="person_iuv"):
        tryon.prepare_batch({k: v for k, v in batch.items() if k != "person_iuv"}, cfg)


def test_pipeline_outputs(setup):
    cfg, inputs, params, _, out = setup
    assert set(params) == {"pan", "trn", "ftn"}
    expected = {"warped", "valid", "region", "soft_region", "aligned", "texture", "alpha", "refined",
                "output", "ftn_mask", "ftn_generated", "ftn_region"}
    assert set(out) == expected
    for k in ("aligned", "texture", "refined", "output"):
        assert out[k].shape == (2, 32, 32, 3) and out[k].dtype == jnp.float32
        assert float(jnp.abs(out[k]).max()) <= 1.0
    for k in ("alpha", "ftn_mask"):
        assert 0 <= float(out[k].min()) and float(out[k].max()) <= 1
    # The real UV warp ran: valid only on the person's body, warped zero elsewhere.
    body = densepose.split_iuv(inputs["person_iuv"])[0][..., None] > 0
    assert float(out["valid"].sum()) > 0 and not bool(jnp.any((out["valid"] > 0) & ~body))
    outside = np.asarray(out["soft_region"][..., 0]) == 0
    person = np.asarray(inputs["person_image"])
    np.testing.assert_array_equal(np.asarray(out["output"])[outside], person[outside])


def test_networks_compose_from_separate_trees(setup):
    cfg, inputs, params, _, out = setup
    net = tryon.make_tryon(cfg)
    apply = jax.jit(net.apply, static_argnames="method")
    pan_forward = jax.jit(lambda p, i: tryon.tryon_forward(p, i, cfg, upto="pan"))
    only_pan = pan_forward({"pan": params["pan"]}, inputs)
    np.testing.assert_allclose(only_pan["aligned"], out["aligned"], atol=1e-5)
    assert "refined" not in only_pan
    trn = apply({"params": {"trn": params["trn"]}}, inputs, out["aligned"], out["warped"],
                    out["valid"], method=tryon.TryOnNet.run_trn)
    np.testing.assert_allclose(trn["refined"], out["refined"], atol=1e-5)
    final = apply({"params": {"ftn": params["ftn"]}}, inputs, out["refined"],
                      method=tryon.TryOnNet.run_ftn)
    np.testing.assert_allclose(final["output"], out["output"], atol=1e-5)
    with pytest.raises(ValueError, match="no parameters for"):
        tryon.tryon_forward({"pan": params["pan"]}, inputs, cfg, upto="trn")
    # 36 is divisible by the generators' 4 but not by a 3-layer PatchGAN's 8.
    with pytest.raises(ValueError, match="36x32 must be divisible by 8"):
        tryon.check_image_size(tiny_model_config(d_layers=3), 36, 32)


def test_gradients_reach_every_parameter(setup):
    cfg, inputs, params, _, _ = setup
    target = inputs["target_image"]

    def loss(p):
        o = tryon.tryon_forward(p, inputs, cfg)
        return (jnp.mean(jnp.abs(o["aligned"] - target)) + jnp.mean(jnp.abs(o["refined"] - target))
                + jnp.mean(jnp.abs(o["output"] - target)) + jnp.mean(o["alpha"]))

    grads = jax.jit(jax.grad(loss))(params)
    assert all_leaves_nonzero(grads) == []


def test_bfloat16_close_to_float32(setup):
    cfg, inputs, params, _, out = setup
    cfg16 = tiny_model_config(dtype="bfloat16")
    out16 = jax.jit(lambda p, i: tryon.tryon_forward(p, i, cfg16))(params, inputs)
    for k in ("aligned", "refined", "output", "alpha"):
        assert out16[k].dtype == jnp.float32
        diff = jnp.abs(out16[k] - out[k])
        # measured: mean ~0.005, max <= 0.065 on this example
        assert float(diff.mean()) < 0.015 and float(diff.max()) < 0.2, (k, diff.mean(), diff.max())
    assert float(jnp.abs(out16["aligned"] - out["aligned"]).max()) > 0  # really computed in bf16


def test_parse_region_keeps_uncovered_skin():
    """model.parse_region: FTN replaces R_P only where M's warped garment or P's old garment lies."""
    cfg = tiny_model_config(parse_region=True)
    batch = random_batch(seed=3)
    batch["person_mask"][:, 8:16] = 1  # P's old garment: a band of rows
    net = tryon.make_tryon(cfg)
    replace = jax.jit(lambda i, v: net.apply({"params": {}}, i, v, method=tryon.TryOnNet.replace_region))
    inputs = tryon.prepare_batch(batch, cfg)
    valid = jax.jit(lambda i: net.apply({"params": {}}, i, method=tryon.TryOnNet.warp))(inputs)[1]
    region, old, v = np.asarray(inputs["region"]), np.asarray(inputs["person_mask"]), np.asarray(valid)
    # No new garment anywhere (M's parsing shows none): only P's old garment (inside R_P) is replaced.
    none = replace({**inputs, "model_mask": jnp.zeros_like(inputs["model_mask"])}, valid)
    np.testing.assert_allclose(none, region * old, atol=1e-6)
    # M entirely garment: the new garment lands wherever the warp has a source (V).
    full = replace({**inputs, "model_mask": jnp.ones_like(inputs["model_mask"])}, valid)
    np.testing.assert_allclose(full, region * (1 - (1 - v) * (1 - old)), atol=1e-6)
    assert float(full.sum()) < float(region.sum())  # R_P pixels without a source and not P's garment
    assert 0 < float(none.sum()) < float(full.sum())
    # No parsing maps at all (DensePose alone: both masks empty): R_P itself, never the empty region.
    # Mixed batch: the second example keeps its parsing masks and its parsing-guided region.
    bare = {**inputs, "model_mask": inputs["model_mask"].at[0].set(0.0),
            "person_mask": inputs["person_mask"].at[0].set(0.0)}
    mixed = np.asarray(replace(bare, valid))
    np.testing.assert_array_equal(mixed[0], region[0])
    np.testing.assert_allclose(mixed[1], region[1] * old[1], atol=1e-6)
    assert float(region[0].sum()) > 0
    np.testing.assert_array_equal(np.asarray(tryon.has_parsing(bare["model_mask"], bare["person_mask"])),
                                  [False, True])
    # Off by default: R_P itself.
    plain = tryon.make_tryon(tiny_model_config())
    np.testing.assert_array_equal(plain.apply({"params": {}}, inputs, valid,
                                              method=tryon.TryOnNet.replace_region), inputs["region"])


def test_paint_region_cases():
    """model.ftn_paint: FTN paints F * (1 - g) where M's parsing map says where its garment lands;
    with M's map only F is all of R_P; without M's map nothing is painted (T shown everywhere)."""
    region = jnp.ones((4, 2, 3, 1)).at[:, 1, 2].set(0.0)
    g = jnp.zeros((4, 2, 3, 1)).at[:, 0, :].set(1.0)           # new garment: the top row
    old = jnp.zeros((4, 2, 3, 1)).at[:, :, :2].set(1.0)        # P's old garment: two left columns
    valid = jnp.ones((4, 2, 3, 1)).at[:, 0, 2].set(0.0)        # a hole of the warp: no new garment
    model_mask = jnp.ones((4, 2, 3, 1)).at[2:].set(0.0)        # examples 2, 3: no map of M
    person_mask = jnp.stack([old[0], jnp.zeros_like(old[0]), old[0], jnp.zeros_like(old[0])])
    g = g * valid * (model_mask.max(axis=(1, 2, 3), keepdims=True) > 0)  # as TryOnNet computes it
    f = tryon.replace_region(region, g, person_mask, tryon.has_parsing(model_mask, person_mask))
    f2, paint = tryon.paint_region(region, f, g, model_mask, person_mask)
    f2, paint, f = np.asarray(f2)[..., 0], np.asarray(paint)[..., 0], np.asarray(f)[..., 0]
    # Both maps: F = R_P * (g | old); painted: P's old garment where M's garment does not land.
    np.testing.assert_array_equal(f2[0], [[1, 1, 0], [1, 1, 0]])
    np.testing.assert_array_equal(paint[0], [[0, 0, 0], [1, 1, 0]])
    # M's map only: all of R_P, painted wherever g is not (the hole of the warp too).
    np.testing.assert_array_equal(f2[1], [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(paint[1], [[0, 0, 1], [1, 1, 0]])
    assert f[1].sum() == 2  # without ftn_paint the same example replaced g alone
    # No map of M: F as replace_region gives it, nothing painted.
    np.testing.assert_array_equal(f2[2:], f[2:])
    assert not paint[2:].any()


def test_ftn_paint_output_is_generated_where_painted():
    """With model.ftn_paint the composition mask is zeroed where FTN paints: P' there is G_img,
    and T's pixels there do not reach FTN (changing them changes nothing)."""
    cfg = tiny_model_config(parse_region=True, ftn_paint=True)
    batch = random_batch(seed=3)
    batch["person_mask"][:, 8:16] = 1
    batch["model_mask"][:, :, :16] = 1
    inputs = tryon.prepare_batch(batch, cfg)
    params = tryon.init_params(cfg, jax.random.key(1))
    fwd = jax.jit(lambda p, i: tryon.tryon_forward(p, i, cfg))
    out = fwd(params, inputs)
    paint = np.asarray(out["ftn_paint"])[..., 0] == 1
    assert paint.any() and (np.asarray(out["ftn_region"])[..., 0] > paint).any()
    soft = np.asarray(inputs["soft_region"])[..., 0] == 1
    np.testing.assert_allclose(np.asarray(out["output"])[paint & soft],
                               np.asarray(out["ftn_generated"])[paint & soft], atol=1e-6)
    net = tryon.make_tryon(cfg)
    run = jax.jit(lambda p, i, t, r, q: net.apply({"params": {"ftn": p}}, i, t, r, q,
                                                  method=tryon.TryOnNet.run_ftn))
    hidden = out["ftn_region"] - out["ftn_paint"] == 0  # fully painted, or outside F
    assert bool(jnp.any(hidden & (out["ftn_paint"] > 0)))
    moved = jnp.where(hidden, -out["refined"], out["refined"])
    a = run(params["ftn"], inputs, out["refined"], out["ftn_region"], out["ftn_paint"])
    b = run(params["ftn"], inputs, moved, out["ftn_region"], out["ftn_paint"])
    np.testing.assert_allclose(a["output"], b["output"], atol=1e-6)
    assert float(jnp.abs(moved - out["refined"]).max()) > 0.1


def test_recompose_at_the_network_size_is_the_forward_pass(setup):
    """recompose re-evaluates TRN's and FTN's formulas from the networks' maps: on the inputs the
    networks saw it gives back their refined T, replace region and output P'."""
    cfg, inputs, _, _, out = setup
    maps = {k: out[k] for k in tryon.RESOLUTION_FREE if k in out}
    again = jax.jit(lambda m, i: tryon.recompose(m, i, cfg))(
        maps, {**inputs, "warped": out["warped"], "valid": out["valid"]})
    for key in ("refined", "ftn_region", "output"):
        np.testing.assert_allclose(again[key], out[key], atol=1e-5, err_msg=key)
    # It really uses the maps: another alpha gives another T and P'.
    other = jax.jit(lambda m, i: tryon.recompose(m, i, cfg))(
        {**maps, "alpha": 1.0 - maps["alpha"]}, {**inputs, "warped": out["warped"], "valid": out["valid"]})
    assert float(jnp.abs(other["output"] - out["output"]).max()) > 0.1


def test_relit_tryon_recomposes_with_its_gain(setup):
    """model.ftn_relight: the gain map is constant over the image, starts at exactly 1 (then P' is
    the unrelit formula's), and recompose, given it as one more resolution-free map, reproduces
    the forward pass; another gain gives another P'."""
    _, inputs, _, _, _ = setup
    cfg = tiny_model_config(ftn_relight="gain")
    params = tryon.init_params(cfg, jax.random.key(0), batch_size=2)
    assert "relight" in params["ftn"]
    params["ftn"]["relight"]["Dense_0"]["bias"] = jnp.asarray([0.4, 0.0, -0.4])
    out = jax.jit(lambda p, i: tryon.tryon_forward(p, i, cfg))(params, inputs)
    gain = np.asarray(out["ftn_gain"])
    assert gain.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(gain[:, 5, 7], gain[:, 0, 0])
    np.testing.assert_allclose(gain[0, 0, 0], np.exp(0.5 * np.tanh([0.4, 0.0, -0.4])), rtol=1e-5)
    maps = {k: out[k] for k in tryon.RESOLUTION_FREE}
    full = {**inputs, "warped": out["warped"], "valid": out["valid"]}
    recompose = jax.jit(lambda m, i: tryon.recompose(m, i, cfg))
    np.testing.assert_allclose(recompose(maps, full)["output"], out["output"], atol=1e-5)
    unlit = recompose({**maps, "ftn_gain": jnp.ones_like(maps["ftn_gain"])}, full)["output"]
    assert float(jnp.abs(unlit - out["output"]).max()) > 0.05
    # The gain map left out (headroom's "relight left out" row) is the gain 1, not the learned one.
    dropped = recompose({k: v for k, v in maps.items() if k != "ftn_gain"}, full)["output"]
    np.testing.assert_allclose(dropped, unlit, atol=1e-6)


def test_scaled_model_config_scales_pixel_lengths():
    cfg = tiny_model_config(garment_dilation=1, soft_dilation=2, feather=1, warp_tile=16)
    big = tryon.scaled_model_config(cfg, 4.0)
    assert (big.garment_dilation, big.soft_dilation, big.feather, big.warp_tile) == (4, 8, 4, 64)
    assert (big.height, big.width, big.base_channels) == (cfg.height, cfg.width, cfg.base_channels)
    assert tryon.scaled_model_config(cfg, 64.0).warp_tile == tryon.MAX_WARP_TILE
    same = tryon.scaled_model_config(cfg, 1.0)
    assert same.to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match="scale"):
        tryon.scaled_model_config(cfg, 0.0)
