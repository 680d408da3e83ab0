"""Cost of one SMC level per scheme, at d = 2 and d = 3,072 (median of timed runs, compiled).

  python benchmarks/smc_level_cost.py [--particles=1024] [--levels=64] [--reps=5]
                                      [--dims=2,3072] [--schemes=score_unit,exact_ratio]

The target is ``tempered(E, 2)`` of an exact 8-component diagonal mixture
(:func:`fkdiff.data.gmm.diagonal_energy`). Rows: ``ScoreOnly(noise='unit')`` and ``ExactRatio()``
(the settings of fkdiff before the high-dimension options: running this file on an older checkout
gives their cost there, for the "options off" comparison), and, where this version has them, the
default (``weights.DEFAULT``: matched noise, shaped proposal, Hutchinson or exact Laplacian) and
its parts, with the energy evaluations per level each one counts.
"""

import argparse
import platform
import time

import jax
import numpy as np

from fkdiff.data import gmm
from fkdiff.diffusion import karras_sigmas
from fkdiff.sampling import ExactRatio, ScoreOnly, smc_sample, targets
from fkdiff.sampling import weights as weights_lib


def schemes():
  out = {"score_unit": ScoreOnly(noise="unit"), "exact_ratio": ExactRatio()}
  if hasattr(weights_lib, "DEFAULT"):
    out["default"] = weights_lib.DEFAULT
    out["matched_euler_hutchinson"] = ScoreOnly(noise="matched", laplacian="hutchinson")
    out["shaped_unit"] = ScoreOnly(noise="unit", proposal="shaped")
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--particles", type=int, default=1024)
  ap.add_argument("--levels", type=int, default=64)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--dims", default="2,3072", help="comma-separated event sizes")
  ap.add_argument("--schemes", default="", help="comma-separated rows (default: all)")
  args = ap.parse_args()
  print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}; N = {args.particles}, {args.levels} levels")
  sigmas = karras_sigmas(args.levels + 1, 0.002, 80.0)
  only = [n for n in args.schemes.split(",") if n]
  for dim in (int(d) for d in args.dims.split(",")):
    rng = np.random.default_rng(0)
    means = rng.standard_normal((8, dim)).astype(np.float32)
    target = targets.tempered(gmm.diagonal_energy(np.ones(8), means, np.full(8, 0.1)), 2.0)
    for name, scheme in schemes().items():
      if only and name not in only:
        continue
      fn = jax.jit(lambda key, s=scheme: smc_sample(key, target, sigmas, args.particles, (dim,),
                                                    sigma_data=1.0, scheme=s).particles)
      jax.block_until_ready(fn(jax.random.PRNGKey(0)))
      times = []
      for r in range(args.reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(jax.random.PRNGKey(r + 1)))
        times.append(time.perf_counter() - t)
      per_level = 1e3 * float(np.median(times)) / args.levels
      nfe = scheme.evaluations_per_level(dim) if hasattr(scheme, "evaluations_per_level") else 1
      print(f"d={dim:5d} {name:26s} {per_level:8.3f} ms per level  ({nfe} NFE per particle "
            "and level)", flush=True)


if __name__ == "__main__":
  main()
