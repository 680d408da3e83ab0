"""SMC's time per level with a two-headed network (one forward pass) vs a distilled energy (value
and gradient), side by side in one run (issue 28; docs/METHOD.md §4e).

  python benchmarks/two_head.py                 # ~3 minutes on a 2-core CPU
  python benchmarks/two_head.py --reps 5 --particles 2048 --levels 100

The toy job's product ring × bar: two networks of the toy job's architecture (MLP width 96,
depth 3; random weights: timing only, the cost does not depend on them), as energies
(``EnergyModel``, Thornton form) and as two-headed networks (``TwoHeadModel``, the same MLP with
a doubled last layer), N particles, the toy job's Karras levels σ 10 → 0.01, resampling when
ESS < ``--ess`` N (0.5, as the toy job's two-headed rows; 1: every level, as its other rows).
Pairs at equal N and levels:

- ``smc_heads_score`` (score-only weights on the score heads, ``ScoreOnly(scores='heads')``) vs
  ``smc_score`` (``ScoreOnly()`` on the energies' gradients);
- ``smc_heads`` (``HeadRatio``) vs ``smc_ratio`` (``ExactRatio`` on the energies);
- each pair again with the toy job's rejuvenation, two MALA steps per level: along the energies'
  gradients for the distilled energies, along the score heads for the two-headed networks
  (``mcmc.rejuvenation(..., drift='heads')``, as the jobs' heads methods run it).

Every timing is the best of ``--reps`` interleaved rounds (each round times every contender once)
of the whole jitted sampler, divided by the number of levels.
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp

from fkdiff.data import toy, gmm
from fkdiff.diffusion import karras_sigmas
from fkdiff.models import MLP, EnergyModel, TwoHeadModel, energy as energy_lib, two_head
from fkdiff.sampling import (ExactRatio, HeadRatio, Resampling, ScoreOnly, as_target, product,
                             rejuvenation, smc_sample)


def networks(key):
  """Per dataset: (energy fn, energy params, heads energy fn, heads params, σ_d)."""
  out = []
  for i, (name, kw) in enumerate((("ring", dict(num_modes=8, radius=2.0, std=0.2)),
                                  ("bar", dict(separation=2.4, long_std=1.5, short_std=0.2,
                                               weights=(0.7, 0.3))))):
    sd = float(gmm.data_std(toy.get_mixture(name, **kw)))
    k1, k2 = jax.random.split(jax.random.fold_in(key, i))
    energy = EnergyModel(MLP(96, 3, zero_init_output=False), sd)
    heads = TwoHeadModel(MLP(96, 3, zero_init_output=False, output_heads=2), sd)
    x, s = jnp.zeros(2), jnp.ones(())
    out.append((energy, energy.init(k1, x, s), heads, heads.init(k2, x, s), sd))
  return out


def samplers(nets, sigmas, n, mala: bool, ess: float):
  rejuv = {d: rejuvenation("mala", 2, lambda sigma: 0.05 * sigma**2, drift=d) if mala else None
           for d in ("gradient", "heads")}
  resampling = Resampling("systematic", ess)

  def energy_target(params):
    return product([as_target(energy_lib.bind(m, p), sd)
                    for (m, _, _, _, sd), p in zip(nets, params)])

  def heads_target(params):
    return product([as_target(two_head.bind(m, p), sd)
                    for (_, _, m, _, sd), p in zip(nets, params)])

  def make(target_fn, scheme, drift="gradient"):
    @jax.jit
    def run(params, key):
      return smc_sample(key, target_fn(params), sigmas, n, (2,), scheme=scheme,
                        resampling=resampling, rejuvenation=rejuv[drift]).particles
    return run

  e_params = [p for _, p, _, _, _ in nets]
  h_params = [p for _, _, _, p, _ in nets]
  return {
      "smc_score": (make(energy_target, ScoreOnly()), e_params),
      "smc_heads_score": (make(heads_target, ScoreOnly(scores="heads"), "heads"), h_params),
      "smc_ratio": (make(energy_target, ExactRatio()), e_params),
      "smc_heads": (make(heads_target, HeadRatio(), "heads"), h_params),
  }


def time_all(runs, reps):
  best = {name: float("inf") for name in runs}
  for name, (fn, params) in runs.items():     # compile
    jax.block_until_ready(fn(params, jax.random.key(0)))
  for r in range(reps):
    for name, (fn, params) in runs.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(params, jax.random.key(r + 1)))
      best[name] = min(best[name], time.perf_counter() - t)
  return best


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--particles", type=int, default=2048)
  ap.add_argument("--levels", type=int, default=100)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--ess", type=float, default=0.5, help="resample when ESS < this N")
  args = ap.parse_args()
  print(f"{platform.processor() or platform.machine()}, {jax.devices()[0].platform}, "
        f"jax {jax.__version__}; N = {args.particles}, {args.levels} levels, resampling when "
        f"ESS < {args.ess} N")
  nets = networks(jax.random.key(0))
  sigmas = karras_sigmas(args.levels, 0.01, 10.0, 7.0)
  for mala in (False, True):
    best = time_all(samplers(nets, sigmas, args.particles, mala, args.ess), args.reps)
    per = {k: 1e3 * v / args.levels for k, v in best.items()}
    tag = "with 2 MALA steps per level" if mala else "no rejuvenation"
    print(f"\n{tag}: ms per level")
    for heads, plain in (("smc_heads_score", "smc_score"), ("smc_heads", "smc_ratio")):
      print(f"  {heads:16s} {per[heads]:8.2f}   {plain:10s} {per[plain]:8.2f}   "
            f"ratio {per[heads] / per[plain]:.2f}")


if __name__ == "__main__":
  main()
