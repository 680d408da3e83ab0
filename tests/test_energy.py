"""Energy models: parameterisations, derived score/denoiser, teacher initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from fkdiff.data import gmm
from fkdiff.diffusion import edm
from fkdiff.models import MLP, EnergyModel, energy as energy_lib, init_from_teacher

SIGMA_DATA = 0.8


def _model(parameterization="thornton", zero=True, width=32):
  model = EnergyModel(MLP(width=width, depth=2, zero_init_output=zero), SIGMA_DATA,
                      parameterization)
  return model, model.init(jax.random.key(0), jnp.zeros(2), jnp.ones(()))


@pytest.mark.parametrize("parameterization", ["thornton", "autoencoder", "norm"])
def test_zero_network_is_the_diffused_gaussian(parameterization):
  """h ≡ 0: energy differences and scores equal those of N(0, σ_d² I) diffused to σ."""
  model, params = _model(parameterization, zero=True)
  gauss = gmm.make_mixture([1.0], [[0.0, 0.0]], [SIGMA_DATA**2])
  xs = jax.random.normal(jax.random.key(1), (6, 2)) * 2
  for sigma in [0.01, 0.5, 5.0]:
    e = jax.vmap(lambda x: energy_lib.energy(model, params, x, sigma))(xs)
    e_true = jax.vmap(lambda x: gmm.energy(gauss, x, sigma))(xs)
    np.testing.assert_allclose(e - e[0], e_true - e_true[0], rtol=1e-4, atol=1e-4)
    s = jax.vmap(lambda x: energy_lib.score(model, params, x, sigma))(xs)
    s_true = jax.vmap(lambda x: gmm.score(gauss, x, sigma))(xs)
    np.testing.assert_allclose(s, s_true, rtol=1e-4, atol=1e-5)


def test_thornton_denoiser_is_edm_with_a_conservative_field():
  """D = x − σ²∇E equals c_skip x + c_out ∇_y⟨h(y), y⟩ for a non-trivial network."""
  model, params = _model(zero=False)
  backbone = MLP(width=32, depth=2, zero_init_output=False)
  h_params = {"params": params["params"]["backbone"]}
  for sigma in [0.05, 0.7, 12.0]:
    x = jnp.array([0.3, -1.2])
    p = edm.preconditioning(sigma, SIGMA_DATA)
    inner = lambda y: jnp.sum(backbone.apply(h_params, y, p.c_noise) * y)
    expected = p.c_skip * x + p.c_out * jax.grad(inner)(p.c_in * x)
    np.testing.assert_allclose(energy_lib.denoiser(model, params, x, sigma), expected,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("parameterization", ["thornton", "autoencoder", "norm"])
def test_score_is_minus_gradient_by_finite_differences(parameterization):
  with enable_x64():
    model, params = _model(parameterization, zero=False)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x, sigma, h = jnp.array([0.4, -0.9], jnp.float64), jnp.float64(0.6), 1e-6
    e = lambda z: energy_lib.energy(model, params, z, sigma)
    fd = jnp.stack([-(e(x + h * v) - e(x - h * v)) / (2 * h) for v in jnp.eye(2)])
    np.testing.assert_allclose(energy_lib.score(model, params, x, sigma), fd, rtol=1e-6)
    value, score = energy_lib.energy_and_score(model, params, x, sigma)
    np.testing.assert_allclose(value, e(x), rtol=1e-12)
    np.testing.assert_allclose(score, fd, rtol=1e-6)


def test_bind_gives_the_analytic_signature():
  model, params = _model(zero=False)
  energy_fn = energy_lib.bind(model, params)
  x = jnp.array([0.1, 0.2])
  assert energy_fn(x, 0.5).shape == ()
  np.testing.assert_allclose(energy_lib.score_from_energy(energy_fn)(x, 0.5),
                             energy_lib.score(model, params, x, 0.5), rtol=1e-6)
  np.testing.assert_allclose(energy_lib.denoiser_from_energy(energy_fn)(x, 0.5),
                             energy_lib.denoiser(model, params, x, 0.5), rtol=1e-6)


def test_unknown_parameterization_is_rejected():
  with pytest.raises(ValueError, match="Unknown energy parameterization"):
    _model("quadratic")


def test_init_from_teacher_copies_weights_and_names_mismatches():
  teacher = MLP(width=32, depth=2, zero_init_output=False)
  t_params = teacher.init(jax.random.key(3), jnp.zeros(2), jnp.zeros(()))
  _, e_params = _model(zero=True)
  out = init_from_teacher(e_params, t_params)
  jax.tree.map(np.testing.assert_array_equal, out["params"]["backbone"], t_params["params"])
  wider = MLP(width=48, depth=2).init(jax.random.key(3), jnp.zeros(2), jnp.zeros(()))
  with pytest.raises(ValueError, match="architectures differ.*student \\(32,\\) vs teacher \\(48,\\)"):
    init_from_teacher(e_params, wider)
  deeper = MLP(width=32, depth=3).init(jax.random.key(3), jnp.zeros(2), jnp.zeros(()))
  with pytest.raises(ValueError, match="ResidualBlock_2.*only in the teacher"):
    init_from_teacher(e_params, deeper)
