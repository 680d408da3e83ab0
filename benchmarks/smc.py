"""SMC benchmark (issue 4): one run prints ratios side by side.

  python benchmarks/smc.py            # ~2-3 minutes on a 2-core CPU

1. SMC (exact-ratio weights, systematic resampling) vs plain reverse diffusion (Euler–Maruyama)
   with the same energy, N and steps (goal ≤ 1.05×); and SMC with score-only weights (the
   default, ``ScoreOnly()``). For a single energy with unit noise the score-only increment
   ``σ(‖∇E‖² − ‖∇E‖²)`` is 0, so that row is plain reverse diffusion plus the sampler's own
   bookkeeping (start weights, ESS, resampling decisions): its overhead.
2. SMC in JAX vs a straightforward Python/numpy host loop of the same mathematics, as peer
   libraries write it (vectorised over particles, Python loop over steps, ESS on the host;
   goal ≥ 10× faster).
3. Compile time vs number of steps (lax.scan: should be flat).
4. Run time vs N (10²…10⁵) and vs dimension.
Sections 2-4 use exact-ratio weights (the numpy loop is that mathematics).
The energy is a closed-form isotropic 8-mode Gaussian mixture diffused to σ (no training).
"""

import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from fkdiff.diffusion import karras_sigmas
from fkdiff.sampling import ExactRatio, ScoreOnly, euler_maruyama_sample, prior_sample, smc_sample

SIGMA_MIN, SIGMA_MAX, S2, NUM_MODES = 0.002, 10.0, 0.1, 8


def make_means(dim):
  rng = np.random.default_rng(0)
  return (2.0 * rng.standard_normal((NUM_MODES, dim)) / np.sqrt(dim) * np.sqrt(2)).astype(
      np.float32)


def make_energy(means):
  means = jnp.asarray(means)
  d = means.shape[1]

  def energy(x, sigma):                      # −log of the diffused mixture, one example (d,)
    v = S2 + sigma**2
    sq = jnp.sum((x[None] - means)**2, axis=-1)
    return -jax.nn.logsumexp(-0.5 * sq / v - 0.5 * d * jnp.log(2 * jnp.pi * v)) + jnp.log(
        NUM_MODES)
  return energy


def timeit(fn, *args, reps=5):
  jax.block_until_ready(fn(*args))           # compile + warm up
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def _shape(dim):
  return (dim,) if isinstance(dim, int) else tuple(dim)


def smc_fn(energy, sigmas, n, dim, scheme=ExactRatio(), sigma_data=1.0):
  """Jitted ``key -> (n, *shape)`` SMC particles; ``dim`` is d or an event shape."""
  return jax.jit(lambda k: smc_sample(k, energy, sigmas, n, _shape(dim), sigma_data=sigma_data,
                                      scheme=scheme).particles)


def reverse_fn(energy, sigmas, n, dim, sigma_data=1.0):
  """Jitted ``key -> (n, *shape)`` Euler–Maruyama reverse diffusion with the score −∇E."""
  grad = jax.grad(energy)
  score = lambda x, s: -grad(x, s)

  def run(k):
    k1, k2 = jax.random.split(k)
    x = prior_sample(k1, n, _shape(dim), sigmas[0], sigma_data)
    return euler_maruyama_sample(k2, score, x, sigmas)
  return jax.jit(run)


def numpy_smc(means, sigmas, n, seed=0):
  """Host-loop SMC with the same weights (METHOD.md §4), numpy, as peer code is written."""
  rng = np.random.default_rng(seed)
  sigmas = np.asarray(sigmas, np.float64)
  d = means.shape[1]

  def energy_and_grad(x, sigma):
    v = S2 + sigma**2
    diff = x[:, None, :] - means[None]                       # (N, M, d)
    logits = -0.5 * np.sum(diff**2, -1) / v - 0.5 * d * np.log(2 * np.pi * v)
    m = logits.max(1, keepdims=True)
    r = np.exp(logits - m)
    z = r.sum(1, keepdims=True)
    e = -(m[:, 0] + np.log(z[:, 0])) + np.log(NUM_MODES)
    grad = np.einsum("nm,nmd->nd", r / z, diff) / v
    return e, grad

  std0 = np.sqrt(sigmas[0]**2 + 1.0)
  x = std0 * rng.standard_normal((n, d))
  u, g = energy_and_grad(x, sigmas[0])
  log_w = -u + 0.5 * np.sum(x**2, 1) / std0**2 + 0.5 * d * np.log(2 * np.pi * std0**2)
  log_z = 0.0
  for s_cur, s_next in zip(sigmas[:-1], sigmas[1:]):
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    if 1.0 / np.sum(w**2) < 0.5 * n:                      # ESS on the host every step
      log_z += np.log(np.mean(np.exp(log_w - log_w.max()))) + log_w.max()
      cdf = np.cumsum(w)
      idx = np.minimum(np.searchsorted(cdf, (rng.uniform() + np.arange(n)) / n, "right"), n - 1)
      x, u, g, log_w = x[idx], u[idx], g[idx], np.zeros(n)
    delta = s_cur**2 - s_next**2
    mean = x - delta * g
    x_new = mean + np.sqrt(delta) * rng.standard_normal(x.shape)
    u_new, g_new = energy_and_grad(x_new, s_next)
    log_w += (-u_new + u - 0.5 * np.sum((x - x_new)**2, 1) / delta
              + 0.5 * np.sum((x_new - mean)**2, 1) / delta)
    x, u, g = x_new, u_new, g_new
  return x, log_w


def main():
  print(f"# SMC benchmark — jax {jax.__version__}, {platform.machine()} "
        f"{jax.devices()[0].platform.upper()} x{jax.device_count()}, numpy {np.__version__}")
  steps, n, dim = 100, 4096, 2
  sigmas = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
  means = make_means(dim)
  energy = make_energy(means)
  key = jax.random.key(0)

  t_smc = timeit(smc_fn(energy, sigmas, n, dim), key)
  t_score = timeit(smc_fn(energy, sigmas, n, dim, ScoreOnly()), key)
  t_rev = timeit(reverse_fn(energy, sigmas, n, dim), key)
  t0 = time.perf_counter()
  numpy_smc(means.astype(np.float64), sigmas, n)
  t_np = time.perf_counter() - t0
  print(f"\n## 1-2. N={n}, d={dim}, {steps} steps (median of 5 jitted runs)")
  print("| sampler | time (ms) | ratio |\n|---|---|---|")
  print(f"| plain reverse diffusion (EM) | {1e3 * t_rev:.1f} | 1.00 |")
  print(f"| SMC (exact-ratio weights) | {1e3 * t_smc:.1f} | {t_smc / t_rev:.2f}× reverse "
        "(goal ≤ 1.05×) |")
  print(f"| SMC (score-only weights) | {1e3 * t_score:.1f} | {t_score / t_rev:.2f}× reverse |")
  print(f"| numpy host-loop SMC | {1e3 * t_np:.1f} | JAX SMC is {t_np / t_smc:.1f}× faster "
        "(goal ≥ 10×) |")

  print("\n## 3. Compile time vs number of steps (N=1024, d=2)")
  print("| steps | compile (s) |\n|---|---|")
  for k in [10, 100, 1000]:
    f = jax.jit(lambda key, s=karras_sigmas(k, SIGMA_MIN, SIGMA_MAX): smc_sample(
        key, energy, s, 1024, (dim,), sigma_data=1.0, scheme=ExactRatio()).particles)
    t0 = time.perf_counter()
    f.lower(key).compile()
    print(f"| {k} | {time.perf_counter() - t0:.2f} |")

  print(f"\n## 4a. Scaling with N (d={dim}, {steps} steps)")
  print("| N | SMC (ms) | reverse (ms) | ratio | µs / particle |\n|---|---|---|---|---|")
  for num in [100, 1000, 10000, 100000]:
    reps = 3 if num >= 100000 else 5
    ts = timeit(smc_fn(energy, sigmas, num, dim), key, reps=reps)
    tr = timeit(reverse_fn(energy, sigmas, num, dim), key, reps=reps)
    print(f"| {num} | {1e3 * ts:.1f} | {1e3 * tr:.1f} | {ts / tr:.2f} | {1e6 * ts / num:.2f} |")

  print(f"\n## 4b. Scaling with dimension (N={n}, {steps} steps)")
  print("| d | SMC (ms) | reverse (ms) | ratio |\n|---|---|---|---|")
  for d in [2, 16, 128]:
    e = make_energy(make_means(d))
    ts = timeit(smc_fn(e, sigmas, n, d), key)
    tr = timeit(reverse_fn(e, sigmas, n, d), key)
    print(f"| {d} | {1e3 * ts:.1f} | {1e3 * tr:.1f} | {ts / tr:.2f} |")


if __name__ == "__main__":
  main()
