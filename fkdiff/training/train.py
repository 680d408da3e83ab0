"""``train_and_evaluate(config, workdir)``: the one training loop behind every ``launch.py`` job.

The step is a ``jax.jit`` function over a data-parallel mesh (batch split over devices,
parameters replicated); batches and per-step noise keys are pure functions of ``(seed, step)``,
so a killed run resumes from its last orbax checkpoint and ends bit-for-bit where an
uninterrupted run would. Metrics are clu ``Collection``s, written by clu ``metric_writers``.
"""

import functools
import json
import os
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from fkdiff.data.pipeline import make_data_source
from fkdiff.data.source import DataSource
from fkdiff.training import checkpoint, parallel
from fkdiff.training import metrics as metrics_lib
from fkdiff.training.config import validate_config
from fkdiff.training.optimizer import make_optimizer
from fkdiff.training.tasks import Task, build_task


class TrainState(NamedTuple):
  """Everything a checkpoint holds."""
  step: jax.Array          # int32 scalar: number of optimiser steps taken.
  params: Any
  ema_params: Any          # exponential moving average of ``params`` (used for sampling).
  opt_state: Any


# Without XLA's backend optimisations a program compiles about twice as fast and runs slower.
_QUICK_COMPILE = {"xla_backend_optimization_level": 0}


def _compiler_options(config, run_once: bool = False):
  """``compiler_options`` of a run's jitted functions: quick ones with ``training.quick_compile``,
  and on CPU for functions run once (a U-Net's initialisation: ~2 s instead of ~11 s)."""
  if config.training.quick_compile or (run_once and jax.default_backend() == "cpu"):
    return _QUICK_COMPILE
  return None


def init_state(task: Task, tx: optax.GradientTransformation, key: jax.Array) -> TrainState:
  params = task.init_params(key)
  return TrainState(jnp.zeros((), jnp.int32), params, params, tx.init(params))


def ema_rate(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay with warm-up, ``min(decay, (1+t)/(10+t))``: early averages forget the init."""
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def train_step(state: TrainState, batch: dict, frozen: Any, *, task: Task, tx, ema_decay: float,
               train_key: jax.Array, metrics_cls):
  """One optimiser step; the noise key is ``fold_in(train_key, step)``.

  ``frozen`` holds parameters that are used but not trained (a distillation teacher); they enter
  as a jit argument, not as compile-time constants.
  """
  key = jax.random.fold_in(train_key, state.step)
  (loss, aux), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(state.params, batch, key,
                                                                      frozen)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = optax.incremental_update(params, state.ema_params, 1.0 - ema_rate(state.step, ema_decay))
  new_state = TrainState(state.step + 1, params, ema, opt_state)
  step_metrics = metrics_cls.single_from_model_output(
      loss=loss, grad_norm=optax.tree.norm(grads), sigma=aux["sigma"],
      **{f"aux_{k}": v for k, v in aux.items() if k != "sigma"})
  return new_state, step_metrics


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves))


def _raise_if_not_finite(computed: dict, state: TrainState, step: int, last_good) -> None:
  if jnp.isfinite(computed["loss"]) and bool(_all_finite(state.params)):
    return
  raise FloatingPointError(
      f"The loss or the parameters became NaN/inf at or before step {step}. Nothing was "
      f"saved from the bad state; the last good checkpoint is step {last_good}. Lower "
      "optim.learning_rate, keep optim.grad_clip > 0, or check the data for NaN/inf values.")


def _aux_keys(task: Task, data: DataSource, batch_size: int):
  """The per-example ``aux`` entries of the loss (besides ``sigma``), found by tracing."""
  params = jax.eval_shape(task.init_params, jax.random.key(0))
  if data.host_batch is not None:   # host-served data: the shapes of one (local) batch.
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct((batch_size,) + a.shape[1:], a.dtype),
                         data.host_batch(0, 0, batch_size))
  else:
    batch = jax.eval_shape(lambda k: data.sample(k, batch_size), jax.random.key(0))
  _, aux = jax.eval_shape(task.loss_fn, params, batch, jax.random.key(0), task.frozen)
  return [k for k, v in aux.items() if k != "sigma" and v.shape == (batch_size,)]


class Trainer(NamedTuple):
  """The compiled pieces of a training run (see :func:`make_trainer`).

  Attributes:
    task: what is trained.
    data: where batches come from.
    init_key: key of the parameter initialisation.
    make_state: ``make_state(key) -> TrainState``, replicated over the mesh.
    step_body: the pure ``(state, batch, frozen) -> (state, metrics)`` before jit and sharding;
      ``frozen`` is ``task.frozen``.
    step_fn: ``step_body`` jitted data-parallel over the mesh, donating the state.
    make_batch: ``make_batch(step) -> batch``, the global batch of ``step``, split over the mesh.
    aux_keys: per-example loss outputs that are logged per σ bin.
  """
  task: Task
  data: DataSource
  init_key: jax.Array
  make_state: Any
  step_body: Any
  step_fn: Any
  make_batch: Any
  aux_keys: list


def make_trainer(config: ml_collections.ConfigDict, mesh=None) -> Trainer:
  """Builds the data-parallel step for ``config`` on ``mesh`` (default: all devices)."""
  validate_config(config)
  data = make_data_source(config.data)
  task = build_task(config, data)
  mesh = parallel.data_mesh() if mesh is None else mesh
  parallel.check_divisible(config.data.batch_size, mesh)
  repl, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  tx = make_optimizer(config.optim, config.training.num_steps)
  init_key, train_key, data_key = jax.random.split(jax.random.key(config.seed), 3)
  make_state = jax.jit(functools.partial(init_state, task, tx), out_shardings=repl,
                       compiler_options=_compiler_options(config, run_once=True))
  keys = _aux_keys(task, data, config.data.batch_size)
  metrics_cls = metrics_lib.make_metrics_class(keys, config.training.sigma_bins)
  step_body = functools.partial(train_step, task=task, tx=tx, ema_decay=config.optim.ema_decay,
                                train_key=train_key, metrics_cls=metrics_cls)
  step_fn = jax.jit(step_body, in_shardings=(repl, sharded, repl),
                    out_shardings=(repl, repl), donate_argnums=0,
                    compiler_options=_compiler_options(config))
  make_batch = jax.jit(lambda step: data.sample(jax.random.fold_in(data_key, step),
                                                config.data.batch_size),
                       out_shardings=sharded)
  if data.host_batch is not None:   # images: NumPy batches, a pure function of (seed, step).
    make_batch = functools.partial(_global_host_batch, data, config.seed, config.data.batch_size,
                                   sharded)
  return Trainer(task, data, init_key, make_state, step_body, step_fn, make_batch, keys)


def _global_host_batch(data: DataSource, seed: int, batch_size: int, sharding, step) -> dict:
  """The global batch of ``step`` from every process's ``data.host_batch`` rows, on the mesh."""
  local = data.host_batch(seed, int(step), batch_size)
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(
      sharding, a, (batch_size,) + a.shape[1:]), local)


def recorded_config(config: ml_collections.ConfigDict, task: Task) -> ml_collections.ConfigDict:
  """The run's ``config.json``: ``config`` with ``data.sigma_data`` set to the σ_d the model uses
  (``task.sigma_data``: the data's for a teacher, the teacher's for a distilled energy), so that
  loading a run (:mod:`fkdiff.training.runs`) reads it from this file."""
  recorded = ml_collections.ConfigDict(config.to_dict())
  recorded.data.sigma_data = float(task.sigma_data)
  return recorded


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config.task`` in ``workdir`` (resuming if it holds a checkpoint), then evaluates.

  Returns:
    The final evaluation metrics (also written to ``workdir/eval.json``); with
    ``eval.num_samples = 0`` no final samples are drawn and only the step is reported.
  """
  from clu import metric_writers, periodic_actions   # imports TensorFlow: keep it local.

  checkpoint.check_workdir(workdir, config)
  trainer = make_trainer(config)
  task, data, tc = trainer.task, trainer.data, config.training
  checkpoint.check_compatible(workdir, config)
  if checkpoint.latest_step(workdir) is not None:   # its weights must mean what config says
    checkpoint.check_same_objective(workdir, recorded_config(config, task))
  manager = checkpoint.make_manager(workdir, tc.keep_checkpoints, tc.checkpoint_every)
  abstract = jax.eval_shape(trainer.make_state, trainer.init_key)
  state, restored_step = checkpoint.restore_latest(manager, abstract)
  if state is None:
    state = trainer.make_state(trainer.init_key)
  else:
    logging.info("Resumed from checkpoint step %d in %s.", restored_step, workdir)
  checkpoint.write_config(workdir, recorded_config(config, task))
  keys = trainer.aux_keys

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  report = periodic_actions.ReportProgress(num_train_steps=tc.num_steps, writer=writer)
  first = int(state.step)
  acc = None
  # Several CPU devices in one process (fake devices) reduce in-process: when the next steps'
  # programs were dispatched before a step's collective ran, XLA:CPU sometimes never ran one
  # device's part of it and the job slept forever (measured: 4 of 11 runs of the multi-host test's
  # reference job under load). Waiting for each step there costs little on a CPU.
  in_process_collectives = jax.default_backend() == "cpu" and jax.local_device_count() > 1
  for step in range(first + 1, tc.num_steps + 1):
    state, step_metrics = trainer.step_fn(state, trainer.make_batch(step - 1), task.frozen)
    if in_process_collectives:
      step_metrics = jax.block_until_ready(step_metrics)
    acc = step_metrics if acc is None else acc.merge(step_metrics)
    report(step)
    last = step == tc.num_steps
    if step % tc.log_every == 0 or step % tc.checkpoint_every == 0 or last:
      computed = acc.compute()
      _raise_if_not_finite(computed, state, step, manager.latest_step())
      if step % tc.log_every == 0 or last:
        writer.write_scalars(step, metrics_lib.readable(computed, keys, tc.sigma_bins))
        acc = None
      if step % tc.checkpoint_every == 0 or last:
        checkpoint.save(manager, step, state, force=last)
    if tc.sample_every and step % tc.sample_every == 0 and not last:
      _save_samples(task, data, state.ema_params, config, workdir, step)
  manager.wait_until_finished()
  manager.close()

  results = ({"step": int(state.step)} if config.eval.num_samples == 0 else
             evaluate(task, data, state.ema_params, config, workdir, int(state.step)))
  writer.write_scalars(int(state.step), {f"eval/{k}": v for k, v in results.items()
                                         if isinstance(v, float)})
  writer.flush()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results


def _sample(task: Task, data: DataSource, params, config, num: int, key) -> jax.Array:
  """Deterministic EDM (Heun) samples from the trained denoiser; ``(num, *event)``."""
  from fkdiff.diffusion import edm
  from fkdiff.sampling import reverse
  d = config.diffusion
  sigmas = edm.karras_sigmas(config.eval.sample_steps, d.sigma_min, d.sigma_max, d.rho)

  # Parameters enter as jit arguments, never as captured constants: XLA:CPU (jax 0.10.2) has
  # been seen to miscompile large batches through constant-folded (e.g. all-zero) weights.
  @functools.partial(jax.jit, compiler_options=_compiler_options(config))
  def run(params, key):
    x_init = reverse.prior_sample(key, num, data.event_shape, d.sigma_max, data.sigma_data)
    return reverse.heun_sample(functools.partial(task.denoise_fn, params), x_init, sigmas)

  return run(params, key)


def _save_samples(task, data, params, config, workdir, step, samples=None):
  from fkdiff.evaluation import plots
  if samples is None:   # on every process: the sampler is one program over the global mesh.
    samples = _sample(task, data, params, config, min(config.eval.num_samples, 2048),
                      jax.random.key(step))
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
  if len(data.event_shape) == 3:   # images (H, W, C): a grid.
    plots.save_image_grid(samples[:64], path)
    return
  plots.samples_figure(samples, data.mixture, path, title=f"{config.task} samples, step {step}")


def evaluate(task: Task, data: DataSource, params, config, workdir: str, step: int) -> dict:
  """Samples and scores the trained model; for toy data, against the exact density."""
  from fkdiff.evaluation import toy_metrics
  key_sample, key_score = jax.random.split(jax.random.key(config.seed + 1))
  samples = _sample(task, data, params, config, config.eval.num_samples, key_sample)
  _save_samples(task, data, params, config, workdir, step, samples)
  results = {"step": step}
  if data.mixture is not None:
    results["score_rel_error"] = score_error(task, data, params, config, key_score)
    results.update(toy_metrics.mode_mass_metrics(data.mixture, samples))
    if task.energy_fn is not None and config.eval.get("time_diagnostics", True):
      results.update(time_diagnostics(task, data, params, config))
  return results


def score_error(task: Task, data: DataSource, params, config, key: jax.Array,
                sigma: Optional[float] = None) -> float:
  """Relative error of a toy run's score to the exact one at ``sigma`` (default
  ``eval.score_sigma``; :func:`fkdiff.evaluation.toy_metrics.relative_score_error`)."""
  from fkdiff.evaluation import toy_metrics
  sigma = config.eval.score_sigma if sigma is None else sigma
  run = jax.jit(lambda p, k: toy_metrics.relative_score_error(
      toy_metrics.score_fn_from_denoiser(functools.partial(task.denoise_fn, p)), data.mixture,
      sigma, k), compiler_options=_compiler_options(config))
  return float(run(params, key))


def time_diagnostics(task: Task, data: DataSource, params, config) -> dict:
  """Heat-residual spread and inter-mode level error of a toy energy run against the exact
  energy (:func:`fkdiff.evaluation.time_consistency.mixture_diagnostics`) at ``eval.time_sigmas``;
  floats keyed ``heat_residual_std/sigma_<σ>``, ``heat_residual_mode_spread/sigma_<σ>``,
  ``level_error/sigma_<σ>``."""
  from fkdiff.evaluation import time_consistency
  ev = config.eval
  sigmas = tuple(float(s) for s in ev.get("time_sigmas", time_consistency.DEFAULT_SIGMAS))
  run = jax.jit(lambda p, k: time_consistency.mixture_diagnostics(
      functools.partial(task.energy_fn, p), data.mixture, k, sigmas,
      int(ev.get("time_points", 256))), compiler_options=_compiler_options(config))
  out = run(params, jax.random.key(config.seed + 2))
  return {k: float(v) for k, v in out.items()}
