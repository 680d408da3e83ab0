"""Annealed MCMC baselines with a fixed vs a per-level tuned step (``target_acceptance``).

  python benchmarks/annealed_mcmc.py        # ~5 min on a 2-core CPU

The main job's two problems (configs/toy2d.py) on the *exact* diffused energies: the product ring ×
bar and the unequal mixture at β = 3, 2,048 particles, 100 Karras levels σ 10 → 0.01, 3 kernel
steps per level, 3 seeds each. Prints mode-mass TV (mean ± std over seeds), NLL and the last
level's acceptance and step. The fixed step is ``0.05 σ² + 1e-4`` (for HMC a step *length*).
"""

import jax
import numpy as np

from fkdiff.data import toy
from fkdiff.diffusion import edm
from fkdiff.experiments import toy2d
from fkdiff.sampling import mcmc, reverse
from fkdiff.training.config import config_module

SETTINGS = [("hmc", 5, None), ("hmc", 5, 0.75), ("hmc", 10, 0.75), ("hmc", 5, 0.65),
            ("mala", 5, None), ("mala", 5, 0.6)]


def main(num=2048, seeds=3):
  c = config_module("configs/toy2d.py").get_config("")
  mix = {n: toy.get_mixture(c.datasets[n].mixture, **c.datasets[n].mixture_kwargs.to_dict())
         for n in ("ring", "bar", "unequal")}
  source = toy2d.exact_energies(mix)
  sigmas = edm.karras_sigmas(100, 0.01, 10.0, 7.0)
  truths = {"product": toy2d.product_truth(mix["ring"], mix["bar"], 0.01, 200),
            "low_temperature": toy2d.tempered_truth(mix["unequal"], 3.0, 0.01, 200)}
  print("| problem | kernel | leapfrog | target acc. | TV | NLL | last acc. | last step |")
  print("|---|---|---|---|---|---|---|---|")
  for problem, truth in truths.items():
    potential, params = toy2d.problem_potential(problem, c, source)
    sigma_data = potential(params).sigma_data
    for kernel, leapfrog, target in SETTINGS:
      run = jax.jit(lambda key: mcmc.annealed_mcmc_sample(
          key, potential(params), reverse.prior_sample(key, num, (2,), 10.0, sigma_data), sigmas,
          kernel=kernel, num_steps_per_level=3, step_size=lambda s: 0.05 * s**2 + 1e-4,
          num_leapfrog=leapfrog, target_acceptance=target))
      tv, nll = [], []
      for seed in range(seeds):
        res = run(jax.random.key(seed))
        m = toy2d.score_samples(res.particles, truth, jax.random.key(9), 1024)
        tv.append(m["mode_mass_tv"])
        nll.append(m["nll"])
      kind = leapfrog if kernel == "hmc" else "-"
      print(f"| {problem} | {kernel} | {kind} | {target or 'fixed'} "
            f"| {np.mean(tv):.3f} ± {np.std(tv):.3f} | {np.mean(nll):.2f} "
            f"| {float(res.acceptance_rate[-1]):.2f} | {float(res.step_size[-1]):.2g} |",
            flush=True)


if __name__ == "__main__":
  main()
