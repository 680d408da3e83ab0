"""SMC in image dimensions against closed forms (fkdiff.data.spectral, fkdiff.experiments.highdim).

The spectral mixtures' energies are checked against the dense Gaussian-mixture energies of
fkdiff.data.gmm; the plane references against exact draws and the tempering rule; the new
score-only options (shared Hutchinson probes, the Hessian-shaped proposal) against their closed
forms; and, at d = 1,024, the score-only sampler with matched noise and the shaped proposal
against the exact tempered and product targets, where today's default (unit noise) and plain
Euler–Maruyama proposals miss them.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkdiff.data import gmm, spectral
from fkdiff.experiments import highdim
from fkdiff.sampling import ScoreOnly, targets
from fkdiff.sampling import smc as smc_lib


def dense_mixture(sm: spectral.SpectralMixture, label=None) -> gmm.GaussianMixture:
  d = sm.dim
  q = np.stack([np.asarray(spectral.idct(e.reshape(sm.event_shape))).reshape(-1)
                for e in np.eye(d, dtype=np.float32)], axis=1)          # x = Q z
  cov = q @ np.diag(np.asarray(sm.eig, np.float64).reshape(-1)) @ q.T
  z = np.zeros((sm.plane_means.shape[0], d))
  z[:, list(spectral.PLANE)] = np.asarray(sm.plane_means)
  means = z @ q.T
  w = np.exp(np.asarray(sm.log_weights, np.float64))
  if label is not None:
    keep = np.asarray(sm.labels)[:, label]
    w, means = w[keep], means[keep]
  return gmm.make_mixture(w, means, np.repeat(cov[None], len(w), 0))


def test_spectral_energy_is_the_dense_mixture_energy():
  sm = spectral.make((4, 3), [0.6, 0.4], [[-2, 0.5], [1, -1]], labels=[[True], [False]])
  x = spectral.sample(sm, jax.random.PRNGKey(0), 5, sigma=0.3)[0]
  for sigma in (0.01, 0.5, 3.0):
    got = jax.vmap(lambda xi: spectral.energy(sm, xi, sigma))(x)
    want = jax.vmap(lambda xi: gmm.energy(dense_mixture(sm), xi.reshape(-1), sigma))(x)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-4)
    got_c = jax.vmap(lambda xi: spectral.energy(sm, xi, sigma, label=0))(x)
    want_c = jax.vmap(lambda xi: gmm.energy(dense_mixture(sm, 0), xi.reshape(-1), sigma))(x)
    np.testing.assert_allclose(got_c, want_c, rtol=2e-5, atol=2e-4)
    null = jax.vmap(lambda xi: spectral.energy(sm, xi, sigma, label=1))(x)   # the null label
    np.testing.assert_allclose(null, got, rtol=1e-6)


def test_dct_is_orthonormal_and_matches_scipy_convention():
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 6, 3))
  z = spectral.dct(x)
  np.testing.assert_allclose(jnp.sum(z**2), jnp.sum(x**2), rtol=1e-5)
  np.testing.assert_allclose(spectral.idct(z), x, atol=1e-5)
  np.testing.assert_allclose(z, jax.scipy.fft.dctn(x, type=2, norm="ortho"), atol=1e-5)


def test_plane_reference_against_exact_draws_and_tempering():
  sm = spectral.make((16, 16), [0.5, 0.3, 0.2], [[-6, 0], [0, 0], [6, 0]])
  parts = [spectral.condition_parts(sm, None)]
  centres = np.asarray(sm.plane_means)
  ref1 = spectral.plane_reference(parts, [1.0], 0.002, sm.eig, centres)
  np.testing.assert_allclose(ref1.mode_masses, [0.5, 0.3, 0.2], atol=2e-3)
  np.testing.assert_allclose(ref1.rest_var[2:], np.asarray(sm.eig).reshape(-1)[2:] + 0.002**2,
                             rtol=1e-6)
  x, _ = spectral.sample(sm, jax.random.PRNGKey(0), 20000, sigma=0.002)
  z = np.asarray(spectral.coordinates(x))
  np.testing.assert_allclose(z.var(0) / ref1.rest_var, 1.0, atol=0.06)
  modes = spectral.assign_modes(z, centres, sm.eig)
  np.testing.assert_allclose(np.bincount(modes) / len(modes), ref1.mode_masses, atol=0.015)
  # Tempering well-separated components of equal covariance: masses ∝ w^β, widths / β.
  ref4 = spectral.plane_reference(parts, [4.0], 0.002, sm.eig, centres)
  w4 = np.array([0.5, 0.3, 0.2])**4
  np.testing.assert_allclose(ref4.mode_masses, w4 / w4.sum(), atol=2e-3)
  np.testing.assert_allclose(ref4.rest_var[2:], ref1.rest_var[2:] / 4, rtol=1e-6)


def test_hutchinson_probes_are_shared_and_unbiased():
  """Every particle of a level gets the same probes: on a Gaussian (one Hessian) all particles'
  estimates agree exactly, and their mean over keys is the exact Laplacian."""
  sm = spectral.make((8, 8), [1.0], [[0.0, 0.0]])
  tgt = targets.tempered(functools.partial(spectral.energy, sm), 2.0)
  scheme = ScoreOnly(noise="matched", laplacian="hutchinson", probes=4)
  smc = smc_lib.build(tgt, scheme)
  x = spectral.sample(sm, jax.random.PRNGKey(0), 4, sigma=0.5)[0]
  sigma = jnp.float32(0.5)
  rates = jax.jit(jax.vmap(lambda k: smc_lib._evaluate(smc, x, sigma, k).rate))(
      jax.random.split(jax.random.PRNGKey(1), 100))                      # (keys, particles)
  np.testing.assert_allclose(rates - rates[:, :1], 0.0, atol=1e-3 * np.abs(rates).max())
  exact_smc = smc_lib.build(tgt, scheme._replace(laplacian="exact"))
  exact = jax.jit(lambda y: smc_lib._evaluate(exact_smc, y, sigma))(x)
  se = rates[:, 0].std() / np.sqrt(rates.shape[0])
  assert abs(rates[:, 0].mean() - exact.rate[0]) < 4 * se + 1e-3 * abs(exact.rate[0])


def test_shaped_proposal_is_second_order_on_a_gaussian():
  """One step from the exact ``p_σk^β`` of a Gaussian: the shaped proposal's covariance is
  ``(Δ/β)(I − ΔH/2)²`` (exact: ``(Δ/β)(I − ΔH)``), Euler–Maruyama's ``(Δ/β) I``."""
  sm = spectral.make((16, 16), [1.0], [[0.0, 0.0]])
  beta, s0, s1 = 2.0, 0.3, 0.2
  tgt = targets.tempered(functools.partial(spectral.energy, sm), beta)
  lam = np.asarray(sm.eig, np.float64).reshape(-1)
  delta = s0**2 - s1**2
  h = 1.0 / (lam + s0**2)
  exact = (lam + s1**2) / beta
  x, _ = spectral.sample(sm, jax.random.PRNGKey(0), 8192, sigma=s0)
  x = x / np.sqrt(beta)                                       # exact draws of p_σ0^β
  noise = jnp.sqrt(delta / beta) * jax.random.normal(jax.random.PRNGKey(1), x.shape)
  grad = jax.vmap(jax.grad(lambda xi: tgt(xi, s0)))(x)
  for proposal, want in (("shaped", exact + (delta / beta) * (delta * h / 2)**2),
                         ("euler", exact + (delta / beta) * delta * h)):
    move = functools.partial(ScoreOnly(noise="matched", proposal=proposal).move, tgt)
    x1 = jax.vmap(lambda a, g, n: move(a, g, n, delta / beta, s0))(x, grad, noise)
    var = np.asarray(spectral.coordinates(x1)).var(0)
    assert abs(np.mean(var / want) - 1) < 0.01, proposal
  assert np.mean((exact + (delta / beta) * delta * h) / exact) > 1.05   # EM visibly wider


def test_new_options_are_validated():
  for bad in (dict(laplacian="mc"), dict(probes=0), dict(proposal="heun")):
    with pytest.raises(ValueError):
      smc_lib.build(lambda x, s: jnp.sum(x**2), ScoreOnly(**bad))


@pytest.mark.parametrize("name", ["tempered2", "product"])
def test_shaped_score_only_holds_at_d_1024(name):
  """d = 1,024: the shaped score-only sampler (matched noise, shared Hutchinson probes) matches
  the exact target's variance on every principal axis and its mode masses; the default's
  unit-noise proposal is too narrow and Euler–Maruyama's too wide."""
  prob = highdim.problem(name, (32, 32))
  scores = lambda method, levels: highdim.measure(prob, method, levels, 128, 4, 1)
  shaped = scores("shaped", 48)
  assert abs(shaped["var_ratio"] - 1) < 0.04, shaped
  assert shaped["mode_mass_error"] < 0.09, shaped       # 512 samples, max over the modes
  unit = scores("score_unit", 48)
  assert unit["var_ratio"] < 0.9, unit
  euler = scores("matched_euler", 48)
  assert euler["var_ratio"] > 1.1, euler


def test_settings_known_wrong_in_high_dimension_warn():
  sm = spectral.make((16, 20), [0.5, 0.5], [[-3, 0], [3, 0]])
  tgt = targets.tempered(functools.partial(spectral.energy, sm), 2.0)
  sigmas = jnp.array([10.0, 1.0, 0.1])
  run = lambda w, t=tgt: jax.eval_shape(      # the warnings come at tracing: nothing runs
      lambda k: smc_lib.smc_sample(k, t, sigmas, 4, (16, 20), sigma_data=0.5, scheme=w),
      jax.random.PRNGKey(0))
  with pytest.warns(smc_lib.SMCSettingWarning, match="noise='unit'"):
    run(ScoreOnly())
  with pytest.warns(smc_lib.SMCSettingWarning, match="proposal='euler'"):
    run(ScoreOnly(noise="matched", laplacian="hutchinson"))
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("error", smc_lib.SMCSettingWarning)
    run(smc_lib.weights_lib.DEFAULT)                                  # the default: no warning
    run(ScoreOnly(), functools.partial(spectral.energy, sm))          # scale 1: no warning


def test_diagnostics_name_degenerate_and_invalid_weights():
  """d = 1,024, exact-ratio weights on 8 levels: the weights collapse (ESS < 2) and the
  diagnostics say so; the default keeps them and says nothing."""
  prob = highdim.problem("tempered2", (32, 32))
  sigmas = jnp.asarray(highdim.karras_sigmas(9, highdim.SIGMA_MIN, highdim.SIGMA_MAX))
  run = lambda w: smc_lib.smc_sample(jax.random.PRNGKey(0), prob.target, sigmas, 16,
                                     prob.event_shape, sigma_data=0.5, scheme=w)
  messages = smc_lib.diagnostics(run(highdim.SCHEMES["exact_ratio"]))
  assert any("degenerate" in m for m in messages), messages
  assert smc_lib.diagnostics(run(smc_lib.weights_lib.DEFAULT)) == []
  empty = run(highdim.SCHEMES["exact_ratio"])._replace(weights_invalid=jnp.array(True))
  assert any("invalid" in m for m in smc_lib.diagnostics(empty))


@pytest.mark.slow
def test_highdim_job_writes_its_table_and_figure(tmp_path):
  import json
  import os
  from conftest import ROOT
  from fkdiff.training.config import config_module
  config = config_module(os.path.join(ROOT, "configs", "highdim.py")).get_config("smoke")
  config.study.update(shapes=("2", "8x8"), problems=("tempered2",),
                      methods=("score_unit", "shaped"), budgets=(64,), num_particles=32)
  results = highdim.run(config, str(tmp_path))
  row = results["8x8"]["tempered2"]["shaped"]["64"]
  assert row["samples"] == 32 * 2 * 2 and row["nfe_per_sample"] <= 64
  assert json.load(open(tmp_path / "results.json")) == json.loads(json.dumps(results))
  for name in ("results.txt", "results.md", "error_vs_nfe.png", "config.json"):
    assert (tmp_path / name).stat().st_size > 0
  config.study.unknown = 1
  with pytest.raises(ValueError, match="study.unknown"):
    highdim.run(config, str(tmp_path / "other"))
