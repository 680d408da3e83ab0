"""Denoising score matching with EDM weighting (teacher training, METHOD.md §1)."""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from fkdiff.diffusion import edm

Array = jax.Array
# denoise_fn(params, x, sigma, label[, dropout_key]) -> D(x, σ); per example: x (*event), σ
# scalar. The dropout key is passed only when the loss is given one (training with dropout).
DenoiseFn = Callable[..., Array]


def example_keys(dropout_key: Optional[Array], batch: int) -> Optional[Array]:
  """Per-example dropout keys ``(batch,)`` of a loss's ``dropout_key`` (``None``: no dropout)."""
  return None if dropout_key is None else jax.random.split(dropout_key, batch)


def vmap_denoiser(denoise_fn: DenoiseFn, params, x: Array, sigma: Array, label: Optional[Array],
                  keys: Optional[Array]) -> Array:
  """``denoise_fn`` vmapped over examples (``params`` shared; ``label`` and the per-example
  dropout ``keys`` may be ``None``, and without keys ``denoise_fn`` is called as before)."""
  label_axis = None if label is None else 0
  if keys is None:
    return jax.vmap(denoise_fn, in_axes=(None, 0, 0, label_axis))(params, x, sigma, label)
  return jax.vmap(denoise_fn, in_axes=(None, 0, 0, label_axis, 0))(params, x, sigma, label, keys)


def noisy_batch(key: Array, x0: Array, p_mean: float, p_std: float):
  """Draws ``σ ~ logN(p_mean, p_std²)`` per example and ``x_σ = x_0 + σ ε``.

  Returns ``(x_sigma (B, *event), sigma (B,))``.
  """
  k_sigma, k_noise = jax.random.split(key)
  sigma = edm.sample_sigmas(k_sigma, x0.shape[:1], p_mean, p_std)
  noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
  expand = sigma.reshape((-1,) + (1,) * (x0.ndim - 1))
  return x0 + expand * noise, sigma


def weighted_sq_error(pred: Array, target: Array, sigma: Array, sigma_data: float) -> Array:
  """Per-example ``λ(σ) ‖pred − target‖²`` averaged over the event dims; returns ``(B,)``."""
  err = jnp.mean(jnp.square(pred - target).reshape(pred.shape[0], -1), axis=-1)
  return edm.loss_weight(sigma, sigma_data) * err


def make_dsm_loss(denoise_fn: DenoiseFn, sigma_data: float, p_mean: float = -1.2,
                  p_std: float = 1.2) -> Callable:
  """EDM denoising loss ``E λ(σ) ‖D(x_σ,σ) − x_0‖²``.

  Returns ``loss_fn(params, batch, key, dropout_key=None) -> (loss, aux)`` with ``batch = {'x':
  (B, *event), 'label': (B,) optional}``; ``aux`` holds per-example ``sigma`` and ``loss`` for
  σ-binned metrics. With a ``dropout_key`` (training with dropout), example ``i`` is denoised with
  ``denoise_fn(..., dropout_key=split(dropout_key, B)[i])``; without, deterministically.
  """

  def loss_fn(params, batch, key, dropout_key=None):
    x0 = batch["x"]
    x_sigma, sigma = noisy_batch(key, x0, p_mean, p_std)
    label = batch.get("label")
    denoised = vmap_denoiser(denoise_fn, params, x_sigma, sigma, label,
                             example_keys(dropout_key, x0.shape[0]))
    per_example = weighted_sq_error(denoised, x0, sigma, sigma_data)
    return jnp.mean(per_example), {"sigma": sigma, "loss": per_example}

  return loss_fn
