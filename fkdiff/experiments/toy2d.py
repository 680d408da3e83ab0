"""The main job: toy 2-D composition and low temperature, end to end, against exact ground truth.

Stages (each a ``train_and_evaluate`` run in its own sub-workdir; finished ones are reused):
  1. a teacher (EDM denoiser) per 2-D Gaussian-mixture dataset,   ``<workdir>/teachers/<name>``;
  2. an energy distilled from each teacher,                       ``<workdir>/energies/<name>``;
     2b. with the ``consistent`` source, a time-consistent one too (METHOD.md §3b),
                                                       ``<workdir>/energies_consistent/<name>``;
     2c. with the ``two_head`` source, a two-headed network (score and energy heads) per
     dataset, trained from the data with no teacher (docs/METHOD.md §4e),
                                                       ``<workdir>/two_head/<name>``;
  3. sampling problems, each with every method and energy source:
     - ``product``: the product of two models (``∝ p_a p_b``),
     - ``low_temperature``: ``∝ p^β`` of a mixture with unequal weights;
     methods ``smc_score`` (Feynman–Kac SMC with score-only weights, METHOD.md §4b),
     ``smc_ratio`` (SMC with exact-ratio weights, §4), ``smc_default`` (``smc_sample``'s
     default weights, docs/METHOD.md §4c), ``naive`` (reverse diffusion on summed / scaled
     scores), ``mala`` / ``hmc`` (annealed MCMC); energy sources ``learned`` (the distilled
     energies), ``consistent`` (the time-consistent ones; only ``consistent.methods`` run on
     them), ``two_head`` (the two-headed networks; only ``two_head.methods`` run on them,
     ``smc_heads``: exact-ratio SMC proposing from the score head) and ``exact`` (closed-form
     diffused mixtures), which separates learning error from
     sampler error.
Every sample set is scored against the exact target at the final level σ_K: NLL, mode masses,
sliced Wasserstein and energy distance to exact samples, ESS and ``log Ẑ`` (vs the exact value
where the energies are normalised). Each method runs ``eval.num_seeds`` times (independent keys);
a row holds the mean over seeds and ``<metric>_std`` their standard deviation. The row
``floor/<source>`` is a distilled model's own floor: the mode-mass TV of ``exp(−U_learned(·, σ_K))``
tabulated on the grid against the exact target, so sampler error and model error read apart.
Outputs: ``results.json``, a printed table, PNG plots (seed 0), TensorBoard scalars.
"""

import functools
import os
import time
from typing import Dict, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fkdiff.data import gmm as gmm_lib
from fkdiff.data import toy
from fkdiff.evaluation import distances, grid as grid_lib, plots
from fkdiff.experiments import common
from fkdiff.sampling import mcmc, reverse, smc, targets
from fkdiff.sampling.baselines import naive_reverse_sample
from fkdiff.training.config import default_config, validate_config

PROBLEMS = ("product", "low_temperature")
# score-only (sampler.score_rule, sampler.score_noise) / exact-ratio weights / smc_sample's
# default (weights.DEFAULT), then the unweighted baselines.
SMC_METHODS = common.SMC_METHODS
METHODS = SMC_METHODS + ("naive", "mala", "hmc")
SOURCES = ("learned", "consistent", "two_head", "exact")
DISTILLED = tuple(common.ENERGY_FOLDERS)          # sources distilled by the job (stages 2 / 2b)
TRAINED = DISTILLED + ("two_head",)               # ... and every source the job trains


def job_config() -> ml_collections.ConfigDict:
  """Every key the toy2d job understands (see ``configs/toy2d.py``)."""
  c = ml_collections.ConfigDict()
  c.job = "toy2d"
  c.seed = 0
  c.datasets = ml_collections.ConfigDict()      # name -> {mixture, mixture_kwargs}; free-form.
  c.problems = PROBLEMS
  c.methods = common.ENERGY_SMC_METHODS + ("naive", "mala", "hmc")   # heads: two_head.methods
  c.energies = ("learned", "exact")
  c.product = ml_collections.ConfigDict({"models": ("ring", "bar")})
  c.low_temperature = ml_collections.ConfigDict({"model": "unequal", "beta": 3.0})
  c.teacher = default_config()                  # training settings shared by every teacher.
  c.distill = default_config()                  # ... and by every distillation.
  # The 'consistent' energy source: time-consistent distillation (METHOD.md §3) with c.distill's
  # settings and these overrides, from the same teachers (fkdiff.losses.distill.time_score_loss).
  c.consistent = ml_collections.ConfigDict()
  c.consistent.time_weight = 0.1
  c.consistent.time_target = "teacher"
  c.consistent.num_steps = 6000
  c.consistent.methods = ("smc_score", "smc_ratio")   # run on it (the others ignore levels).
  # The 'two_head' source: one network per dataset with a score head and an energy head, trained
  # from the data with no teacher (docs/METHOD.md §4e), the teachers' network and optimiser.
  c.two_head = common.two_head_section()
  # The shared sampler keys (common.sampler_config) on this job's levels, and its own: the SMC
  # particle count and the annealed MCMC baselines' settings. smc_score's quadrature, measured on
  # this job (8 seeds, 100 levels, learned energies): mode-mass TV 0.037 / 0.027 (product / low
  # temperature) with the trapezoid (the shared default), 0.041 / 0.034 with the left rule
  # (benchmarks/RESULTS.md).
  c.sampler = common.sampler_config(num_steps=100, sigma_max=10.0, sigma_min=0.01)
  c.sampler.num_particles = 2048
  c.sampler.annealed_steps_per_level = 3        # mala / hmc baselines: MCMC steps per level,
  c.sampler.annealed_step_scale = 0.05          # their step = scale · σ_k² + 1e-4 ...
  c.sampler.mala_target_acceptance = 0.0        # ... or, > 0, tuned per level to this rate.
  c.sampler.hmc_target_acceptance = 0.0
  c.eval = ml_collections.ConfigDict()
  c.eval.num_seeds = 1                          # independent runs of every method (mean ± std).
  c.eval.grid_size = 400
  c.eval.num_distance_samples = 2048
  return c


def validate_job_config(config: ml_collections.ConfigDict) -> None:
  """Unknown keys, problem, method or energy names: a ``ValueError`` naming them."""
  common.check_known_keys(config, job_config(), "toy2d",
                          ("product", "low_temperature", "consistent", "two_head", "sampler",
                           "eval"))
  validate_config(config.teacher)
  validate_config(config.distill)
  validate_config(common.time_consistent_distill(config.distill, config.consistent))
  validate_config(common.two_head_training(config.teacher, config.two_head))
  common.source_sampler("two_head", config)
  common.validate_sampler(config.sampler)
  for kind, names, valid in (("problem", config.problems, PROBLEMS),
                             ("method", config.methods, METHODS),
                             ("consistent method", config.consistent.methods, METHODS),
                             ("two_head method", config.two_head.methods, METHODS),
                             ("energy source", config.energies, SOURCES)):
    unknown = [n for n in names if n not in valid]
    if unknown:
      raise ValueError(f"Unknown {kind} {unknown[0]!r} in the config; choose from {valid}.")
  for name in _needed_models(config):
    if name not in config.datasets:
      raise ValueError(f"Dataset {name!r} is used by a problem but not defined in config.datasets "
                       f"(defined: {sorted(config.datasets)}).")


def _needed_models(config):
  names = []
  if "product" in config.problems:
    names += list(config.product.models)
  if "low_temperature" in config.problems:
    names.append(config.low_temperature.model)
  return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------
# Stages 1-2: teachers and distilled energies.


def _stage_config(base: ml_collections.ConfigDict, task: str, dataset, teacher_workdir: str):
  c = common.stage_base(base, task, teacher_workdir)
  c.data.mixture = dataset.mixture
  c.data.mixture_kwargs = ml_collections.ConfigDict(dataset.get("mixture_kwargs", {}).to_dict()
                                                    if "mixture_kwargs" in dataset else {})
  return c


def train_models(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Dict[str, str]]:
  """Runs (or reuses) the teachers and energies of the distilled sources in ``config.energies``
  (:func:`fkdiff.experiments.common.train_models`); ``{source: {model name: energy workdir}}``."""
  return common.train_models(
      config, workdir, _needed_models(config),
      lambda base, task, name, t_dir: _stage_config(base, task, config.datasets[name], t_dir))


def exact_energies(mixtures: Dict[str, gmm_lib.GaussianMixture]) -> Dict[str, common.LoadedEnergy]:
  """Closed-form diffused energies ``−log p_σ`` (normalised) of the mixtures, with their data
  stds."""
  fn = lambda p, x, s: gmm_lib.energy(p, x, s)
  return {n: common.LoadedEnergy(fn, m, float(gmm_lib.data_std(m))) for n, m in mixtures.items()}


# ---------------------------------------------------------------------------------------------
# Stage 3: sampling problems and their exact ground truth.


class Truth(NamedTuple):
  """Exact target at σ_K: tabulated density, the modes defining regions, masses, normaliser."""
  grid: grid_lib.GridDensity
  modes: gmm_lib.GaussianMixture   # a point belongs to its most responsible component.
  mode_masses: jax.Array           # (M,) exact mass of each region.
  log_z: float                     # log ∫ exp(−U_K) with normalised exact energies.


def _lim(*mixtures):
  return max(float(jnp.max(jnp.abs(m.means))) + 4 * float(jnp.sqrt(jnp.max(m.covs)))
             for m in mixtures)


def assign_modes(modes: gmm_lib.GaussianMixture, points: jax.Array) -> jax.Array:
  """Index of the most responsible component for each of ``points (M, 2)``; ``(M,)``."""
  resp = jax.vmap(gmm_lib.responsibilities, in_axes=(None, 0))(modes, points)
  return jnp.argmax(resp, axis=-1)


def _truth(log_density, modes, lim, log_z, grid_size) -> Truth:
  grid = grid_lib.tabulate(log_density, lim, grid_size)
  masses = jax.jit(lambda g: grid_lib.region_masses(
      g, functools.partial(assign_modes, modes), modes.num_components))(grid)
  return Truth(grid, modes, masses, float(grid.log_z if log_z is None else log_z))


def product_truth(a, b, sigma, grid_size) -> Truth:
  """Exact normalised product of the diffused mixtures (itself a mixture of K_a·K_b modes)."""
  prod, log_z = gmm_lib.product(gmm_lib.diffuse(a, sigma), gmm_lib.diffuse(b, sigma))
  keep = np.asarray(prod.weights) > 1e-4        # negligible components define no region.
  modes = gmm_lib.GaussianMixture(prod.weights[keep] / prod.weights[keep].sum(),
                                  prod.means[keep], prod.covs[keep])
  return _truth(lambda x: gmm_lib.log_prob(prod, x), modes, _lim(a, b), log_z, grid_size)


def tempered_truth(m, beta, sigma, grid_size) -> Truth:
  """``p_σ^β`` tabulated on a grid; regions are those of the modes of ``p``."""
  diffused = gmm_lib.diffuse(m, sigma)
  return _truth(lambda x: beta * gmm_lib.log_prob(diffused, x), m, _lim(m), None, grid_size)


def problem_potential(problem: str, config, energies: Dict[str, common.LoadedEnergy]):
  """``(potential(params) -> U(x, σ), params)`` of a problem on the given energies; ``U`` is a
  :mod:`fkdiff.sampling.targets` target (it carries its scale and σ_d for SMC)."""
  if problem == "product":
    names = list(config.product.models)
    def potential(params):
      return targets.product([energies[n].target(params[n]) for n in names])
  else:
    names = [config.low_temperature.model]
    def potential(params):
      return targets.tempered(energies[names[0]].target(params[names[0]]),
                              config.low_temperature.beta)
  return potential, {n: energies[n].params for n in names}


def run_method(method: str, keys, potential, params, config, sampler=None):
  """Samples the problem with one method once per key (one compiled sampler); returns a list of
  ``(samples (N, 2), diagnostics dict)``, one per key.

  The potential's parameters enter the jitted sampler as arguments (never as constants); the
  start width comes from the target's σ_d. ``sampler``: the sampler section (default
  ``config.sampler``).
  """
  s = config.sampler if sampler is None else sampler
  sigmas = common.levels(s)
  n = s.num_particles
  step_size = lambda sig: s.annealed_step_scale * sig**2 + 1e-4
  parts = common.smc_parts(method, s) if method in SMC_METHODS else {}

  @jax.jit
  def sample(params, key):
    u = potential(params)
    k_init, k_run = jax.random.split(key)
    if method in SMC_METHODS:
      res = smc.smc_sample(k_run, u, sigmas, n, (2,), final_resample=True, **parts)
      return res.particles, {"ess_final": res.ess, "ess_min_fraction": jnp.min(res.info.ess) / n,
                             "num_resampled": jnp.sum(res.info.resampled),
                             "log_Z": res.log_Z, "ess_path": res.info.ess / n}
    x_init = reverse.prior_sample(k_init, n, (2,), s.sigma_max, u.sigma_data)
    if method == "naive":
      return naive_reverse_sample(k_run, u, x_init, sigmas), {}
    res = mcmc.annealed_mcmc_sample(k_run, u, x_init, sigmas, kernel=method,
                                    num_steps_per_level=s.annealed_steps_per_level,
                                    step_size=step_size, num_leapfrog=s.num_leapfrog,
                                    target_acceptance=s[f"{method}_target_acceptance"] or None)
    return res.particles, {"acceptance_rate": jnp.mean(res.acceptance_rate)}

  return [sample(params, key) for key in keys]


@functools.partial(jax.jit, static_argnames="num_distance")
def _score(samples, truth: Truth, key, num_distance: int):
  finite = jnp.all(jnp.isfinite(samples), axis=-1)
  x = jnp.where(finite[:, None], samples, 0.0)
  ids = assign_modes(truth.modes, x)
  masses = jax.ops.segment_sum(finite / jnp.sum(finite), ids, truth.mode_masses.shape[0])
  err = jnp.abs(masses - truth.mode_masses)
  log_p = grid_lib.log_prob(truth.grid, x)
  inside = jnp.isfinite(log_p) & finite
  k_exact, k_sw = jax.random.split(key)
  exact = grid_lib.sample(truth.grid, k_exact, num_distance)
  return {"nll": -jnp.sum(jnp.where(inside, log_p, 0.0)) / jnp.sum(inside),
          "outside_grid": 1.0 - jnp.mean(inside),
          "mode_mass_tv": 0.5 * jnp.sum(err),
          "mode_mass_max_error": jnp.max(err),
          "sliced_wasserstein": distances.sliced_wasserstein(k_sw, x[:num_distance], exact),
          "energy_distance": distances.energy_distance(x[:num_distance], exact),
          "num_nonfinite": jnp.sum(~finite)}


def score_samples(samples, truth: Truth, key, num_distance: int) -> dict:
  """Metrics of ``samples (N, 2)`` against the exact target.

  ``nll`` is the mean ``−log p`` over samples inside the grid (``outside_grid`` is the fraction
  outside); mode masses and errors use the regions of ``truth.modes``; the distances compare the
  first ``num_distance`` samples with as many exact ones. Non-finite samples are counted in
  ``num_nonfinite`` (and placed at the origin for the distances).
  """
  num = min(num_distance, samples.shape[0])
  return {k: float(v) for k, v in _score(jnp.asarray(samples), truth, key, num).items()}


def _mean_and_std(per_seed: list) -> dict:
  """Mean of every metric over seeds, and ``<metric>_std`` (their std) when there are several."""
  out = {}
  for name in per_seed[0]:
    values = np.asarray([m[name] for m in per_seed], np.float64)
    out[name] = float(np.mean(values))
    if len(per_seed) > 1:
      out[f"{name}_std"] = float(np.std(values, ddof=1))
  return out


def model_floor(target, truth: Truth, sigma) -> dict:
  """The learned model's own error: mode masses of ``exp(−U(·, σ_K))`` tabulated on the truth's
  grid against the exact ones (what a perfect sampler of the learned target would score)."""
  n = int(round(2 * truth.grid.lim / truth.grid.cell))
  grid = grid_lib.tabulate(lambda x: -target(x, sigma), truth.grid.lim, n)
  masses = grid_lib.region_masses(grid, functools.partial(assign_modes, truth.modes),
                                  truth.modes.num_components)
  err = jnp.abs(masses - truth.mode_masses)
  return {"mode_mass_tv": float(0.5 * jnp.sum(err)), "mode_mass_max_error": float(jnp.max(err))}


def _methods_for(source: str, config) -> list:
  return common.source_methods(source, config.methods, config, METHODS)


def _progress_line(problem, method, source, metrics, config, start, done, total,
                   phase_start) -> str:
  """One line per sampled row (row ``done`` of ``total``; the sampling phase is most of the job's
  time) with an ETA from the rows so far, and what the weights' own numbers say when they
  degenerated."""
  now = time.perf_counter()
  eta = (now - phase_start) / done * (total - done)
  line = (f"Sampled [{done}/{total}, ETA {eta / 60:.1f} min] {problem} {method}/{source}: "
          f"{config.eval.num_seeds} seeds in {now - start:.0f} s, "
          f"mode-mass TV {metrics['mode_mass_tv']:.4f}")
  ess = metrics.get("ess_min_fraction")
  if ess is not None and ess * config.sampler.num_particles < 2.0:
    line += " — weights degenerate (ESS < 2 at some level): these are draws of the proposal"
  return line


def run_problems(config, workdir: str, distilled: Dict[str, Dict[str, common.LoadedEnergy]],
              mixtures) -> dict:
  """Stage 3: every problem × method × energy source (``distilled``: the trained sources by name);
  returns the nested results dict."""
  results, figures = {}, {}
  sigma_k = config.sampler.sigma_min
  sources = {"exact": exact_energies(mixtures), **distilled}
  key = jax.random.key(config.seed)
  total = len(config.problems) * sum(len(_methods_for(s, config)) for s in config.energies)
  done, phase_start = 0, time.perf_counter()
  for problem in config.problems:
    if problem == "product":
      a, b = (mixtures[n] for n in config.product.models)
      truth = product_truth(a, b, sigma_k, config.eval.grid_size)
    else:
      m = mixtures[config.low_temperature.model]
      truth = tempered_truth(m, config.low_temperature.beta, sigma_k, config.eval.grid_size)
    results[problem] = {"exact_mode_masses": [float(v) for v in truth.mode_masses],
                     "exact_log_Z": truth.log_z}
    for source in config.energies:
      potential, params = problem_potential(problem, config, sources[source])
      sampler = common.source_sampler(source, config)
      if source in TRAINED:
        results[problem][f"floor/{source}"] = model_floor(potential(params), truth, sigma_k)
      for method in _methods_for(source, config):
        start = time.perf_counter()
        key, k_run, k_eval = jax.random.split(key, 3)
        seed_runs = run_method(method, jax.random.split(k_run, config.eval.num_seeds),
                               potential, params, config, sampler)
        per_seed = []
        for (samples, diag), k in zip(seed_runs, jax.random.split(k_eval, len(seed_runs))):
          metrics = score_samples(samples, truth, k, config.eval.num_distance_samples)
          metrics.update({n: float(v) for n, v in diag.items() if n != "ess_path"})
          per_seed.append(metrics)
        metrics = _mean_and_std(per_seed)
        if method == "smc_ratio" and source == "exact":
          metrics["log_Z_exact"] = truth.log_z
        results[problem][f"{method}/{source}"] = metrics
        done += 1
        print(_progress_line(problem, method, source, metrics, config, start, done, total,
                             phase_start), flush=True)
        samples, diag = seed_runs[0]
        figures[(problem, method, source)] = (np.asarray(samples), diag.get("ess_path"))
    shown = list(dict.fromkeys(m for source in config.energies
                               for m in _methods_for(source, config)))
    plots.problem_figure(os.path.join(workdir, f"{problem}.png"), problem, truth.grid, figures,
                         shown, config.energies)
  plots.ess_figure(os.path.join(workdir, "ess.png"), figures,
                   np.asarray(common.levels(config.sampler)))
  return results


def format_table(results: dict) -> str:
  """The results as a fixed-width text table (one row per problem × method × energy source)."""
  cols = ("mode_mass_tv", "tv_seed_std", "nll", "sliced_wasserstein", "energy_distance",
          "ess_min_fraction", "log_Z", "log_Z_exact")
  rename = {"mode_mass_tv_std": "tv_seed_std"}       # the header keeps 12 characters
  rows = [((problem, name), {rename.get(k, k): v for k, v in metrics.items()})
          for problem, problem_rows in results.items()
          for name, metrics in problem_rows.items() if isinstance(metrics, dict)]
  return "\n".join(common.metrics_table((("problem", 16), ("method/energy", 21)), cols, rows, 12))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The whole job; returns (and writes to ``workdir/results.json``) the results table."""
  validate_job_config(config)
  workdir = common.start_job(config, workdir)
  mixtures = {}
  for name in _needed_models(config):
    ds = config.datasets[name]
    kwargs = ds.mixture_kwargs.to_dict() if "mixture_kwargs" in ds else {}
    mixtures[name] = toy.get_mixture(ds.mixture, **kwargs)
  distilled = {source: common.load_energies(dirs)
               for source, dirs in train_models(config, workdir).items()}
  results = run_problems(config, workdir, distilled, mixtures)
  common.write_results(workdir, results, format_table(results), config)
  return results
