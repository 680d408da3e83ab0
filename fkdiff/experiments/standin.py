"""Learned energies in high dimension, scored against exact answers: the stand-in job.

The data are drawn from closed-form image-spectrum Gaussian mixtures over ``(dim,)`` numbers
(:func:`fkdiff.data.spectral.layout`: every component shares one covariance with a decaying
DCT spectrum, the means ``separation`` standard deviations apart in the plane of two DCT
coordinates), so every target below has an exact answer in any dimension
(:func:`fkdiff.experiments.highdim.tempered_reference`, :func:`~.highdim.product_reference`).

Stages (the job skeleton's, :func:`fkdiff.experiments.common.train_models`; finished ones reused):
  1. an MLP teacher per layout trained on its samples,      ``<workdir>/teachers/<name>``;
  2. energies distilled from it — plain (``learned``)       ``<workdir>/energies/<name>``
     and time-consistent (``consistent``)                   ``<workdir>/energies_consistent/<name>``;
  3. the problems — ``tempered`` (``p^β`` of a three-mode layout), ``product`` (``p_a p_b`` of
     two two-mode layouts) and ``and`` (the classifier-free AND ``p(x|a) p(x|b) / p(x)`` of two
     attributes of a six-component layout, on one class-conditional network whose null label is
     the whole mixture: :func:`fkdiff.data.spectral.sample_labelled`) — with every method on
     every energy source: the learned ones and the same mixtures' ``exact`` energies
     (:func:`fkdiff.data.spectral.energy`).

Scores (``eval.runs`` independent runs of ``sampler.num_particles`` particles, each ending in one
resampling; standard errors over the runs, :func:`fkdiff.experiments.highdim.score_runs`): the
largest mode-mass error and the mean per-coordinate variance ratio against the exact target at
σ_K, and for the learned rows the same row's distance to the exact energies' row
(``masses_vs_exact``: the largest mode-mass difference; ``var_vs_exact``). Every learned energy's
diagnostics against the exact mixture, per σ of ``eval.sigmas``: its relative score error, the
inter-mode level error and the heat residual's spread (:func:`energy_diagnostics`; a conditional
energy's per label, against its conditional mixture).
Outputs: ``results.json``, ``results.txt``, TensorBoard scalars.
"""

import functools
import time
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fkdiff.data import gmm as gmm_lib
from fkdiff.data import spectral
from fkdiff.evaluation import time_consistency, toy_metrics
from fkdiff.experiments import common, highdim
from fkdiff.sampling import baselines, reverse, smc, targets
from fkdiff.training.config import default_config, validate_config

PROBLEMS = ("tempered", "product", "and")
SMC_METHODS = common.ENERGY_SMC_METHODS
METHODS = SMC_METHODS + ("naive",)
SOURCES = ("learned", "consistent", "exact")


def job_config() -> ml_collections.ConfigDict:
  """Every key the stand-in job understands (see ``configs/standin.py``)."""
  c = ml_collections.ConfigDict()
  c.job = "standin"
  c.seed = 0
  c.dim = 64                         # numbers per example.
  c.separation = 6.0                 # the modes' distance in plane standard deviations.
  c.problems = PROBLEMS
  c.methods = ("smc_default", "smc_ratio", "naive")
  c.energies = ("learned", "consistent", "exact")
  c.tempered = ml_collections.ConfigDict({"model": "three_modes", "beta": 2.0})
  c.product = ml_collections.ConfigDict({"models": ("split_a", "split_b")})
  # The 'and' problem: a layout with attributes and the attributes it conjoins.
  c.conditional = ml_collections.ConfigDict({"model": "attributes", "labels": (0, 1)})
  c.teacher = default_config()       # training settings shared by every teacher ...
  c.distill = default_config()       # ... and by every distillation.
  for stage in (c.teacher, c.distill):
    stage.data.name = "spectral"
  c.consistent = ml_collections.ConfigDict()     # time-consistent distillation's overrides.
  c.consistent.time_weight = 0.1
  c.consistent.time_target = "teacher"
  c.consistent.time_probes = 1      # Hutchinson probes of ∇·s_T (the exact trace: d passes).
  c.consistent.num_steps = 4000
  c.consistent.methods = ("smc_default", "smc_ratio")
  c.sampler = common.sampler_config(num_steps=65)   # Karras levels from σ = 80 to 0.002.
  c.sampler.num_particles = 256
  c.eval = ml_collections.ConfigDict()
  c.eval.runs = 32                   # independent runs per row (standard errors over them).
  c.eval.sigmas = (0.05, 0.1, 0.3, 1.0)   # σ of the energies' diagnostics.
  c.eval.points = 128                # points per mixture component and σ for them.
  c.eval.probes = 0                  # Laplacian of the heat residual: 0 exact, else probes.
  return c


def validate_job_config(config: ml_collections.ConfigDict) -> None:
  """Unknown keys, problem, method, source or layout names: a ``ValueError`` naming them."""
  common.check_known_keys(config, job_config(), "standin",
                          ("tempered", "product", "conditional", "consistent", "sampler",
                           "eval"))
  validate_config(config.teacher)
  validate_config(config.distill)
  validate_config(common.time_consistent_distill(config.distill, config.consistent))
  common.validate_sampler(config.sampler)
  for kind, names, valid in (("problem", config.problems, PROBLEMS),
                             ("method", config.methods, METHODS),
                             ("consistent method", config.consistent.methods, METHODS),
                             ("energy source", config.energies, SOURCES),
                             ("layout", models(config), tuple(spectral.LAYOUTS))):
    unknown = [n for n in names if n not in valid]
    if unknown:
      raise ValueError(f"Unknown {kind} {unknown[0]!r} in the config; choose from {valid}.")
  if not (isinstance(config.dim, int) and config.dim >= 2):
    raise ValueError(f"dim must be an int >= 2, got {config.dim!r}.")
  if not config.separation > 0:
    raise ValueError(f"separation must be > 0 (plane standard deviations between modes), got "
                     f"{config.separation!r}.")
  if "and" in config.problems:
    a = spectral.num_labels(spectral.layout(config.conditional.model, 2))
    bad = [c for c in config.conditional.labels if not (isinstance(c, int) and 0 <= c < a)]
    if a == 0 or bad or len(config.conditional.labels) < 1:
      raise ValueError(f"conditional.labels must be attributes 0 … {a - 1} of layout "
                       f"{config.conditional.model!r} (it has {a}); got "
                       f"{tuple(config.conditional.labels)}.")
  if not (isinstance(config.eval.runs, int) and config.eval.runs >= 2):
    raise ValueError(f"eval.runs must be an int >= 2 (standard errors), got {config.eval.runs!r}.")


def models(config) -> List[str]:
  """The layouts the problems use, each trained once."""
  names = []
  if "tempered" in config.problems:
    names.append(config.tempered.model)
  if "product" in config.problems:
    names += list(config.product.models)
  if "and" in config.problems:
    names.append(config.conditional.model)
  return list(dict.fromkeys(names))


def layouts(config) -> Dict[str, spectral.SpectralMixture]:
  """``{name: mixture}`` of the job's layouts at its ``dim`` and ``separation``."""
  return {n: spectral.layout(n, config.dim, config.separation) for n in models(config)}


def _stage_config(base, task, name, teacher_workdir, config):
  c = common.stage_base(base, task, teacher_workdir)
  c.data.name = "spectral"
  c.data.mixture = name
  c.data.mixture_kwargs = ml_collections.ConfigDict({"dim": config.dim,
                                                     "separation": config.separation})
  # A layout with attributes trains one class-conditional network (its null label: the whole
  # mixture, drawn by the data source itself).
  c.model.num_classes = spectral.num_labels(spectral.layout(name, 2))
  return c


def exact_energies(mixtures: Dict[str, spectral.SpectralMixture]) -> Dict[str, common.LoadedEnergy]:
  """The mixtures' closed-form diffused energies ``−log p_σ`` (``−log p_σ(·|label)`` given a
  label) with their data stds (the σ_d a trained stage computes from the same data) and, for a
  layout with attributes, its null label."""
  fn = lambda sm, x, s, label=None: spectral.energy(sm, x, s, label)
  return {n: common.LoadedEnergy(fn, sm, gmm_lib.data_std(spectral.as_gmm(sm)),
                                 spectral.num_labels(sm) or None)
          for n, sm in mixtures.items()}


def problem(name: str, config, mixtures) -> highdim.Problem:
  """A problem's exact answer at the sampler's σ_K (its ``target`` is built per energy source by
  :func:`potential`)."""
  sigma = float(config.sampler.sigma_min)
  if name == "tempered":
    sm = mixtures[config.tempered.model]
    ref = highdim.tempered_reference(sm, float(config.tempered.beta), sigma)
  elif name == "and":
    sm = mixtures[config.conditional.model]
    ref = highdim.and_reference(sm, sigma, tuple(config.conditional.labels))
  else:
    a, b = (mixtures[n] for n in config.product.models)
    sm, ref = a, highdim.product_reference(a, b, sigma)
  return highdim.Problem(name, sm.event_shape, None, ref, np.asarray(sm.eig))


def potential(name: str, config, energies: Dict[str, common.LoadedEnergy]):
  """``(potential(params) -> Target, params)`` of a problem on the given energies (``and``: the
  conditional energy under its null label and each of ``conditional.labels``)."""
  names = {"tempered": [config.tempered.model], "product": list(config.product.models),
           "and": [config.conditional.model]}[name]

  def build(params):
    if name == "and":
      e, p = energies[names[0]], params[names[0]]
      null, *conds = (e.target(p, c) for c in (e.null,) + tuple(config.conditional.labels))
      return targets.conditional_and(null, conds)
    parts = [energies[n].target(params[n]) for n in names]
    if name == "tempered":
      return targets.tempered(parts[0], config.tempered.beta)
    return targets.product(parts)
  return build, {n: energies[n].params for n in names}


def run_method(method: str, build, params, s, shape, runs: int, seed: int):
  """``runs`` independent runs of ``method`` (vmapped, one compiled program).

  Returns ``(z (runs, N, d) DCT coordinates, NFE per sample, seconds per sample, min ESS)``.
  """
  sigmas = common.levels(s)
  n = s.num_particles
  parts = common.smc_parts(method, s) if method in SMC_METHODS else {}

  def one(params, key):
    u = build(params)
    if method == "naive":
      k0, k1 = jax.random.split(key)
      x0 = reverse.prior_sample(k0, n, shape, s.sigma_max, u.sigma_data) / jnp.sqrt(
          targets.scale_of(u))
      x = baselines.naive_reverse_sample(k1, u, x0, sigmas)
      return x, jnp.full((), float(n)), jnp.zeros(())
    r = smc.smc_sample(key, u, sigmas, n, shape, final_resample=True, **parts)
    return r.particles, jnp.min(r.info.ess), jnp.sum(r.info.resampled).astype(jnp.float32)

  fn = jax.jit(jax.vmap(one, in_axes=(None, 0)))
  keys = jax.random.split(jax.random.key(seed), runs)
  fn = fn.lower(params, keys).compile()                  # compile outside the timing
  start = time.perf_counter()
  x, ess, resampled = jax.block_until_ready(fn(params, keys))
  seconds = (time.perf_counter() - start) / (runs * n)
  z = np.asarray(spectral.coordinates(x.reshape((-1,) + tuple(shape))), np.float64)
  d = int(np.prod(shape))
  if method == "naive":
    nfe = len(sigmas)
  else:
    nfe = common.nfe_per_particle(method, s, d, len(sigmas), float(np.mean(resampled)))
  return z.reshape(runs, n, -1), float(nfe), seconds, float(np.min(ess))


def score_runs_uniform(prob: highdim.Problem, z, nfe: float, ess: float,
                       seconds: float = None) -> dict:
  """:func:`fkdiff.experiments.highdim.score_runs` of equally weighted runs ``z (R, N, d)``, with
  the exact mode masses."""
  w = np.full(z.shape[:2], 1.0 / z.shape[1])
  r = highdim.score_runs(prob, z, w, nfe, seconds, ess)
  r["exact_masses"] = [round(float(m), 4) for m in prob.reference.mode_masses]
  return r


def energy_diagnostics(energy: common.LoadedEnergy, mixture: spectral.SpectralMixture, key,
                       sigmas: Sequence[float], points: int, probes: int,
                       label: Optional[int] = None) -> Dict[str, float]:
  """A learned energy (under ``label``, against ``p(·|label)``: :func:`fkdiff.data.spectral.
  conditional`) against its mixture's exact one (:func:`fkdiff.data.spectral.energy`), per
  σ: ``score_error/sigma_<σ>`` (relative, of ``−∇E`` over 1,024 draws of ``p_σ``,
  :func:`fkdiff.evaluation.toy_metrics.score_error_at`) and ``level_error/…``,
  ``heat_residual_std/…``, ``heat_residual_mode_spread/…`` over ``points`` draws per component
  (:func:`fkdiff.evaluation.time_consistency.level_diagnostics`; ``probes``: 0 for the exact
  Laplacian). All closed forms of the spectral mixture: no matrix factorisation."""
  mixture = spectral.conditional(mixture, label)
  exact = lambda x, s: spectral.energy(mixture, x, s)
  weights = jnp.exp(mixture.log_weights)
  extra = () if label is None else (label,)

  @functools.partial(jax.jit, static_argnums=2)
  def at_sigma(params, key, s):
    fn = lambda x, sig: energy.fn(params, x, sig, *extra)
    k_pts, k_probe, k_score = jax.random.split(key, 3)
    pts = spectral.sample_components(mixture, k_pts, points, s)
    out = time_consistency.level_diagnostics(fn, exact, pts, weights, s, k_probe, probes)
    x = spectral.sample(mixture, k_score, 1024, s)[0]
    out[f"score_error/sigma_{s:g}"] = toy_metrics.score_error_at(
        lambda z, sig: -jax.grad(fn)(z, sig), lambda z, sig: -jax.grad(exact)(z, sig), x, s)
    return out

  out = {}
  for i, s in enumerate(sigmas):
    out.update(at_sigma(energy.params, jax.random.fold_in(key, i), float(s)))
  return {k: float(v) for k, v in sorted(out.items())}


def _versus_exact(row: dict, exact: dict) -> dict:
  gap = np.abs(np.asarray(row["masses"]) - np.asarray(exact["masses"]))
  return {"masses_vs_exact": float(np.max(gap)),
          "var_vs_exact": float(row["var_ratio"] - exact["var_ratio"])}


def _row_line(problem_name, name, r, done, total, eta) -> str:
  text = (f"[{done}/{total}, ETA {eta / 60:.1f} min] {problem_name:9s} {name:24s} "
          f"mass error {r['mode_mass_error']:.4f} ± {r['mode_mass_error_se']:.4f}  "
          f"var ratio {r['var_ratio']:.4f} ± {r['var_ratio_se']:.4f}  "
          f"min ESS {r['min_ess']:.1f}  NFE {r['nfe_per_sample']:.0f}")
  if "masses_vs_exact" in r:
    text += f"  vs exact: masses {r['masses_vs_exact']:.4f}, var {r['var_vs_exact']:+.4f}"
  return text + "".join(f"  [{w}]" for w in highdim.warnings_for(r))


def run_problems(config, mixtures, sources: Dict[str, Dict[str, common.LoadedEnergy]]) -> dict:
  """Stage 3: every problem × energy source × method; the nested results dict."""
  results = {}
  order = [s for s in config.energies if s == "exact"] + [s for s in config.energies
                                                          if s != "exact"]
  rows = [(p, source, m) for p in config.problems for source in order
          for m in common.source_methods(source, config.methods, config, METHODS)]
  problems = {p: problem(p, config, mixtures) for p in config.problems}   # a grid each
  phase_start = time.perf_counter()
  for i, (pname, source, method) in enumerate(rows):
    prob = problems[pname]
    build, params = potential(pname, config, sources[source])
    z, nfe, seconds, ess = run_method(method, build, params, config.sampler, prob.event_shape,
                                      config.eval.runs, config.seed + i)
    r = score_runs_uniform(prob, z, nfe, ess, seconds)
    exact_row = results.get(pname, {}).get(f"{method}/exact")
    if source != "exact" and exact_row is not None:
      r.update(_versus_exact(r, exact_row))
    results.setdefault(pname, {})[f"{method}/{source}"] = r
    eta = (time.perf_counter() - phase_start) / (i + 1) * (len(rows) - i - 1)
    print(_row_line(pname, f"{method}/{source}", r, i + 1, len(rows), eta), flush=True)
  return results


def format_table(results: dict) -> str:
  """Fixed-width text: the sampled rows, then every learned energy's diagnostics."""
  cols = ("mode_mass_error", "mode_mass_error_se", "var_ratio", "var_ratio_se",
          "masses_vs_exact", "var_vs_exact", "min_ess", "nfe_per_sample")
  rows = [((p, name), r) for p, by_name in results.items() if p != "energies"
          for name, r in by_name.items()]
  lines = common.metrics_table((("problem", 10), ("method/energy", 22)), cols, rows, 12)
  energies = results.get("energies", {})
  if energies:
    cols = ("score_error", "level_error", "heat_residual_std", "heat_residual_mode_spread")
    by_sigma = []
    for name, d in energies.items():
      for tag in sorted({k.split("/")[1] for k in d}, key=lambda t: float(t[len("sigma_"):])):
        by_sigma.append(((name, tag[len("sigma_"):]), {c: d[f"{c}/{tag}"] for c in cols}))
    lines += [""] + common.metrics_table((("energy/model", 24), ("σ", 6)), cols, by_sigma, 12)
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The whole job; returns (and writes to ``workdir/results.json``) the results."""
  validate_job_config(config)
  workdir = common.start_job(config, workdir)
  mixtures = layouts(config)
  dirs = common.train_models(config, workdir, models(config),
                             functools.partial(_stage_config, config=config))
  sources = {"exact": exact_energies(mixtures)}
  sources.update({source: common.load_energies(d) for source, d in dirs.items()})
  results = {"energies": {}}
  key = jax.random.key(config.seed)
  for source, energies in sources.items():
    if source == "exact":
      continue
    for name, energy in energies.items():
      # A conditional energy: under each label (its conditional) and the null (the mixture).
      labels = [None] if energy.null is None else list(range(energy.null + 1))
      for label in labels:
        key, k = jax.random.split(key)
        tag = "" if label is None else ":null" if label == energy.null else f":{label}"
        results["energies"][f"{source}/{name}{tag}"] = energy_diagnostics(
            energy, mixtures[name], k, config.eval.sigmas, config.eval.points,
            config.eval.probes, label)
  results.update(run_problems(config, mixtures, sources))
  common.write_results(workdir, results, format_table(results), config)
  return results
