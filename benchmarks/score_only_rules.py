"""Score-only weights: left-point vs trapezoid rule, unit vs matched noise, error vs levels.

  python benchmarks/score_only_rules.py            # ~4 minutes on a shared 2-core CPU

Exact diffused energies (so every error is the sampler's), Karras grids σ 10 → 0.002 with
K ∈ {25, 50, 100, 200, 400} levels, ``R`` independent runs of ``N`` particles per cell (the same
keys for every scheme at a given K), weighted estimates (no final resampling). Schemes:
``ScoreOnly(rule, noise)`` for rule ∈ {left, trapezoid}, noise ∈ {unit, matched}, and
``ExactRatio()`` (exact for any step: its error is Monte Carlo only) as the reference.

Problems (both 2-D, ground truth exact):
1. product of two 2-D mixtures (tests/test_smc.py's pair; exact product by ``gmm.product``):
   four product modes;
2. a three-mode 2-D mixture at β = 3 (tests/test_score_only.py's; exact on a 700² grid).

Reported per cell, over the R runs: ``TV`` = ½ Σ_j |m̄_j − m_j| of the run-averaged mode masses
m̄ (their bias; its Monte-Carlo floor is about the s.e. of the masses), with a bootstrap s.e.
over runs; and ``spread``, the signed error of a bounded spread statistic (product: the Gaussian
kernel moment ``E exp(−‖x − mean‖²/2τ²)``, τ² = tr Cov / 2; tempered: P(within 0.5 of the nearest
mode)) ± its s.e. over runs; and the paired difference of the spread error, left − trapezoid
(same keys, so the runs' noise partly cancels). The empirical order ``p`` of ``|err| ≈ c K^(−p)``
is a least-squares fit of ``log |err|`` on ``log K`` over the levels where the error is resolved
(|err| > 3 s.e.), with a bootstrap s.e. (runs resampled).
"""

import functools
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from fkdiff.data import gmm
from fkdiff.diffusion import karras_sigmas
from fkdiff.evaluation import grid as grid_lib
from fkdiff.sampling import ExactRatio, ScoreOnly, normalized_weights, product, smc, tempered

SIGMA_MIN, SIGMA_MAX = 0.002, 10.0
LEVELS = (25, 50, 100, 200, 400)
RUNS, NUM = 64, 500
SCHEMES = {
    "left/unit": ScoreOnly(rule="left"),
    "trap/unit": ScoreOnly(rule="trapezoid"),
    "left/matched": ScoreOnly(rule="left", noise="matched"),
    "trap/matched": ScoreOnly(rule="trapezoid", noise="matched"),
    "ExactRatio": ExactRatio(),
}
BOOT = 200


def runner(target, weights, event_shape=(2,)):
  """One compiled program for every K: ``smc.init`` + ``smc.step`` in a ``fori_loop`` (what
  ``smc_sample`` scans over; the same keys as ``smc_sample`` would use)."""
  sampler = smc.build(target, weights)
  max_levels = max(LEVELS)

  def one(key, sigmas, num_levels):
    k_init, _, k_steps = jax.random.split(key, 3)
    state = smc.init(sampler, k_init, sigmas[0], NUM, event_shape, sigma_data=1.0)
    keys = jax.random.split(k_steps, max_levels)
    state = jax.lax.fori_loop(
        0, num_levels, lambda i, st: smc.step(sampler, keys[i], st, sigmas[i + 1])[0], state)
    return state.particles, state.log_weights

  fn = jax.jit(jax.vmap(one, in_axes=(0, None, None)))

  def run(num_levels):
    sigmas = np.full(max_levels + 1, SIGMA_MIN, np.float32)
    sigmas[:num_levels + 1] = np.asarray(karras_sigmas(num_levels + 1, SIGMA_MIN, SIGMA_MAX))
    return fn(jax.random.split(jax.random.key(num_levels), RUNS), jnp.asarray(sigmas), num_levels)
  return run


def product_problem():
  a = ([0.6, 0.4], [[-1.0, 0.0], [1.0, 0.0]], [0.5, 0.5])
  b = ([0.7, 0.3], [[0.5, -1.0], [-0.5, 1.0]], [0.4, 0.4])
  prod, _ = gmm.product(*(gmm.diffuse(gmm.make_mixture(*s), SIGMA_MIN) for s in (a, b)))
  mean, cov = (np.asarray(v, np.float64) for v in gmm.mean_and_cov(prod))
  tau2 = float(np.trace(cov)) / 2
  covs, mus = np.asarray(prod.covs, np.float64), np.asarray(prod.means, np.float64) - mean
  s = covs + tau2 * np.eye(2)
  kernel = float(np.sum(np.asarray(prod.weights, np.float64)
                        * np.exp(-0.5 * np.einsum("ki,ki->k", mus, np.linalg.solve(
                            s, mus[..., None])[..., 0]))
                        / np.sqrt(np.linalg.det(np.eye(2) + covs / tau2))))
  resp = jax.vmap(jax.vmap(functools.partial(gmm.responsibilities, prod)))
  stats = lambda x: jnp.concatenate(
      [resp(x), jnp.exp(-0.5 * jnp.sum((x - mean)**2, -1, keepdims=True) / tau2)], -1)
  target = product([gmm.diagonal_energy(*a), gmm.diagonal_energy(*b)])
  return target, stats, np.asarray(prod.weights, np.float64), kernel


def tempered_problem(beta=3.0, radius=0.5):
  spec = ([0.45, 0.35, 0.2], [[-1.5, 0.0], [1.5, 0.5], [0.0, 2.0]], [0.4, 0.3, 0.5])
  energy = gmm.diagonal_energy(*spec)
  centers = jnp.asarray(spec[1], jnp.float32)

  def regions(x):
    d2 = jnp.sum((x[..., None, :] - centers)**2, -1)
    return jnp.argmin(d2, -1), jnp.min(d2, -1) < radius**2

  g = grid_lib.tabulate(lambda x: -beta * energy(x, SIGMA_MIN), 7.0, 700)
  near, inside = regions(g.points)
  m = np.asarray(grid_lib.region_masses(g, lambda p: near + 3 * inside, 6), np.float64)
  stats = lambda x: jnp.concatenate(
      [jax.nn.one_hot(regions(x)[0], 3), regions(x)[1][..., None].astype(jnp.float32)], -1)
  return tempered(energy, beta), stats, m[:3] + m[3:], float(m[3:].sum())


def fit_order(levels, err):
  """Least-squares slope of −log|err| on log K (None if < 2 points)."""
  if len(levels) < 2:
    return None
  return -np.polyfit(np.log(levels), np.log(np.abs(err)), 1)[0]


def analyse(per_run, masses, spread):
  """``per_run[K]``: (R, m+1) per-run estimates → rows and orders with bootstrap s.e."""
  rng = np.random.default_rng(0)
  idx = [rng.integers(0, RUNS, RUNS) for _ in range(BOOT)]

  def errors(est):
    tv = 0.5 * np.abs(est[:, :-1].mean(0) - masses).sum()
    return tv, est[:, -1].mean() - spread

  rows = {}
  for k, est in per_run.items():
    tv, sp = errors(est)
    boot = np.array([errors(est[i]) for i in idx])
    rows[k] = (tv, boot[:, 0].std(), sp, est[:, -1].std(ddof=1) / np.sqrt(RUNS))
  orders = []
  for col in (0, 2):
    resolved = [k for k in per_run if abs(rows[k][col]) > 3 * rows[k][col + 1]]
    p = fit_order(resolved, [rows[k][col] for k in resolved])
    if p is None:
      orders.append((None, None, resolved))
      continue
    boot_p = [fit_order(resolved, [errors(per_run[k][i])[col // 2] for k in resolved]) for i in idx]
    orders.append((p, float(np.std(boot_p)), resolved))
  return rows, orders


def main():
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {platform.processor() or 'cpu'}; "
        f"R = {RUNS} runs × N = {NUM} particles per cell, Karras σ {SIGMA_MAX} → {SIGMA_MIN}")
  t_start = time.time()
  for name, (target, stats, masses, spread) in (
      ("product of two 2-D mixtures (4 modes)", product_problem()),
      ("2-D three-mode mixture at β = 3", tempered_problem())):
    spread_name = "kernel" if "product" in name else "P(r<0.5)"
    print(f"\n### {name}: exact masses {np.round(masses, 4)}, {spread_name} {spread:.4f}\n")
    print(f"| scheme | K | TV masses | s.e. | {spread_name} error | s.e. | time (s) |")
    print("|---|---|---|---|---|---|---|")
    summary, spreads = [], {}
    for label, scheme in SCHEMES.items():
      run = runner(target, scheme)
      per_run, seconds = {}, {}
      for k in LEVELS:
        t = time.time()
        x, lw = run(k)
        w = jax.vmap(normalized_weights)(lw)
        per_run[k] = np.asarray(jnp.einsum("rn,rnm->rm", w, stats(x)), np.float64)
        seconds[k] = time.time() - t         # the first K includes the compile
      rows, orders = analyse(per_run, masses, spread)
      spreads[label] = {k: v[:, -1] for k, v in per_run.items()}
      for k in LEVELS:
        tv, tv_se, sp, sp_se = rows[k]
        print(f"| {label} | {k} | {tv:.4f} | {tv_se:.4f} | {sp:+.4f} | {sp_se:.4f} | "
              f"{seconds[k]:.1f} |", flush=True)
      summary.append((label, orders))
    print(f"\nEmpirical order p (|err| ≈ c K^-p; fit over the resolved K, bootstrap s.e.):\n")
    print(f"| scheme | p (TV masses) | K used | p ({spread_name}) | K used |")
    print("|---|---|---|---|---|")
    for label, orders in summary:
      cells = []
      for p, se, used in orders:
        cells.append("–" if p is None else f"{p:.2f} ± {se:.2f}")
        cells.append(",".join(map(str, used)) or "none")
      print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\nLeft minus trapezoid, {spread_name} error ×10⁻³, paired runs (same keys): mean ± s.e."
          "\n")
    print("| K | unit | matched |")
    print("|---|---|---|")
    for k in LEVELS:
      cells = []
      for noise in ("unit", "matched"):
        d = spreads[f"left/{noise}"][k] - spreads[f"trap/{noise}"][k]
        cells.append(f"{1e3 * d.mean():+.2f} ± {1e3 * d.std(ddof=1) / np.sqrt(RUNS):.2f}")
      print(f"| {k} | " + " | ".join(cells) + " |")
  print(f"\ntotal {time.time() - t_start:.0f} s")


if __name__ == "__main__":
  main()
