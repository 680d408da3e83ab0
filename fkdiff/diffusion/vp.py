"""Discrete variance-preserving (DDPM) schedules in EDM's convention (METHOD.md §1).

A DDPM-style model is trained on ``x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε`` at integer timesteps
``t = 0 … T−1``. Dividing by ``√ᾱ_t`` gives the variance-exploding form ``x = x_0 + σ ε`` with

  ``σ_t² = (1 − ᾱ_t) / ᾱ_t``,   ``x_VP = x / √(1 + σ²)``   (since ``ᾱ = 1 / (1 + σ²)``),

so a VP network becomes an EDM denoiser ``D(x, σ)`` by feeding it ``x_VP`` at the timestep of σ and
turning its output into ``x̂_0`` (:func:`denoised_from_output`). The timestep of a σ between grid
levels is continuous: ``t(σ)`` interpolates ``t`` linearly against ``log σ_t`` of the discrete grid
(as k-diffusion's ``DiscreteSchedule`` does) and is clamped to ``[0, T−1]`` outside
``[σ_0, σ_{T−1}]``; the input scaling and the ``x̂_0`` formulas always use the σ asked for.

The schedules are those of diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` (their
``scheduler_config.json``, read by :func:`schedule_from_config`), computed as diffusers does in
float32.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler")
# Settings of a scheduler's sampling loop, not of the trained model: D(x, σ) does not use them
# (in particular it is the unclipped estimate, whatever clip_sample / thresholding say).
SAMPLER_ONLY_KEYS = ("clip_sample", "clip_sample_range", "thresholding",
                     "dynamic_thresholding_ratio", "sample_max_value", "timestep_spacing",
                     "steps_offset", "set_alpha_to_one", "variance_type")
_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
             "beta_schedule": "linear", "trained_betas": None, "prediction_type": "epsilon",
             "rescale_betas_zero_snr": False}


class UnsupportedSchedulerError(ValueError):
  """A scheduler config this module cannot turn into a denoiser (the message names the key)."""


class VPSchedule(NamedTuple):
  """A discrete VP schedule and what its network predicts.

  Attributes:
    alphas_cumprod: ``(T,)`` float32, ``ᾱ_t`` for ``t = 0 … T−1`` (decreasing).
    prediction_type: ``'epsilon'`` | ``'v_prediction'`` | ``'sample'``.
  """
  alphas_cumprod: np.ndarray
  prediction_type: str = "epsilon"

  @property
  def sigmas(self) -> np.ndarray:
    """``(T,)`` float32 ``σ_t = √((1 − ᾱ_t)/ᾱ_t)`` (increasing)."""
    a = self.alphas_cumprod.astype(np.float64)
    return np.sqrt((1 - a) / a).astype(np.float32)


def betas(beta_schedule: str = "linear", num_train_timesteps: int = 1000,
          beta_start: float = 0.0001, beta_end: float = 0.02) -> np.ndarray:
  """``(T,)`` float32 ``β_t`` of a diffusers beta schedule (linear, scaled_linear, squaredcos_cap_v2)."""
  n = num_train_timesteps
  if beta_schedule == "linear":
    return np.linspace(beta_start, beta_end, n, dtype=np.float32)
  if beta_schedule == "scaled_linear":
    return np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float32)**2
  if beta_schedule == "squaredcos_cap_v2":     # GLIDE's cosine ᾱ, β capped at 0.999.
    alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2)**2
    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999)
                     for i in range(n)], np.float32)
  raise UnsupportedSchedulerError(f"scheduler config beta_schedule={beta_schedule!r} is not "
                                  f"supported; supported: {', '.join(BETA_SCHEDULES)}.")


def schedule_from_betas(beta: np.ndarray, prediction_type: str = "epsilon") -> VPSchedule:
  """The :class:`VPSchedule` of ``β_t`` (``ᾱ_t = ∏_{s ≤ t} (1 − β_s)``, float32 as diffusers)."""
  beta = np.asarray(beta, np.float32)
  if beta.ndim != 1 or beta.size < 2 or not np.all((beta > 0) & (beta < 1)):
    raise UnsupportedSchedulerError(f"scheduler betas must be T >= 2 values in (0, 1); got "
                                    f"shape {beta.shape}, values {beta.ravel()[:4]}….")
  if prediction_type not in PREDICTION_TYPES:
    raise UnsupportedSchedulerError(f"scheduler config prediction_type={prediction_type!r} is not "
                                    f"supported; supported: {', '.join(PREDICTION_TYPES)}.")
  return VPSchedule(np.cumprod(1.0 - beta, dtype=np.float32), prediction_type)


def schedule_from_config(config: dict) -> VPSchedule:
  """The :class:`VPSchedule` of a diffusers ``scheduler_config.json`` (as a dict).

  Missing keys take diffusers' defaults. Raises :class:`UnsupportedSchedulerError` naming the key
  for another scheduler class, another beta schedule or prediction type, zero-terminal-SNR
  rescaling or a learned variance (the network would predict more than ``x̂_0``).
  """
  name = config.get("_class_name", "DDPMScheduler")
  if name not in SCHEDULER_CLASSES:
    raise UnsupportedSchedulerError(f"scheduler config _class_name={name!r} is not supported; "
                                    f"supported: {', '.join(SCHEDULER_CLASSES)}.")
  c = {**_DEFAULTS, **{k: v for k, v in config.items() if k in _DEFAULTS}}
  if c["rescale_betas_zero_snr"]:
    raise UnsupportedSchedulerError("scheduler config rescale_betas_zero_snr=true is not supported "
                                    "(ᾱ_{T-1} = 0 is σ = ∞).")
  if str(config.get("variance_type", "fixed_small")).startswith("learned"):
    raise UnsupportedSchedulerError(f"scheduler config variance_type={config['variance_type']!r} "
                                    "is not supported (a network that also predicts its variance).")
  if c["trained_betas"] is not None:
    beta = np.asarray(c["trained_betas"], np.float32)
  else:
    beta = betas(c["beta_schedule"], int(c["num_train_timesteps"]), float(c["beta_start"]),
                 float(c["beta_end"]))
  return schedule_from_betas(beta, c["prediction_type"])


def sigma_to_timestep(schedule: VPSchedule, sigma: Array) -> Array:
  """Continuous timestep of σ: ``t`` linear in ``log σ_t`` between grid levels, clamped to
  ``[0, T−1]``; exact (``t``) at ``σ = σ_t``. Any shape of σ; returns float32 of its shape."""
  log_sigmas = jnp.asarray(np.log(schedule.sigmas.astype(np.float64)), jnp.float32)
  grid = jnp.arange(log_sigmas.shape[0], dtype=jnp.float32)
  return jnp.interp(jnp.log(jnp.asarray(sigma, jnp.float32)), log_sigmas, grid)


def vp_input(x: Array, sigma: Array) -> Array:
  """``x_VP = x / √(1 + σ²)``: the VP network's input for the VE point ``x = x_0 + σ ε``."""
  return x / jnp.sqrt(1.0 + jnp.asarray(sigma)**2)


def denoised_from_output(output: Array, x: Array, sigma: Array, prediction_type: str) -> Array:
  """``x̂_0`` from a VP network's output at ``x_VP = x / √(1 + σ²)`` (``x`` the VE point).

  With ``√ᾱ = 1/√(1 + σ²)`` and ``√(1 − ᾱ) = σ/√(1 + σ²)``, diffusers' formulas become
  epsilon ``x − σ ε̂``; v_prediction ``√ᾱ x_VP − √(1 − ᾱ) v̂ = (x − σ v̂ √(1 + σ²))/(1 + σ²)``;
  sample ``x̂_0``. ``sigma`` broadcasts against ``x``.
  """
  sigma = jnp.asarray(sigma)
  if prediction_type == "epsilon":
    return x - sigma * output
  if prediction_type == "v_prediction":
    return (x - sigma * jnp.sqrt(1.0 + sigma**2) * output) / (1.0 + sigma**2)
  if prediction_type == "sample":
    return output
  raise UnsupportedSchedulerError(f"prediction_type={prediction_type!r} is not supported; "
                                  f"supported: {', '.join(PREDICTION_TYPES)}.")
