"""What is being trained: parameters, objective and the denoiser used to sample from them.

A :class:`Task` is everything :func:`fkdiff.training.train.train_and_evaluate` needs to know
about a model; the trainer itself is the same for teachers, distilled energies and baselines.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections

from fkdiff import losses, models
from fkdiff.data.pipeline import DataSource

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
  """
  init_params: Callable
  loss_fn: Callable
  denoise_fn: Callable
  energy_fn: Optional[Callable] = None
  frozen: Any = None


def teacher_task(config: ml_collections.ConfigDict, data: DataSource) -> Task:
  """An EDM denoiser trained by denoising score matching (a 'teacher')."""
  backbone = models.get_backbone(config.model)
  denoise = models.make_denoiser(backbone, data.sigma_data)

  def init_params(key):
    return backbone.init(key, jnp.zeros(data.event_shape), jnp.zeros(()))

  dsm = losses.make_dsm_loss(denoise, data.sigma_data, config.diffusion.p_mean,
                             config.diffusion.p_std)
  return Task(init_params, lambda p, batch, key, frozen: dsm(p, batch, key),
              lambda p, x, s: denoise(p, x, s))


_TASKS = {"teacher": teacher_task}


def build_task(config: ml_collections.ConfigDict, data: DataSource) -> Task:
  """The :class:`Task` named ``config.task``."""
  if config.task not in _TASKS:
    raise ValueError(f"Unknown task {config.task!r}; choose one of {sorted(_TASKS)}.")
  return _TASKS[config.task](config, data)
