"""Unweighted baselines on the same target objects (Du et al. 2023, METHOD.md §4).

- :func:`naive_reverse_sample`: reverse diffusion (Euler–Maruyama) driven by the "score" of a
  composed potential, ``−∇_x U(x, σ)`` — summed scores for a product, β-scaled score for a
  tempered model. No weights: it is **biased** (e.g. variance 1/3 instead of 1/2 for
  ``N(−1,1)·N(1,1)`` or for ``N(0,1)`` at β = 2) because ``Σ_i ∇ log p_{i,σ}`` is not the score of
  the diffused product.
- Annealed ULA / MALA / HMC: :func:`fkdiff.sampling.mcmc.annealed_mcmc_sample`.
"""

from typing import Callable

import jax

from fkdiff.sampling.mcmc import annealed_mcmc_sample  # noqa: F401  (re-exported baseline)
from fkdiff.sampling.reverse import euler_maruyama_sample

Array = jax.Array


def naive_reverse_sample(key: Array, potential: Callable[[Array, Array], Array], x_init: Array,
                         sigmas: Array) -> Array:
  """Reverse SDE with score ``−∇U(x, σ)`` (no weights, biased); returns x at ``sigmas[-1]``.

  Args:
    key: PRNG key.
    potential: per-example ``U(x, σ) -> scalar``.
    x_init: ``(N, *event_shape)``, e.g. from :func:`fkdiff.sampling.reverse.prior_sample`.
    sigmas: decreasing ``(K,)`` levels.
  """
  grad = jax.grad(potential)
  return euler_maruyama_sample(key, lambda x, s: -grad(x, s), x_init, sigmas)
