"""The main job (configs/toy2d.py): end to end on :smoke, and SMC against the naive sampler."""

import json
import os

import pytest

from conftest import ROOT
from fkdiff.experiments import toy2d
from fkdiff.training import checkpoint
from fkdiff.training.config import config_module


def _config(variant=""):
  return config_module(os.path.join(ROOT, "configs/toy2d.py")).get_config(variant)


@pytest.mark.slow
def test_smoke_pipeline_writes_every_entry_and_reuses_stages(tmp_path, capsys):
  config = _config("smoke")
  results = toy2d.run(config, str(tmp_path))
  saved = json.loads((tmp_path / "results.json").read_text())
  assert config.energies == toy2d.SOURCES      # plain, time-consistent, two-headed, exact.
  for problem in toy2d.PROBLEMS:
    for source in toy2d.SOURCES:
      methods = {"consistent": config.consistent.methods,
                 "two_head": config.two_head.methods}.get(source, config.methods)
      for method in methods:
        row = saved[problem][f"{method}/{source}"]
        assert {"mode_mass_tv", "nll", "sliced_wasserstein", "energy_distance"} <= set(row)
      assert all(f"{m}/{source}" not in saved[problem] for m in toy2d.METHODS if m not in methods)
    assert saved[problem]["smc_ratio/exact"]["log_Z_exact"] == pytest.approx(
        saved[problem]["exact_log_Z"])
    # Two seeds: a mean and a spread for every metric; the learned model's own floor.
    row = saved[problem]["smc_score/learned"]
    assert row["mode_mass_tv_std"] >= 0 and 0 <= row["mode_mass_tv"] <= 1
    assert 0 <= saved[problem]["floor/learned"]["mode_mass_tv"] <= 1
    assert 0 <= saved[problem]["floor/consistent"]["mode_mass_tv"] <= 1
    assert 0 <= saved[problem]["floor/two_head"]["mode_mass_tv"] <= 1
    assert saved[problem]["smc_score/exact"]["log_Z"] != saved[problem]["smc_score/exact"]["log_Z"]
  # The same values (compared as JSON text: score-only SMC's log Ẑ is NaN, and NaN != NaN).
  assert json.dumps(results, sort_keys=True) == json.dumps(saved, sort_keys=True)
  for name in ("product.png", "low_temperature.png", "ess.png", "results.txt"):
    assert (tmp_path / name).stat().st_size > 0
  # A progress line per sampled row, numbered, with an ETA.
  rows = sum(1 for problem in toy2d.PROBLEMS for name, v in saved[problem].items()
             if isinstance(v, dict) and not name.startswith("floor/"))
  out = capsys.readouterr().out
  assert [f"[{k}/{rows}, ETA" in out for k in (1, rows)] == [True, True], out[-2000:]
  # A rerun reuses the finished teachers and energies instead of training again.
  config.problems = ("low_temperature",)
  config.methods = ("naive",)
  toy2d.run(config, str(tmp_path))
  out = capsys.readouterr().out
  assert "Stage teacher/unequal: finished at step 60" in out and "reusing" in out
  assert "training in" not in out
  # ... but not a stage trained towards another objective: a changed time-term weight raises.
  config.consistent.time_weight *= 2
  with pytest.raises(checkpoint.CheckpointError, match="distill.time_weight"):
    toy2d.run(config, str(tmp_path))


@pytest.mark.slow   # the whole job on exact energies
def test_smc_beats_the_naive_sampler_with_exact_energies(tmp_path):
  """On a configuration unlike the default one: other mixtures, β, seed and particle count."""
  config = _config()
  config.seed = 7
  config.energies = ("exact",)
  config.methods = ("smc_ratio", "naive")
  config.datasets.ring.mixture_kwargs = {"num_modes": 6, "radius": 1.8, "std": 0.25}
  config.datasets.bar.mixture_kwargs = {"separation": 2.0, "long_std": 1.2, "short_std": 0.25,
                                        "weights": (0.35, 0.65)}
  config.datasets.unequal.mixture_kwargs = {"weights": (0.4, 0.4, 0.2), "radius": 1.5,
                                            "std": (0.35, 0.15, 0.25)}
  config.low_temperature.beta = 2.5
  # One run is checked: at N = 1,024 this product's SMC mode-mass TV has a Monte Carlo spread of
  # ±0.016 around 0.043 before the final resampling adds its own (16 runs; benchmarks/
  # smc_scale.py), so a bound of 0.06 would test luck; 4,096 particles halve both.
  config.sampler.num_particles = 4096
  # Four seeds: the bounds are on the mean TV over seeds, whose s.e. at N = 4,096 is then
  # ≈ 0.004 against a margin of ≥ 0.02 to 0.06 (eight seeds took 130 s of the suite).
  config.eval.num_seeds = 4
  config.eval.grid_size = 200
  results = toy2d.run(config, str(tmp_path))
  for problem in toy2d.PROBLEMS:
    smc, naive = results[problem]["smc_ratio/exact"], results[problem]["naive/exact"]
    assert smc["mode_mass_tv"] < 0.5 * naive["mode_mass_tv"], (problem, smc, naive)
    assert smc["mode_mass_tv"] < 0.06, (problem, smc)


def test_bad_names_are_rejected():
  config = _config("smoke")
  config.methods = ("smc_score", "langevin")
  with pytest.raises(ValueError, match="Unknown method 'langevin'"):
    toy2d.validate_job_config(config)
  config = _config("smoke")
  config.problems = ("product", "sum")
  with pytest.raises(ValueError, match="Unknown problem 'sum'"):
    toy2d.validate_job_config(config)
  config = _config("smoke")
  config.product.models = ("ring", "spiral")
  with pytest.raises(ValueError, match="Dataset 'spiral'"):
    toy2d.validate_job_config(config)
  config = _config("smoke")
  config.teacher.optim.lr = 1.0
  with pytest.raises(ValueError, match="Unknown config key 'optim.lr'"):
    toy2d.validate_job_config(config)
