"""Two-headed networks (score head + energy head) and SMC that proposes from the score head
(HeadRatio, docs/METHOD.md §4e): exact on closed-form targets whatever the score head says, with
no gradient of the energy; the model, its loss, a trained run and its loader."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkdiff import losses
from fkdiff.data import gmm, toy
from fkdiff.diffusion import edm
from fkdiff.experiments import common, toy2d
from fkdiff.models import MLP, HeadEnergy, TwoHeadModel, two_head
from fkdiff.sampling import ExactRatio, HeadRatio, ScoreOnly, as_target, smc_sample, tempered
from fkdiff.training import runs

from conftest import tiny_teacher_config

UNEQUAL = toy.get_mixture("unequal", weights=(0.5, 0.3, 0.2), radius=1.5, std=(0.4, 0.15, 0.25))
SIGMAS = edm.karras_sigmas(100, 0.01, 10.0, 7.0)
BETA = 3.0


def _energy(x, sigma):
  return gmm.energy(UNEQUAL, x, sigma)


def _masses(particles):
  return np.bincount(np.asarray(toy2d.assign_modes(UNEQUAL, particles)), minlength=3) / len(
      particles)


@jax.custom_jvp
def _no_derivative(v):
  return v


@_no_derivative.defjvp
def _no_derivative_jvp(primals, tangents):
  raise AssertionError("a derivative of the energy was taken")


def _wrong_heads(x, sigma):
  """The exact energy's value (through a function that refuses to be differentiated) and a
  badly wrong score: 0.6 × the exact score, rotated by 20°."""
  value = _energy(x, sigma)
  grad = jax.grad(_energy)(jax.lax.stop_gradient(x), sigma)
  rot = jnp.array([[0.94, -0.34], [0.34, 0.94]])
  return _no_derivative(value), -0.6 * (rot @ grad)


def test_head_ratio_is_exact_ratio_where_no_energy_has_a_head():
  target = tempered(as_target(_energy, float(gmm.data_std(UNEQUAL))), BETA)
  sigmas = SIGMAS[::4]
  key = jax.random.key(0)
  a = smc_sample(key, target, sigmas, 64, (2,), scheme=ExactRatio())
  b = smc_sample(key, target, sigmas, 64, (2,), scheme=HeadRatio())
  np.testing.assert_allclose(b.particles, a.particles, atol=1e-5)
  np.testing.assert_allclose(b.log_weights, a.log_weights, atol=1e-4)
  np.testing.assert_allclose(b.log_Z, a.log_Z, atol=1e-4)


def test_head_ratio_corrects_a_wrong_score_head_without_a_gradient():
  """p^β of a three-mode mixture (exact masses from a grid): HeadRatio's weights correct a score
  head that is 40 % short and 20° off; the same proposal unweighted misses by far; the energy's
  value is never differentiated (ExactRatio on it fails)."""
  sigma_k = float(SIGMAS[-1])
  truth = toy2d.tempered_truth(UNEQUAL, BETA, sigma_k, 200).mode_masses
  wrong = tempered(as_target(HeadEnergy(_wrong_heads), float(gmm.data_std(UNEQUAL))), BETA)
  run = jax.jit(lambda k: smc_sample(k, wrong, SIGMAS, 4096, (2,), scheme=HeadRatio(),
                                     final_resample=True).particles)
  masses = np.mean([_masses(run(jax.random.key(s))) for s in range(2)], axis=0)
  assert np.max(np.abs(masses - truth)) < 0.03, (masses, truth)
  # The proposal alone (no reweighting at all): what the weights corrected.
  unweighted = smc_sample(jax.random.key(0), wrong, SIGMAS, 4096, (2,), scheme=HeadRatio(),
                          resampling=smc_resampling_never())
  assert np.max(np.abs(_masses(unweighted.particles) - truth)) > 0.1
  with pytest.raises(AssertionError, match="derivative"):
    smc_sample(jax.random.key(0), wrong, SIGMAS[:4], 16, (2,), scheme=ExactRatio())


def smc_resampling_never():
  from fkdiff.sampling import Resampling
  return Resampling("systematic", 0.0)


def test_two_head_model_gives_both_heads_from_one_pass():
  model = TwoHeadModel(MLP(32, 1, 16, output_heads=2), sigma_data=0.7)
  x, sigma = jnp.array([0.3, -1.2]), jnp.asarray(0.4)
  params = model.init(jax.random.key(0), x, sigma)
  value, denoised = model.apply(params, x, sigma)
  assert value.shape == () and denoised.shape == (2,)
  e, s = two_head.heads(model, params, x, sigma)
  np.testing.assert_allclose(s, (denoised - x) / sigma**2, rtol=1e-6)
  np.testing.assert_allclose(two_head.energy_denoiser(model, params, x, sigma),
                             x - sigma**2 * jax.grad(lambda z: two_head.energy(
                                 model, params, z, sigma))(x), rtol=1e-6)
  bound = two_head.bind(model, params)
  np.testing.assert_allclose(bound(x, sigma), e)
  assert [a.shape for a in bound.value_and_score(x, sigma)] == [(), (2,)]
  # At initialisation (zero output layer) both heads are the diffused N(0, σ_d²): D = c_skip x.
  p = edm.preconditioning(sigma, 0.7)
  np.testing.assert_allclose(denoised, p.c_skip * x, rtol=1e-6)
  np.testing.assert_allclose(two_head.energy_denoiser(model, params, x, sigma), p.c_skip * x,
                             rtol=1e-5)
  with pytest.raises(ValueError, match="output_heads=2"):
    TwoHeadModel(MLP(32, 1, 16), 0.7).init(jax.random.key(0), x, sigma)


def test_joint_loss_trains_the_energy_head_from_the_score_head():
  """Trained from ring data alone (no teacher), the energy head's score approaches the exact
  score as fast as the score head's (1,500 steps: 0.87 → 0.26 and 0.26; here 300 steps)."""
  from helpers import fit
  from fkdiff.evaluation import toy_metrics
  ring = toy.get_mixture("ring", num_modes=8, radius=2.0, std=0.2)
  sd = float(gmm.data_std(ring))
  model = TwoHeadModel(MLP(64, 2, 32, output_heads=2), sd)
  params = model.init(jax.random.key(0), jnp.zeros(2), jnp.ones(()))
  loss = losses.make_two_head_loss(functools.partial(two_head.apply_heads, model), sd)
  batch = lambda k: {"x": gmm.sample(ring, k, 256)[0]}
  error = jax.jit(lambda p: jnp.stack([toy_metrics.relative_score_error(
      fn, ring, 0.5, jax.random.key(1)) for fn in (
          lambda x, s: -jax.grad(lambda z: two_head.energy(model, p, z, s))(x),
          lambda x, s: two_head.heads(model, p, x, s)[1])]))
  start = np.asarray(error(params))
  params, _ = fit(lambda p, b, k: loss(p, b, k), params, batch, jax.random.key(4), 300, 2e-3)
  energy_head, score_head = np.asarray(error(params))
  assert energy_head < 0.65 < 0.8 < start[0], (energy_head, start)
  assert abs(energy_head - score_head) < 0.1, (energy_head, score_head)


@pytest.mark.slow
def test_a_two_head_run_trains_loads_and_samples(tmp_path):
  from fkdiff.training import train_and_evaluate
  c = tiny_teacher_config(num_steps=20, checkpoint_every=20)
  c.task = "two_head"
  c.eval.num_samples = 0
  train_and_evaluate(c, str(tmp_path / "heads"))
  heads_fn, params, sigma_data = runs.load_heads(str(tmp_path / "heads"))
  energy_fn, params_e, _ = runs.load_energy(str(tmp_path / "heads"))
  x, s = jnp.array([0.5, 0.1]), jnp.asarray(0.3)
  e, score = heads_fn(params, x, s)
  np.testing.assert_allclose(energy_fn(params_e, x, s), e, rtol=1e-6)
  loaded = common.load_energies({"ring": str(tmp_path / "heads")})["ring"]
  assert loaded.heads is not None and isinstance(loaded.target().energies[0], HeadEnergy)
  res = smc_sample(jax.random.key(0), tempered(loaded.target(), 2.0), SIGMAS[::10], 64, (2,),
                   scheme=HeadRatio())
  assert np.all(np.isfinite(res.particles)) and np.isfinite(float(res.log_Z))
  from fkdiff.training import checkpoint
  checkpoint.make_workdir(str(tmp_path / "teacher"))
  checkpoint.write_config(str(tmp_path / "teacher"), tiny_teacher_config())
  with pytest.raises(ValueError, match="load_heads loads runs of task 'two_head'"):
    runs.load_heads(str(tmp_path / "teacher"))


def test_two_head_settings_are_checked():
  from fkdiff.training.config import validate_config
  c = tiny_teacher_config()
  c.task = "two_head"
  c.two_head.target = "teachr"
  with pytest.raises(ValueError, match="two_head.target must be 'data' or 'teacher'"):
    validate_config(c)
  c.two_head.target, c.two_head.energy_weight = "data", 0.0
  with pytest.raises(ValueError, match="energy_weight must be > 0"):
    validate_config(c)
  c.two_head.energy_weight, c.model.name = 1.0, "diffusers"
  with pytest.raises(ValueError, match="one output head"):
    runs.two_head_model(c, 0.5)
  job = toy2d.job_config()
  job.two_head.methods = ("smc_head",)
  with pytest.raises(ValueError, match="two_head method 'smc_head'"):
    toy2d.validate_job_config(job)


def test_mala_along_a_wrong_score_head_keeps_the_target_invariant():
  """Chains started from exact draws of N(μ, Σ) (σ = 0.3 of a one-Gaussian mixture) stay exact
  under MALA along the wrong score head; the unadjusted Langevin step along it does not."""
  from fkdiff.sampling import mcmc, targets
  m = gmm.GaussianMixture(jnp.ones(1), jnp.array([[1.0, -0.5]]),
                          jnp.array([[[0.5, 0.2], [0.2, 0.3]]]))
  sigma = jnp.asarray(0.3)
  exact = gmm.diffuse(m, sigma)

  def heads(x, s):
    g = jax.grad(lambda z: gmm.energy(m, z, s))(x)
    return gmm.energy(m, x, s), -0.5 * (jnp.array([[0.94, -0.34], [0.34, 0.94]]) @ g)

  potential = targets.AtSigma(as_target(HeadEnergy(heads)), sigma)
  x0, _ = gmm.sample(m, jax.random.key(0), 8192, sigma)
  rejuvenate = mcmc.rejuvenation("mala", 20, 0.05, drift="heads")
  chains = mcmc.MCMCState(x0, jnp.zeros(8192), jnp.zeros_like(x0))   # rebuilt from the heads
  moved, acc = jax.jit(lambda k: rejuvenate(k, chains, potential, sigma))(jax.random.key(1))
  cov = np.cov(np.asarray(moved.position).T)
  assert 0.3 < float(acc) < 1.0
  np.testing.assert_allclose(np.mean(moved.position, 0), exact.means[0], atol=0.03)
  np.testing.assert_allclose(cov, exact.covs[0], atol=0.03)
  drifted = x0
  for k in jax.random.split(jax.random.key(2), 20):    # the same drift, unadjusted
    _, b = jax.vmap(potential.value_and_drift)(drifted)
    drifted = drifted + 0.05 * b + jnp.sqrt(0.1) * jax.random.normal(k, drifted.shape)
  assert np.max(np.abs(np.cov(np.asarray(drifted).T) - exact.covs[0])) > 0.1
  with pytest.raises(ValueError, match="'mala' kernel only"):
    mcmc.rejuvenation("hmc", 1, 0.05, drift="heads")


def test_the_heads_methods_count_one_forward_pass_per_step():
  s = common.sampler_config(rejuvenation="mala", rejuvenation_steps=2)
  # per level 1; per resampling event 2 MALA steps + the chains' start + the re-evaluation.
  assert common.nfe_per_particle("smc_heads", s, 2, 10, 3) == 10 + 3 * 4
  assert common.nfe_per_particle("smc_heads_score", s, 2, 10, 3) == 10 + 3 * 4
  assert common.scheme("smc_heads_score", s) == ScoreOnly(rule=s.score_rule, scores="heads")
  with pytest.raises(ValueError, match="needs noise='unit'"):
    smc_sample(jax.random.key(0), _energy, SIGMAS, 8, (2,),
               scheme=ScoreOnly(scores="heads", noise="matched"), sigma_data=1.0)


def test_the_time_term_trains_the_energy_heads_sigma_derivative():
  """With time_weight > 0 the loss regresses ∂_σE + b(σ) on the score head's heat-equation
  target: a time loss per example, gradients into the gauge network, and a clear error without
  one."""
  from fkdiff.models import Gauge
  ring = toy.get_mixture("ring", num_modes=8, radius=2.0, std=0.2)
  sd = float(gmm.data_std(ring))
  model, gauge = TwoHeadModel(MLP(16, 1, 8, output_heads=2), sd), Gauge(8)
  params = model.init(jax.random.key(0), jnp.zeros(2), jnp.ones(()))
  params = {**params, "gauge": gauge.init(jax.random.key(1), jnp.ones(()))}
  heads_fn = functools.partial(two_head.apply_heads, model)
  loss = losses.make_two_head_loss(heads_fn, sd, time_weight=0.1,
                                   gauge_fn=lambda p, s: gauge.apply(p["gauge"], s))
  batch = {"x": gmm.sample(ring, jax.random.key(2), 16)[0]}
  (value, aux), grads = jax.value_and_grad(lambda p: loss(p, batch, jax.random.key(3)),
                                           has_aux=True)(params)
  plain = losses.make_two_head_loss(heads_fn, sd)(params, batch, jax.random.key(3))[0]
  assert aux["time_loss"].shape == (16,) and np.all(np.isfinite(aux["time_loss"]))
  np.testing.assert_allclose(value, plain + 0.1 * np.mean(aux["time_loss"]), rtol=1e-5)
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads["gauge"])) > 0
  with pytest.raises(ValueError, match="needs a gauge_fn"):
    losses.make_two_head_loss(heads_fn, sd, time_weight=0.1)
