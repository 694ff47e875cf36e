"""Training: the pure per-device step of each stage, evaluation, and the train_and_evaluate loop.

State (a plain pytree; host numpy in checkpoints, device arrays while training):
  {"step": int32 [], "params": {"pan", "trn", "ftn", "d_pan", "d_final"},
   "opt": {same keys: optax Adam state}, "ema": {"pan", "trn", "ftn"} (only when config.ema_decay > 0)}
One parameter tree and one Adam optimizer per network group; the learning rate is a pure function of
the global step (constant, then linear decay to 0 over the last `optim.decay_start` of training).

The step (method.md "Hybrid paired / unpaired training") is one fused generator + discriminator
update: the generators' loss uses the current discriminators, the discriminators score the
(stop-gradient) fakes against P, both updates are applied at once. It is written once, per device,
with `pmean` over the "data" axis, and compiled by parallel.DataParallel for pmap or shard_map.

Compilations: the stage (1 PAN, 2 +TRN, 3 +FTN, 4 joint) is static, the paired/unpaired branch is
not (its loss terms are weighted by the batch's paired share, batches being all-paired or
all-unpaired), so training compiles at most one step per stage: 4 in all, plus one evaluation step.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image

from m2e_jax import checkpointing, config_validation, input_pipeline, losses, parallel, schedule, scoring
from m2e_jax.models import tryon as tryon_lib
from m2e_jax.models.tryon import build_discriminators, dummy_inputs, init_params

AXIS = parallel.AXIS
GEN = tryon_lib.NETWORKS
DISC = {"d_pan": "pan", "d_final": "final"}  # state key -> build_discriminators key
# Trace counts per (kind, stage): a trace is a compilation; tests bound them.
TRACES: collections.Counter = collections.Counter()
# Compiled steps by (kind, stage, parallel mode, devices, config JSON): a second run in the same
# process (resume, tests) reuses them instead of compiling again.
_COMPILED: dict[tuple, Any] = {}
# Device copies of the perceptual loss's VGG by (id, parallel mode, devices): put once, not per step.
_DEVICE_WEIGHTS: dict[tuple, Any] = {}


def compiled(kind: str, stage: int, par: parallel.DataParallel, config, vgg=None):
    """The data-parallel train step of `stage` (kind "train") or the eval step (kind "eval").

    Both are called as fn(state, batch). A VGG goes into the train step as a device-resident
    argument (put on the devices once per VGG object), not as compiled-in constants: one compiled
    step serves any VGG weights.
    """
    key = (kind, stage, par.mode, tuple(d.id for d in par.devices), config.to_json_best_effort(),
           vgg is None)
    if key not in _COMPILED:
        fn = functools.partial(train_step, config=config, stage=stage)
        _COMPILED[key] = par.compile(fn, num_replicated=int(vgg is not None))
    if kind == "train" and vgg is not None:
        step = _COMPILED[key]
        wkey = (id(vgg), par.mode, tuple(d.id for d in par.devices))
        if wkey not in _DEVICE_WEIGHTS:
            _DEVICE_WEIGHTS[wkey] = (vgg, par.put_state(vgg))  # holds vgg so its id stays unique
        weights = _DEVICE_WEIGHTS[wkey][1]
        return lambda state, batch: step(state, batch, weights)
    return _COMPILED[key]


def stage_groups(stage: int, freeze_earlier: bool) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(generator groups trained, discriminator groups trained, last network run) for a stage 1..4."""
    upto = GEN[min(stage, 3) - 1]
    if stage == 4 or not freeze_earlier:
        gens = GEN[: min(stage, 3)]
    else:
        gens = (upto,)
    # D_pan scores A, so it trains while PAN does; D_final scores P', so whenever FTN runs.
    discs = (("d_pan",) if "pan" in gens else ()) + (("d_final",) if upto == "ftn" else ())
    return gens, discs, upto


def learning_rate(step, base: float, total: int, decay_start: float):
    """base until decay_start * total steps, then linear to 0 at `total` (jnp scalar)."""
    start = decay_start * total
    frac = jnp.clip((total - step) / jnp.maximum(total - start, 1.0), 0.0, 1.0)
    return base * jnp.where(step < start, 1.0, frac)


def _adam(config) -> optax.GradientTransformation:
    return optax.scale_by_adam(b1=config.optim.b1, b2=config.optim.b2, eps=config.optim.eps)


def init_state(config: ml_collections.ConfigDict) -> dict:
    """Fresh training state from config.seed, as host numpy arrays (a new copy each call)."""
    cached = _init_state_cached(config.model.to_json_best_effort(), config.seed, config.ema_decay > 0)
    return jax.tree.map(np.copy, cached)


@functools.lru_cache(maxsize=4)
def _init_state_cached(model_json: str, seed: int, ema: bool) -> dict:
    # Initialisation compiles the networks once more; restarts in one process reuse the result.
    model_cfg = ml_collections.ConfigDict(json.loads(model_json))
    rng_g, rng_d = jax.random.split(jax.random.key(seed))
    params = dict(init_params(model_cfg, rng_g))
    inputs = dummy_inputs(model_cfg)
    for (key, name), rng in zip(DISC.items(), jax.random.split(rng_d, len(DISC))):
        disc = build_discriminators(model_cfg)[name]
        params[key] = jax.jit(disc.init)(rng, inputs["person_image"], inputs["person_iuv"])["params"]
    tx = optax.scale_by_adam()  # the state's structure does not depend on b1, b2, eps
    state = {"step": np.int32(0), "params": params, "opt": {k: tx.init(v) for k, v in params.items()}}
    if ema:
        state["ema"] = {k: params[k] for k in GEN}
    return jax.tree.map(np.asarray, jax.device_get(state))


def _disc(config, key: str, params, image, person_iuv):
    disc = build_discriminators(config.model)[DISC[key]]
    return disc.apply({"params": params}, image, person_iuv)


def generator_terms(config, params: dict, out: dict, inputs: dict, paired, gens: tuple[str, ...],
                    vgg=None) -> dict[str, jax.Array]:
    """Weighted generator loss terms for the outputs the trained networks `gens` influence.

    paired: the batch's paired share (0 or 1 in practice); reconstruction terms against the target
    are paired-only, the self-consistency term unpaired-only, adversarial and alpha terms always.
    """
    w = config.loss
    target, iuv, region, valid = inputs["target_image"], inputs["person_iuv"], out["region"], out["valid"]
    terms: dict[str, jax.Array] = {}

    def recon(name, image, mask=None):
        terms[f"{name}_l1"] = paired * w.l1_weight * losses.l1_loss(image, target, mask)
        if w.perceptual_weight > 0:
            terms[f"{name}_perceptual"] = paired * w.perceptual_weight * losses.vgg_perceptual(
                vgg, image, target, w.vgg16_layer_weights)

    if "pan" in gens:
        recon("pan", out["aligned"])
        terms["pan_adv"] = w.adv_weight * losses.g_adv_loss(
            _disc(config, "d_pan", params["d_pan"], out["aligned"], iuv), w.gan)
    if "refined" in out and ("pan" in gens or "trn" in gens):
        terms["trn_l1"] = paired * w.l1_weight * losses.l1_loss(out["refined"], target, region)
        terms["trn_alpha"] = w.alpha_weight * losses.alpha_loss(out["alpha"], valid, region)
        terms["trn_consistency"] = (1.0 - paired) * w.consistency_weight * losses.consistency_loss(
            out["refined"], out["warped"], valid, region)
    if "output" in out:
        recon("ftn", out["output"])
        terms["ftn_adv"] = w.adv_weight * losses.g_adv_loss(
            _disc(config, "d_final", params["d_final"], out["output"], iuv), w.gan)
        if "ftn_mask" in out and w.get("ftn_mask_weight", 0.0) > 0:
            # FTN's composition mask toward 1 inside R~: keeps T's pixels passing straight through.
            mask = out["ftn_mask"]
            terms["ftn_mask"] = w.ftn_mask_weight * losses.l1_loss(mask, jnp.ones_like(mask),
                                                                   out["soft_region"])
    return terms


def _all_finite(terms: dict) -> jax.Array:
    # One check on the concatenated leaves: a reduction per leaf gets fused into every gradient
    # computation (a third of the step's compile time and 3.5x its HLO on CPU; see benchmarks/RESULTS.md).
    flat = jnp.concatenate([jnp.ravel(v).astype(jnp.float32) for v in jax.tree.leaves(terms)])
    return jnp.all(jnp.isfinite(flat))


def train_step(state: dict, batch: dict, vgg=None, *, config, stage: int) -> tuple[dict, dict]:
    """One fused G + D update of `stage`, per device; gradients and metrics pmean'ed over AXIS.

    vgg: models.vgg.Vgg for the perceptual terms (None when loss.perceptual_weight == 0); pass it as
    an argument of the compiled step (see `compiled`), not through functools.partial.

    A step whose losses or gradients are not all finite leaves the parameters and optimizer states
    unchanged and reports metrics["finite"] = 0 (the loop then stops, naming the term).
    """
    TRACES[("train", stage)] += 1
    gens, discs, upto = stage_groups(stage, config.schedule.freeze_earlier)
    inputs = tryon_lib.network_inputs(batch, config.model)
    # Every device's batch comes from one stream, so its paired share is 0 or 1 (a batch weight).
    paired = jax.lax.pmean(jnp.mean(inputs["paired"]), AXIS)
    params = state["params"]

    def g_loss(trained):
        p = {**params, **trained}
        out = tryon_lib.tryon_forward(p, inputs, config.model, upto)
        terms = generator_terms(config, p, out, inputs, paired, gens, vgg)
        return sum(terms.values()), (terms, out)

    (g_total, (terms, out)), grads = jax.value_and_grad(g_loss, has_aux=True)(
        {k: params[k] for k in gens})

    def d_loss(trained):
        real = inputs["person_image"]  # P is a real photo in pose I_P: the conditional "real" pair
        d_terms = {}
        for key, fake in (("d_pan", out["aligned"]), ("d_final", out.get("output"))):
            if key in trained:
                logits = [_disc(config, key, trained[key], x, inputs["person_iuv"])
                          for x in (real, jax.lax.stop_gradient(fake))]
                d_terms[key] = losses.d_loss(*logits, config.loss.gan)
        return sum(d_terms.values(), jnp.zeros(())), d_terms

    (d_total, d_terms), d_grads = jax.value_and_grad(d_loss, has_aux=True)({k: params[k] for k in discs})
    grads = jax.lax.pmean({**grads, **d_grads}, AXIS)
    metrics = jax.lax.pmean({**terms, **d_terms, "g_total": g_total, "d_total": d_total}, AXIS)

    total = schedule.total_steps(config.schedule)
    o = config.optim
    tx = _adam(config)
    new_params, new_opt = dict(params), dict(state["opt"])
    for key, g in grads.items():
        base = o.g_lr if key in GEN else o.d_lr
        lr = learning_rate(state["step"], base, total, o.decay_start)
        updates, new_opt[key] = tx.update(g, state["opt"][key], params[key])
        new_params[key] = jax.tree.map(lambda p, u, lr=lr: p - lr * u, params[key], updates)
    finite = _all_finite({"metrics": metrics, "grads": grads})
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = {"step": state["step"] + 1, "params": keep(new_params, params),
                 "opt": keep(new_opt, state["opt"])}
    if "ema" in state:
        d = config.ema_decay
        new_state["ema"] = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state["ema"],
                                        {k: new_state["params"][k] for k in GEN})
    metrics["finite"] = finite.astype(jnp.float32)
    metrics["g_lr"] = learning_rate(state["step"], o.g_lr, total, o.decay_start)
    return new_state, metrics


# ---------------------------------------------------------------- images

def image_grid(forward, gen_params: dict, examples: dict) -> np.ndarray:
    """uint8 [rows * H, 7 * W, 3]: per example M, P, warp W, PAN A, TRN T, FTN P', ground truth.

    forward: jitted models.tryon.forward (params, batch) -> outputs; gen_params host or device;
    examples a stacked uint8 batch.
    """
    out = jax.device_get(forward(gen_params, examples))
    to_u8 = lambda x: np.clip(np.round((np.asarray(x) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    cols = [examples["model_image"], examples["person_image"]]
    cols += [to_u8(out[k]) for k in ("warped", "aligned", "refined", "output")]
    cols.append(examples["target_image"])
    rows = [np.concatenate([np.asarray(c[i]) for c in cols], axis=1) for i in range(len(cols[0]))]
    return np.concatenate(rows, axis=0)


def _write_images(workdir: str, step: int, grid: np.ndarray, writer) -> None:
    os.makedirs(os.path.join(workdir, "images"), exist_ok=True)
    Image.fromarray(grid).save(os.path.join(workdir, "images", f"step_{step:07d}.png"))
    writer.write_images(step, {"tryon/M_P_warp_PAN_TRN_FTN_target": grid[None]})


# ---------------------------------------------------------------- the loop

def _raise_if_nonfinite(step: int, metrics: dict, last_good: int | None) -> None:
    if metrics["finite"] >= 1.0:
        return
    bad = [k for k, v in metrics.items() if not np.all(np.isfinite(v))] or ["a gradient"]
    raise FloatingPointError(
        f"training stopped: non-finite loss at step {step} (term {bad[0]!r}; all: {bad}). Parameters "
        f"were not updated by that step; the last good checkpoint is step {last_good}.")


class SpikeGuard:
    """Stops training when g_total jumps to `factor` times its running mean (a diverging run).

    The mean is an EMA kept per (stage, paired) stream, since their loss levels differ; a stream is
    checked after `warmup` steps of it. factor <= 0 turns the guard off.
    """

    def __init__(self, factor: float, warmup: int = 5, decay: float = 0.9):
        self.factor, self.warmup, self.decay = factor, warmup, decay
        self.seen: dict[tuple, tuple[int, float]] = {}

    def check(self, step: int, key: tuple, metrics: dict, last_good: int | None) -> None:
        """Raises FloatingPointError naming the step, the loss and the largest grown term."""
        if self.factor <= 0:
            return
        total = float(metrics["g_total"])
        n, mean = self.seen.get(key, (0, total))
        if n >= self.warmup and total > self.factor * max(mean, 1e-8):
            raise FloatingPointError(
                f"training stopped: loss spike at step {step}: g_total = {total:.4g} is "
                f"{total / mean:.1f}x its running mean {mean:.4g} (config.loss_spike_factor = "
                f"{self.factor}). The last good checkpoint is step {last_good}.")
        self.seen[key] = (n + 1, total if n == 0 else self.decay * mean + (1 - self.decay) * total)


def _compile_counts() -> dict[str, int]:
    return {f"{kind}{stage or ''}": n for (kind, stage), n in TRACES.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, max_steps: int | None = None) -> dict:
    """Trains per config.schedule in `workdir`, resuming from its latest checkpoint; returns the last eval.

    max_steps: stop (with a checkpoint) after this many steps of this invocation, e.g. to fit a job
    into a time slot; rerunning continues exactly where it stopped.

    Writes workdir/config.json, checkpoints/<step>/, TensorBoard events, images/step_*.png and
    eval/step_*.json (process 0 only, except checkpoints, which every process takes part in).
    """
    config_validation.validate(config)
    checkpointing.check_workdir(workdir)
    parallel.initialize_distributed(config.distributed)
    with checkpointing.disk_full_is_workdir_error(workdir, "training"):
        with checkpointing.WorkdirLock(workdir, jax.process_index(), jax.process_count()):
            return _train_and_evaluate(config, workdir, max_steps)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, max_steps: int | None) -> dict:
    from clu import metric_writers, periodic_actions  # imports TensorFlow: after the config check.

    par = parallel.DataParallel(config.parallel)
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % par.num_devices:
            raise config_validation.ConfigError(
                f"config.{name}={config[name]} is not divisible by the {par.num_devices} devices")
    lead = jax.process_index() == 0
    writer = metric_writers.create_default_writer(workdir, just_logging=not lead)
    checkpointing.write_config(workdir, config)
    train_source = input_pipeline.open_source(config, config.dataset.train_split)
    test_source = input_pipeline.open_source(config, config.dataset.test_split)
    data = input_pipeline.TrainData(train_source, config, jax.process_index(), jax.process_count())
    total = schedule.total_steps(config.schedule)

    host_state = init_state(config)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints,
                                      config.async_checkpointing)
    try:  # room for one more checkpoint, then the newest one that verifies (damaged ones moved aside)
        ckpt.check_free_space(host_state)
        start, host_state = ckpt.restore_latest(host_state)
    except BaseException:
        ckpt.close()
        raise
    start = start or 0
    if start:
        logging.info("Resumed from step %d", start)
    state = par.put_state(host_state)
    vgg = None
    if config.loss.perceptual_weight > 0:
        from m2e_jax.models.vgg import load_vgg

        vgg = load_vgg(config.loss.vgg)
    scorer = scoring.Scorer(config.model, par, lpips_net=config.eval_lpips_net)
    end = total if max_steps is None else min(total, start + max_steps)
    n_img = min(config.num_image_examples, len(test_source))
    model_cfg = ml_collections.FrozenConfigDict(config.model)
    forward = jax.jit(functools.partial(tryon_lib.forward, model_cfg=model_cfg))
    image_examples = (input_pipeline.stack_examples([test_source[i] for i in range(n_img)])
                      if n_img else None)

    hooks = []
    if lead:
        hooks.append(periodic_actions.ReportProgress(num_train_steps=total, writer=writer))
        if config.profile:
            hooks.append(periodic_actions.Profile(num_profile_steps=5, logdir=workdir))
    result: dict = {}
    pending: tuple[int, Any] | None = None
    spikes = SpikeGuard(config.loss_spike_factor)
    t0 = time.time()

    def check_pending():
        # Steps are named as logged and checkpointed: step s is the update that produces state s.
        nonlocal pending
        if pending is not None:
            done, metrics = pending[0] + 1, par.get_state(pending[1])
            _raise_if_nonfinite(done, metrics, ckpt.latest_step())
            p = schedule.plan(pending[0], config.schedule)
            spikes.check(done, (p.stage, p.paired), metrics, ckpt.latest_step())
            pending = None

    def save(step):
        check_pending()
        ckpt.save(step, par.get_state(state), config)

    try:
        with checkpointing.PreemptionFlag() as preempted:
            for step, batch in data.iterate(start, end, put=par.put_batch, prefetch=config.prefetch):
                stage = schedule.plan(step, config.schedule).stage
                state, metrics = compiled("train", stage, par, config, vgg)(state, batch)
                check_pending()
                pending = (step, metrics)
                done = step + 1
                for hook in hooks:
                    hook(done)
                last = done == total
                if done % config.log_every == 0 or last:
                    check_pending()
                    host = par.get_state(metrics)
                    writer.write_scalars(done, {**{f"train/{k}": float(v) for k, v in host.items()},
                                                "train/stage": stage})
                stop = preempted.is_set() or ckpt.reached_preemption(done) or (done == end and not last)
                if done % config.checkpoint_every == 0 or last or stop:
                    save(done)
                if done % config.eval_every == 0 or last:
                    gen = state["ema"] if "ema" in state else {k: state["params"][k] for k in GEN}
                    result = scorer.evaluate(gen, test_source, config.num_eval_examples,
                                             config.eval_batch_size)
                    writer.write_scalars(done, scoring.flat_scalars(result))
                    if lead:
                        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
                        with open(os.path.join(workdir, "eval", f"step_{done:07d}.json"), "w") as f:
                            json.dump({"step": done, "wall_s": time.time() - t0, "metrics": result}, f,
                                      indent=2)
                if lead and image_examples is not None and (done % config.image_every == 0 or last):
                    host_gen = par.get_state(state["ema"] if "ema" in state else
                                             {k: state["params"][k] for k in GEN})
                    _write_images(workdir, done, image_grid(forward, host_gen, image_examples), writer)
                if stop:
                    logging.warning("Stopping early (SIGTERM, preemption or max_steps): saved step %d", done)
                    break
            check_pending()
    finally:
        ckpt.close()  # waits for the last save (a full disk: WorkdirError), stops orbax's threads
        writer.flush()
    logging.info("compilations: %s", _compile_counts())
    return result
