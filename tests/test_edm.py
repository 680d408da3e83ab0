"""EDM conventions: preconditioning identities, loss weight, σ sampling and the Karras grid."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkdiff.data import gmm
from fkdiff.diffusion import edm

SIGMAS = jnp.array([0.002, 0.05, 0.5, 1.0, 7.0, 80.0])


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_preconditioning_identities(sigma_data):
  p = edm.preconditioning(SIGMAS, sigma_data)
  # Unit-variance network input for data of std σ_d.
  np.testing.assert_allclose(p.c_in**2 * (SIGMAS**2 + sigma_data**2), 1.0, rtol=1e-5)
  # Unit-variance effective training target (x_0 − c_skip x_σ)/c_out.
  target_var = ((1 - p.c_skip)**2 * sigma_data**2 + p.c_skip**2 * SIGMAS**2) / p.c_out**2
  np.testing.assert_allclose(target_var, 1.0, rtol=1e-4)
  # λ(σ) c_out² = 1: every σ contributes equally at initialisation.
  np.testing.assert_allclose(edm.loss_weight(SIGMAS, sigma_data) * p.c_out**2, 1.0, rtol=1e-5)
  np.testing.assert_allclose(p.c_noise, np.log(SIGMAS) / 4, rtol=1e-6)


def test_zero_network_is_the_exact_gaussian_denoiser():
  """With F ≡ 0, D = c_skip x is the posterior mean for data N(0, σ_d² I)."""
  sigma_data = 0.7
  data = gmm.make_mixture([1.0], [[0.0, 0.0]], [sigma_data**2])
  x = jax.random.normal(jax.random.key(0), (16, 2)) * 3
  for sigma in [0.01, 0.3, 2.0, 40.0]:
    d = edm.edm_denoiser(lambda y, c: jnp.zeros_like(y), x, sigma, sigma_data)
    exact = jax.vmap(gmm.denoiser, in_axes=(None, 0, None))(data, x, sigma)
    np.testing.assert_allclose(d, exact, rtol=1e-4, atol=1e-5)
    score = edm.score_from_denoiser(d, x, sigma)
    np.testing.assert_allclose(edm.denoiser_from_score(score, x, sigma), d, rtol=1e-4, atol=1e-4)


def test_karras_grid():
  s = edm.karras_sigmas(18, 0.002, 80.0, 7.0)
  assert s.shape == (18,)
  np.testing.assert_allclose([s[0], s[-1]], [80.0, 0.002], rtol=1e-5)
  assert bool(jnp.all(jnp.diff(s) < 0))
  # ρ = 1 is a uniform grid.
  np.testing.assert_allclose(jnp.diff(edm.karras_sigmas(5, 1.0, 5.0, 1.0)), -1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="num_steps"):
    edm.karras_sigmas(1)
  with pytest.raises(ValueError, match="sigma_min"):
    edm.karras_sigmas(10, 5.0, 1.0)


def test_log_normal_sigmas():
  s = edm.sample_sigmas(jax.random.key(1), (200_000,), -1.2, 1.2)
  log_s = np.log(np.asarray(s))
  # Standard errors: 1.2/sqrt(n) ≈ 0.0027 for the mean; ~0.002 for the std.
  assert abs(log_s.mean() + 1.2) < 0.015
  assert abs(log_s.std() - 1.2) < 0.015
