"""Energy models: parameterisations, derived score/denoiser, remat, teacher initialisation.

Tolerances: float32 comparisons of O(1–10) quantities computed along different but exact routes
(closed-form mixture vs autodiff through the network) use ``rtol = 1e-4`` / ``atol ≤ 1e-4``,
about 100× float32 round-off at these magnitudes. Finite differences run in float64 with central
steps ``h = 1e-6``: truncation ``O(h²) ≈ 1e-12`` and round-off ``≈ 1e-16/h = 1e-10`` of the
O(1) energies, so ``rtol = 1e-6`` has a wide margin.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from fkdiff.data import gmm
from fkdiff.diffusion import edm
from fkdiff.models import MLP, EnergyModel, energy as energy_lib, init_from_teacher

SIGMA_DATA = 0.8
PARAMETERIZATIONS = ["thornton", "autoencoder", "norm"]


def _model(parameterization="thornton", zero=True, width=32, remat=False):
  model = EnergyModel(MLP(width=width, depth=2, zero_init_output=zero), SIGMA_DATA,
                      parameterization, remat=remat)
  return model, model.init(jax.random.key(0), jnp.zeros(2), jnp.ones(()))


def _points(n=6, seed=1):
  return jax.random.normal(jax.random.key(seed), (n, 2)) * 2


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_zero_network_is_the_diffused_gaussian(parameterization):
  """h ≡ 0: energy differences and scores equal those of N(0, σ_d² I) diffused to σ."""
  model, params = _model(parameterization, zero=True)
  gauss = gmm.make_mixture([1.0], [[0.0, 0.0]], [SIGMA_DATA**2])
  xs = _points()

  @jax.jit
  def compare(sigma):
    e = jax.vmap(lambda x: energy_lib.energy(model, params, x, sigma))(xs)
    s = jax.vmap(lambda x: energy_lib.score(model, params, x, sigma))(xs)
    e_true = jax.vmap(lambda x: gmm.energy(gauss, x, sigma))(xs)
    s_true = jax.vmap(lambda x: gmm.score(gauss, x, sigma))(xs)
    return e - e[0], e_true - e_true[0], s, s_true

  for sigma in [0.01, 0.5, 5.0]:
    de, de_true, s, s_true = compare(sigma)
    np.testing.assert_allclose(de, de_true, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(s, s_true, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_denoiser_is_edm_with_a_conservative_field(parameterization):
  """D = x − σ²∇E equals c_skip x + c_out ∇_y φ(y) for a non-trivial network, where φ is
  ⟨h, y⟩ (thornton), ⟨h, y⟩ − ½‖h‖² (autoencoder), −½‖h‖² (norm): the σ_d/σ scaling puts the
  network at the EDM output scale c_out in every form."""
  model, params = _model(parameterization, zero=False)
  backbone = MLP(width=32, depth=2, zero_init_output=False)
  h_params = {"params": params["params"]["backbone"]}
  potential = {"thornton": lambda h, y: jnp.sum(h * y),
               "autoencoder": lambda h, y: jnp.sum(h * y) - 0.5 * jnp.sum(h**2),
               "norm": lambda h, y: -0.5 * jnp.sum(h**2)}[parameterization]

  @jax.jit
  def compare(x, sigma):
    p = edm.preconditioning(sigma, SIGMA_DATA)
    phi = lambda y: potential(backbone.apply(h_params, y, p.c_noise), y)
    expected = p.c_skip * x + p.c_out * jax.grad(phi)(p.c_in * x)
    return energy_lib.denoiser(model, params, x, sigma), expected

  for sigma in [0.05, 0.7, 12.0]:
    np.testing.assert_allclose(*compare(jnp.array([0.3, -1.2]), sigma), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_score_is_minus_gradient_by_finite_differences(parameterization):
  with enable_x64():
    model, params = _model(parameterization, zero=False)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x, sigma, h = jnp.array([0.4, -0.9], jnp.float64), jnp.float64(0.6), 1e-6
    # Not jitted: the MLP embeds c_noise in float32 (a constant in x), and jit vs eager
    # round that island differently (~1e-9 relative); eager matches energy_and_score exactly.
    e = lambda z: energy_lib.energy(model, params, z, sigma)
    assert e(x).shape == () and e(x).dtype == jnp.float64
    fd = jnp.stack([-(e(x + h * v) - e(x - h * v)) / (2 * h) for v in jnp.eye(2)])
    np.testing.assert_allclose(energy_lib.score(model, params, x, sigma), fd, rtol=1e-6)
    value, score = energy_lib.energy_and_score(model, params, x, sigma)
    np.testing.assert_allclose(value, e(x), rtol=1e-12)
    np.testing.assert_allclose(score, fd, rtol=1e-6)
    np.testing.assert_allclose(energy_lib.denoiser(model, params, x, sigma),
                               x + sigma**2 * fd, rtol=1e-6)


def test_remat_changes_nothing_but_memory():
  """Same parameter tree, same energies, same second-order gradients (as in distillation)."""
  model, params = _model(zero=False, width=16)
  model_remat, params_remat = _model(zero=False, width=16, remat=True)
  assert jax.tree.structure(params) == jax.tree.structure(params_remat)
  x, sigma = jnp.array([0.4, -0.9]), 0.6

  def second_order(m, p):
    return jax.grad(lambda q: jnp.sum(energy_lib.score(m, q, x, sigma)**2))(p)

  np.testing.assert_allclose(energy_lib.energy(model_remat, params, x, sigma),
                             energy_lib.energy(model, params, x, sigma), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.jit(second_order, static_argnums=0)(model_remat, params),
               jax.jit(second_order, static_argnums=0)(model, params))


def test_bind_gives_the_analytic_signature():
  """A bound learned energy and a closed-form one are interchangeable ``energy_fn(x, σ)``."""
  model, params = _model(zero=False)
  x = jnp.array([0.1, 0.2])
  mix = gmm.make_mixture([0.3, 0.7], [[-1.0, 0.0], [1.0, 0.5]], [0.2, 0.1])
  for energy_fn in [energy_lib.bind(model, params), lambda z, s: gmm.energy(mix, z, s)]:
    assert energy_fn(x, 0.5).shape == ()
    batched = jax.jit(jax.vmap(energy_lib.score_from_energy(energy_fn), in_axes=(0, None)))
    assert batched(_points(), 0.5).shape == (6, 2)
  energy_fn = energy_lib.bind(model, params)
  np.testing.assert_allclose(energy_lib.score_from_energy(energy_fn)(x, 0.5),
                             energy_lib.score(model, params, x, 0.5), rtol=1e-6)
  np.testing.assert_allclose(energy_lib.denoiser_from_energy(energy_fn)(x, 0.5),
                             energy_lib.denoiser(model, params, x, 0.5), rtol=1e-6)
  analytic = lambda z, s: gmm.energy(mix, z, s)
  np.testing.assert_allclose(energy_lib.score_from_energy(analytic)(x, 0.5),
                             gmm.score(mix, x, 0.5), rtol=1e-4)
  np.testing.assert_allclose(energy_lib.denoiser_from_energy(analytic)(x, 0.5),
                             gmm.denoiser(mix, x, 0.5), rtol=1e-4)


def test_unknown_parameterization_is_rejected():
  with pytest.raises(ValueError, match="Unknown energy parameterization"):
    _model("quadratic")


def test_init_from_teacher_copies_weights_and_names_mismatches():
  teacher = MLP(width=32, depth=2, zero_init_output=False)
  t_params = teacher.init(jax.random.key(3), jnp.zeros(2), jnp.zeros(()))
  model, e_params = _model(zero=True)
  out = init_from_teacher(e_params, t_params)
  jax.tree.map(np.testing.assert_array_equal, out["params"]["backbone"], t_params["params"])
  assert jax.tree.structure(out) == jax.tree.structure(e_params)
  # The student's h is now the teacher's F: the energy is no longer the Gaussian base.
  x = jnp.array([0.3, -0.4])
  assert energy_lib.energy(model, out, x, 0.5) != energy_lib.energy(model, e_params, x, 0.5)
  wider = MLP(width=48, depth=2).init(jax.random.key(3), jnp.zeros(2), jnp.zeros(()))
  with pytest.raises(ValueError, match="architectures differ.*student \\(32,\\) vs teacher \\(48,\\)"):
    init_from_teacher(e_params, wider)
  deeper = MLP(width=32, depth=3).init(jax.random.key(3), jnp.zeros(2), jnp.zeros(()))
  with pytest.raises(ValueError, match="ResidualBlock_2.*only in the teacher"):
    init_from_teacher(e_params, deeper)
  with pytest.raises(ValueError, match="teacher backbone's variables"):
    init_from_teacher(e_params, t_params["params"])
  with pytest.raises(ValueError, match="EnergyModel parameters"):
    init_from_teacher(t_params, t_params)
