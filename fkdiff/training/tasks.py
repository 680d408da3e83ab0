"""What is being trained: parameters, objective and the denoiser used to sample from them.

A :class:`Task` is everything :func:`fkdiff.training.train.train_and_evaluate` needs to know
about a model; the trainer itself is the same for teachers, distilled energies and baselines.
"""

import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections

from fkdiff import losses, models
from fkdiff.training import runs
from fkdiff.training.checkpoint import CheckpointError
from fkdiff.data.source import DataSource

Array = jax.Array


class Task(NamedTuple):
  """A trainable model and its objective.

  Attributes:
    init_params: ``init_params(key) -> params``.
    loss_fn: ``loss_fn(params, batch, key, frozen) -> (loss, aux)``; ``aux`` holds per-example
      arrays (``sigma`` and per-example quantities that are averaged per σ bin in the logs).
    denoise_fn: ``denoise_fn(params, x, sigma) -> D(x, σ)`` for one example.
    energy_fn: ``energy_fn(params, x, sigma) -> scalar`` for energy models, else ``None``.
    frozen: parameters the loss uses but does not train (a distillation teacher), or ``None``.
    sigma_data: σ_d of the model's preconditioning (a distilled energy: its teacher's); the
      trainer records it in the run's ``config.json`` (:mod:`fkdiff.training.runs`).
  """
  init_params: Callable
  loss_fn: Callable
  denoise_fn: Callable
  energy_fn: Optional[Callable] = None
  frozen: Any = None
  sigma_data: Optional[float] = None


def num_attributes(config: ml_collections.ConfigDict) -> int:
  """Attributes of a multi-label conditioned backbone (0 for class or no conditioning)."""
  section = config.model.get(config.model.name)
  return int(section.get("num_attributes", 0)) if section is not None else 0


def drop_labels(batch: dict, key: Array, config: ml_collections.ConfigDict) -> dict:
  """Classifier-free dropout: each label becomes the null token ∅ with ``data.label_dropout``.

  Class labels ``(B,)`` become ``model.num_classes``; multi-label ``(B, A)`` become all
  unspecified, and (``data.attribute_dropout``) single attributes become unspecified
  independently, so the model also learns partial conditions (``E(x | one attribute)``).
  """
  if "label" not in batch or (config.data.label_dropout <= 0 and
                              config.data.attribute_dropout <= 0):
    return batch
  label, k_all, k_one = batch["label"], *jax.random.split(key)
  null = models.null_label(config.model.num_classes, num_attributes(config), label.shape[:1])
  if label.ndim == 2:
    one = jax.random.bernoulli(k_one, config.data.attribute_dropout, label.shape)
    label = jnp.where(one, null, label)
  drop = jax.random.bernoulli(k_all, config.data.label_dropout, label.shape[:1])
  drop = drop.reshape(drop.shape + (1,) * (label.ndim - 1))
  return {**batch, "label": jnp.where(drop, null, label)}


def dropout_rate(model_config: ml_collections.ConfigDict) -> float:
  """The backbone's dropout rate (``model.<name>.dropout``; 0 where the backbone or an older
  run's ``config.json`` has none)."""
  section = model_config.get(model_config.name)
  return float(section.get("dropout", 0.0)) if section is not None else 0.0


def loss_dropout_key(key: Array, config: ml_collections.ConfigDict) -> Optional[Array]:
  """The dropout key of one training loss evaluation, derived from its step ``key``, or ``None``
  (no dropout, the deterministic network: the exact computation of a model without dropout) when
  the config's rate is 0. Only the losses of :func:`teacher_task`, :func:`energy_dsm_task` and
  :func:`distill_task` (for the student) use it; every denoiser / energy a :class:`Task` exposes
  for sampling and evaluation is deterministic."""
  return jax.random.fold_in(key, 3) if dropout_rate(config.model) > 0 else None


def with_label_dropout(loss_fn: Callable, config: ml_collections.ConfigDict) -> Callable:
  """``loss_fn(params, batch, key, frozen)`` on batches after :func:`drop_labels`."""
  def loss(params, batch, key, frozen):
    return loss_fn(params, drop_labels(batch, jax.random.fold_in(key, 2), config), key, frozen)
  return loss


def teacher_task(config: ml_collections.ConfigDict, data: DataSource) -> Task:
  """An EDM denoiser trained by denoising score matching (a 'teacher'), with the backbone's
  dropout in the loss (:func:`loss_dropout_key`); its ``denoise_fn`` is deterministic."""
  backbone = models.get_backbone(config.model)
  denoise = models.make_denoiser(backbone, data.sigma_data)

  def init_params(key):
    return backbone.init(key, jnp.zeros(data.event_shape), jnp.zeros(()))

  dsm = losses.make_dsm_loss(denoise, data.sigma_data, config.diffusion.p_mean,
                             config.diffusion.p_std)
  loss = lambda p, batch, key, frozen: dsm(p, batch, key, loss_dropout_key(key, config))
  return Task(init_params, with_label_dropout(loss, config), lambda p, x, s: denoise(p, x, s),
              sigma_data=data.sigma_data)


def _energy_model(config: ml_collections.ConfigDict, sigma_data: float):
  """The energy model of ``config`` and its per-example energy and denoiser functions."""
  model = runs.energy_model(config, sigma_data, remat=config.energy.remat)
  energy_fn = functools.partial(models.energy.energy, model)
  denoise = functools.partial(models.energy.denoiser, model)
  return model, energy_fn, denoise


def energy_dsm_task(config: ml_collections.ConfigDict, data: DataSource) -> Task:
  """An energy trained from scratch by denoising score matching (the unstable baseline), with
  the backbone's dropout in the loss as for a teacher."""
  model, energy_fn, denoise = _energy_model(config, data.sigma_data)
  dsm = losses.make_dsm_loss(denoise, data.sigma_data, config.diffusion.p_mean,
                             config.diffusion.p_std)
  loss = lambda p, batch, key, frozen: dsm(p, batch, key, loss_dropout_key(key, config))
  return Task(lambda key: model.init(key, jnp.zeros(data.event_shape), jnp.ones(())),
              with_label_dropout(loss, config),
              lambda p, x, s: denoise(p, x, s), lambda p, x, s: energy_fn(p, x, s),
              sigma_data=data.sigma_data)


# Backbone settings that change how a network is computed, not its parameters: rematerialisation,
# and dropout (no parameters; a teacher trained at one rate initialises a student at another).
_COMPUTE_ONLY = ("remat_blocks", "dropout")


def _architecture(model_config: ml_collections.ConfigDict):
  """``(name, kwargs)`` of a backbone without the compute-only settings: equal results mean the
  parameters of one fit the other."""
  name, kwargs = models.backbones.backbone_kwargs(model_config)  # tuples, as from JSON lists.
  return name, {k: v for k, v in kwargs.items() if k not in _COMPUTE_ONLY}


def frozen_teacher(config: ml_collections.ConfigDict):
  """The frozen teacher of a distillation config: ``(denoise_fn, params, sigma_data)``, with
  ``denoise_fn(params, x, σ, label=None)`` for one example.

  The teacher is either a finished fkdiff run, ``teacher.workdir``
  (:func:`fkdiff.training.runs.load_teacher`: its EMA parameters unless ``teacher.use_ema`` is
  off), or a diffusers checkpoint folder, ``teacher.diffusers`` (:func:`diffusers_teacher`).

  Raises:
    CheckpointError: if neither key is set, or ``teacher.workdir`` holds no readable checkpoint.
    ValueError: if both are set, if the run there is not a teacher, or its architecture differs
      from the student's while ``teacher.init_student`` is on.
    FileNotFoundError, UnsupportedConfigError: a bad ``teacher.diffusers`` folder (one line
      naming the file or key).
  """
  folder = config.teacher.get("diffusers", "")
  if folder and config.teacher.workdir:
    raise ValueError(f"Distillation has two teachers: teacher.workdir={config.teacher.workdir!r} "
                     f"and teacher.diffusers={folder!r}; set only one of them.")
  if folder:
    return diffusers_teacher(config)
  if config.model.name == "diffusers":
    raise ValueError("model.name 'diffusers' is the network of teacher.diffusers, which is not "
                     "set: pass --config.teacher.diffusers=<checkpoint folder>.")
  if not config.teacher.workdir:
    raise CheckpointError("Distillation needs a teacher: teacher.workdir is not set. Pass "
                          "--config.teacher.workdir=<the workdir of a finished teacher run> "
                          "(train one with configs/toy2d_teacher.py), or "
                          "--config.teacher.diffusers=<a diffusers checkpoint folder>.")
  teacher_config = runs.read_run_config(config.teacher.workdir)
  if "task" not in teacher_config:      # a job's workdir: the error lists the teachers inside
    runs.load_teacher(config.teacher.workdir)
  if teacher_config.task != "teacher":
    raise ValueError(f"{config.teacher.workdir} holds a {teacher_config.task!r} run, not a "
                     "teacher; point teacher.workdir at a run of task 'teacher'.")
  (t_name, t_kw), (s_name, s_kw) = (_architecture(teacher_config.model),
                                    _architecture(config.model))
  if config.teacher.init_student and (t_name, t_kw) != (s_name, s_kw):
    diffs = [f"model.name: teacher {t_name!r}, student {s_name!r}"] if t_name != s_name else []
    diffs += [f"model.{k}: teacher {t_kw.get(k)!r}, student {v!r}"
              for k, v in s_kw.items() if t_kw.get(k) != v]
    raise ValueError("The student must have the teacher's architecture to start from its "
                     f"weights ({'; '.join(diffs)}). Copy the teacher's model settings or set "
                     "teacher.init_student=False.")
  return runs.load_teacher(config.teacher.workdir, use_ema=config.teacher.use_ema)


def diffusers_teacher(config: ml_collections.ConfigDict):
  """``(denoise_fn, params, 0.5)`` of the diffusers checkpoint folder ``teacher.diffusers``
  (:func:`fkdiff.models.imported.load_diffusers_teacher`; [-1, 1] images, σ_d 0.5). With
  ``teacher.init_student`` the student's ``h`` must be that network (``model.name =
  'diffusers'``); a class-conditional checkpoint has no null label, so no label dropout."""
  from fkdiff.models import imported
  teacher = imported.load_diffusers_teacher(config.teacher.diffusers, sigma_data=0.5)
  if config.teacher.init_student and config.model.name != "diffusers":
    raise ValueError("The student must have the teacher's architecture to start from its "
                     f"weights: set model.name='diffusers' (the network of "
                     f"{config.teacher.diffusers}), not {config.model.name!r}, or "
                     "teacher.init_student=False.")
  if config.data.label_dropout > 0 or config.data.attribute_dropout > 0:
    raise ValueError("A diffusers teacher has no null label: set data.label_dropout and "
                     "data.attribute_dropout to 0.")

  def denoise_fn(params, x, sigma, label=None):
    return teacher.module.apply(params, x, sigma, label,
                                method=imported.DiffusersBackbone.denoise)

  return denoise_fn, teacher.params, 0.5


def _time_probes(dist: ml_collections.ConfigDict, data: DataSource) -> int:
  """Hutchinson probes of the time target's divergence: ``dist.time_probes`` (``distill`` or
  ``two_head``), or with 0 the exact trace (0) for examples of ≤ 64 numbers and 1 probe for
  larger ones."""
  if int(dist.time_probes) > 0:
    return int(dist.time_probes)
  return 0 if math.prod(data.event_shape) <= 64 else 1


def distill_task(config: ml_collections.ConfigDict, data: DataSource) -> Task:
  """An energy distilled from a frozen teacher by conservative projection (METHOD.md §3).

  The student uses the teacher's σ_d, starts from the teacher's weights when
  ``teacher.init_student``, and receives the teacher's parameters as ``frozen`` (never trained,
  never checkpointed with the student).

  Dropout [choice]: the frozen teacher is always evaluated deterministically, whatever rate it
  was trained with — the regression target must be the teacher's actual denoiser (the network
  one samples from), not a randomly thinned one, and the logged asymmetry is that of the same
  network. The student applies its own config's rate (``model.unet.dropout``, compute-only: it
  may differ from the teacher's) in the loss only; its denoiser and energy for sampling and
  evaluation are deterministic.
  """
  teacher_denoise, teacher_params, sigma_data = frozen_teacher(config)
  model, energy_fn, denoise = _energy_model(config, sigma_data)
  d = config.diffusion

  dist = config.get("distill", None)
  time_weight = float(dist.time_weight) if dist is not None else 0.0
  gauge = models.Gauge(int(dist.gauge_width)) if time_weight > 0 else None

  # An unconditional imported network takes no label: a labelled dataset's are not used.
  unlabelled = config.model.name == "diffusers" and not model.backbone.config.num_class_embeds
  # A class-conditional imported network needs a label to be initialised (it has no null one).
  init_label = (jnp.zeros((), jnp.int32) if config.model.name == "diffusers" and not unlabelled
                else None)

  def init_params(key):
    params = model.init(key, jnp.zeros(data.event_shape), jnp.ones(()), init_label)
    if config.teacher.init_student:
      params = models.init_from_teacher(params, teacher_params)
    if gauge is not None:   # b(σ) beside the energy's parameters (ignored by model.apply).
      params = {**params, "gauge": gauge.init(jax.random.fold_in(key, 1), jnp.ones(()))}
    return params

  time_kwargs = {}
  if gauge is not None:
    time_kwargs = dict(time_weight=time_weight, student_energy_fn=energy_fn,
                       gauge_fn=lambda p, s: gauge.apply(p["gauge"], s),
                       time_target=dist.time_target, time_probes=_time_probes(dist, data))

  def loss_fn(params, batch, key, frozen):
    if unlabelled:
      batch = {k: v for k, v in batch.items() if k != "label"}
    teacher = lambda x, s, label=None: teacher_denoise(frozen, x, s, label)
    loss, aux = losses.make_distill_loss(denoise, teacher, sigma_data, d.p_mean, d.p_std,
                                         **time_kwargs)(
        params, batch, key, loss_dropout_key(key, config))
    if config.teacher.log_asymmetry:
      # The same noisy points as the loss (same key), one random probe per example.
      x_sigma, sigma = losses.noisy_batch(key, batch["x"], d.p_mean, d.p_std)
      probes = jax.random.split(jax.random.fold_in(key, 1), sigma.shape[0])
      label = batch.get("label")   # the teacher on the batch's labels, as in the loss
      aux["teacher_asymmetry"] = jax.vmap(
          lambda x, s, k, l: losses.asymmetry(lambda z, t: teacher(z, t, l), x, s, k),
          in_axes=(0, 0, 0, None if label is None else 0))(x_sigma, sigma, probes, label)
    return loss, aux

  return Task(init_params, with_label_dropout(loss_fn, config), lambda p, x, s: denoise(p, x, s),
              lambda p, x, s: energy_fn(p, x, s), frozen=teacher_params, sigma_data=sigma_data)


def two_head_task(config: ml_collections.ConfigDict, data: DataSource) -> Task:
  """One network with a score head and an energy head (:mod:`fkdiff.models.two_head`), trained
  jointly (:mod:`fkdiff.losses.two_head`) from the data (``two_head.target = 'data'``: no teacher)
  or from the frozen teacher of ``teacher.workdir`` (``'teacher'``; its σ_d, as distillation).

  Its ``denoise_fn`` (sampling and the score error of the trainer's evaluation) is the energy
  head's Tweedie denoiser ``x − σ²∇E``, as for every energy run, so its figures compare with a
  distilled energy's; the score head is the SMC proposal's (:class:`fkdiff.sampling.HeadRatio`).
  """
  h = config.two_head
  teacher_denoise, teacher_params, sigma_data = (frozen_teacher(config) if h.target == "teacher"
                                                 else (None, None, data.sigma_data))
  model = runs.two_head_model(config, sigma_data)
  d = config.diffusion
  heads_fn = functools.partial(models.two_head.apply_heads, model)
  time_weight = float(h.get("time_weight", 0.0))
  gauge = models.Gauge(int(config.distill.gauge_width)) if time_weight > 0 else None
  probes = _time_probes(h, data)

  def init_params(key):
    params = model.init(key, jnp.zeros(data.event_shape), jnp.ones(()))
    if gauge is not None:   # b(σ) beside the network's parameters (ignored by model.apply).
      params = {**params, "gauge": gauge.init(jax.random.fold_in(key, 1), jnp.ones(()))}
    return params

  def loss_fn(params, batch, key, frozen):
    teacher = (None if frozen is None
               else lambda x, s, label=None: teacher_denoise(frozen, x, s, label))
    loss = losses.make_two_head_loss(
        heads_fn, sigma_data, d.p_mean, d.p_std, h.energy_weight, h.target, teacher,
        time_weight, None if gauge is None else lambda p, s: gauge.apply(p["gauge"], s), probes)
    return loss(params, batch, key, loss_dropout_key(key, config))

  return Task(init_params, with_label_dropout(loss_fn, config),
              lambda p, x, s: models.two_head.energy_denoiser(model, p, x, s),
              lambda p, x, s: models.two_head.energy(model, p, x, s), frozen=teacher_params,
              sigma_data=sigma_data)


_TASKS = {"teacher": teacher_task, "distill": distill_task, "energy_dsm": energy_dsm_task,
          "two_head": two_head_task}


def build_task(config: ml_collections.ConfigDict, data: DataSource) -> Task:
  """The :class:`Task` named ``config.task``."""
  if config.task not in _TASKS:
    raise ValueError(f"Unknown task {config.task!r}; choose one of {sorted(_TASKS)}.")
  return _TASKS[config.task](config, data)
