"""EDM (variance-exploding) diffusion conventions: preconditioning, noise levels, σ grids.

Notation follows Karras et al. (2022) and the project's METHOD.md §1:
``x_σ = x_0 + σ ε``; the denoiser ``D(x, σ)`` estimates ``E[x_0 | x_σ = x]`` and the score is
``s(x, σ) = (D(x, σ) − x) / σ²``.

All functions here are pure and work on scalars or arrays of σ (broadcasting).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Precond(NamedTuple):
  """EDM preconditioning coefficients at a noise level σ (each shaped like σ)."""
  c_skip: Array
  c_out: Array
  c_in: Array
  c_noise: Array


def preconditioning(sigma: Array, sigma_data: float) -> Precond:
  """Returns ``(c_skip, c_out, c_in, c_noise)`` of EDM at noise level ``sigma``."""
  sigma = jnp.asarray(sigma)
  total = sigma**2 + sigma_data**2
  return Precond(
      c_skip=sigma_data**2 / total,
      c_out=sigma * sigma_data / jnp.sqrt(total),
      c_in=1.0 / jnp.sqrt(total),
      c_noise=jnp.log(sigma) / 4.0,
  )


def edm_denoiser(net_fn: Callable[..., Array], x: Array, sigma: Array,
                 sigma_data: float, *net_args) -> Array:
  """EDM denoiser ``D(x,σ) = c_skip x + c_out F(c_in x, c_noise)``.

  Args:
    net_fn: the free network ``F(y, c_noise, *net_args)``; output shaped like ``y``.
    x: noisy input, any shape (per example or batched; ``sigma`` must broadcast against the
      leading dims when batched — pass it shaped ``(B, 1, ...)`` in that case).
    sigma: noise level, scalar or broadcastable to ``x``.
    sigma_data: data standard deviation σ_d.
    *net_args: extra arguments for the network (e.g. labels).
  Returns:
    The denoised estimate, shaped like ``x``.
  """
  p = preconditioning(sigma, sigma_data)
  return p.c_skip * x + p.c_out * net_fn(p.c_in * x, p.c_noise, *net_args)


def score_from_denoiser(denoised: Array, x: Array, sigma: Array) -> Array:
  """Score ``(D(x,σ) − x)/σ²`` from a denoiser output."""
  return (denoised - x) / jnp.asarray(sigma)**2


def denoiser_from_score(score: Array, x: Array, sigma: Array) -> Array:
  """Denoiser ``x + σ² s(x,σ)`` (Tweedie) from a score."""
  return x + jnp.asarray(sigma)**2 * score


def loss_weight(sigma: Array, sigma_data: float) -> Array:
  """EDM loss weight ``λ(σ) = (σ²+σ_d²)/(σ σ_d)²``."""
  return (sigma**2 + sigma_data**2) / (sigma * sigma_data)**2


def sample_sigmas(key: Array, shape, p_mean: float = -1.2,
                  p_std: float = 1.2) -> Array:
  """Training noise levels, ``ln σ ~ N(p_mean, p_std²)``; returns an array of ``shape``."""
  return jnp.exp(p_mean + p_std * jax.random.normal(key, shape))


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0) -> Array:
  """Karras et al. σ grid: ``num_steps`` decreasing levels from σ_max to σ_min (inclusive).

  ``σ_i = (σ_max^{1/ρ} + i/(K−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ`` for ``i = 0..K−1``.
  """
  if num_steps < 2:
    raise ValueError(f"karras_sigmas needs num_steps >= 2, got {num_steps}.")
  if not 0 < sigma_min < sigma_max:
    raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
  i = jnp.arange(num_steps, dtype=jnp.float32) / (num_steps - 1)
  inv_rho = 1.0 / rho
  return (sigma_max**inv_rho + i * (sigma_min**inv_rho - sigma_max**inv_rho))**rho
