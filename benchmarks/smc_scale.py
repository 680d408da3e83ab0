"""SMC with the β = 1 kernels vs kernels matched to a tempered target (``ExactRatio(scale=s)``).

  python benchmarks/smc_scale.py            # ~2 minutes on a 2-core CPU

Exact energies, so every error is the sampler's; exact-ratio weights (``scheme=ExactRatio(...)``:
exact for any step, and they estimate ``log Ẑ``), whose ``scale`` sets the kernels. For each
target, 16 independent SMC runs (different keys) with ``ExactRatio(scale=1)`` (start
``N(0, σ_0² + σ_d²)``, kernels of variance ``Δ_k``: METHOD.md §4 as written) and with the scale
the target records (β for ``tempered``, 2 for a product of two: start and kernels narrowed by
it), the same keys for both; weighted estimates (no final resampling):

1. 2-D: the main job's two sampling problems (configs/toy2d.py's mixtures; 100 levels, N = 2,048): (a) the
   "unequal" mixture (weights 0.5 / 0.3 / 0.2, widths 0.4 / 0.15 / 0.25) at β = 3 and (b) the
   product ring × bar (scale 2): mode-mass TV and the error of ``log Ẑ``, both against a grid.
2. 64-D: ``0.7 N(m, 0.25 I) + 0.3 N(−m, 0.25 I)``, ``|m| = 2.8``, at β = 4, 64 levels,
   N = 1,024: + mode mass (exact 0.967) and within-mode variance per coordinate (exact 0.0625).
"""

import platform

import jax
import jax.numpy as jnp
import numpy as np

from fkdiff.data import gmm, toy
from fkdiff.diffusion import karras_sigmas
from fkdiff.sampling import ExactRatio, normalized_weights, product, smc_sample, tempered

RUNS = 16
NUM = 2048


def runs(potential, sigmas, num, event_shape, sigma_data, scale):
  fn = jax.jit(jax.vmap(lambda k: smc_sample(k, potential, sigmas, num, event_shape,
                                             sigma_data=sigma_data,
                                             scheme=ExactRatio(scale=scale))))
  return fn(jax.random.split(jax.random.key(0), RUNS))


def two_d(name, potential, scale, log_target, regions, num_regions):
  """SMC vs the grid truth of ``log_target`` (unnormalised log density at σ_K, per point) with
  mode regions ``regions(x) -> int``."""
  sigmas = karras_sigmas(100, 0.01, 10.0, 7.0)
  g = np.linspace(-4.0, 4.0, 1601)
  pts = jnp.asarray(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2), jnp.float32)
  log_q = np.asarray(jax.vmap(log_target)(pts), np.float64)
  q = np.exp(log_q - log_q.max())
  exact_log_z = np.log(np.sum(q) * (g[1] - g[0])**2) + log_q.max()
  grid_region = np.asarray(jax.vmap(regions)(pts))
  exact_mass = np.array([q[grid_region == j].sum() for j in range(num_regions)]) / q.sum()
  print(f"{name}, N = {NUM}, 100 levels, {RUNS} runs (exact log Z {exact_log_z:.4f})")
  print(f"{'kernels':>10s} {'TV mean':>8s} {'TV sd':>7s} {'logZ err':>9s} {'sd':>7s} "
        f"{'ESS min':>8s}")
  for label, s in (("s = 1", 1.0), (f"s = {scale:g}", scale)):
    r = runs(potential, sigmas, NUM, (2,), 1.0, s)
    w_norm = np.asarray(jax.vmap(normalized_weights)(r.log_weights))
    region = np.asarray(jax.vmap(jax.vmap(regions))(r.particles))
    mass = np.stack([np.sum(w_norm * (region == j), 1) for j in range(num_regions)], 1)
    tv = 0.5 * np.abs(mass - exact_mass).sum(1)
    err = np.asarray(r.log_Z) - exact_log_z
    print(f"{label:>10s} {tv.mean():8.4f} {tv.std():7.4f} {err.mean():+9.4f} {err.std():7.4f} "
          f"{np.asarray(r.info.ess).min(1).mean() / NUM:8.3f}", flush=True)


def toy_problems():
  """The main job's two problems (configs/toy2d.py's mixtures), exact energies."""
  unequal = toy.unequal(weights=(0.5, 0.3, 0.2), radius=1.5, std=(0.4, 0.15, 0.25))
  ring = toy.ring(num_modes=8, radius=2.0, std=0.2)
  bar = toy.bar(separation=2.4, long_std=1.5, short_std=0.2, weights=(0.7, 0.3))
  beta, s_k = 3.0, 0.01
  mode_of = lambda m: (lambda x: jnp.argmax(gmm.responsibilities(m, x)))
  two_d(f"1a. 2-D unequal mixture at β = {beta:g}",
        tempered(lambda x, s: gmm.energy(unequal, x, s), beta), beta,
        lambda x: beta * gmm.log_prob(gmm.diffuse(unequal, s_k), x), mode_of(unequal), 3)
  prod, _ = gmm.product(gmm.diffuse(ring, s_k), gmm.diffuse(bar, s_k))
  two_d("\n1b. 2-D product ring × bar",
        product([lambda x, s: gmm.energy(ring, x, s), lambda x, s: gmm.energy(bar, x, s)]), 2.0,
        lambda x: gmm.log_prob(gmm.diffuse(ring, s_k), x) + gmm.log_prob(gmm.diffuse(bar, s_k), x),
        mode_of(prod), prod.num_components)


def sixty_four_d():
  d, v0, beta = 64, 0.25, 4.0
  m = jnp.full((d,), 0.35)
  energy = gmm.diagonal_energy([0.7, 0.3], jnp.stack([m, -m]), [v0, v0])

  sigmas = karras_sigmas(64, 0.002, 80.0, 7.0)
  exact_mass, exact_var = 0.7**beta / (0.7**beta + 0.3**beta), (v0 + 0.002**2) / beta
  print(f"\n2. 64-D two-mode mixture, β = {beta:g}, N = 1024, 64 levels, {RUNS} runs "
        f"(exact + mass {exact_mass:.4f}, variance {exact_var:.4f})")
  print(f"{'kernels':>10s} {'mass mean':>9s} {'sd':>7s} {'var mean':>9s} {'sd':>7s} "
        f"{'ESS min':>8s} {'ESS level 0':>11s}")
  for label, scale in (("s = 1", 1.0), (f"s = {beta:g}", beta)):
    r = runs(tempered(energy, beta), sigmas, 1024, (d,), 0.5, scale)
    w_norm = np.asarray(jax.vmap(normalized_weights)(r.log_weights))
    x = np.asarray(r.particles, np.float64)
    side = np.sign(x @ np.asarray(m, np.float64))
    mass = np.sum(w_norm * (side > 0), 1)
    var = np.sum(w_norm * np.mean((x - side[..., None] * np.asarray(m)) ** 2, -1), 1)
    ess = np.asarray(r.info.ess) / 1024
    print(f"{label:>10s} {mass.mean():9.4f} {mass.std():7.4f} {var.mean():9.4f} {var.std():7.4f} "
          f"{ess.min(1).mean():8.3f} {ess[:, 0].mean():11.3f}", flush=True)


if __name__ == "__main__":
  print(f"{jax.devices()[0].device_kind} ({platform.machine()}), jax {jax.__version__}\n")
  toy_problems()
  sixty_four_d()
