"""The stand-in job (configs/standin.py): learned energies on high-dimensional closed-form
mixtures, their diagnostics against the exact energies, and the job end to end on :smoke."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from fkdiff.data import gmm as gmm_lib
from fkdiff.data import pipeline, spectral
from fkdiff.experiments import common, standin
from fkdiff.training.config import config_module, default_config


def _config(variant=""):
  return config_module(os.path.join(ROOT, "configs/standin.py")).get_config(variant)


def test_a_layout_as_a_gaussian_mixture_has_the_same_energy_and_samples_of_its_moments():
  sm = spectral.layout("three_modes", 32, separation=6.0)
  g = spectral.as_gmm(sm)
  x, _ = spectral.sample(sm, jax.random.key(0), 8, 0.3)
  for sigma in (0.01, 0.3, 2.0):
    mine = jax.vmap(lambda z: spectral.energy(sm, z, sigma))(x)
    full = jax.vmap(lambda z: gmm_lib.energy(g, z, sigma))(x)
    np.testing.assert_allclose(mine, full, rtol=1e-5, atol=2e-4)
  # Each component's draws have that component's mean and covariance.
  pts = spectral.sample_components(sm, jax.random.key(1), 4000, 0.5)          # (K, n, d)
  assert pts.shape == (3, 4000, 32)
  cov = np.asarray(g.covs[0]) + 0.25 * np.eye(32)
  for k in range(3):
    p = np.asarray(pts[k], np.float64)
    se = np.sqrt(np.diag(cov) / 4000)
    assert np.all(np.abs(p.mean(0) - np.asarray(g.means[k])) < 5 * se)
    np.testing.assert_allclose(np.cov(p, rowvar=False), cov, atol=0.1 * np.max(np.diag(cov)))
  with pytest.raises(ValueError, match="Unknown spectral layout 'ring'"):
    spectral.layout("ring")


def test_the_spectral_data_source_draws_the_layout_with_its_density():
  data = default_config().data
  data.name, data.mixture = "spectral", "split_a"
  data.mixture_kwargs = {"dim": 16, "separation": 4.0}
  source = pipeline.make_data_source(data)
  assert source.event_shape == (16,) and source.mixture.dim == 16
  assert source.sigma_data == pytest.approx(gmm_lib.data_std(source.mixture))
  x = jax.jit(source.sample, static_argnums=1)(jax.random.key(0), 4096)["x"]
  masses = np.mean(np.asarray(jax.nn.one_hot(jnp.argmax(jax.vmap(
      lambda z: gmm_lib.responsibilities(source.mixture, z))(x), -1), 2)), 0)
  np.testing.assert_allclose(masses, [0.7, 0.3], atol=0.03)
  data.mixture_kwargs = {"dims": 16}
  with pytest.raises(ValueError, match="Bad data.mixture_kwargs"):
    pipeline.make_data_source(data)


def test_a_labelled_layout_gives_each_label_its_conditional_and_the_null_label_the_mixture():
  data = default_config().data
  data.name, data.mixture = "spectral", "attributes"
  data.mixture_kwargs = {"dim": 16, "separation": 6.0}
  source = pipeline.make_data_source(data)
  batch = jax.jit(source.sample, static_argnums=1)(jax.random.key(0), 12000)
  sm = spectral.layout("attributes", 16, 6.0)
  comp = spectral.assign_modes(np.asarray(spectral.coordinates(batch["x"])),
                               np.asarray(sm.plane_means), sm.eig)
  label = np.asarray(batch["label"])
  np.testing.assert_allclose(np.bincount(label, minlength=3) / label.size, [1 / 3] * 3,
                             atol=0.02)
  w = np.exp(np.asarray(sm.log_weights, np.float64))
  for c in (0, 1, 2):
    keep = np.asarray(sm.labels)[:, c] if c < 2 else np.ones(6, bool)
    want = np.where(keep, w, 0) / np.sum(w[keep])
    got = np.bincount(comp[label == c], minlength=6) / np.sum(label == c)
    np.testing.assert_allclose(got, want, atol=0.03)
    # spectral.conditional is that conditional's mixture, with the conditional energy.
    cond = spectral.conditional(sm, c)
    np.testing.assert_allclose(np.exp(np.asarray(cond.log_weights)), want[keep], rtol=1e-5)
    x = batch["x"][:4]
    np.testing.assert_allclose(jax.vmap(lambda z: spectral.energy(cond, z, 0.3))(x),
                               jax.vmap(lambda z: spectral.energy(sm, z, 0.3, c))(x), rtol=1e-5)
  data.label_dropout = 0.1
  with pytest.raises(ValueError, match="label dropout would put conditional draws"):
    pipeline.make_data_source(data)


def _bumped(sm, height):
  """The exact energy plus ``height`` nats on the first component's side of the plane (a level
  error between modes that the scores barely see)."""
  exact = lambda x, s: spectral.energy(sm, x, s)
  a = float(np.sqrt(np.asarray(sm.eig).reshape(-1)[0]))

  def fn(params, x, s):
    z0 = spectral.dct(x).reshape(-1)[0]
    return exact(x, s) + height * jax.nn.sigmoid(-(z0 + 3 * a) / (0.3 * a))
  return common.LoadedEnergy(fn, None, 1.0)


def test_energy_diagnostics_are_zero_on_the_exact_energy_and_see_a_level_error():
  sm = spectral.layout("three_modes", 64)
  sigmas = (0.05, 0.3)
  exact = standin.exact_energies({"m": sm})["m"]
  diag = standin.energy_diagnostics(exact, sm, jax.random.key(0), sigmas, 32, 0)
  for s in ("0.05", "0.3"):
    assert diag[f"score_error/sigma_{s}"] < 1e-4
    assert diag[f"level_error/sigma_{s}"] < 1e-3
    assert diag[f"heat_residual_std/sigma_{s}"] < 1e-2 * 64
  bumped = standin.energy_diagnostics(_bumped(sm, 0.5), sm, jax.random.key(0), sigmas, 32, 0)
  assert bumped["level_error/sigma_0.05"] == pytest.approx(0.5, abs=0.05)
  assert bumped["score_error/sigma_0.05"] < 0.05      # ... which the score error hardly shows.
  # A conditional energy under a label is scored against that label's conditional mixture.
  sm = spectral.layout("attributes", 64)
  exact = standin.exact_energies({"m": sm})["m"]
  assert exact.null == 2
  for label in (0, 1, 2):
    diag = standin.energy_diagnostics(exact, sm, jax.random.key(1), (0.05,), 16, 0, label)
    assert diag["level_error/sigma_0.05"] < 1e-3 and diag["score_error/sigma_0.05"] < 1e-4
  # Labels swapped: under label 0 the energy of label 1, whose levels are far off on the
  # components without attribute 1.
  swap = lambda p, x, s, label: exact.fn(p, x, s, 1 - label)
  swapped = common.LoadedEnergy(swap, sm, 1.0, 2)
  assert standin.energy_diagnostics(swapped, sm, jax.random.key(1), (0.05,), 16, 0,
                                    0)["level_error/sigma_0.05"] > 1.0


def test_the_exact_rows_of_the_problems_match_their_references():
  """SMC with smc_sample's default on the exact energies of every problem at d = 64 lands on the
  exact answer (few particles: loose but failing bounds for a proposal-only sampler)."""
  config = _config()
  config.sampler.update(num_particles=128)
  mixtures = standin.layouts(config)
  sources = {"exact": standin.exact_energies(mixtures)}
  for name in standin.PROBLEMS:
    prob = standin.problem(name, config, mixtures)
    build, params = standin.potential(name, config, sources["exact"])
    z, nfe, _, ess = standin.run_method("smc_default", build, params, config.sampler,
                                        prob.event_shape, 4, 0)
    r = standin.score_runs_uniform(prob, z, nfe, ess)
    assert abs(r["var_ratio"] - 1) < 0.06, (name, r)
    assert r["mode_mass_error"] < 0.08, (name, r)
    assert nfe == 4 * config.sampler.num_steps


def test_the_job_refuses_unknown_names():
  for key, value, match in (("problems", ("tempered", "ring"), "Unknown problem 'ring'"),
                            ("methods", ("mala",), "Unknown method 'mala'"),
                            ("energies", ("two_head",), "Unknown energy source 'two_head'"),
                            ("dim", 1, "dim must be an int >= 2"),
                            ("separation", 0.0, "separation must be > 0"),
                            ("eval.runs", 1, "eval.runs must be an int >= 2")):
    config = _config("smoke")
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(ValueError, match=match):
      standin.validate_job_config(config)
  config = _config("smoke")
  config.tempered.model = "ring"
  with pytest.raises(ValueError, match="Unknown layout 'ring'"):
    standin.validate_job_config(config)
  config = _config("smoke")
  config.conditional.model = "three_modes"
  with pytest.raises(ValueError, match="conditional.labels must be attributes 0 … -1"):
    standin.validate_job_config(config)
  config.conditional.update(model="attributes", labels=(0, 2))
  with pytest.raises(ValueError, match=r"got \(0, 2\)"):
    standin.validate_job_config(config)


@pytest.mark.slow
def test_smoke_job_scores_learned_and_exact_rows_and_reuses_its_stages(tmp_path, capsys):
  config = _config("smoke")
  config.problems = ("tempered", "and")
  config.energies = ("learned", "exact")
  config.methods = ("smc_default",)
  results = standin.run(config, str(tmp_path))
  saved = json.loads((tmp_path / "results.json").read_text())
  assert json.dumps(results, sort_keys=True) == json.dumps(saved, sort_keys=True)
  for p in config.problems:
    assert set(saved[p]) == {f"{m}/{s}" for m in config.methods for s in config.energies}
  for name, r in saved["and"].items():
    # The AND of 'right half' and 'top row': the two components holding both (weights
    # 0.25 / 0.18) share the mass; every other cell is (nearly) empty.
    assert r["exact_masses"] == pytest.approx([0, 0, 0, 0.25 / 0.43, 0, 0.18 / 0.43], abs=0.01)
  for name, r in saved["tempered"].items():
    assert r["samples"] == config.eval.runs * config.sampler.num_particles
    assert ("masses_vs_exact" in r) == name.endswith("/learned")
    # Far-apart components of one covariance: p^β's masses are ∝ w_k^β.
    w = np.asarray(spectral.LAYOUTS["three_modes"][0])**config.tempered.beta
    assert r["exact_masses"] == pytest.approx(w / w.sum(), abs=0.01)
  for name in ("three_modes", "attributes:0", "attributes:1", "attributes:null"):
    diag = saved["energies"][f"learned/{name}"]
    assert {f"level_error/sigma_{s:g}" for s in config.eval.sigmas} <= set(diag)
  out = capsys.readouterr().out
  assert "[1/4, ETA" in out and "[4/4, ETA" in out
  config.update(problems=("and",), energies=("learned",))     # a relaunch: one row, no training
  standin.run(config, str(tmp_path))
  out = capsys.readouterr().out
  assert "Stage teacher/attributes: finished at step 60" in out and "training in" not in out
