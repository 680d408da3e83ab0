"""Loading a finished run: its network as the callable the samplers take, its parameters and σ_d.

One loader for every consumer of a trained model (the jobs, the notebooks, the benchmarks)::

  energy_fn, params, sigma_data = fkdiff.load_energy("runs/toy2d_distill")    # 'distill', 'energy_dsm', 'two_head'
  heads_fn, params, sigma_data = fkdiff.load_heads("runs/toy2d_two_head")     # 'two_head'
  denoise_fn, params, sigma_data = fkdiff.load_teacher("runs/toy2d_teacher")  # 'teacher'

``energy_fn(params, x, σ, label=None) -> ()`` and ``denoise_fn(params, x, σ, label=None) -> like x``
take one example ``x`` (the run's event shape) and a scalar σ. Binding the parameters gives what
the samplers consume: ``functools.partial(energy_fn, params)`` is an ``energy_fn(x, σ)`` for
:mod:`fkdiff.sampling.targets` and ``smc_sample`` (or, with its label argument, a
``cond_energy_fn`` for :func:`~fkdiff.sampling.targets.label_sum`), and
``functools.partial(denoise_fn, params)`` a ``denoise_fn(x, σ)`` for
:func:`~fkdiff.sampling.reverse.heun_sample`. The parameters are the EMA parameters of the latest
orbax checkpoint (``use_ema=False``: the optimised ones); nothing else of the checkpoint is read.
:func:`load` returns all of it at once, with the run's config and step.

**σ_d.** The trainer records the σ_d its model uses as ``data.sigma_data`` in the run's
``config.json`` (for a distilled energy, its teacher's), so loading reads one file. Runs written
before that hold ``data.sigma_data = 0`` ("the data's RMS std") for toy data; their σ_d is derived
as it was then, without restoring any checkpoint: from the teacher's ``config.json`` for a
distilled energy (``teacher.workdir`` as recorded, a relative path taken from the run's workdir),
else from the run's own data settings (toy data: the mixture's RMS std; images: 0.5).
"""

import os
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import ml_collections

from fkdiff import models
from fkdiff.data.pipeline import make_data_source
from fkdiff.training import checkpoint
from fkdiff.training.checkpoint import CheckpointError

TEACHER_TASKS = ("teacher",)
ENERGY_TASKS = ("distill", "energy_dsm", "two_head")


class Run(NamedTuple):
  """A finished run, loaded (:func:`load`).

  Attributes:
    config: the run's ``config.json``.
    step: the step of the restored checkpoint.
    params: its EMA (or optimised) parameters.
    sigma_data: σ_d of the model's preconditioning.
    denoise_fn: ``denoise_fn(params, x, σ, label=None) -> D(x, σ)``, like ``x`` (every task).
    energy_fn: ``energy_fn(params, x, σ, label=None) -> E(x, σ)``, a scalar (energy runs), or
      ``None`` (a teacher).
    heads_fn: a two-headed run's ``heads_fn(params, x, σ, label=None) -> (E, score head's
      score)`` from one forward pass (:func:`load_heads`), else ``None``.
  """
  config: ml_collections.ConfigDict
  step: int
  params: Any
  sigma_data: float
  denoise_fn: Callable
  energy_fn: Optional[Callable]
  heads_fn: Optional[Callable] = None


def data_sigma_data(data_config: ml_collections.ConfigDict) -> float:
  """σ_d of a data config: ``data.sigma_data`` if positive, else the toy mixture's RMS std, or 0.5
  for images (which are not loaded for it)."""
  if data_config.sigma_data > 0:
    return float(data_config.sigma_data)
  if data_config.name != "toy2d":
    return 0.5
  return make_data_source(data_config).sigma_data


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The ``config.json`` of a run's workdir.

  Raises:
    CheckpointError: if ``workdir`` does not exist or holds no ``config.json``.
  """
  if not workdir or not os.path.isdir(workdir):
    raise CheckpointError(f"Run workdir {workdir!r} does not exist. Train it first (e.g. "
                          "python launch.py --config=configs/toy2d_teacher.py --workdir=...) and "
                          "pass that workdir.")
  config = checkpoint.read_config(workdir)
  if config is None:
    raise CheckpointError(f"{workdir} has no {checkpoint.CONFIG_FILE}; it is not an fkdiff run "
                          "workdir.")
  return config


def run_sigma_data(workdir: str, config: Optional[ml_collections.ConfigDict] = None) -> float:
  """σ_d of the run in ``workdir`` (``config``: its ``config.json``, read if not given), from
  that file alone, or for an older run as described in the module docstring.

  Raises:
    CheckpointError: an older distilled energy whose teacher's ``config.json`` is gone.
  """
  config = read_run_config(workdir) if config is None else config
  if config.data.sigma_data > 0 or config.task != "distill":
    return data_sigma_data(config.data)
  teacher_dir = os.path.join(workdir, config.teacher.workdir)   # unchanged if absolute.
  teacher = checkpoint.read_config(teacher_dir) if config.teacher.workdir else None
  if teacher is None:
    raise CheckpointError(
        f"{workdir} was written before runs recorded σ_d, and its teacher's "
        f"{checkpoint.CONFIG_FILE} (teacher.workdir = {config.teacher.workdir!r}) is not there. "
        f"Set data.sigma_data in {os.path.join(workdir, checkpoint.CONFIG_FILE)} to the "
        "teacher's σ_d, or point teacher.workdir there at the teacher's workdir.")
  return data_sigma_data(teacher.data)


def energy_backbone(config: ml_collections.ConfigDict, sigma_data: float):
  """The backbone ``h`` of an energy run's config: ``model.name``'s, or with ``'diffusers'`` the
  network of the checkpoint folder ``teacher.diffusers`` (its config files; the weights come from
  the run's checkpoint)."""
  if config.model.name != "diffusers":
    return models.get_backbone(config.model)
  folder = config.teacher.get("diffusers", "")
  if not folder:
    raise ValueError("model.name 'diffusers' is the network of teacher.diffusers, which is not "
                     "set: pass --config.teacher.diffusers=<checkpoint folder>.")
  from fkdiff.models import imported
  return imported.diffusers_backbone(folder, sigma_data)


def energy_model(config: ml_collections.ConfigDict, sigma_data: float,
                 remat: bool = False) -> models.EnergyModel:
  """The :class:`~fkdiff.models.EnergyModel` of an energy run's config (``remat``: recompute the
  backbone's activations in the backward pass, a training-memory setting)."""
  return models.EnergyModel(energy_backbone(config, sigma_data), sigma_data,
                            config.energy.parameterization, remat=remat)


def two_head_model(config: ml_collections.ConfigDict,
                   sigma_data: float) -> models.TwoHeadModel:
  """The :class:`~fkdiff.models.TwoHeadModel` of a ``'two_head'`` run's config: its backbone
  (``model.name``'s) with ``output_heads=2``."""
  if config.model.name == "diffusers":
    raise ValueError("task 'two_head' needs a backbone of fkdiff (model.name 'mlp' or 'unet'); an "
                     "imported diffusers network has one output head.")
  return models.TwoHeadModel(models.get_backbone(config.model).clone(output_heads=2), sigma_data)


def network_fns(config: ml_collections.ConfigDict,
                sigma_data: float) -> Tuple[Callable, Optional[Callable]]:
  """``(denoise_fn, energy_fn)`` of a run's config (see :class:`Run`; ``energy_fn`` is ``None``
  for a teacher). Deterministic: dropout is off unless a caller passes a ``dropout_key``."""
  if config.task in TEACHER_TASKS:
    return models.make_denoiser(models.get_backbone(config.model), sigma_data), None
  if config.task == "two_head":
    model = two_head_model(config, sigma_data)
    return (lambda params, x, sigma, label=None: models.two_head.energy_denoiser(
                model, params, x, sigma, label),
            lambda params, x, sigma, label=None: models.two_head.energy(
                model, params, x, sigma, label))
  if config.task in ENERGY_TASKS:
    model = energy_model(config, sigma_data)

    def energy_fn(params, x, sigma, label=None):
      return models.energy.energy(model, params, x, sigma, label)

    def denoise_fn(params, x, sigma, label=None):
      return models.energy.denoiser(model, params, x, sigma, label)

    return denoise_fn, energy_fn
  raise ValueError(f"Unknown task {config.task!r} in the run's config; choose one of "
                   f"{TEACHER_TASKS + ENERGY_TASKS}.")


def heads_fn(config: ml_collections.ConfigDict, sigma_data: float) -> Optional[Callable]:
  """A ``'two_head'`` run's ``heads_fn(params, x, σ, label=None) -> (E, score head's score)``
  (one forward pass), or ``None`` for any other run."""
  if config.task != "two_head":
    return None
  model = two_head_model(config, sigma_data)
  return lambda params, x, sigma, label=None: models.two_head.heads(model, params, x, sigma,
                                                                     label)


def restore_params(workdir: str, use_ema: bool = True,
                   sharding: Optional[jax.sharding.Sharding] = None) -> Tuple[Any, int]:
  """``(params, step)``: the EMA (or optimised) parameters of the latest checkpoint of a run,
  restored alone (not the optimiser state), replicated over all devices unless ``sharding``.

  Raises:
    CheckpointError: no checkpoint, or an unreadable one.
  """
  name = "ema_params" if use_ema else "params"
  _, tree, step = checkpoint.load_run(workdir, sharding, parts=(name,))
  return tree[name], int(step)


def load(workdir: str, use_ema: bool = True,
         sharding: Optional[jax.sharding.Sharding] = None) -> Run:
  """The finished run in ``workdir``: config, step, parameters, σ_d and network functions.

  Args:
    workdir: the run's workdir (``config.json`` and ``checkpoints/<step>/``).
    use_ema: restore the EMA parameters (the ones to sample from), else the optimised ones.
    sharding: where to place the restored arrays (default: replicated over all devices).
  Raises:
    CheckpointError: a missing workdir, ``config.json`` or checkpoint, or an unreadable one.
    ValueError: an unknown task in the run's config.
  """
  config = read_run_config(workdir)
  sigma_data = run_sigma_data(workdir, config)
  denoise_fn, energy_fn = network_fns(config, sigma_data)
  params, step = restore_params(workdir, use_ema, sharding)
  return Run(config, step, params, sigma_data, denoise_fn, energy_fn,
             heads_fn(config, sigma_data))


def stage_runs(workdir: str) -> list:
  """``(relative path, task)`` of the training runs inside a job's workdir (its stages:
  ``teacher``, ``energies/<name>``, …), sorted by path."""
  found = []
  for root, dirs, files in os.walk(workdir):
    dirs[:] = sorted(d for d in dirs if d != "checkpoints")
    if root != workdir and checkpoint.CONFIG_FILE in files:
      config = checkpoint.read_config(root)
      if config is not None and "task" in config:
        found.append((os.path.relpath(root, workdir), config.task))
  return sorted(found)


def _check_task(workdir: str, config: ml_collections.ConfigDict, tasks, instead: str) -> None:
  if "task" not in config:
    stages = [(path, task) for path, task in stage_runs(workdir) if task in tasks]
    listed = ", ".join(f"{path} ({task})" for path, task in stages)
    where = (f"Its runs of this kind: {listed}; load one with its path, e.g. "
             f"{os.path.join(workdir, stages[0][0])!r}." if stages
             else "It holds no run of this kind.")
    raise CheckpointError(f"{workdir} is the workdir of {checkpoint.run_kind(config)}, not of "
                          f"one training run. {where}")
  if config.task not in tasks:
    raise ValueError(f"{workdir} holds a {config.task!r} run; {instead}.")


def load_energy(workdir: str, use_ema: bool = True) -> Tuple[Callable, Any, float]:
  """``(energy_fn, params, sigma_data)`` of a distilled (or ``energy_dsm``) energy run, with
  ``energy_fn(params, x, σ, label=None) -> scalar`` for one example.

  Raises:
    CheckpointError: a missing or unreadable run (see :func:`load`).
    ValueError: the run is a teacher (use :func:`load_teacher`).
  """
  _check_task(workdir, read_run_config(workdir), ENERGY_TASKS,
              "load_energy loads energy runs (tasks 'distill', 'energy_dsm'): use load_teacher")
  run = load(workdir, use_ema)
  return run.energy_fn, run.params, run.sigma_data


def load_heads(workdir: str, use_ema: bool = True) -> Tuple[Callable, Any, float]:
  """``(heads_fn, params, sigma_data)`` of a ``'two_head'`` run, with
  ``heads_fn(params, x, σ, label=None) -> (E, score)`` for one example: the energy head's value
  and the score head's score from one forward pass. Bind it with
  ``fkdiff.models.HeadEnergy(functools.partial(heads_fn, params))`` for
  :class:`~fkdiff.sampling.HeadRatio` SMC (:func:`load_energy` gives the energy head alone).

  Raises:
    CheckpointError: a missing or unreadable run (see :func:`load`).
    ValueError: the run is not a two-headed one.
  """
  _check_task(workdir, read_run_config(workdir), ("two_head",),
              "load_heads loads runs of task 'two_head': use load_energy or load_teacher")
  run = load(workdir, use_ema)
  return run.heads_fn, run.params, run.sigma_data


def load_teacher(workdir: str, use_ema: bool = True) -> Tuple[Callable, Any, float]:
  """``(denoise_fn, params, sigma_data)`` of a teacher run, with
  ``denoise_fn(params, x, σ, label=None) -> D(x, σ)`` for one example.

  Raises:
    CheckpointError: a missing or unreadable run (see :func:`load`).
    ValueError: the run is not a teacher (an energy: use :func:`load_energy`).
  """
  _check_task(workdir, read_run_config(workdir), TEACHER_TASKS,
              "load_teacher loads runs of task 'teacher': use load_energy for an energy")
  run = load(workdir, use_ema)
  return run.denoise_fn, run.params, run.sigma_data
