"""Teachers imported from diffusers checkpoints: a ``UNet2DModel`` and its DDPM/DDIM schedule as
fkdiff's EDM denoiser ``D(x, σ)``, and as a backbone ``h`` for the energy (teacher initialisation).

A checkpoint folder is what diffusers' ``save_pretrained`` writes (or ``hf download`` of a
pipeline): ``config.json`` + ``diffusion_pytorch_model.safetensors`` of the ``UNet2DModel`` and
``scheduler_config.json``, at the folder's root or under ``unet/`` and ``scheduler/``. The weights
are read with safetensors' NumPy loader: no PyTorch. :func:`load_diffusers_teacher` reads one;
:func:`save_diffusers_unet` writes one from fkdiff parameters (e.g. random ones, for tests).

The denoiser (:func:`fkdiff.diffusion.vp`): at a VE point ``x = x_0 + σ ε`` the network sees
``x_VP = x / √(1 + σ²)`` at the continuous timestep ``t(σ)`` (interpolated in ``log σ``, clamped to
the schedule's range), and its output becomes ``x̂_0`` by the checkpoint's ``prediction_type``.
Data scaling: DDPM checkpoints model images in ``[−1, 1]``, which is fkdiff's image scaling
(:data:`fkdiff.data.images.IMAGE_SIGMA_DATA` = 0.5), so ``x`` and ``D`` are in those units with no
conversion; channels last (NHWC) where diffusers is NCHW.
"""

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
import safetensors.numpy

from fkdiff.diffusion import edm, vp
from fkdiff.models.diffusers_unet import (CheckpointError, UNet2DConfig, UNet2DModel,
                                          UnsupportedConfigError, from_state_dict, init_params,
                                          to_state_dict)

Array = jax.Array
CONFIG, WEIGHTS, SCHEDULER = "config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"
DIFFUSERS_VERSION = "0.42.1"   # written into the config.json files this module saves.
__all__ = ["CheckpointError", "UnsupportedConfigError", "DiffusersBackbone", "DiffusersTeacher",
           "diffusers_backbone", "init_params", "load_diffusers_teacher", "load_diffusers_unet", "load_schedule",
           "save_diffusers_unet", "save_scheduler_config"]


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no {os.path.basename(path)} in {os.path.dirname(path) or '.'}.")
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path} is not valid JSON: {e}.") from None
  if not isinstance(value, dict):
    raise CheckpointError(f"{path} is not a JSON object.")
  return value


def _component_dir(path: str, file: str, sub: str) -> str:
  """``path`` if it holds ``file``, else ``path/sub`` if that does (a pipeline's layout)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no checkpoint folder {path}.")
  if not os.path.isfile(os.path.join(path, file)) and os.path.isfile(
      os.path.join(path, sub, file)):
    return os.path.join(path, sub)
  return path


def load_diffusers_unet(path: str):
  """``(UNet2DConfig, {'params': …})`` of the ``UNet2DModel`` in checkpoint folder ``path``.

  Raises:
    FileNotFoundError: a missing folder, ``config.json`` or weights file (one line, naming it).
    UnsupportedConfigError: a config key this implementation refuses (naming key and value).
    CheckpointError: bad JSON, an unreadable weights file, or tensors that do not match the config.
  """
  path = _component_dir(path, CONFIG, "unet")
  config = UNet2DConfig.from_dict(_read_json(os.path.join(path, CONFIG)))
  weights = os.path.join(path, WEIGHTS)
  if not os.path.isfile(weights):
    other = [f for f in ("diffusion_pytorch_model.bin", WEIGHTS + ".index.json")
             if os.path.isfile(os.path.join(path, f))]
    hint = (f" (it has {other[0]}: re-save it once with diffusers, "
            "UNet2DModel.from_pretrained(dir).save_pretrained(dir, max_shard_size='10GB'))"
            if other else "")
    raise FileNotFoundError(f"no {WEIGHTS} in {path}{hint}.")
  try:
    state = safetensors.numpy.load_file(weights)
  except (SafetensorError, OSError, ValueError, TypeError) as e:
    raise CheckpointError(f"cannot read {weights}: {str(e).splitlines()[0]}.") from None
  try:
    return config, from_state_dict(config, state)
  except CheckpointError as e:
    raise CheckpointError(f"{weights}: {e}") from None


def load_schedule(path: str) -> vp.VPSchedule:
  """The :class:`fkdiff.diffusion.vp.VPSchedule` of ``scheduler_config.json`` in ``path`` (or
  ``path/scheduler``)."""
  path = _component_dir(path, SCHEDULER, "scheduler")
  return vp.schedule_from_config(_read_json(os.path.join(path, SCHEDULER)))


def save_diffusers_unet(path: str, config: UNet2DConfig, params) -> str:
  """Writes ``config.json`` + ``diffusion_pytorch_model.safetensors`` (diffusers' format) of
  ``params`` to folder ``path``; returns ``path``."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, CONFIG), "w", encoding="utf-8") as f:
    json.dump({**config.to_dict(), "_diffusers_version": DIFFUSERS_VERSION}, f, indent=2)
  safetensors.numpy.save_file(to_state_dict(params), os.path.join(path, WEIGHTS))
  return path


def save_scheduler_config(path: str, _class_name: str = "DDPMScheduler", **config) -> str:
  """Writes ``scheduler_config.json`` (e.g. ``beta_schedule='linear'``, ``prediction_type=…``);
  returns ``path``."""
  os.makedirs(path, exist_ok=True)
  config = {"_class_name": _class_name, "_diffusers_version": DIFFUSERS_VERSION, **config}
  vp.schedule_from_config(config)            # refuse now what loading would refuse.
  with open(os.path.join(path, SCHEDULER), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  return path


class DiffusersBackbone(UNet2DModel):
  """The imported network in fkdiff's forms; its parameters are the ``UNet2DModel``'s.

  - :meth:`denoise`: the teacher's EDM denoiser ``D(x, σ[, label])``;
  - ``__call__(y, c_noise, label)``: a backbone ``h`` (:mod:`fkdiff.models.backbones`) whose EDM
    denoiser with this ``sigma_data`` is exactly :meth:`denoise`: with ``σ = exp(4 c_noise)``,
    ``x = y / c_in``, it returns ``F = (D(x, σ) − c_skip x) / c_out``. So
    ``EnergyModel(backbone=DiffusersBackbone(…))`` holds the network's parameters under
    ``params['params']['backbone']`` (:func:`fkdiff.models.energy.init_from_teacher`).

  Both take one example ``(H, W, C)`` with a scalar σ / ``c_noise`` and label ``()``, or a batch
  ``(B, H, W, C)`` with ``(B,)`` or scalar ones. ``label`` is a class in
  ``[0, num_class_embeds)``, required iff the network is class-conditional.

  Attributes (besides ``config``):
    alphas_cumprod: the schedule's ``ᾱ_t`` as a tuple (hashable; :class:`VPSchedule`).
    prediction_type: what the network predicts (``epsilon`` | ``v_prediction`` | ``sample``).
    sigma_data: σ_d of the EDM preconditioning the backbone form inverts.
  """
  alphas_cumprod: tuple = ()
  prediction_type: str = "epsilon"
  sigma_data: float = 0.5

  @property
  def schedule(self) -> vp.VPSchedule:
    return vp.VPSchedule(np.asarray(self.alphas_cumprod, np.float32), self.prediction_type)

  def denoise(self, x: Array, sigma: Array, label: Optional[Array] = None) -> Array:
    """``D(x, σ)``: the checkpoint's ``x̂_0`` at the VE point ``x`` (shapes: see the class)."""
    single = x.ndim == 3
    xb = x[None] if single else x
    sigma_b = jnp.broadcast_to(jnp.reshape(jnp.asarray(sigma, jnp.float32), (-1,)),
                               (xb.shape[0],))
    label = None if label is None else jnp.reshape(jnp.asarray(label, jnp.int32), (-1,))
    s = sigma_b[:, None, None, None]
    out = self.network(vp.vp_input(xb, s), vp.sigma_to_timestep(self.schedule, sigma_b), label)
    d = vp.denoised_from_output(out, xb, s, self.prediction_type)
    return d[0] if single else d

  def __call__(self, y: Array, c_noise: Array, label: Optional[Array] = None,
               deterministic: bool = True) -> Array:
    """``F(y, c_noise[, label])``, shaped like ``y`` (``deterministic``: no dropout either way)."""
    del deterministic
    sigma = jnp.exp(4.0 * jnp.asarray(c_noise, jnp.float32))
    s = sigma if y.ndim == 3 else jnp.reshape(sigma, (-1, 1, 1, 1))
    p = edm.preconditioning(s, self.sigma_data)
    x = y / p.c_in
    return (self.denoise(x, sigma, label) - p.c_skip * x) / p.c_out


@dataclasses.dataclass(frozen=True)
class DiffusersTeacher:
  """An imported checkpoint: the network (as :class:`DiffusersBackbone`) and its parameters.

  Attributes:
    module: the :class:`DiffusersBackbone` (its ``sigma_data`` that of :meth:`backbone`).
    params: ``{'params': …}``, the ``UNet2DModel``'s weights (float32).
  """
  module: DiffusersBackbone
  params: Any

  @property
  def config(self) -> UNet2DConfig:
    return self.module.config

  def denoise(self, x: Array, sigma: Array, label: Optional[Array] = None) -> Array:
    """``D(x, σ[, label])`` with the parameters bound (one example or a batch)."""
    return self.module.apply(self.params, x, sigma, label, method=DiffusersBackbone.denoise)

  def backbone(self, sigma_data: float = 0.5) -> DiffusersBackbone:
    """The backbone form ``h`` for an energy with this σ_d (its parameters: :attr:`params`)."""
    return self.module.clone(sigma_data=sigma_data)


def _module(path: str, config: UNet2DConfig, scheduler_path: Optional[str],
            sigma_data: float) -> DiffusersBackbone:
  if config.out_channels != config.in_channels:
    raise UnsupportedConfigError(f"UNet2DModel config out_channels={config.out_channels} is not "
                                 f"supported for a teacher: its output must be shaped like its "
                                 f"input (in_channels={config.in_channels}).")
  schedule = load_schedule(path if scheduler_path is None else scheduler_path)
  return DiffusersBackbone(config, tuple(float(a) for a in schedule.alphas_cumprod),
                           schedule.prediction_type, sigma_data)


def diffusers_backbone(path: str, sigma_data: float = 0.5,
                       scheduler_path: Optional[str] = None) -> DiffusersBackbone:
  """The :class:`DiffusersBackbone` of checkpoint folder ``path`` from its two config files alone
  (the weights are not read): how a distilled energy's run rebuilds its network."""
  unet_dir = _component_dir(path, CONFIG, "unet")
  config = UNet2DConfig.from_dict(_read_json(os.path.join(unet_dir, CONFIG)))
  return _module(path, config, scheduler_path, sigma_data)


def load_diffusers_teacher(path: str, scheduler_path: Optional[str] = None,
                           sigma_data: float = 0.5) -> DiffusersTeacher:
  """The teacher in checkpoint folder ``path`` (UNet + scheduler config, see the module
  docstring; the scheduler config from ``scheduler_path`` if given). ``sigma_data`` is the σ_d
  of its backbone form (fkdiff's images: 0.5)."""
  config, params = load_diffusers_unet(path)
  return DiffusersTeacher(_module(path, config, scheduler_path, sigma_data), params)

