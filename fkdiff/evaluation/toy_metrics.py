"""Metrics of samples and scores against an exact Gaussian-mixture density (toy data)."""

from typing import Callable

import jax
import jax.numpy as jnp

from fkdiff.data import gmm as gmm_lib

Array = jax.Array


def score_fn_from_denoiser(denoise_fn: Callable) -> Callable:
  """``score_fn(x, σ) = (D(x,σ) − x)/σ²`` from a per-example denoiser ``denoise_fn(x, σ)``."""
  return lambda x, sigma: (denoise_fn(x, sigma) - x) / sigma**2


def relative_score_error(score_fn: Callable, mixture: gmm_lib.GaussianMixture, sigma: float,
                         key: Array, num: int = 4096) -> Array:
  """``sqrt(E‖s − s*‖² / E‖s*‖²)`` over ``num`` points ``x ~ p_σ``; ``s*`` is the exact score.

  Pure and jittable. When ``score_fn`` closes over network parameters, jit a wrapper that takes
  the parameters as an argument (see ``fkdiff.training.train.evaluate``) rather than capturing
  them as constants.
  """
  x, _ = gmm_lib.sample(mixture, key, num, sigma)
  return score_error_at(score_fn, lambda z, s: gmm_lib.score(mixture, z, s), x, sigma)


def score_error_at(score_fn: Callable, exact_score_fn: Callable, x: Array, sigma) -> Array:
  """``sqrt(Σ‖s − s*‖² / Σ‖s*‖²)`` over the points ``x (N, *event)`` at σ (drawn from ``p_σ``
  for :func:`relative_score_error`'s figure); ``exact_score_fn(x, σ)`` is ``s*``."""
  sig = jnp.full((), sigma)
  s = jax.vmap(score_fn, in_axes=(0, None))(x, sig)
  s_true = jax.vmap(exact_score_fn, in_axes=(0, None))(x, sig)
  return jnp.sqrt(jnp.sum((s - s_true)**2) / jnp.sum(s_true**2))


@jax.jit
def mode_masses(mixture: gmm_lib.GaussianMixture, samples: Array) -> Array:
  """Fraction of ``samples (N, d)`` whose most likely component is each ``k``; ``(K,)``."""
  resp = jax.vmap(gmm_lib.responsibilities, in_axes=(None, 0))(mixture, samples)
  return jnp.mean(jax.nn.one_hot(jnp.argmax(resp, -1), mixture.num_components), axis=0)


def mode_mass_metrics(mixture: gmm_lib.GaussianMixture, samples: Array,
                      target_masses: Array | None = None) -> dict:
  """Mode-mass errors of ``samples`` against ``target_masses`` (default: mixture weights).

  Returns ``mode_mass_tv`` (total variation ``½Σ|m−w|``), ``mode_mass_max_error`` and the masses.
  """
  target = mixture.weights if target_masses is None else target_masses
  masses = mode_masses(mixture, samples)
  err = jnp.abs(masses - target)
  return {"mode_mass_tv": float(0.5 * jnp.sum(err)), "mode_mass_max_error": float(jnp.max(err)),
          "mode_masses": [float(m) for m in masses]}
