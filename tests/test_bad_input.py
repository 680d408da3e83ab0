"""Bad input gets a clear error or the correct result (docs/running.md, "What bad input gets").

Sampling half: targets that are zero (``+inf``) or undefined (NaN) somewhere, against the exact
truncated target (docs/METHOD.md §4d); float64; arguments that cannot be right. Tolerances are
Monte-Carlo standard errors: R independent runs, their mean compared with the exact value within
about four standard errors of that mean (measured s.e. in each comment).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fkdiff.data import gmm
from fkdiff.diffusion import karras_sigmas
from fkdiff.models.mlp import MLP
from fkdiff.sampling import (ExactRatio, ScoreOnly, baselines, mcmc, prior_sample, smc,
                             smc_sample, targets)
from fkdiff.sampling.weights import DEFAULT as DEFAULT_WEIGHTS

MU, STD = 0.3, 0.8       # N(0.3, 0.8²) restricted to x > 0
TRUNCATED_MEAN = float(stats.truncnorm.mean(-MU / STD, np.inf, loc=MU, scale=STD))   # 0.7604
SCHEMES = {"exact_ratio": ExactRatio(), "default": DEFAULT_WEIGHTS}


def gauss(mu, std):
  return lambda x, s: jnp.sum(0.5 * (x - mu)**2 / (std**2 + s**2))


def mean_over_runs(potential, weights, num_runs=4, num=4096, levels=100, sigma_max=20.0, seed=0):
  """Per-run weighted means of x[0] and the results, ``R`` runs vmapped over keys."""
  sigmas = karras_sigmas(levels, 0.002, sigma_max)
  run = jax.jit(jax.vmap(lambda k: smc_sample(k, potential, sigmas, num, (1,), sigma_data=1.0,
                                              scheme=weights)))
  res = run(jax.random.split(jax.random.key(seed), num_runs))
  means = jax.vmap(lambda r: smc.weighted_mean(r)[0])(res)
  return np.asarray(means), res


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("region", ["inf", "nan"])
def test_target_zero_or_undefined_on_half_line_is_the_truncated_target(scheme, region):
  """``+inf`` (a hard bound) or NaN for x < 0: the truncated target's mean 0.760. Before the
  backward kernel was renormalised to the support, exact-ratio weights gave 1.08–1.11 and
  score-only weights −5.6 (they ignored the values). Measured s.e. of the 4-run mean ≈ 0.008."""
  bad = {"inf": jnp.inf, "nan": jnp.nan}[region]
  energy = gauss(MU, STD)
  potential = lambda x, s: jnp.where(x[0] < 0, bad, energy(x, s))
  means, res = mean_over_runs(potential, SCHEMES[scheme])
  assert abs(means.mean() - TRUNCATED_MEAN) < 0.035, (means, TRUNCATED_MEAN)
  w = jax.vmap(lambda lw: jax.nn.softmax(lw))(res.log_weights)
  assert float(jnp.sum(w * (res.particles[..., 0] < 0))) == 0.0     # no weight outside
  assert not np.any(np.asarray(res.weights_invalid))
  nans = np.asarray(res.num_nan_energies)
  assert np.all(nans > 0) if region == "nan" else np.all(nans == 0)
  one = jax.tree.map(lambda a: a[0], res)
  assert any("NaN potentials" in m for m in smc.diagnostics(one)) == (region == "nan")
  assert np.all(np.asarray(res.info.support_trials).max(axis=-1) > 0)


@pytest.mark.parametrize("sigma_on", [1.0, np.inf])
def test_bounded_hard_exact_for_any_sigma_on(sigma_on):
  """``bounded_hard`` switched on early (σ_on = 1, or every level) is still exact: the mean of
  N(0, 1) on [−0.5, 1.5] is 0.356 (it was 0.40 with σ_on = inf). Measured s.e. ≈ 0.01."""
  box = targets.bounded_hard(gauss(0.0, 1.0), -0.5, 1.5, sigma_on)
  exact = float(stats.truncnorm.mean(-0.5, 1.5))
  for weights in SCHEMES.values():
    means, _ = mean_over_runs(box, weights, seed=1)
    assert abs(means.mean() - exact) < 0.04, (weights, means, exact)


def test_finite_targets_run_no_support_trials():
  """The support trials cost nothing where every potential is finite."""
  _, res = mean_over_runs(gauss(MU, STD), DEFAULT_WEIGHTS, num_runs=2, num=256, levels=20)
  assert float(jnp.max(res.info.support_trials)) == 0.0
  assert int(jnp.sum(res.num_nan_energies)) == 0


def test_shaped_proposal_falls_back_to_euler_outside_the_support():
  """The shaped move's displaced gradient is unusable where the displaced point is outside."""
  target = targets.as_target(lambda x, s: jnp.where(x[0] < 0, jnp.inf, 0.5 * jnp.sum(x**2)))
  scheme = ScoreOnly(proposal="shaped")
  x, g = jnp.array([0.1]), jnp.array([0.1])
  out = scheme.move(target, x, g, jnp.array([-0.5]), jnp.float32(0.01), jnp.float32(1.0))
  np.testing.assert_allclose(out, x - 0.01 * g - 0.5, rtol=1e-6)      # Euler's drift


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_samplers_under_x64(dtype):
  """``jax_enable_x64`` with float32 and float64 inputs: every sampler runs, keeps the inputs'
  dtype, and samples N(1, 0.5²) (2-D, 512 draws: mean within 0.1; the weighted samplers'
  variance within 25 %; plain Euler–Maruyama on 40 levels is itself ≈ 25 % too wide)."""
  energy = lambda x, s: jnp.sum(0.5 * (x - 1.0)**2 / (0.25 + s**2))
  with jax.enable_x64(True):
    sigmas = jnp.asarray(karras_sigmas(40, 0.002, 20.0), dtype)
    key = jax.random.key(0)
    x0 = prior_sample(key, 512, (2,), 20.0, 1.0, dtype=dtype)
    outs = {}
    for name, weights in SCHEMES.items():
      res = smc_sample(key, energy, sigmas, 512, (2,), sigma_data=1.0, scheme=weights,
                       rejuvenation=mcmc.rejuvenation("mala") if name == "exact_ratio" else None,
                       final_resample=True)
      assert res.log_weights.dtype == dtype and res.log_Z.dtype == dtype
      outs[name] = res.particles
    outs["mala"] = mcmc.annealed_mcmc_sample(key, energy, x0, sigmas, num_steps_per_level=2,
                                             target_acceptance=0.6).particles
    naive = baselines.naive_reverse_sample(key, energy, x0, sigmas)
    for name, x in {**outs, "naive": naive}.items():
      assert x.dtype == dtype, name
      assert np.all(np.abs(np.asarray(x).mean(0) - 1.0) < 0.1), (name, x.mean(0))
    for name, x in outs.items():
      assert np.all(np.abs(np.asarray(x).var(0) / 0.25 - 1.0) < 0.25), (name, x.var(0))


def test_arguments_that_cannot_be_right_are_refused():
  e = gauss(0.0, 1.0)
  sigmas = karras_sigmas(8, 0.002, 10.0)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="negation"):
    targets.product([e, e], weights=[1.0, -2.0])
  targets.product([e, e], weights=[-1.0, 2.0])       # guidance-like signed weights: fine
  with pytest.raises(ValueError, match="sigma_data"):
    smc_sample(key, e, sigmas, 8, (1,), sigma_data=-1.0)
  with pytest.raises(ValueError, match="sigma_data"):
    smc_sample(key, e, sigmas, 8, (1,), sigma_data=0.0)
  for bad in (2, (0,), (2, -1), (2.0,)):
    with pytest.raises(ValueError, match="event_shape must be a tuple of positive ints"):
      smc_sample(key, e, sigmas, 8, bad, sigma_data=1.0)
  mix = gmm.make_mixture(jnp.ones(2) / 2, jnp.array([[-1.0, 0.0], [1.0, 0.0]]),
                         jnp.stack([jnp.eye(2)] * 2))
  with pytest.raises(ValueError, match="2-dimensional"):   # (1,) against a 2-D energy
    smc_sample(key, lambda x, s: gmm.energy(mix, x, s), sigmas, 8, (1,), sigma_data=1.0)
  from fkdiff.training import default_config, validate_config
  config = default_config()
  config.data.sigma_data = -1.0
  with pytest.raises(ValueError, match="data.sigma_data must be ≥ 0"):
    validate_config(config)
  net = MLP(width=8, depth=1, emb_dim=4)
  params = net.init(jax.random.key(1), jnp.zeros((2,)), jnp.zeros(()))
  with pytest.raises(ValueError, match="unconditional"):
    net.apply(params, jnp.zeros((2,)), jnp.zeros(()), jnp.int32(3))
