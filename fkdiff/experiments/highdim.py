"""SMC in image dimensions on exact targets: which samplers stay correct as d grows.

Targets (:mod:`fkdiff.data.spectral`: Gaussian mixtures sharing one image-like DCT spectrum, the
components far apart in a 2-D plane, so the exact answer is a 2-D density times a Gaussian in any
dimension):

- ``tempered2`` / ``tempered4``: ``p^β`` of three components (weights 0.5 / 0.3 / 0.2, 6 s.d.
  apart along the DC coordinate), β = 2 / 4;
- ``product``: ``p_A p_B``, two two-component mixtures split along the two plane axes;
- ``and``: classifier-free AND ``p(x) Π_i p(x|c_i)/p(x)`` of two attributes of a six-component
  mixture (the attributes' overlap holds two components).

Methods (``METHODS``): ``naive`` (reverse diffusion on the summed/scaled score, no weights),
``score_unit`` (the score-only weights of fkdiff ≤ 0.1's default), ``exact_ratio``,
``matched_euler`` (score-only, matched noise, Hutchinson Laplacian with shared probes) and
``shaped`` / ``shaped_trapezoid`` (the same with the Hessian-shaped proposal, docs/METHOD.md §4c).
Every method runs ``study.runs`` independent runs of ``study.num_particles`` particles per seed,
each ending in one resampling (all particles are returned), on Karras levels from σ = 80 sized to
each NFE budget per sample (energy evaluations: value and gradient one, Hessian-vector product two).

Scores (:func:`score_runs`, standard errors over the independent runs): the largest mode-mass
error, the mean over DCT coordinates (the principal axes) of the samples' variance over the exact
one, the plane mean's error in standard deviations, NFE and seconds per sample, smallest ESS.
"""

import functools
import os
import time
from typing import Callable, Dict, NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fkdiff.data import spectral
from fkdiff.diffusion import karras_sigmas
from fkdiff.experiments import common
from fkdiff.sampling import (ExactRatio, Resampling, ScoreOnly, baselines, reverse, smc_sample,
                             targets)

SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5
SCHEMES = {
    "score_unit": ScoreOnly(),
    "exact_ratio": ExactRatio(),
    "matched_euler": ScoreOnly(noise="matched", laplacian="hutchinson"),
    "shaped": ScoreOnly(noise="matched", laplacian="auto", proposal="shaped"),
    "shaped_trapezoid": ScoreOnly(rule="trapezoid", noise="matched", laplacian="auto",
                                  proposal="shaped"),
}
METHODS = ("naive",) + tuple(SCHEMES)


class Problem(NamedTuple):
  """A target with its exact answer. ``target``: the SMC :class:`~fkdiff.sampling.Target`;
  ``reference``: :class:`~fkdiff.data.spectral.PlaneReference`; ``eig``: the spectrum."""
  name: str
  event_shape: Tuple[int, ...]
  target: targets.Target
  reference: spectral.PlaneReference
  eig: np.ndarray


def parse_shape(text: str) -> Tuple[int, ...]:
  """``'32x32x3' -> (32, 32, 3)``."""
  return tuple(int(n) for n in str(text).split("x"))


def _energy(sm, label=None) -> Callable:
  return functools.partial(spectral.energy, sm, label=label)


def tempered_reference(sm: spectral.SpectralMixture, beta: float,
                       sigma: float = SIGMA_MIN) -> spectral.PlaneReference:
  """The exact answer for ``p_σ^β`` (modes: the components' centres)."""
  return spectral.plane_reference([spectral.condition_parts(sm, None)], [beta], sigma, sm.eig,
                                  np.asarray(sm.plane_means))


def product_reference(a: spectral.SpectralMixture, b: spectral.SpectralMixture,
                      sigma: float = SIGMA_MIN) -> spectral.PlaneReference:
  """The exact answer for ``p_a,σ p_b,σ`` (same spectrum): a mode per pair of components,
  centred half-way between them (the product of two Gaussians of one covariance), ``a``-major."""
  centres = 0.5 * (np.asarray(a.plane_means)[:, None] + np.asarray(b.plane_means)[None])
  return spectral.plane_reference(
      [spectral.condition_parts(a, None), spectral.condition_parts(b, None)], [1.0, 1.0], sigma,
      a.eig, centres.reshape(-1, 2))


def and_reference(sm: spectral.SpectralMixture, sigma: float = SIGMA_MIN,
                  labels: Sequence[int] = (0, 1)) -> spectral.PlaneReference:
  """The exact answer for the classifier-free AND ``p_σ(x) Π_i p_σ(x|c_i) / p_σ(x)`` of the
  attributes ``labels`` (modes: the components' centres)."""
  parts = [spectral.condition_parts(sm, c) for c in (None,) + tuple(labels)]
  return spectral.plane_reference(parts, [1.0 - len(labels)] + [1.0] * len(labels), sigma,
                                  sm.eig, np.asarray(sm.plane_means))


def _tempered(shape, beta, weights, means) -> Tuple:
  sm = spectral.make(shape, weights, means)
  return targets.tempered(_energy(sm), beta), tempered_reference(sm, beta), sm.eig


def _product(shape, sep) -> Tuple:
  a, b = (spectral.layout(n, shape, sep) for n in ("split_a", "split_b"))
  return targets.product([_energy(a), _energy(b)]), product_reference(a, b), a.eig


def _and(shape, sep) -> Tuple:
  sm = spectral.layout("attributes", shape, sep)
  return (targets.conditional_and(_energy(sm), [_energy(sm, 0), _energy(sm, 1)]),
          and_reference(sm), sm.eig)


def problem(name: str, event_shape: Sequence[int]) -> Problem:
  """One of ``tempered2``, ``tempered4``, ``product``, ``and`` (module docstring) in
  ``event_shape``."""
  shape = tuple(int(n) for n in event_shape)
  if name in ("tempered2", "tempered4"):
    built = _tempered(shape, float(name[-1]), [0.5, 0.3, 0.2], [[-6, 0], [0, 0], [6, 0]])
  elif name == "product":
    built = _product(shape, 6.0)
  elif name == "and":
    built = _and(shape, 6.0)
  else:
    raise ValueError(f"Unknown problem {name!r}; use tempered2, tempered4, product or and.")
  target, ref, eig = built
  return Problem(name, shape, target, ref, np.asarray(eig))


def low_dim_problem(name: str) -> Problem:
  """The low-dimensional checks of the default (benchmarks/smc_defaults.py): ``tempered3_2d``
  (three components spread over the plane of a 2-D event, β = 3), ``product_10d``, ``and_10d``
  (the high-dimension study's product and AND, 4 s.d. apart, in 10-D)."""
  if name == "tempered3_2d":
    target, ref, eig = _tempered((2,), 3.0, [0.5, 0.3, 0.2], [[-3, -3], [0, 3], [3, -1]])
    return Problem(name, (2,), target, ref, np.asarray(eig))
  if name == "product_10d":
    return Problem(name, (10,), *_with_eig(_product((10,), 4.0)))
  if name == "and_10d":
    return Problem(name, (10,), *_with_eig(_and((10,), 4.0)))
  raise ValueError(f"Unknown low-dimensional problem {name!r}.")


def _with_eig(built):
  target, ref, eig = built
  return target, ref, np.asarray(eig)


def nfe_per_level(method: str, size: int) -> int:
  """Energy evaluations per particle and level of ``method`` for events of ``size`` numbers."""
  return 1 if method == "naive" else SCHEMES[method].evaluations_per_level(size)


def levels_for_budget(method: str, size: int, budget: int) -> int:
  """The number of levels whose NFE per sample is at most ``budget`` (at least 2)."""
  return max(2, budget // nfe_per_level(method, size))


def _sampler(prob: Problem, method: str, levels: int, num: int, weighted: bool):
  """The jitted ``keys (R,) -> (particles, log_weights, min ESS)`` of R independent runs."""
  sigmas = karras_sigmas(levels + 1, SIGMA_MIN, SIGMA_MAX)
  shape = prob.event_shape

  def one(key):
    if method == "naive":
      k0, k1 = jax.random.split(key)
      x0 = reverse.prior_sample(k0, num, shape, SIGMA_MAX, SIGMA_DATA) / jnp.sqrt(
          targets.scale_of(prob.target))
      x = baselines.naive_reverse_sample(k1, prob.target, x0, sigmas)
      return x, jnp.zeros((num,)), jnp.full((), float(num))
    r = smc_sample(key, prob.target, sigmas, num, shape, sigma_data=SIGMA_DATA,
                   scheme=SCHEMES[method], resampling=Resampling(),
                   final_resample=not weighted)
    return r.particles, r.log_weights, jnp.min(r.info.ess)
  return jax.jit(jax.vmap(one))


def run_method(prob: Problem, method: str, levels: int, num_particles: int, runs: int,
               seed: int, weighted: bool = False):
  """``runs`` independent runs of ``method`` on ``prob`` (vmapped).

  Returns:
    ``(z (runs, N, d) DCT coordinates, normalised weights (runs, N) (each run's summing to 1),
    NFE per sample, seconds per sample, smallest ESS over levels and runs)``.
  """
  fn = _sampler(prob, method, levels, num_particles, weighted)
  keys = jax.random.split(jax.random.PRNGKey(seed), runs)
  fn = fn.lower(keys).compile()                                 # compile outside the timing
  t = time.time()
  x, log_w, ess = jax.block_until_ready(fn(keys))
  seconds = time.time() - t
  w = np.asarray(jax.nn.softmax(log_w, axis=-1), np.float64)
  z = np.asarray(spectral.coordinates(x.reshape((-1,) + prob.event_shape)), np.float64)
  nfe = nfe_per_level(method, int(np.prod(prob.event_shape))) * levels
  return (z.reshape(runs, num_particles, -1), w, nfe, seconds / (runs * num_particles),
          float(np.min(ess)))


def score_runs(prob: Problem, z, w, nfe=None, seconds=None, ess=None) -> Dict[str, float]:
  """Scores of independent runs (``z (R, N, d)`` DCT coordinates, weights ``w (R, N)``, each
  run's summing to 1) against ``prob.reference``; standard errors over the runs.

  ``mode_mass_error``: the largest ``|mean over runs of a mode's mass − exact|`` (``_se``: that
  mode's s.e.); ``var_ratio``: the mean over coordinates of the pooled samples' variance over
  the exact one (``_se`` from the runs' own ratios); ``plane_mean_error``: the largest plane
  coordinate's mean error in exact standard deviations; ``masses``: the mean masses.
  """
  ref = prob.reference
  z, w = np.asarray(z, np.float64), np.asarray(w, np.float64)
  good = np.all(np.isfinite(z), axis=-1)
  w, z = np.where(good, w, 0.0), np.where(good[..., None], z, 0.0)
  w = w / np.maximum(w.sum(-1, keepdims=True), 1e-300)
  runs = z.shape[0]
  modes = spectral.assign_modes(z.reshape(-1, z.shape[-1]), ref.mode_centres, prob.eig)
  modes = modes.reshape(w.shape)
  masses = np.stack([np.bincount(m, weights=wr, minlength=len(ref.mode_masses))
                     for m, wr in zip(modes, w)])                          # (R, M)
  bias = masses.mean(0) - ref.mode_masses
  worst = int(np.argmax(np.abs(bias)))
  pooled = w.reshape(-1) / runs
  flat = z.reshape(-1, z.shape[-1])
  mean = pooled @ flat
  var = pooled @ (flat - mean)**2
  run_ratio = np.einsum("rn,rnd->rd", w, (z - mean)**2) / ref.rest_var           # (R, d)
  plane = list(spectral.PLANE)
  out = {"mode_mass_error": float(abs(bias[worst])),
         "mode_mass_error_se": float(masses[:, worst].std(ddof=1) / np.sqrt(runs))
         if runs > 1 else float("nan"),
         "var_ratio": float(np.mean(var / ref.rest_var)),
         "var_ratio_se": float(run_ratio.mean(1).std(ddof=1) / np.sqrt(runs))
         if runs > 1 else float("nan"),
         "plane_mean_error": float(np.max(np.abs(mean[plane] - ref.plane_mean)
                                          / np.sqrt(ref.plane_var))),
         "samples": int(w.size),
         "masses": [round(float(m), 4) for m in masses.mean(0)]}
  for name, value in (("nfe_per_sample", nfe), ("seconds_per_sample", seconds), ("min_ess", ess)):
    if value is not None:
      out[name] = float(value)
  return out


def measure(prob: Problem, method: str, levels: int, num_particles: int, runs: int,
            batches: int, seed: int = 0) -> Dict[str, float]:
  """:func:`score_runs` of ``batches × runs`` independent runs (``runs`` vmapped at a time)."""
  outs = [run_method(prob, method, levels, num_particles, runs, seed + i) for i in range(batches)]
  z = np.concatenate([o[0] for o in outs])
  w = np.concatenate([o[1] for o in outs])
  return score_runs(prob, z, w, outs[0][2], float(np.mean([o[3] for o in outs])),
                    min(o[4] for o in outs))


# ------------------------------------------------------------------------------- the job


def job_config() -> ml_collections.ConfigDict:
  """The job's full schema and defaults (``configs/highdim.py`` adjusts sizes)."""
  c = ml_collections.ConfigDict()
  c.job = "highdim"
  c.seed = 0
  c.study = ml_collections.ConfigDict()
  c.study.shapes = ("2", "8x8", "16x16", "32x32", "32x32x3", "64x64x3")
  c.study.problems = ("tempered2", "tempered4", "product")
  c.study.methods = ("naive", "score_unit", "exact_ratio", "shaped")
  c.study.budgets = (512, 2048)          # NFE per sample
  c.study.num_particles = 256
  c.study.runs = 4                       # independent runs, vmapped together
  c.study.batches = 2                    # batches of runs (runs · batches in all)
  # Shapes above this many numbers run only the methods in `large_methods` (CPU time).
  c.study.large_size = 3072
  c.study.large_methods = ("shaped",)
  return c


def _rows(config) -> Sequence[Tuple[str, str, str, int]]:
  s = config.study
  for shape_text in s.shapes:
    size = int(np.prod(parse_shape(shape_text)))
    methods = s.methods if size <= s.large_size else [m for m in s.methods
                                                      if m in s.large_methods]
    for pname in s.problems:
      for method in methods:
        for budget in s.budgets:
          yield shape_text, pname, method, int(budget)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the study; writes ``results.json``, ``results.txt`` and ``error_vs_nfe.png``."""
  common.check_known_keys(config, job_config(), "highdim", ["study"])
  s = config.study
  for m in s.methods:
    if m not in METHODS:
      raise ValueError(f"Unknown method {m!r} in study.methods; valid: {METHODS}.")
  workdir = common.start_job(config, workdir)
  results, lines = {}, []
  cols = ["mode_mass_error", "var_ratio", "plane_mean_error", "nfe_per_sample",
          "seconds_per_sample", "min_ess"]
  problems = {}
  for shape_text, pname, method, budget in _rows(config):
    shape = parse_shape(shape_text)
    prob = problems.setdefault((pname, shape), problem(pname, shape))
    levels = levels_for_budget(method, int(np.prod(shape)), budget)
    t = time.time()
    summary = measure(prob, method, levels, s.num_particles, s.runs, s.batches, config.seed)
    summary["levels"] = levels
    summary["particles"] = s.num_particles
    summary["exact_masses"] = [round(float(m), 4) for m in prob.reference.mode_masses]
    results.setdefault(shape_text, {}).setdefault(pname, {}).setdefault(method, {})[
        str(budget)] = summary
    line = (f"d={int(np.prod(shape)):6d} {pname:10s} {method:16s} budget {budget:5d} "
            f"levels {levels:5d} " + " ".join(f"{c}={summary[c]:.4f}" for c in cols)
            + f" mass_se={summary['mode_mass_error_se']:.4f}"
            f" var_se={summary['var_ratio_se']:.4f}")
    for warning in warnings_for(summary):
      line += f"  [{warning}]"
    print(line + f"  ({time.time() - t:.0f} s)", flush=True)
    lines.append(line)
  common.write_results(workdir, results, "\n".join(lines), config)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown_table(results) + "\n")
  from fkdiff.evaluation import plots
  plots.error_vs_nfe_figure(os.path.join(workdir, "error_vs_nfe.png"), results)
  return results


def markdown_table(results: dict) -> str:
  """The study's results (:func:`run`) as a Markdown table, one row per d, target, method and
  budget: largest mode-mass error ± s.e., variance ratio ± s.e., smallest ESS, samples."""
  lines = ["| d | target | method | NFE / sample | levels | largest mode-mass error | variance "
           "ratio | min ESS / N | samples | s / sample |", "|---|---|---|---|---|---|---|---|---|---|"]
  for shape, by_problem in results.items():
    size = int(np.prod(parse_shape(shape)))
    for pname, by_method in by_problem.items():
      for method, by_budget in by_method.items():
        for budget in sorted(by_budget, key=int):
          r = by_budget[budget]
          n = r.get("particles", float("nan"))
          lines.append(
              f"| {size:,} | {pname} | {method} | {r['nfe_per_sample']:.0f} | {r['levels']} | "
              f"{r['mode_mass_error']:.4f} ± {r['mode_mass_error_se']:.4f} | "
              f"{r['var_ratio']:.4f} ± {r['var_ratio_se']:.4f} | "
              f"{r['min_ess'] / n:.2f} | {r['samples']} | "
              f"{r['seconds_per_sample']:.4f} |")
  return "\n".join(lines)


def warnings_for(summary: Dict[str, float]) -> Sequence[str]:
  """What a row's diagnostics say about its weights (shown beside it in the job's output)."""
  out = []
  if summary.get("min_ess", np.inf) < 2.0:
    out.append("weights degenerate: ESS < 2 at some level")
  return out
