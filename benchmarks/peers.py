"""fkdiff beside the samplers people would use instead, side by side in one run (issue 17).

  pip install -e '.[bench]'                 # blackjax 1.7.x and torch (a CPU wheel suffices)
  python benchmarks/peers.py                # ~5-10 minutes on a 2-core CPU
  python benchmarks/peers.py --sections resampling,smc --reps 5 --torch-threads 2

Every timing is best-of-k over interleaved rounds (each round times every contender once, in
turn), so load on a shared machine hits all contenders alike; the ratios are the figures to read.

1. resampling: ``fkdiff.sampling.resampling`` vs ``blackjax.smc.resampling`` (systematic,
   stratified, multinomial, residual) at N = 10⁴ and 10⁶, both jitted, the same log-weights
   (blackjax takes normalised weights: its call includes the softmax), plus a check that the two
   give the same offspring distribution: mean offspring vs N·w̄ (max |z| over particles), the
   mean offspring variance (the scheme's signature), and a two-sample KS test of the ancestors.
2. one Feynman–Kac SMC of the same mathematics: the main job's product ring × bar with exact
   diffused energies (diagonal Gaussian mixtures), exact-ratio weights, kernels of variance Δ_k/2
   (the product's scale), 100 levels σ 10 → 0.01, N = 4,096 and 65,536, final systematic
   resampling. Contenders: ``fkdiff.sampling.smc_sample`` (ESS < N/2, and at every level);
   blackjax's ``smc.base.step`` (resample → move → weight, at every level, its design) in a
   ``lax.scan``; a PyTorch loop over levels as FK-steering / FKC write it (vectorised over
   particles, ``torch.autograd.grad`` for the scores, ESS on the host; ``--torch-threads``,
   default 1: on a loaded 2-core machine its two OpenMP threads ran ~50× slower). Mode-mass TV
   (``fkdiff.evaluation.toy_metrics``) against exact region masses from a grid, so the speeds
   compare equally correct answers.
2b. profile: where a level's time goes at the largest ``--smc-sizes`` N, fkdiff vs the PyTorch
   loop: the SMC level, the plain reverse level (the proposal alone), their difference (the
   SMC's own work), one energy + gradient call, the fixed cost of a level (N = 64), and
   ``torch.profiler``'s operator table for one PyTorch run.
3. SMC / plain reverse diffusion (Euler–Maruyama) with the same energy: the toy MLP energy
   (``EnergyModel(MLP(128, 3))``, random weights: timing only), N = 4,096, 100 steps; the
   shipped digits U-Net energy (``colabs/digits_demo``, one class), N = 256, the digits job's 32
   levels σ 80 → 0.002; the closed-form row of ``benchmarks/smc.py`` (its energy and samplers)
   as the worst case.
4. The energy's value + gradient vs one teacher NFE (EDM denoiser forward) on the toy MLP,
   4,096 points: time, and XLA's compiled cost analysis (flops, bytes) of each.
"""

import argparse
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smc as smc_bench  # noqa: E402  (benchmarks/smc.py: the closed-form energy and samplers)

from fkdiff.data import gmm, toy  # noqa: E402
from fkdiff.diffusion import karras_sigmas  # noqa: E402
from fkdiff.evaluation import toy_metrics  # noqa: E402
from fkdiff.models import MLP, EnergyModel, energy as energy_lib, make_denoiser  # noqa: E402
from fkdiff.sampling import (ExactRatio, Resampling, ScoreOnly, product, resampling,  # noqa: E402
                             smc_sample)

DIGITS_ENERGY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "colabs", "digits_demo", "energies", "class")
SCHEMES = ("systematic", "stratified", "multinomial", "residual")
SIGMA_DATA, SCALE = 1.0, 2.0          # the product of two energies records scale 2


def interleaved_best(fns: dict, args_of, reps: int) -> dict:
  """``{name: best wall seconds}`` over ``reps`` rounds; ``args_of(name, r)`` gives round ``r``'s
  arguments (round −1: warm-up, compiles). Results are blocked on (JAX) before the clock stops."""
  for name, fn in fns.items():
    jax.block_until_ready(fn(*args_of(name, -1)))
  best = {name: math.inf for name in fns}
  for r in range(reps):
    for name, fn in fns.items():
      args = args_of(name, r)
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      best[name] = min(best[name], time.perf_counter() - t0)
  return best


# ---------------------------------------------------------------------------------------------
# 1. Resampling.


def resampling_section(reps: int) -> None:
  import blackjax.smc.resampling as bj_resampling
  from scipy import stats

  print("\n## 1. Resampling, time per call (best of %d interleaved rounds, jitted)" % reps)
  print("| N | scheme | fkdiff (ms) | blackjax (ms) | fkdiff / blackjax |\n|---|---|---|---|---|")
  for n in (10**4, 10**6):
    log_w = 2.0 * jax.random.normal(jax.random.key(1), (n,))      # ESS ≈ N/50: a skewed set
    fns = {}
    for scheme in SCHEMES:
      fk, bj = resampling.get_resampler(scheme), getattr(bj_resampling, scheme)
      fns[("fkdiff", scheme)] = jax.jit(lambda k, lw, fk=fk: fk(k, lw, n))
      fns[("blackjax", scheme)] = jax.jit(lambda k, lw, bj=bj: bj(k, jax.nn.softmax(lw), n))
    t = interleaved_best(fns, lambda name, r: (jax.random.key(r + 2), log_w), reps)
    for scheme in SCHEMES:
      a, b = t[("fkdiff", scheme)], t[("blackjax", scheme)]
      print(f"| {n:.0e} | {scheme} | {1e3 * a:.2f} | {1e3 * b:.2f} | {a / b:.2f}× |", flush=True)

  n, runs = 10**4, 200
  log_w = 2.0 * jax.random.normal(jax.random.key(1), (n,))
  expected = n * np.asarray(jax.nn.softmax(log_w), np.float64)
  keys = jax.random.split(jax.random.key(9), runs)
  keys_other = jax.random.split(jax.random.key(10), runs)
  print(f"\n### Offspring distribution, N = {n}, {runs} calls each")
  print("| scheme | sampler | max abs(z) of mean offspring vs N·w̄ | mean offspring variance | "
        "same keys: same ancestors | KS two-sample, independent keys |\n|---|---|---|---|---|---|")
  for scheme in SCHEMES:
    fk, bj = resampling.get_resampler(scheme), getattr(bj_resampling, scheme)
    run_fk = jax.jit(jax.vmap(lambda k: fk(k, log_w, n)))
    run_bj = jax.jit(jax.vmap(lambda k: bj(k, jax.nn.softmax(log_w), n)))
    out = {"fkdiff": np.asarray(run_fk(keys)), "blackjax": np.asarray(run_bj(keys))}
    same = np.mean(out["fkdiff"] == out["blackjax"])
    ks = stats.ks_2samp(out["fkdiff"].ravel(), np.asarray(run_bj(keys_other)).ravel())
    for name, idx in out.items():
      counts = np.stack([np.bincount(row, minlength=n) for row in idx])
      se = counts.std(0) / np.sqrt(runs)
      varied = se > 0                      # particles whose offspring count never varied: skipped
      z = np.abs(counts.mean(0) - expected)[varied] / se[varied]
      print(f"| {scheme} | {name} | {z.max():.2f} ({varied.sum()} particles) | "
            f"{counts.var(0).mean():.4f} | {100 * same:.2f} % | D = {ks.statistic:.5f}, "
            f"p = {ks.pvalue:.2f} |", flush=True)
  print("(max |z| over the particles whose count varied; most counts are 0/1, so z is far from "
        "normal: compare the two samplers' columns, not a normal quantile. The KS test pools the "
        f"{runs}·N ancestors of fkdiff and of blackjax with other keys; the pooled draws of one "
        "call are dependent, so its p-value is indicative)")


# ---------------------------------------------------------------------------------------------
# 2. One Feynman–Kac SMC in three libraries.


def _diagonal(mixture: gmm.GaussianMixture):
  """``(weights (K,), means (K, 2), variances (K, 2))`` of a mixture with diagonal covariances."""
  return (np.asarray(mixture.weights, np.float64), np.asarray(mixture.means, np.float64),
          np.asarray(jnp.diagonal(mixture.covs, axis1=-2, axis2=-1), np.float64))


def product_task(sigma_min: float):
  """The main job's ring × bar: both mixtures, the target, regions and exact region masses."""
  ring = toy.ring(num_modes=8, radius=2.0, std=0.2)
  bar = toy.bar(separation=2.4, long_std=1.5, short_std=0.2, weights=(0.7, 0.3))
  target = product([gmm.diagonal_energy(*_diagonal(m)) for m in (ring, bar)])
  prod, _ = gmm.product(gmm.diffuse(ring, sigma_min), gmm.diffuse(bar, sigma_min))
  g = np.linspace(-4.0, 4.0, 801)
  pts = jnp.asarray(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2), jnp.float32)
  log_q = np.asarray(jax.vmap(lambda x: -target(x, sigma_min))(pts), np.float64)
  q = np.exp(log_q - log_q.max())
  region = np.asarray(jnp.argmax(jax.vmap(gmm.responsibilities, in_axes=(None, 0))(prod, pts), -1))
  exact = np.array([q[region == j].sum() for j in range(prod.num_components)]) / q.sum()
  return ring, bar, target, prod, jnp.asarray(exact, jnp.float32)


def fkdiff_smc(target, sigmas, n, ess_threshold):
  return jax.jit(lambda key: smc_sample(
      key, target, sigmas, n, (2,), sigma_data=SIGMA_DATA, scheme=ExactRatio(),
      resampling=Resampling("systematic", ess_threshold), final_resample=True).particles)


def blackjax_smc(target, sigmas, n):
  """blackjax's SMC building block ``smc.base.step`` (resample, move, weight) over the levels.

  A particle is ``{x, u = U(x, σ), g = ∇U, inc}``: the move proposes
  ``x' ~ N(x − (Δ/s) g, (Δ/s) I)``, evaluates ``(U, ∇U)(x', σ')`` and the exact-ratio increment,
  which ``weight_fn`` returns. The levels travel in the state's ``update_parameters``.
  """
  import blackjax.smc.base as bj_base
  import blackjax.smc.resampling as bj_resampling
  value_and_grad = jax.value_and_grad(target)

  def move(key, p, sigma, sigma_next):
    var = (sigma**2 - sigma_next**2) / SCALE
    mean = p["x"] - var * p["g"]
    x = mean + jnp.sqrt(var) * jax.random.normal(key, (2,))
    u, g = value_and_grad(x, sigma_next)
    inc = -u + p["u"] - 0.5 * jnp.sum((p["x"] - x)**2) / var + 0.5 * jnp.sum((x - mean)**2) / var
    return {"x": x, "u": u, "g": g, "inc": inc}

  def update_fn(keys, particles, params):
    return jax.vmap(move, in_axes=(0, 0, None, None))(keys, particles, *params), None

  def run(key):
    k0, k_steps, k_final = jax.random.split(key, 3)
    std = jnp.sqrt((sigmas[0]**2 + SIGMA_DATA**2) / SCALE)
    x = std * jax.random.normal(k0, (n, 2))
    u, g = jax.vmap(value_and_grad, in_axes=(0, None))(x, sigmas[0])
    log_w = -u + 0.5 * jnp.sum(x**2, 1) / std**2 + jnp.log(2 * jnp.pi * std**2)
    state = bj_base.SMCState({"x": x, "u": u, "g": g, "inc": jnp.zeros(n)},
                             jax.nn.softmax(log_w), (sigmas[0], sigmas[1]))

    def body(state, inp):
      k, s, s_next = inp
      state, info = bj_base.step(k, state._replace(update_parameters=(s, s_next)), update_fn,
                                 lambda p: p["inc"], bj_resampling.systematic)
      return state, info.log_likelihood_increment

    levels = (jax.random.split(k_steps, sigmas.shape[0] - 1), sigmas[:-1], sigmas[1:])
    state, _ = jax.lax.scan(body, state, levels)
    return state.particles["x"][bj_resampling.systematic(k_final, state.weights, n)]
  return jax.jit(run)


def torch_energy_and_grad(ring, bar):
  """PyTorch ``(x (N, 2), σ) -> (U (N,), ∇U (N, 2))`` of the diffused product ring × bar."""
  import torch
  mixtures = [tuple(torch.tensor(a, dtype=torch.float32) for a in _diagonal(m))
              for m in (ring, bar)]

  def energy(x, sigma):
    total = 0.0
    for w, mu, v0 in mixtures:
      v = v0 + sigma**2
      log_comp = -0.5 * (((x[:, None, :] - mu)**2 / v) + torch.log(2 * math.pi * v)).sum(-1)
      total = total - torch.logsumexp(torch.log(w) + log_comp, dim=-1)
    return total

  def energy_and_grad(x, sigma):
    with torch.enable_grad():
      x = x.detach().requires_grad_(True)
      u = energy(x, sigma)
      (g,) = torch.autograd.grad(u.sum(), x)
    return u.detach(), g
  return energy_and_grad


def torch_smc(ring, bar, sigmas, n):
  """The same SMC as a PyTorch loop over levels (FK-steering / FKC style): vectorised over
  particles, ``torch.autograd.grad`` for ∇U, the ESS decision on the host, systematic
  resampling with ``torch.searchsorted``; returns ``run(seed) -> (N, 2)`` numpy samples."""
  import torch
  sig = [float(s) for s in np.asarray(sigmas)]
  energy_and_grad = torch_energy_and_grad(ring, bar)

  def systematic(log_w):
    cdf = torch.cumsum(torch.softmax(log_w, 0), 0)
    u = (torch.rand(()) + torch.arange(n)) / n
    return torch.searchsorted(cdf / cdf[-1], u, right=True).clamp(max=n - 1)

  @torch.no_grad()
  def run(seed):
    torch.manual_seed(seed)
    std = math.sqrt((sig[0]**2 + SIGMA_DATA**2) / SCALE)
    x = std * torch.randn(n, 2)
    u, g = energy_and_grad(x, sig[0])
    log_w = -u + 0.5 * (x**2).sum(1) / std**2 + math.log(2 * math.pi * std**2)
    for s, s_next in zip(sig[:-1], sig[1:]):
      w = torch.softmax(log_w, 0)
      if 1.0 / float((w**2).sum()) < 0.5 * n:          # host sync, as the peers do
        idx = systematic(log_w)
        x, u, g, log_w = x[idx], u[idx], g[idx], torch.zeros_like(log_w)
      var = (s**2 - s_next**2) / SCALE
      mean = x - var * g
      x_new = mean + math.sqrt(var) * torch.randn_like(x)
      u_new, g_new = energy_and_grad(x_new, s_next)
      log_w = log_w - u_new + u - 0.5 * ((x - x_new)**2).sum(1) / var \
          + 0.5 * ((x_new - mean)**2).sum(1) / var
      x, u, g = x_new, u_new, g_new
    return x[systematic(log_w)].numpy()
  return run


def torch_reverse(ring, bar, sigmas, n):
  """Plain reverse diffusion (Euler–Maruyama with the score −∇U, the SMC's proposal without
  weights) as the same PyTorch loop; returns ``run(seed) -> (N, 2)`` numpy samples."""
  import torch
  sig = [float(s) for s in np.asarray(sigmas)]
  energy_and_grad = torch_energy_and_grad(ring, bar)

  @torch.no_grad()
  def run(seed):
    torch.manual_seed(seed)
    x = math.sqrt(sig[0]**2 + SIGMA_DATA**2) * torch.randn(n, 2)
    for s, s_next in zip(sig[:-1], sig[1:]):
      _, g = energy_and_grad(x, s)
      x = x - (s**2 - s_next**2) * g + math.sqrt(s**2 - s_next**2) * torch.randn_like(x)
    return x.numpy()
  return run


def smc_section(reps: int, sizes, torch_threads: int) -> None:
  import torch
  torch.set_num_threads(torch_threads)
  sigmas = karras_sigmas(100, 0.01, 10.0, 7.0)
  ring, bar, target, prod, exact = product_task(0.01)
  print(f"\n## 2. Feynman–Kac SMC, product ring × bar, exact energies, 100 levels σ 10 → 0.01, "
        f"exact-ratio weights (best time of {reps} interleaved rounds, one seed per round; TV: "
        f"mean ± sd over the rounds)")
  print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
  print("| N | sampler | resampling | time (s) | mode-mass TV | fkdiff is … faster |\n"
        "|---|---|---|---|---|---|")
  for n in sizes:
    fns = {"fkdiff": fkdiff_smc(target, sigmas, n, 0.5),
           "fkdiff, every level": fkdiff_smc(target, sigmas, n, 1.0),
           "blackjax smc.base.step": blackjax_smc(target, sigmas, n),
           "PyTorch loop": torch_smc(ring, bar, sigmas, n)}
    seed_of = lambda name, r: r + 100 if name == "PyTorch loop" else jax.random.key(r + 100)
    for name, fn in fns.items():                              # warm-up (compiles)
      jax.block_until_ready(fn(seed_of(name, 0)))
    best, tvs = {name: math.inf for name in fns}, {name: [] for name in fns}
    for r in range(reps):
      for name, fn in fns.items():
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(seed_of(name, r)))
        best[name] = min(best[name], time.perf_counter() - t0)
        samples = jnp.asarray(np.asarray(out))              # scored outside the clock
        tvs[name].append(toy_metrics.mode_mass_metrics(prod, samples, exact)["mode_mass_tv"])
    when = {"fkdiff": "ESS < N/2", "fkdiff, every level": "every level",
            "blackjax smc.base.step": "every level", "PyTorch loop": "ESS < N/2"}
    for name in fns:
      tv = np.asarray(tvs[name])
      print(f"| {n} | {name} | {when[name]} | {best[name]:.3f} | {tv.mean():.4f} ± "
            f"{tv.std():.4f} | {best[name] / best['fkdiff']:.2f}× |", flush=True)


def profile_section(reps: int, n: int, torch_threads: int) -> None:
  """Where a level's time goes at N particles, fkdiff vs the PyTorch loop: the SMC level (a run's
  time / levels), the plain reverse level (the proposal alone), their difference, one call of the
  energy + gradient, the fixed cost of a level (the SMC at N = 64), and PyTorch's own profiler on
  one SMC run."""
  import torch
  from torch.profiler import ProfilerActivity, profile
  torch.set_num_threads(torch_threads)
  sigmas = karras_sigmas(100, 0.01, 10.0, 7.0)
  levels = sigmas.shape[0] - 1
  ring, bar, target, _, _ = product_task(0.01)
  x = 2.0 * jax.random.normal(jax.random.key(0), (n, 2))
  x_torch = torch.tensor(np.asarray(x))
  jax_vg = jax.jit(jax.vmap(jax.value_and_grad(target), in_axes=(0, None)))
  torch_vg = torch_energy_and_grad(ring, bar)
  fns = {"fkdiff SMC": fkdiff_smc(target, sigmas, n, 0.5),
         "fkdiff SMC, N = 64": fkdiff_smc(target, sigmas, 64, 0.5),
         "fkdiff reverse": smc_bench.reverse_fn(target, sigmas, n, 2, SIGMA_DATA),
         "fkdiff energy + gradient": lambda s: jax_vg(x, s),
         "PyTorch SMC": torch_smc(ring, bar, sigmas, n),
         "PyTorch SMC, N = 64": torch_smc(ring, bar, sigmas, 64),
         "PyTorch reverse": torch_reverse(ring, bar, sigmas, n),
         "PyTorch energy + gradient": lambda s: torch_vg(x_torch, s)}
  runs = ("SMC", "reverse")
  args_of = lambda name, r: (((jax.random.key(r + 100),) if name.startswith("fkdiff") else
                              (r + 100,)) if any(k in name for k in runs) else (0.5,))
  t = interleaved_best(fns, args_of, reps)
  ms = {k: 1e3 * (v / levels if any(r in k for r in runs) else v) for k, v in t.items()}
  print(f"\n## 2b. Where a level's time goes, N = {n}, product ring × bar, exact-ratio weights, "
        f"{levels} levels (best of {reps} interleaved rounds; ms per level)")
  print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
  print("| part | fkdiff (ms) | PyTorch (ms) | PyTorch / fkdiff |\n|---|---|---|---|")
  parts = {"SMC level (run time / levels)": lambda lib: ms[f"{lib} SMC"],
           "plain reverse level (the proposal alone: energy gradient + Gaussian step)":
           lambda lib: ms[f"{lib} reverse"],
           "SMC's own work (SMC − reverse: value, weights, ESS, resampling)":
           lambda lib: ms[f"{lib} SMC"] - ms[f"{lib} reverse"],
           "energy + gradient of the product at N, one call": lambda lib: ms[f"{lib} energy + gradient"],
           "fixed cost of a level (SMC at N = 64 / levels)": lambda lib: ms[f"{lib} SMC, N = 64"]}
  for label, part in parts.items():
    f, p = part("fkdiff"), part("PyTorch")
    print(f"| {label} | {f:.2f} | {p:.2f} | {p / f:.2f}× |")
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    fns["PyTorch SMC"](7)
  print(f"\nPyTorch profiler, one run at N = {n} (top operators by self CPU time):\n```")
  print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
  print("```")


# ---------------------------------------------------------------------------------------------
# 3. SMC overhead with a neural energy.


def neural_energy(width=128, depth=3, sigma_data=1.0, seed=0):
  """The toy MLP energy with random (non-zero) weights: ``energy_fn(x, σ)``."""
  model = EnergyModel(MLP(width=width, depth=depth, zero_init_output=False), sigma_data)
  params = model.init(jax.random.key(seed), jnp.zeros(2), jnp.ones(()))
  return energy_lib.bind(model, params)


def digits_energy(workdir: str = DIGITS_ENERGY, label: int = 3):
  """The shipped digits U-Net energy (``colabs/digits_demo``) on one class: ``(energy_fn(x, σ),
  σ_d, event shape)``."""
  import fkdiff
  energy_fn, params, sigma_data = fkdiff.load_energy(workdir)
  return (lambda x, s: energy_fn(params, x, s, label)), sigma_data, (8, 8, 1)


def overhead_section(reps: int) -> None:
  toy_levels = karras_sigmas(100, smc_bench.SIGMA_MIN, smc_bench.SIGMA_MAX)
  rows = {"closed-form 8-mode mixture (benchmarks/smc.py)":
          (smc_bench.make_energy(smc_bench.make_means(2)), 1.0, 2, 4096, toy_levels),
          "toy MLP energy (width 128, depth 3)": (neural_energy(), 1.0, 2, 4096, toy_levels),
          "digits U-Net energy (colabs/digits_demo, 8×8)":
          (*digits_energy(), 256, karras_sigmas(32, 0.002, 80.0))}
  print(f"\n## 3. SMC / plain reverse diffusion with the same energy (best of {reps} "
        "interleaved rounds)")
  print("| energy | N | levels | reverse (ms) | SMC score-only (ms) | ratio | SMC exact-ratio (ms) "
        "| ratio |\n|---|---|---|---|---|---|---|---|")
  for label, (energy, sigma_data, shape, n, sigmas) in rows.items():
    fns = {"reverse": smc_bench.reverse_fn(energy, sigmas, n, shape, sigma_data),
           "score": smc_bench.smc_fn(energy, sigmas, n, shape, ScoreOnly(), sigma_data),
           "exact": smc_bench.smc_fn(energy, sigmas, n, shape, ExactRatio(), sigma_data)}
    t = interleaved_best(fns, lambda name, r: (jax.random.key(r + 1),), reps)
    print(f"| {label} | {n} | {sigmas.shape[0]} | {1e3 * t['reverse']:.1f} | "
          f"{1e3 * t['score']:.1f} | {t['score'] / t['reverse']:.3f}× | {1e3 * t['exact']:.1f} | "
          f"{t['exact'] / t['reverse']:.3f}× |", flush=True)
  print("(goal ≤ 1.05× with the neural energies; the closed-form row is the worst case)")


# ---------------------------------------------------------------------------------------------
# 4. The energy's value + gradient vs one teacher NFE.


def _cost(fn, *args):
  cost = fn.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost.get("flops", float("nan")), cost.get("bytes accessed", float("nan"))


def nfe_section(reps: int) -> None:
  mix = toy.ring()
  sigma_data = gmm.data_std(mix)
  backbone = MLP(width=128, depth=3, zero_init_output=False)
  denoise = make_denoiser(backbone, sigma_data)
  model = EnergyModel(backbone, sigma_data)
  t_params = backbone.init(jax.random.key(0), jnp.zeros(2), jnp.zeros(()))
  e_params = model.init(jax.random.key(0), jnp.zeros(2), jnp.ones(()))
  x, _ = gmm.sample(mix, jax.random.key(5), 4096, 0.5)
  print(f"\n## 4. Energy value + gradient vs one teacher NFE, MLP(128, 3), 4,096 points (best of "
        f"{reps} interleaved rounds; flops and bytes from XLA's compiled cost analysis)")
  print("| σ | evaluation | time (ms) | ratio | GFLOP | ratio | MB accessed | ratio |\n"
        "|---|---|---|---|---|---|---|---|")
  for sig_label, in_axes, sig in (("per point", 0, jnp.full((4096,), 0.5)),
                                  ("shared (as in SMC)", None, jnp.float32(0.5))):
    fns = {"teacher NFE (denoiser forward)":
           jax.jit(jax.vmap(lambda z, s: denoise(t_params, z, s), in_axes=(0, in_axes))),
           "energy value": jax.jit(jax.vmap(lambda z, s: energy_lib.energy(model, e_params, z, s),
                                            in_axes=(0, in_axes))),
           "energy value + gradient": jax.jit(jax.vmap(
               lambda z, s: energy_lib.energy_and_score(model, e_params, z, s),
               in_axes=(0, in_axes)))}
    t = interleaved_best(fns, lambda name, r: (x, sig), reps)
    cost = {name: _cost(fn, x, sig) for name, fn in fns.items()}
    base = "teacher NFE (denoiser forward)"
    for name in fns:
      (fl, by), (fl0, by0) = cost[name], cost[base]
      print(f"| {sig_label} | {name} | {1e3 * t[name]:.2f} | {t[name] / t[base]:.2f}× | "
            f"{fl / 1e9:.3f} | {fl / fl0:.2f}× | {by / 1e6:.1f} | {by / by0:.2f}× |", flush=True)
  print("(goal: value + gradient ≤ 2.5× a teacher NFE)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sections", default="resampling,smc,profile,overhead,nfe")
  parser.add_argument("--reps", type=int, default=5, help="interleaved rounds (best of)")
  parser.add_argument("--smc-sizes", default="4096,65536")
  parser.add_argument("--torch-threads", type=int, default=1,
                      help="PyTorch intra-op threads (on a loaded 2-core machine 2 threads ran "
                           "its loop ~50× slower from oversubscription; use 2 on a quiet one)")
  args = parser.parse_args()
  import blackjax
  print(f"# Peers — jax {jax.__version__}, blackjax {blackjax.__version__}, "
        f"{platform.machine()} {jax.devices()[0].platform.upper()} x{jax.device_count()}, "
        f"{os.cpu_count()} CPUs, numpy {np.__version__}")
  t0 = time.perf_counter()
  sections = args.sections.split(",")
  if "resampling" in sections:
    resampling_section(max(args.reps, 7))
  if "smc" in sections:
    smc_section(max(args.reps - 2, 2), [int(s) for s in args.smc_sizes.split(",")],
                args.torch_threads)
  if "profile" in sections:
    profile_section(args.reps, int(args.smc_sizes.split(",")[-1]), args.torch_threads)
  if "overhead" in sections:
    overhead_section(args.reps)
  if "nfe" in sections:
    nfe_section(max(args.reps, 10))
  print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
  main()
