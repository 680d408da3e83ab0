"""Which SMC setting is correct on exact energies in low dimension (the default's promise).

Closed-form targets from :mod:`fkdiff.data.spectral` (exact answers: a 2-D plane density on a grid
times a known Gaussian): a tempered 2-D mixture (β = 3), the product of two 10-D mixtures and a
classifier-free AND of two attributes in 10-D. Each method runs 4,096 particles (one run, weighted
output) on Karras grids of 101 and 401 levels from σ = 80, over 8 seeds (independent runs); the
table gives the largest error of a mode's mass averaged over the seeds (with that mode's s.e.) and
the mean over coordinates of the variance ratio (with its s.e. over the seeds).

  python benchmarks/smc_defaults.py [--levels=101,401] [--seeds=8] [--methods=...]
"""

import argparse
import time

import jax

from fkdiff.experiments import highdim

METHODS = ("score_unit", "exact_ratio", "shaped", "shaped_trapezoid")
PROBLEMS = ("tempered3_2d", "product_10d", "and_10d")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--levels", default="101,401")
  ap.add_argument("--seeds", type=int, default=8)
  ap.add_argument("--particles", type=int, default=4096)
  ap.add_argument("--methods", default=",".join(METHODS))
  ap.add_argument("--problems", default=",".join(PROBLEMS))
  args = ap.parse_args()
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}; N = {args.particles}, "
        f"{args.seeds} seeds")
  print("| target | method | levels | largest mode-mass error (mean over seeds) | its s.e. | "
        "variance ratio | s.e. | s/seed |")
  print("|---|---|---|---|---|---|---|---|")
  for pname in args.problems.split(","):
    problem = highdim.low_dim_problem(pname)
    for method in args.methods.split(","):
      for levels in [int(k) for k in args.levels.split(",")]:
        t = time.time()
        r = highdim.measure(problem, method, levels, args.particles, 1, args.seeds)
        dt = (time.time() - t) / args.seeds
        print(f"| {pname} | {method} | {levels} | {r['mode_mass_error']:.4f} | "
              f"{r['mode_mass_error_se']:.4f} | {r['var_ratio']:.3f} | {r['var_ratio_se']:.3f} | "
              f"{dt:.1f} |", flush=True)


if __name__ == "__main__":
  main()
