"""SMC on targets that are zero (``+inf``) or undefined (NaN) somewhere, against the exact
truncated target (docs/METHOD.md §4d).

  python benchmarks/hard_bounds.py [--seeds=8] [--particles=8192] [--levels=200]

Rows: ``N(0.3, 0.8²)`` restricted to ``x > 0`` written as ``+inf``, as NaN, and as a finite step
penalty of 50 (which keeps the support everything); ``bounded_hard`` of ``N(0, 1)`` on
``[−0.5, 1.5]`` switched on at the last level, at σ = 1, 10 and at every level. Each with
exact-ratio weights and ``smc_sample``'s default; the mean over seeds of the weighted mean of
``x`` ± its standard error, the exact value, and the support trials per particle and level.
"""

import argparse
import platform
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from fkdiff.diffusion import karras_sigmas
from fkdiff.sampling import ExactRatio, smc, smc_sample, targets
from fkdiff.sampling import weights as weights_lib


def gauss(mu, std):
  return lambda x, s: jnp.sum(0.5 * (x - mu)**2 / (std**2 + s**2))


def rows(sigmas):
  e = gauss(0.3, 0.8)
  half = float(stats.truncnorm.mean(-0.3 / 0.8, np.inf, loc=0.3, scale=0.8))
  box = float(stats.truncnorm.mean(-0.5, 1.5))
  yield "N(0.3, 0.8²), x < 0 → +inf", lambda x, s: jnp.where(x[0] < 0, jnp.inf, e(x, s)), half
  yield "N(0.3, 0.8²), x < 0 → NaN", lambda x, s: jnp.where(x[0] < 0, jnp.nan, e(x, s)), half
  yield "N(0.3, 0.8²), penalty 50 for x < 0", lambda x, s: e(x, s) + 50.0 * (x[0] < 0), half
  for name, on in (("last level", float(sigmas[-2]) * 0.99), ("σ = 1", 1.0), ("σ = 10", 10.0),
                   ("every level", np.inf)):
    yield f"bounded_hard N(0,1) [−0.5, 1.5], on at {name}", \
        targets.bounded_hard(gauss(0.0, 1.0), -0.5, 1.5, on), box


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--seeds", type=int, default=8)
  ap.add_argument("--particles", type=int, default=8192)
  ap.add_argument("--levels", type=int, default=200)
  args = ap.parse_args()
  warnings.simplefilter("ignore", smc.SMCSettingWarning)
  print(f"{platform.machine()}, jax {jax.__version__}; N = {args.particles}, {args.levels} "
        f"levels from σ = 20, {args.seeds} seeds")
  sigmas = karras_sigmas(args.levels, 0.002, 20.0)
  for name, potential, exact in rows(sigmas):
    for wname, weights in (("exact-ratio", ExactRatio()), ("default", weights_lib.DEFAULT)):
      run = jax.jit(jax.vmap(lambda k, w=weights, p=potential: smc_sample(
          k, p, sigmas, args.particles, (1,), sigma_data=1.0, scheme=w)))
      res = run(jax.random.split(jax.random.key(0), args.seeds))
      means = np.asarray(jax.vmap(lambda r: smc.weighted_mean(r)[0])(res))
      se = means.std(ddof=1) / np.sqrt(args.seeds)
      trials = float(jnp.mean(res.info.support_trials))
      print(f"| {name} | {wname} | {means.mean():.4f} ± {se:.4f} | {exact:.4f} | {trials:.2f} |",
            flush=True)


if __name__ == "__main__":
  main()
