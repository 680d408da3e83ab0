"""Ground truth: exact diffused Gaussian-mixture energies, scores and products."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkdiff.data import gmm, toy


def _mixture():
  return gmm.make_mixture([0.5, 0.3, 0.2], [[-1.0, 0.5], [1.5, 0.0], [0.0, -1.5]],
                          [[[0.3, 0.1], [0.1, 0.2]], [[0.1, 0.0], [0.0, 0.4]], [[0.05, 0.0], [0.0, 0.05]]])


def _grid(lim, n):
  t = np.linspace(-lim, lim, n)
  xx, yy = np.meshgrid(t, t)
  return jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1)), (t[1] - t[0])**2


@pytest.mark.parametrize("sigma", [0.0, 0.3, 2.0])
def test_energy_is_normalised_on_a_grid(sigma):
  m = _mixture()
  pts, cell = _grid(6.0 + 4 * sigma, 301)
  e = jax.vmap(gmm.energy, in_axes=(None, 0, None))(m, pts, sigma)
  np.testing.assert_allclose(float(jnp.sum(jnp.exp(-e)) * cell), 1.0, rtol=2e-3)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_score_is_minus_energy_gradient_by_finite_differences(sigma):
  m = _mixture()
  xs = jax.random.normal(jax.random.key(0), (8, 2)) * 1.5
  h = 1e-3
  for x in xs:
    s = gmm.score(m, x, sigma)
    np.testing.assert_allclose(s, -jax.grad(gmm.energy, argnums=1)(m, x, sigma), rtol=2e-4,
                               atol=2e-4)
    fd = [-(gmm.energy(m, x + h * e, sigma) - gmm.energy(m, x - h * e, sigma)) / (2 * h)
          for e in jnp.eye(2)]
    np.testing.assert_allclose(s, jnp.stack(fd), rtol=2e-2, atol=2e-2)


def test_diffused_moments_match_sampled_noisy_data():
  """Monte-Carlo: x_0 + σ ε from sampled x_0 has the closed-form diffused mean and covariance."""
  m, sigma, n = _mixture(), 0.7, 400_000
  k0, k1 = jax.random.split(jax.random.key(2))
  x0, _ = gmm.sample(m, k0, n)
  xs = x0 + sigma * jax.random.normal(k1, x0.shape)
  mean, cov = gmm.mean_and_cov(gmm.diffuse(m, sigma))
  se = jnp.sqrt(jnp.diag(cov) / n)
  assert bool(jnp.all(jnp.abs(xs.mean(0) - mean) < 5 * se))
  np.testing.assert_allclose(jnp.cov(xs.T), cov, atol=0.01)


def test_exact_denoiser_is_the_posterior_mean():
  """E[(x_0 − D(x_σ)) g(x_σ)] = 0 for test functions g (orthogonality of the posterior mean)."""
  m, sigma, n = _mixture(), 0.6, 200_000
  k0, k1 = jax.random.split(jax.random.key(3))
  x0, _ = gmm.sample(m, k0, n)
  xs = x0 + sigma * jax.random.normal(k1, x0.shape)
  resid = x0 - jax.vmap(gmm.denoiser, in_axes=(None, 0, None))(m, xs, sigma)
  for g in [jnp.ones_like(xs), xs, jnp.sin(2 * xs), xs**2]:
    prod = resid * g
    mean, se = prod.mean(0), prod.std(0) / np.sqrt(n)
    assert bool(jnp.all(jnp.abs(mean) < 5 * se)), (mean, se)
  # And a perturbed denoiser is worse.
  assert float(jnp.mean(resid**2)) < float(jnp.mean((resid - 0.05 * xs)**2))


def test_sample_component_frequencies():
  m = _mixture()
  _, comp = gmm.sample(m, jax.random.key(4), 100_000)
  freq = np.bincount(np.asarray(comp), minlength=3) / 100_000
  np.testing.assert_allclose(freq, m.weights, atol=5 * np.sqrt(0.25 / 100_000))


def test_product_matches_numerical_integration():
  a, b = toy.ring(4, radius=1.5, std=0.4), toy.bar(separation=2.0, long_std=1.0, short_std=0.3)
  prod, log_z = gmm.product(a, b)
  assert prod.weights.shape == (8,)
  pts, cell = _grid(5.0, 401)
  log_pa = jax.vmap(gmm.log_prob, in_axes=(None, 0))(a, pts)
  log_pb = jax.vmap(gmm.log_prob, in_axes=(None, 0))(b, pts)
  z_grid = jnp.sum(jnp.exp(log_pa + log_pb)) * cell
  np.testing.assert_allclose(float(jnp.exp(log_z)), float(z_grid), rtol=2e-3)
  log_prod = jax.vmap(gmm.log_prob, in_axes=(None, 0))(prod, pts)
  np.testing.assert_allclose(log_prod, log_pa + log_pb - log_z, atol=2e-3)


def test_product_of_single_gaussians_closed_form():
  """N(−1,1)·N(1,1) ∝ N(0, 1/2), with Z = N(−1; 1, 2)."""
  a = gmm.make_mixture([1.0], [[-1.0]], [1.0])
  b = gmm.make_mixture([1.0], [[1.0]], [1.0])
  prod, log_z = gmm.product(a, b)
  np.testing.assert_allclose(prod.means, [[0.0]], atol=1e-6)
  np.testing.assert_allclose(prod.covs, [[[0.5]]], rtol=1e-6)
  np.testing.assert_allclose(log_z, -0.5 * np.log(4 * np.pi) - 1.0, rtol=1e-6)


def test_layouts_and_validation():
  assert toy.ring(8).means.shape == (8, 2)
  assert toy.grid(3).means.shape == (9, 2)
  np.testing.assert_allclose(toy.unequal((0.7, 0.2, 0.1)).weights, [0.7, 0.2, 0.1], rtol=1e-6)
  bar = toy.bar(vertical=True)
  assert float(bar.covs[0, 1, 1]) > float(bar.covs[0, 0, 0])
  with pytest.raises(ValueError, match="Unknown toy mixture"):
    toy.get_mixture("spiral")
  with pytest.raises(ValueError, match="positive definite"):
    gmm.make_mixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])
  with pytest.raises(ValueError, match="weights"):
    gmm.make_mixture([1.0, 2.0], [[0.0, 0.0]], [1.0])
  with pytest.raises(ValueError, match="positive"):
    gmm.make_mixture([0.0], [[0.0, 0.0]], [1.0])


def test_label_energy_matches_the_cholesky_energies():
  """The eigenbasis energies of a label-conditional mixture (fitted with one and with two
  Gaussians per label) equal :func:`gmm.energy` of each label's components alone (weights
  renormalised) and, for the null label, of the whole mixture."""
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), [40, 25, 35])
  x = rng.normal(size=(100, 5)) * [1.0, 0.5, 2.0, 1.0, 0.3] + 2.0 * labels[:, None]
  fitted, of = gmm.fit_by_label(x.reshape(100, 5, 1), labels, 3, ridge=0.01)   # any event shape
  np.testing.assert_array_equal(of, [0, 1, 2])
  np.testing.assert_allclose(fitted.weights, [0.40, 0.25, 0.35], rtol=1e-6)
  np.testing.assert_allclose(fitted.means[1], x[labels == 1].mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(fitted.covs[2], np.cov(x[labels == 2], rowvar=False) + 0.01 * np.eye(5),
                             rtol=1e-5, atol=1e-6)
  two, of_two = gmm.fit_by_label(x, labels, 3, ridge=0.01, components=2)
  np.testing.assert_array_equal(of_two, [0, 0, 1, 1, 2, 2])
  np.testing.assert_allclose(two.weights[2] + two.weights[3], 0.25, rtol=1e-5)
  point = jnp.asarray(rng.normal(size=5) + 2.0, jnp.float32)
  for mixture, comps in ((fitted, of), (two, of_two)):
    em = gmm.eigen(mixture, comps)
    for sigma in (0.0, 0.3, 5.0):
      for c in range(3):
        k = np.flatnonzero(comps == c)
        own = gmm.GaussianMixture(mixture.weights[k] / jnp.sum(mixture.weights[k]),
                                  mixture.means[k], mixture.covs[k])
        np.testing.assert_allclose(gmm.label_energy(em, point, sigma, c),
                                   gmm.energy(own, point, sigma), rtol=1e-4)
      np.testing.assert_allclose(gmm.label_energy(em, point, sigma, 3),
                                 gmm.energy(mixture, point, sigma), rtol=1e-4)
  with pytest.raises(ValueError, match="2 points or more"):
    gmm.fit_by_label(x, np.zeros(100, int), 2)
