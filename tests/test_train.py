"""The train step and loop: learning, device-count invariance, NaN guard, exact resume, compile count."""

import glob
import json
import os

import jax
import numpy as np
import pytest

from configs import synthetic
from m2e_jax import input_pipeline, parallel, schedule, train
from m2e_jax.models.vgg import Vgg, VggTrunk
from m2e_jax.synthetic import dataset


def tiny_config(data_dir: str):
    """32x32, width 8, one residual block per generator (shared, so compiled steps are reused).

    Adam's eps is raised so that parameters with an exactly-zero gradient (conv biases before an
    InstanceNorm) stay put instead of following float noise: device counts then compare tightly.
    The adversarial weight is the default 1 (the demo's 0.1 leaves more of PAN's gradients near that
    eps, where the 4-device and 1-device sums' rounding shows: 0.3% of one kernel off by > 2%).
    """
    c = synthetic.get_config("test")
    c.dataset.data_dir = data_dir
    c.optim.update(eps=1e-3, g_lr=2e-3, d_lr=2e-3)
    c.loss.adv_weight = 1.0
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic_data"))


@pytest.fixture(scope="module")
def fixed_batch():
    c = synthetic.get_config("test")
    ex = dataset.make_examples(0, "train", 4, c.model.height, c.model.width, paired_fraction=1.0)
    return input_pipeline.stack_examples(ex)


@pytest.fixture(scope="module")
def one_device(data_dir):
    """The tiny config's compiled steps on one device, shared by the tests of this module."""
    return train.Steps(tiny_config(data_dir), parallel.DataParallel("shard_map", devices=jax.devices()[:1]))


def run_steps(config, compiled: train.Steps, batch, stage, steps, state=None):
    par = compiled.par
    state = par.put_state(train.init_state(config) if state is None else state)
    fn = compiled.train(stage)
    history = []
    for _ in range(steps):
        state, metrics = fn(state, par.put_batch(batch))
        history.append(par.get_state(metrics))
    return par.get_state(state), history


def test_stage_groups():
    assert train.stage_groups(1, True) == (("pan",), ("d_pan",), "pan")
    assert train.stage_groups(2, True) == (("trn",), (), "trn")
    assert train.stage_groups(3, True) == (("ftn",), ("d_final",), "ftn")
    assert train.stage_groups(4, True) == (("pan", "trn", "ftn"), ("d_pan", "d_final"), "ftn")
    assert train.stage_groups(2, False) == (("pan", "trn"), ("d_pan",), "trn")


@pytest.mark.slow  # compiles the stage-1 step (the module's other stage-1 tests reuse it)
def test_paired_loss_decreases_on_a_fixed_batch(fixed_batch, data_dir, one_device):
    config = tiny_config(data_dir)
    final, history = run_steps(config, one_device, fixed_batch, stage=1, steps=6)
    l1 = [h["pan_l1"] for h in history]
    assert l1[-1] < 0.9 * l1[0], l1
    assert all(h["finite"] == 1.0 for h in history)
    init = train.init_state(config)
    # Stage 1 trains PAN and its discriminator only; TRN / FTN / D_final stay untouched.
    for key in ("trn", "ftn", "d_final"):
        for a, b in zip(jax.tree.leaves(final["params"][key]), jax.tree.leaves(init["params"][key])):
            np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(final["params"]["pan"]),
                                                        jax.tree.leaves(init["params"]["pan"]))]
    assert all(changed)


@pytest.mark.slow  # reuses the loss test's stage-1 step (one_device) when that ran first
def test_nan_guard_keeps_state_and_names_the_step(fixed_batch, data_dir, one_device):
    config = tiny_config(data_dir)
    state = train.init_state(config)
    leaves, treedef = jax.tree.flatten(state["params"]["pan"])
    leaves[0] = np.full_like(leaves[0], np.inf)
    state["params"]["pan"] = jax.tree.unflatten(treedef, leaves)
    final, history = run_steps(config, one_device, fixed_batch, stage=1, steps=1, state=state)
    assert history[0]["finite"] == 0.0
    for a, b in zip(jax.tree.leaves(final["params"]), jax.tree.leaves(state["params"])):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 7 \(term 'd_pan'.*step 5"):
        train._raise_if_nonfinite(7, history[0], last_good=5)


@pytest.mark.slow
def test_four_devices_equal_one_device_in_both_modes(fixed_batch, data_dir, one_device):
    """The real step (stage 1): 4-way pmap and 4-way shard_map give the 1-device parameters."""
    config = tiny_config(data_dir)
    ref_state, ref_hist = run_steps(config, one_device, fixed_batch, stage=1, steps=3)
    init = train.init_state(config)
    for mode in parallel.MODES:
        steps = train.Steps(config, parallel.DataParallel(mode))
        state, hist = run_steps(config, steps, fixed_batch, stage=1, steps=3)
        for h, r in zip(hist, ref_hist):
            for k in r:
                np.testing.assert_allclose(h[k], r[k], rtol=1e-4, atol=1e-6, err_msg=f"{mode} {k}")
        for a, b, c in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ref_state["params"]),
                           jax.tree.leaves(init["params"])):
            # The updates (3 Adam steps of lr 2e-3, up to 6e-3): summation order moves a few by ~1e-4.
            np.testing.assert_allclose(a - c, b - c, rtol=2e-2, atol=1e-4, err_msg=mode)


def _params(workdir: str, step: int, config):
    from m2e_jax import checkpoints

    ck = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    state = ck.restore(step, train.init_state(config))
    ck.close()
    return state


@pytest.mark.slow
def test_loop_resume_reproduces_the_uninterrupted_run(tmp_path, data_dir):
    """Stage 1 then joint (paired, unpaired, ...): straight vs. stopped at 3 and restarted.

    (The demo's log shows one compilation per stage for all four: "compilations: ...".)
    """
    config = tiny_config(data_dir)
    config.schedule.update(pan_steps=2, trn_steps=0, ftn_steps=0, joint_steps=4)
    total = schedule.total_steps(config.schedule)
    steps = train.Steps(config)
    straight = train.train_and_evaluate(config, str(tmp_path / "a"), steps=steps)
    # At most one compilation per stage, plus one evaluation step.
    assert steps.compile_counts() == {"train1": 1, "train4": 1, "eval": 1}

    train.train_and_evaluate(config, str(tmp_path / "b"), max_steps=3, steps=steps)
    assert sorted(int(os.path.basename(p)) for p in glob.glob(str(tmp_path / "b/checkpoints/[0-9]*"))) == [3]
    resumed = train.train_and_evaluate(config, str(tmp_path / "b"), steps=steps)
    assert steps.compile_counts() == {"train1": 1, "train4": 1, "eval": 1}  # the same steps reused

    a, b = _params(str(tmp_path / "a"), total, config), _params(str(tmp_path / "b"), total, config)
    assert int(a["step"]) == int(b["step"]) == total
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert straight == resumed and "unpaired" in straight
    assert {"tryon", "pan_pasted", "trn_pasted", "identity", "warp_paste"} <= set(straight["unpaired"])
    with open(tmp_path / "b/eval" / f"step_{total:07d}.json") as f:
        assert json.load(f)["metrics"] == resumed
    assert os.path.exists(tmp_path / "b/images" / f"step_{total:07d}.png")
    assert os.path.exists(tmp_path / "a/config.json")


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_ema(fixed_batch, data_dir):
    config = tiny_config(data_dir)
    config.model.dtype = "bfloat16"
    config.ema_decay = 0.75
    init = train.init_state(config)
    one = parallel.DataParallel("shard_map", devices=jax.devices()[:1])
    final, history = run_steps(config, train.Steps(config, one), fixed_batch, stage=1, steps=1)
    assert history[0]["finite"] == 1.0 and np.isfinite(history[0]["pan_l1"])
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(final["params"]))
    gens = {k: final["params"][k] for k in train.NETWORKS}
    for e, p, i in zip(*(jax.tree.leaves(t) for t in (final["ema"], gens, init["ema"]))):
        np.testing.assert_allclose(e, 0.75 * i + 0.25 * p, rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # one stage-3 compile (the second run's is a compilation-cache hit)
def test_vgg_is_an_argument_of_the_step(fixed_batch, data_dir, jax_events):
    """Stage 3 with a perceptual loss: other VGG weights change the loss through the same compiled
    step (they are an argument, not compiled-in constants); FTN's composition-mask term is on."""
    config = tiny_config(data_dir)
    config.loss.update(perceptual_weight=1.0, vgg16_layer_weights=(1.0, 1.0))
    trunk = VggTrunk(cfg=(4, "M", 8), taps=(0, 1))
    weights = trunk.init(jax.random.key(3), np.zeros((1, 32, 32, 3), np.float32))["params"]
    make = lambda w: Vgg(trunk, w, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), ("a", "b"))
    vgg_a, vgg_b = make(weights), make(jax.tree.map(lambda x: 2.0 * x, weights))
    state = train.init_state(config)
    par = parallel.DataParallel("shard_map", devices=jax.devices()[:1])
    metrics, steps, misses = {}, {}, {}
    for name, vgg in (("a", vgg_a), ("b", vgg_b)):
        before = jax_events["/jax/compilation_cache/cache_misses"]
        steps[name] = train.Steps(config, par, vgg)
        _, m = steps[name].train(3)(par.put_state(state), par.put_batch(fixed_batch))
        metrics[name] = par.get_state(m)
        misses[name] = jax_events["/jax/compilation_cache/cache_misses"] - before
    assert steps["a"].traces == steps["b"].traces == {"train3": 1}
    if jax.config.jax_compilation_cache_dir:
        # The second run's program is the first's, found in the compilation cache: the weights are
        # an argument, nothing of them is compiled in.
        assert misses["b"] == 0, misses
    a, b = metrics["a"], metrics["b"]
    assert a["finite"] == 1.0 and a["ftn_perceptual"] > 0
    assert abs(a["ftn_perceptual"] - b["ftn_perceptual"]) > 1e-3 * a["ftn_perceptual"]
    np.testing.assert_allclose(a["ftn_l1"], b["ftn_l1"], rtol=1e-6)  # same networks, same output
    assert 0.0 < a["ftn_mask"] < 0.3


@pytest.mark.slow  # compiles one stage-4 step with a small perceptual VGG
def test_the_compiled_step_weights_each_batch_by_its_paired_share(fixed_batch, data_dir):
    """The joint stage's metrics as the compiled step returns them: an unpaired batch (no target for
    the reconstruction terms) reports zero for every L1 and perceptual term and a positive
    self-consistency term; a paired batch the reverse (losses.generator_terms' `paired` weighting,
    which train.train_step must pass the batch's share, not a constant)."""
    config = tiny_config(data_dir)
    config.loss.update(perceptual_weight=1.0, vgg16_layer_weights=(1.0, 1.0), consistency_weight=1.0)
    trunk = VggTrunk(cfg=(4, "M", 8), taps=(0, 1))
    weights = trunk.init(jax.random.key(3), np.zeros((1, 32, 32, 3), np.float32))["params"]
    vgg = Vgg(trunk, weights, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), ("a", "b"))
    compiled = train.Steps(config, parallel.DataParallel("shard_map", devices=jax.devices()[:1]), vgg)
    unpaired = {**fixed_batch, "paired": np.zeros_like(fixed_batch["paired"]),
                "has_target": np.zeros_like(fixed_batch["has_target"])}
    init = train.init_state(config)
    reconstruction = ("pan_l1", "pan_perceptual", "trn_l1", "ftn_l1", "ftn_perceptual")
    (_, [u]), (_, [p]) = (run_steps(config, compiled, batch, stage=4, steps=1, state=init)
                          for batch in (unpaired, fixed_batch))
    assert u["finite"] == p["finite"] == 1.0
    for name in reconstruction:
        assert u[name] == 0.0, (name, u[name])
        assert p[name] > 0.0, (name, p[name])
    assert u["trn_consistency"] > 0.0 and p["trn_consistency"] == 0.0
    assert compiled.traces["train4"] == 1  # one program serves both kinds of batch
