"""The job skeleton (fkdiff.experiments.common): one sampler section and one mapping to SMC for
every job, and one loaded-energy type."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkdiff.experiments import common, digits, toy2d
from fkdiff.sampling import ExactRatio, ScoreOnly, targets
from fkdiff.sampling import weights as weights_lib


def test_both_jobs_share_the_sampler_keys_and_their_meaning():
  """Every shared key is in both jobs' sampler sections and maps to the same SMC options."""
  shared = set(common.sampler_config().keys())
  for job in (toy2d, digits):
    s = job.job_config().sampler
    assert shared <= set(s.keys()), (job.__name__, shared - set(s.keys()))
    s.rejuvenation, s.rejuvenation_step_size, s.resample_sigma_range = "hmc", 0.08, (0.1, 2.0)
    s.score_rule, s.score_noise = "left", "matched"
    parts = common.smc_parts("smc_score", s)
    assert parts["scheme"] == ScoreOnly(rule="left", noise="matched")
    assert parts["resampling"].sigma_range == (0.1, 2.0)
    assert parts["resampling"].ess_threshold == s.ess_threshold
    assert common.smc_parts("smc_ratio", s)["scheme"] == ExactRatio()
    assert common.smc_parts("smc_default", s)["scheme"] == weights_lib.DEFAULT
    assert set(common.SMC_METHODS) <= set(job.METHODS if job is toy2d
                                          else job.LOW_TEMPERATURE_METHODS)


@pytest.mark.parametrize("key,value,message", [
    ("rejuvenation", "ula", "Unknown sampler.rejuvenation"),
    ("score_rule", "simpson", "Unknown sampler.score_rule"),
    ("num_steps", 1, "num_steps must be an int >= 2"),
    ("sigma_min", 0.0, "sigma_min must be in"),
    ("ess_threshold", 1.5, "ess_threshold must be in"),
    ("resample_sigma_range", (2.0, 1.0), "resample_sigma_range must be"),
    ("num_leapfrog", 0, "num_leapfrog must be an int >= 1"),
])
def test_both_jobs_refuse_a_bad_shared_sampler_key(key, value, message):
  for job in (toy2d, digits):
    config = job.job_config()
    if job is toy2d:
      config.datasets.ring = {"mixture": "ring"}
      config.problems, config.low_temperature.model = ("low_temperature",), "ring"
    config.sampler[key] = value
    with pytest.raises(ValueError, match=message):
      job.validate_job_config(config)


def test_each_energy_source_runs_its_own_methods_in_both_jobs():
  """Distilled sources run the problem's methods (``consistent``: those of its list); the
  two-headed source runs its own list, where the problem has the method; both jobs refuse a
  two_head method they do not have."""
  config = digits.job_config()
  config.two_head.methods = ("cfg", "smc_heads", "naive")
  lt, conj = config.low_temperature.methods, config.conjunction.methods
  assert common.source_methods("learned", lt, config, digits.LOW_TEMPERATURE_METHODS) == list(lt)
  assert common.source_methods("two_head", lt, config, digits.LOW_TEMPERATURE_METHODS) == [
      "cfg", "smc_heads", "naive"]
  assert common.source_methods("two_head", conj, config, digits.AND_METHODS) == ["smc_heads",
                                                                                "naive"]
  config.consistent.methods = ("smc_ratio",)
  assert common.source_methods("consistent", lt, config, digits.LOW_TEMPERATURE_METHODS) == [
      "smc_ratio"]
  for job in (toy2d, digits):
    config = job.job_config()
    config.two_head.methods = ("smc_heads", "fkc")
    with pytest.raises(ValueError, match="Unknown two_head method 'fkc'"):
      job.validate_job_config(config)
    config.two_head.methods = ("smc_heads",)
    config.two_head.sampler = {"rejuvenations": ""}
    with pytest.raises(ValueError, match="Unknown sampler key 'rejuvenations' in two_head"):
      job.validate_job_config(config)
    config.two_head.sampler = {"rejuvenation": "ula"}
    with pytest.raises(ValueError, match="Unknown sampler.rejuvenation 'ula'"):
      job.validate_job_config(config)
  # Only the two-headed source's rows take its overrides; they leave the job's section as it is.
  config = digits.job_config()
  config.two_head.sampler = {"rejuvenation": ""}
  config.sampler.rejuvenation = "mala"
  assert common.source_sampler("learned", config) is config.sampler
  assert common.source_sampler("two_head", config).rejuvenation == ""
  assert config.sampler.rejuvenation == "mala"


def test_nfe_counts_each_schemes_evaluations_and_the_rejuvenation():
  """Per particle: levels × the scheme's evaluations per level, plus per resampling event the
  MCMC steps (HMC: its leapfrogs) and the scheme's re-evaluation (none for exact ratio)."""
  s = common.sampler_config()
  assert common.nfe_per_particle("smc_ratio", s, 64, 10) == 10
  default = weights_lib.DEFAULT.evaluations_per_level(64)
  assert default == 1 + 1 + 2 * 1                      # gradient, shaped drift, one probe's HVP
  assert common.nfe_per_particle("smc_default", s, 64, 10) == 10 * default
  s.rejuvenation, s.rejuvenation_steps = "hmc", 2
  assert common.nfe_per_particle("smc_ratio", s, 64, 10, 3) == 10 + 3 * 2 * 5
  assert common.nfe_per_particle("smc_score", s, 64, 10, 3) == 10 + 3 * (2 * 5 + 1)


def test_a_loaded_energy_is_a_target_that_carries_its_sigma_data():
  fn = lambda p, x, sigma, label=None: 0.5 * jnp.sum((x - p[0 if label is None else label])**2)
  energy = common.LoadedEnergy(fn, jnp.arange(3.0), 0.7, null=2)
  x = jnp.ones((2,))
  t, t1 = energy.target(), energy.target(label=1)
  np.testing.assert_allclose(t(x, 1.0), fn(energy.params, x, 1.0))
  np.testing.assert_allclose(t1(x, 1.0), fn(energy.params, x, 1.0, 1))
  np.testing.assert_allclose(energy.target(jnp.zeros(3))(x, 1.0), 1.0)    # other parameters
  np.testing.assert_allclose(targets.product([t, t1]).sigma_data, 0.7, rtol=1e-6)
  # The toy job's exact energies carry their mixtures' data std.
  mixtures = {"ring": toy2d.toy.get_mixture("ring")}
  exact = toy2d.exact_energies(mixtures)["ring"]
  assert exact.sigma_data == pytest.approx(float(toy2d.gmm_lib.data_std(mixtures["ring"])))
  np.testing.assert_allclose(exact.target()(x, 0.5), toy2d.gmm_lib.energy(mixtures["ring"], x,
                                                                          0.5), rtol=1e-6)
  assert jax.tree.leaves(exact.target())                   # a pytree target (weights as leaves)
