"""Training: the pure per-device step of each stage and the train_and_evaluate loop (a leaf module:
main.py and the step benchmarks import it, no library module does).

State (a plain pytree; host numpy in checkpoints, device arrays while training):
  {"step": int32 [], "params": {"pan", "trn", "ftn", "d_pan", "d_final"},
   "opt": {same keys: optax Adam state}, "ema": {"pan", "trn", "ftn"} (only when config.ema_decay > 0)}
One parameter tree and one Adam optimizer per network group, the learning rate an optax schedule of
the global step (m2e_jax/optimizer.py). The objective is m2e_jax/losses.py's, the forward pass
models/tryon.py's, the evaluation m2e_jax/scoring.py's.

The step (method.md "Hybrid paired / unpaired training") is one fused generator + discriminator
update: the generators' loss uses the current discriminators, the discriminators score the
(stop-gradient) fakes against P, both updates are applied at once. It is written once, per device,
with `pmean` over the "data" axis, and compiled by parallel.DataParallel for pmap or shard_map.

Compilations: the stage (1 PAN, 2 +TRN, 3 +FTN, 4 joint) is static, the paired/unpaired branch is
not (its loss terms are weighted by the batch's paired share, batches being all-paired or
all-unpaired), so training compiles at most one step per stage: 4 in all, plus one evaluation
step. The compiled functions belong to the run (`Steps`), not to the module.
"""

from __future__ import annotations

import collections
import errno
import functools
import io
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from m2e_jax import (
    checkpoints,
    config_schema,
    input_pipeline,
    losses,
    optimizer,
    parallel,
    schedule,
    scoring,
)
from m2e_jax import workdir as workdir_lib
from m2e_jax.models import tryon as tryon_lib
from m2e_jax.models.tryon import NETWORKS, build_discriminators, dummy_inputs, init_params

AXIS = parallel.AXIS


def stage_groups(stage: int, freeze_earlier: bool) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(generator groups trained, discriminator groups trained, last network run) for a stage 1..4."""
    upto = NETWORKS[min(stage, 3) - 1]
    if stage == 4 or not freeze_earlier:
        gens = NETWORKS[: min(stage, 3)]
    else:
        gens = (upto,)
    # D_pan scores A, so it trains while PAN does; D_final scores P', so whenever FTN runs.
    discs = (("d_pan",) if "pan" in gens else ()) + (("d_final",) if upto == "ftn" else ())
    return gens, discs, upto


def init_state(config: ml_collections.ConfigDict) -> dict:
    """Fresh training state from config.seed, as host numpy arrays (a new copy each call)."""
    cached = _init_state_cached(config.model.to_json_best_effort(), config.seed, config.ema_decay > 0)
    return jax.tree.map(np.copy, cached)


@functools.lru_cache(maxsize=4)
def _init_state_cached(model_json: str, seed: int, ema: bool) -> dict:
    # Initialisation compiles the networks once more; restarts in one process reuse the result
    # (a pure function of its arguments, returned as copies: a memo, not state).
    model_cfg = ml_collections.ConfigDict(json.loads(model_json))
    rng_g, rng_d = jax.random.split(jax.random.key(seed))
    params = dict(init_params(model_cfg, rng_g))
    inputs = dummy_inputs(model_cfg)
    for key, rng in zip(optimizer.DISCRIMINATORS, jax.random.split(rng_d, len(optimizer.DISCRIMINATORS))):
        disc = build_discriminators(model_cfg)[key[len("d_"):]]
        params[key] = jax.jit(disc.init)(rng, inputs["person_image"], inputs["person_iuv"])["params"]
    state = {"step": np.int32(0), "params": params, "opt": optimizer.init(params)}
    if ema:
        state["ema"] = {k: params[k] for k in NETWORKS}
    return jax.tree.map(np.asarray, jax.device_get(state))


def train_step(state: dict, batch: dict, vgg=None, *, config, stage: int) -> tuple[dict, dict]:
    """One fused G + D update of `stage`, per device; gradients and metrics pmean'ed over AXIS.

    vgg: models.vgg.Vgg for the perceptual terms (None when loss.perceptual_weight == 0); an
    argument of the compiled step (`Steps`), not compiled-in constants.
    The objective is losses.generator_terms / discriminator_terms; the update optimizer.update.

    A step whose losses or gradients are not all finite leaves the parameters and optimizer states
    unchanged and reports metrics["finite"] = 0 (the loop then stops, naming the term).
    """
    gens, discs, upto = stage_groups(stage, config.schedule.freeze_earlier)
    inputs = tryon_lib.network_inputs(batch, config.model)
    # Every device's batch comes from one stream, so its paired share is 0 or 1 (a batch weight).
    paired = jax.lax.pmean(jnp.mean(inputs["paired"]), AXIS)
    params = state["params"]

    def discriminate(p: dict) -> losses.Discriminate:
        return lambda name, image: tryon_lib.discriminate(config.model, name, p[f"d_{name}"], image,
                                                          inputs["person_iuv"])

    def g_loss(trained):
        p = {**params, **trained}
        out = tryon_lib.tryon_forward(p, inputs, config.model, upto)
        terms = losses.generator_terms(out, inputs, config.loss, paired, gens, discriminate(p), vgg)
        return losses.total(terms), (terms, out)

    (g_total, (terms, out)), grads = jax.value_and_grad(g_loss, has_aux=True)(
        {k: params[k] for k in gens})
    fakes = {"d_pan": out["aligned"], "d_final": out.get("output")}

    def d_loss(trained):
        fake = {k[len("d_"):]: fakes[k] for k in trained}
        d_terms = losses.discriminator_terms(inputs["person_image"], fake, discriminate(trained),
                                             config.loss.gan)
        return losses.total(d_terms), d_terms

    (d_total, d_terms), d_grads = jax.value_and_grad(d_loss, has_aux=True)({k: params[k] for k in discs})
    grads = jax.lax.pmean({**grads, **d_grads}, AXIS)
    metrics = jax.lax.pmean({**terms, **d_terms, "g_total": g_total, "d_total": d_total}, AXIS)

    new_params, new_opt = optimizer.update(params, state["opt"], grads, state["step"], config)
    finite = optimizer.all_finite({"metrics": metrics, "grads": grads})
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = {"step": state["step"] + 1, "params": keep(new_params, params),
                 "opt": keep(new_opt, state["opt"])}
    if "ema" in state:
        d = config.ema_decay
        new_state["ema"] = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state["ema"],
                                        {k: new_state["params"][k] for k in NETWORKS})
    metrics["finite"] = finite.astype(jnp.float32)
    metrics["g_lr"] = optimizer.learning_rates(config)["pan"](state["step"])
    return new_state, metrics


class Steps:
    """The compiled functions of one training run: a train step per stage (compiled on first use),
    the evaluation's scoring.Scorer and the image grids' forward pass.

    Owned by the run that builds it (train_and_evaluate makes one unless given one), as flax's
    imagenet example keeps its p_train_step local. A caller running several runs of one config in
    a process may pass the same object to reuse its compilations; otherwise jax's persistent
    compilation cache (config.compilation_cache_dir) spares the compiler. `traces` counts the
    traces of each train step ("train1".."train4"); a trace is a compilation.
    """

    def __init__(self, config: ml_collections.ConfigDict, par: parallel.DataParallel | None = None,
                 vgg=None):
        """par: default DataParallel(config.parallel); vgg: the perceptual loss's models.vgg.Vgg,
        default losses.load_perceptual_vgg(config.loss)."""
        self.config = config
        self.par = par if par is not None else parallel.DataParallel(config.parallel)
        if vgg is None:
            vgg = losses.load_perceptual_vgg(config.loss)
        # Device buffers put once per run; an argument of the step, not constants compiled into it.
        self._vgg = self.par.put_state(vgg) if vgg is not None else None
        self._train: dict[int, Callable] = {}
        self.traces: collections.Counter = collections.Counter()
        self.scorer = scoring.Scorer(config.model, self.par, lpips_net=config.eval_lpips_net or None)
        model_cfg = ml_collections.FrozenConfigDict(config.model)
        self.forward = jax.jit(functools.partial(tryon_lib.forward, model_cfg=model_cfg))

    def train(self, stage: int) -> Callable[[Any, dict], tuple[Any, dict]]:
        """The data-parallel step of `stage`: fn(state, batch) -> (state, metrics), state donated."""
        if stage not in self._train:
            def step(state, batch, *vgg):
                self.traces[f"train{stage}"] += 1
                return train_step(state, batch, *vgg, config=self.config, stage=stage)

            step.__name__ = step.__qualname__ = "train_step"  # names its compilation-cache entries

            if self._vgg is None:
                self._train[stage] = self.par.compile(step)
            else:
                fn, vgg = self.par.compile(step, num_replicated=1), self._vgg
                self._train[stage] = lambda state, batch: fn(state, batch, vgg)
        return self._train[stage]

    def compile_counts(self) -> dict[str, int]:
        return {**self.traces, "eval": self.scorer.traces}


# ---------------------------------------------------------------- images

def image_grid(forward, gen_params: dict, examples: dict) -> np.ndarray:
    """uint8 [rows * H, 7 * W, 3]: per example M, P, warp W, PAN A, TRN T, FTN P', ground truth.

    forward: jitted models.tryon.forward (params, batch) -> outputs (Steps.forward); gen_params
    host or device; examples a stacked uint8 batch.
    """
    out = jax.device_get(forward(gen_params, examples))
    to_u8 = lambda x: np.clip(np.round((np.asarray(x) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    cols = [examples["model_image"], examples["person_image"]]
    cols += [to_u8(out[k]) for k in ("warped", "aligned", "refined", "output")]
    cols.append(examples["target_image"])
    rows = [np.concatenate([np.asarray(c[i]) for c in cols], axis=1) for i in range(len(cols[0]))]
    return np.concatenate(rows, axis=0)


# Written whole or not at all (workdir.write_atomic): a job killed (or a disk filled) while writing
# leaves no half-written eval table or image grid under the name readers trust.
def _write_images(workdir: str, step: int, grid: np.ndarray, writer) -> None:
    png = io.BytesIO()
    Image.fromarray(grid).save(png, format="PNG")
    workdir_lib.write_atomic(workdir_lib.path(workdir) / "images" / f"step_{step:07d}.png", png.getvalue())
    writer.write_images(step, {"tryon/M_P_warp_PAN_TRN_FTN_target": grid[None]})


def eval_file(workdir: str, step: int):
    """The path of the training loop's evaluation at `step`: {"step", "wall_s", "metrics": table}."""
    return workdir_lib.path(workdir) / "eval" / f"step_{step:07d}.json"


def _write_eval(workdir: str, step: int, record: dict) -> None:
    workdir_lib.write_atomic(eval_file(workdir, step), json.dumps(record, indent=2).encode())


def _metric_writer(workdir: str, lead: bool):
    """clu's writer: logging on every process; TensorBoard events from process 0, through
    tf.summary on a local disk and through epath (event_files.py) in a bucket, which TensorFlow's
    file system reaches only at storage.googleapis.com."""
    from clu import metric_writers  # imports TensorFlow: after the config check.

    if not lead or workdir_lib.is_local(workdir):
        return metric_writers.create_default_writer(workdir, just_logging=not lead)
    from m2e_jax import event_files

    return metric_writers.AsyncMultiWriter([metric_writers.LoggingWriter(),
                                            event_files.EventObjectWriter(workdir)])


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


def _resume_point(ckpt: checkpoints.Checkpointer) -> str:
    """Where a rerun resumes: "step N" (the newest complete checkpoint), read without moving anything
    (the workdir may not take writes). In a bucket, which may be what stopped answering, the newest
    step this run restored or saved, without asking it again (each request retries for ~30 s)."""
    if workdir_lib.is_local(ckpt.directory):
        complete = checkpoints.complete_steps(ckpt.directory)
    else:
        complete = sorted(ckpt.committed)
    return f"step {complete[-1]}" if complete else "none (the rerun starts from step 0)"


# What a workdir that stopped taking writes mid-run raises: remounted read-only (a disk error on
# ext4 does that) or its permissions changed (a full disk is workdir.disk_full_is_workdir_error's).
_WORKDIR_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def _workdir_stopped(error: OSError, workdir: str, step: int, ckpt: checkpoints.Checkpointer) -> OSError:
    """A one-line WorkdirError for an OSError raised while the loop wrote into `workdir` (a save, an
    eval table, an image grid), naming the step, the file and the checkpoint to resume from; `error`
    itself when it is not the workdir's (a data file) or is a full disk (reported by the caller)."""
    if isinstance(error, workdir_lib.WorkdirError) or workdir_lib.is_disk_full(error):
        return error
    local = workdir_lib.is_local(workdir)
    path = (os.path.abspath(error.filename) if local else str(error.filename)) if error.filename else ""
    inside = not path or path.startswith(os.fspath(workdir_lib.path(workdir)) + "/")
    if not inside or (local and error.errno not in _WORKDIR_ERRNOS):
        try:
            workdir_lib.check_workdir(workdir)
            return error
        except workdir_lib.WorkdirError:
            pass
    where = f": {path}" if path else ""
    resume = _resume_point(ckpt)
    if not local:  # a bucket that stopped answering (or refuses writes): the clients gave up retrying
        return workdir_lib.WorkdirUnreachable(
            f"workdir {workdir}: cannot be written at step {step} ({' '.join(str(error).split())}); "
            f"training stopped, the last complete checkpoint is {resume}. When the bucket answers "
            "again, rerun the same command to resume")
    return workdir_lib.WorkdirError(
        f"workdir {workdir}: not writable at step {step} ({error.strerror or error}{where}); training "
        f"stopped, the last complete checkpoint is {resume}. Make the workdir writable and rerun the "
        "same command to resume")


class DataError(RuntimeError):
    """Training data that could be read when the run started and cannot be now (a data folder
    removed, moved or unmounted mid-run); the message names the step and the checkpoint to resume from."""


# What stops a run for a reason its user fixes (the config, the workdir, a checkpoint, the data,
# diverged values): the message is the whole report, so the command lines print it without a traceback.
USER_ERRORS = (config_schema.ConfigError, workdir_lib.WorkdirError, checkpoints.CheckpointError, DataError,
               FloatingPointError)


def _batches(data: input_pipeline.TrainData, start: int, end: int, put, config: ml_collections.ConfigDict,
             ckpt: checkpoints.Checkpointer):
    """data.iterate, with a batch that cannot be read ending the run in one DataError line."""
    batches = data.iterate(start, end, put=put, prefetch=config.prefetch, threads=config.input_threads)
    data_dir = config.dataset.data_dir
    step = start  # the index of the batch being read; as logged, its update is step + 1
    while True:
        try:
            step, batch = next(batches)
        except StopIteration:
            return
        except (OSError, RuntimeError, ValueError) as e:  # array_record: RuntimeError("open() failed ...")
            resume = _resume_point(ckpt)
            raise DataError(
                f"training data: the batch of step {step + 1} cannot be read ({type(e).__name__}: {e}); "
                f"training stopped, the last complete checkpoint is {resume}. Restore the data "
                f"(config.dataset.data_dir = {data_dir}) and rerun the same command to resume") from None
        yield step, batch
        step += 1


def _flush(writer) -> None:
    """Flushes the metric writer; events that cannot be written (a bucket that stopped answering)
    are lost with one warning, never hiding the error that ended the run."""
    try:
        writer.flush()
    except Exception as e:  # clu's async writer re-raises what its writers raised
        logging.warning("TensorBoard events not written: %s", " ".join(str(e).split())[:300])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, max_steps: int | None = None,
                       steps: Steps | None = None) -> dict:
    """Trains per config.schedule in `workdir`, resuming from its latest checkpoint; returns the last
    eval table (m2e_jax/scoring.py's schema).

    max_steps: stop (with a checkpoint) after this many steps of this invocation, e.g. to fit a job
    into a time slot; rerunning continues exactly where it stopped.
    steps: the compiled functions to use (a `Steps` of this same config); default a new one.

    Writes workdir/config.json, checkpoints/<step>/, TensorBoard events, images/step_*.png and
    eval/step_*.json (process 0 only, except checkpoints, which every process takes part in).
    """
    config_schema.validate(config)
    workdir_lib.check_workdir(workdir)
    parallel.initialize_distributed(config.distributed)
    with workdir_lib.disk_full_is_workdir_error(workdir, "training"):
        with workdir_lib.WorkdirLock(workdir, jax.process_index(), jax.process_count()):
            return _train_and_evaluate(config, workdir, max_steps, steps)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, max_steps: int | None,
                        steps: Steps | None) -> dict:
    from clu import periodic_actions  # imports TensorFlow: after the config check.

    if steps is not None and steps.config.to_json_best_effort() != config.to_json_best_effort():
        raise ValueError("train_and_evaluate: `steps` were built for another config")
    steps = steps if steps is not None else Steps(config)
    par = steps.par
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % par.num_devices:
            raise config_schema.ConfigError(
                f"config.{name}={config[name]} is not divisible by the {par.num_devices} devices")
    lead = jax.process_index() == 0
    writer = _metric_writer(workdir, lead)
    checkpoints.write_config(workdir, config)
    train_source = input_pipeline.open_source(config, config.dataset.train_split)
    test_source = input_pipeline.open_source(config, config.dataset.test_split)
    data = input_pipeline.TrainData(train_source, config, jax.process_index(), jax.process_count())
    total = schedule.total_steps(config.schedule)

    host_state = init_state(config)
    ckpt = checkpoints.Checkpointer(workdir_lib.path(workdir) / "checkpoints", config.keep_checkpoints,
                                    config.async_checkpointing)
    try:  # room for one more checkpoint, then the newest one that verifies (damaged ones moved aside)
        ckpt.check_free_space(host_state, checkpoints.scheduled_saves(total, config.checkpoint_every))
        start, host_state = ckpt.restore_latest(host_state)
    except BaseException:
        ckpt.close()
        raise
    start = start or 0
    if start:
        logging.info("Resumed from step %d", start)
    state = par.put_state(host_state)
    end = total if max_steps is None else min(total, start + max_steps)
    n_img = min(config.num_image_examples, len(test_source))
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
    done = start
    failed = True  # until the loop ends normally: then closing errors are the run's own
    unreachable = False  # the bucket workdir failed: no more requests that would retry in vain

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
        with checkpoints.PreemptionFlag() as preempted:
            for step, batch in _batches(data, start, end, par.put_batch, config, ckpt):
                stage = schedule.plan(step, config.schedule).stage
                state, metrics = steps.train(stage)(state, batch)
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
                    gen = state["ema"] if "ema" in state else {k: state["params"][k] for k in NETWORKS}
                    result = steps.scorer.evaluate(gen, test_source, config.num_eval_examples,
                                             config.eval_batch_size)
                    writer.write_scalars(done, scoring.flat_scalars(result))
                    if lead:
                        _write_eval(workdir, done, {"step": done, "wall_s": time.time() - t0,
                                                    "metrics": result})
                if lead and image_examples is not None and (done % config.image_every == 0 or last):
                    host_gen = par.get_state(state["ema"] if "ema" in state else
                                             {k: state["params"][k] for k in NETWORKS})
                    _write_images(workdir, done, image_grid(steps.forward, host_gen, image_examples), writer)
                if stop:
                    logging.warning("Stopping early (SIGTERM, preemption or max_steps): saved step %d", done)
                    break
            check_pending()
        failed = False
    except OSError as e:
        unreachable = not workdir_lib.is_local(workdir)
        raise _workdir_stopped(e, workdir, done, ckpt) from None
    finally:
        try:
            ckpt.close()  # waits for the last save (a full disk: WorkdirError), stops orbax's threads
        except Exception as e:
            if not failed:
                raise
            logging.warning("checkpoints not closed after the error below: %s",
                            " ".join(str(e).split())[:200])
        if unreachable:
            logging.warning("TensorBoard events since the last flush not written: the bucket failed")
        else:
            _flush(writer)
    logging.info("compilations: %s", steps.compile_counts())
    return result
