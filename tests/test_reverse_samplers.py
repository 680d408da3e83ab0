"""Heun (probability-flow ODE) and Euler–Maruyama (reverse SDE) driven by the exact score of a
2-D Gaussian mixture reproduce its mean, covariance and mode masses within Monte-Carlo error."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkdiff.data import gmm, toy
from fkdiff.diffusion import karras_sigmas
from fkdiff.sampling import reverse

N = 4000
SIGMA_MAX = 20.0


@pytest.fixture(scope="module")
def mixture():
  return toy.unequal(weights=(0.6, 0.3, 0.1), radius=1.5, std=0.3)


def _check_against_mixture(x, mix, extra_tol=0.0):
  """Mean (4 s.e.), covariance (4 s.e.) and soft mode masses (4 s.e.), s.e. from the samples."""
  x = np.asarray(x, np.float64)
  assert np.all(np.isfinite(x))
  mean, cov = (np.asarray(a, np.float64) for a in gmm.mean_and_cov(mix))
  n = x.shape[0]
  se_mean = np.sqrt(np.diag(cov) / n)
  np.testing.assert_array_less(np.abs(x.mean(0) - mean), 4 * se_mean + extra_tol)
  c = x - x.mean(0)
  prods = np.einsum("ni,nj->nij", c, c)
  se_cov = prods.std(0) / np.sqrt(n)
  np.testing.assert_array_less(np.abs(prods.mean(0) - cov), 4 * se_cov + extra_tol)
  resp = np.asarray(jax.vmap(functools.partial(gmm.responsibilities, mix))(jnp.asarray(x)))
  se_mass = resp.std(0) / np.sqrt(n)       # E_p[r_k(x)] = w_k exactly
  np.testing.assert_array_less(np.abs(resp.mean(0) - np.asarray(mix.weights)),
                               4 * se_mass + extra_tol)


def test_prior_sample_shape_and_scale():
  x = reverse.prior_sample(jax.random.key(0), 20000, (2, 3), 4.0, 0.5)
  assert x.shape == (20000, 2, 3)
  assert abs(float(jnp.std(x)) - np.sqrt(16.25)) < 0.03


def test_heun_exact_denoiser(mixture):
  sigma_d = gmm.data_std(mixture)
  x0 = reverse.prior_sample(jax.random.key(1), N, (2,), SIGMA_MAX, sigma_d)
  sigmas = karras_sigmas(48, 0.002, SIGMA_MAX)
  denoise = functools.partial(gmm.denoiser, mixture)
  x = jax.jit(reverse.heun_sample, static_argnums=0)(denoise, x0, sigmas)
  assert x.shape == (N, 2)
  _check_against_mixture(x, mixture)


@pytest.mark.slow   # statistical
def test_euler_maruyama_exact_score(mixture):
  sigma_d = gmm.data_std(mixture)
  x0 = reverse.prior_sample(jax.random.key(2), N, (2,), SIGMA_MAX, sigma_d)
  sigmas = karras_sigmas(256, 0.002, SIGMA_MAX)
  score = functools.partial(gmm.score, mixture)
  x = jax.jit(reverse.euler_maruyama_sample, static_argnums=1)(jax.random.key(3), score, x0,
                                                               sigmas)
  # EM has an O(step) discretisation bias on top of MC error; 0.01 bounds it at 256 steps.
  _check_against_mixture(x, mixture, extra_tol=0.01)
