"""Energy distillation on CPU: cost of an energy vs its teacher, and learning speed.

Run: python benchmarks/distill.py [--steps 2000] [--eval-every 250] [--batch 512]

On the toy ring of 8 Gaussians (configs/toy2d_teacher.py's data and backbone: residual MLP,
width 128, depth 3), prints
1. energy NFE (value + gradient, ``energy_and_score``) / teacher NFE (one EDM denoiser forward)
   on the same backbone, 4,096 points (goal ≤ 2.5×);
2. distillation step / teacher training step (Adam, batch 512; goal ≤ 3.5×), also with remat,
   and with the time-score term of time-consistent distillation (λ = 1, noise and teacher
   targets; goal ≤ 1.6× the plain distillation step);
3. relative score error to the exact score (mean over σ = 0.2, 0.5, 1.0) vs steps for
   teacher-initialised distillation, distillation from a fresh init, and the same energy trained
   from scratch with denoising score matching (``make_dsm_loss`` on the energy's denoiser); the
   teacher is trained first in this script with ``make_dsm_loss`` and optax;
4. the teacher's non-conservative share (``losses.asymmetry``) per σ.
Expected wall time on a 2-core CPU: a few minutes.
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fkdiff.data import gmm, toy
from fkdiff.losses import asymmetry, make_distill_loss, make_dsm_loss
from fkdiff.models import MLP, EnergyModel, Gauge, energy as energy_lib, init_from_teacher
from fkdiff.models import make_denoiser

SIGMAS = (0.2, 0.5, 1.0)


def median_time(fn, *args, reps: int = 20) -> float:
  """Median wall seconds of ``fn(*args)`` after one warm-up (compile) call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def make_step(loss_fn, tx, sample_batch):
  """A jitted ``(params, opt_state, key) -> (params, opt_state)`` Adam step."""
  @jax.jit
  def step(params, opt_state, key):
    k_data, k_loss = jax.random.split(key)
    grads = jax.grad(lambda p: loss_fn(p, sample_batch(k_data), k_loss)[0])(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return step


def train(loss_fn, params, sample_batch, key, steps, lr, eval_fn=None, eval_every=0):
  """Adam with cosine decay; returns ``(params, [(step, eval_fn(params)), …])``."""
  tx = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
  step = make_step(loss_fn, tx, sample_batch)
  opt_state, history = tx.init(params), []
  for i, k in enumerate(jax.random.split(key, steps)):
    if eval_fn is not None and i % eval_every == 0:
      history.append((i, eval_fn(params)))
    params, opt_state = step(params, opt_state, k)
  if eval_fn is not None:
    history.append((steps, eval_fn(params)))
  return params, history


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--eval-every", type=int, default=250)
  parser.add_argument("--teacher-steps", type=int, default=3000)
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--steps-only", action="store_true",
                      help="stop after sections 1-2 (timings; the teacher still trains)")
  args = parser.parse_args()
  t_start = time.perf_counter()
  mix = toy.ring()
  sigma_data = gmm.data_std(mix)
  backbone = MLP(width=128, depth=3)
  teacher_denoise = make_denoiser(backbone, sigma_data)
  model = EnergyModel(backbone, sigma_data)
  model_remat = EnergyModel(backbone, sigma_data, remat=True)
  student_denoise = lambda p, x, s, label=None: energy_lib.denoiser(model, p, x, s, label)
  remat_denoise = lambda p, x, s, label=None: energy_lib.denoiser(model_remat, p, x, s, label)
  batches = lambda key: {"x": gmm.sample(mix, key, args.batch)[0]}
  print(f"# Energy distillation benchmark — jax {jax.__version__}, {jax.devices()[0].platform} "
        f"x{jax.device_count()}, backbone MLP(width=128, depth=3), ring of 8, σ_d={sigma_data:.3f}")

  # Teacher (quick DSM run); its weights also serve the timing sections.
  t_params = backbone.init(jax.random.key(0), jnp.zeros(2), jnp.zeros(()))
  t0 = time.perf_counter()
  t_params, _ = train(make_dsm_loss(teacher_denoise, sigma_data), t_params, batches,
                      jax.random.key(1), args.teacher_steps, 2e-3)
  print(f"\nteacher: {args.teacher_steps} DSM steps in {time.perf_counter() - t0:.1f} s")
  e_params = init_from_teacher(model.init(jax.random.key(0), jnp.zeros(2), jnp.ones(())),
                               t_params)

  # 1. NFE.
  x, _ = gmm.sample(mix, jax.random.key(5), 4096, 0.5)
  sig = jnp.full((4096,), 0.5)
  teacher_nfe = jax.jit(jax.vmap(lambda z, s: teacher_denoise(t_params, z, s)))
  energy_nfe = jax.jit(jax.vmap(lambda z, s: energy_lib.energy_and_score(model, e_params, z, s)))
  energy_only = jax.jit(jax.vmap(lambda z, s: energy_lib.energy(model, e_params, z, s)))
  t_teacher, t_energy, t_value = (median_time(f, x, sig, reps=50)
                                  for f in (teacher_nfe, energy_nfe, energy_only))
  print("\n## 1. NFE, 4,096 points (median of 50)")
  print("| evaluation | time (ms) | ratio to teacher |\n|---|---|---|")
  print(f"| teacher denoiser D_T | {1e3 * t_teacher:.2f} | 1.00 |")
  print(f"| energy value only | {1e3 * t_value:.2f} | {t_value / t_teacher:.2f}× |")
  print(f"| energy value + gradient | {1e3 * t_energy:.2f} | {t_energy / t_teacher:.2f}× "
        "(goal ≤ 2.5×) |")

  # 2. Train steps.
  teacher = lambda z, s, label=None: teacher_denoise(t_params, z, s, label)
  gauge = Gauge()
  e_params_gauge = {**e_params, "gauge": gauge.init(jax.random.key(4), jnp.ones(()))}
  time_kwargs = lambda target: dict(      # time-consistent distillation, METHOD.md §3.
      time_weight=1.0, student_energy_fn=lambda p, z, s, label=None: energy_lib.energy(
          model, p, z, s, label), gauge_fn=lambda p, s: gauge.apply(p["gauge"], s),
      time_target=target, time_probes=0)
  tx = optax.adam(1e-4)
  steps = {"teacher DSM step": (make_dsm_loss(teacher_denoise, sigma_data), t_params),
           "distillation step": (make_distill_loss(student_denoise, teacher, sigma_data),
                                 e_params),
           "distillation step, remat": (make_distill_loss(remat_denoise, teacher, sigma_data),
                                        e_params),
           "distillation step + time term, noise target": (
               make_distill_loss(student_denoise, teacher, sigma_data, **time_kwargs("noise")),
               e_params_gauge),
           "distillation step + time term, teacher target (exact ∇·s_T)": (
               make_distill_loss(student_denoise, teacher, sigma_data, **time_kwargs("teacher")),
               e_params_gauge),
           "energy DSM step (scratch baseline)": (make_dsm_loss(student_denoise, sigma_data),
                                                  e_params)}
  # Interleaved (one call of each step per round, 30 rounds): on a shared machine the load
  # drifts, and timing each step in its own block biases the ratios.
  calls = {}
  for name, (loss_fn, p) in steps.items():
    step, opt = make_step(loss_fn, tx, batches), tx.init(p)
    jax.block_until_ready(step(p, opt, jax.random.key(3)))      # compile
    calls[name] = functools.partial(step, p, opt, jax.random.key(3))
  samples = {name: [] for name in calls}
  for _ in range(30):
    for name, call in calls.items():
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      samples[name].append(time.perf_counter() - t0)
  timings = {name: float(np.median(v)) for name, v in samples.items()}
  fastest = {name: float(np.min(v)) for name, v in samples.items()}
  base, plain = timings["teacher DSM step"], timings["distillation step"]
  print(f"\n## 2. Train step, batch {args.batch} (median of 30, interleaved)")
  print("| step | time (ms) | ratio to teacher step | ratio to distillation step | "
        "min time (ms) | ratio of min times to distillation |\n|---|---|---|---|---|---|")
  for name, t in timings.items():
    goal = " (goal ≤ 3.5×)" if name == "distillation step" else ""
    goal_time = " (goal ≤ 1.6×)" if "time term" in name else ""
    print(f"| {name} | {1e3 * t:.2f} | {t / base:.2f}×{goal} | {t / plain:.2f}×{goal_time} | "
          f"{1e3 * fastest[name]:.2f} | {fastest[name] / fastest['distillation step']:.2f}× |")
  if args.steps_only:
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")
    return

  # 3. Score error vs steps.
  @jax.jit
  def rel_err(score_params):
    errs = []
    for s in SIGMAS:
      xs, _ = gmm.sample(mix, jax.random.key(7), 4096, s)
      pred = jax.vmap(lambda z: energy_lib.score(model, score_params, z, s))(xs)
      true = jax.vmap(lambda z: gmm.score(mix, z, s))(xs)
      errs.append(jnp.sqrt(jnp.sum((pred - true)**2) / jnp.sum(true**2)))
    return jnp.stack(errs)

  @jax.jit
  def teacher_err(params):
    errs = []
    for s in SIGMAS:
      xs, _ = gmm.sample(mix, jax.random.key(7), 4096, s)
      pred = jax.vmap(lambda z: (teacher_denoise(params, z, s) - z) / s**2)(xs)
      true = jax.vmap(lambda z: gmm.score(mix, z, s))(xs)
      errs.append(jnp.sqrt(jnp.sum((pred - true)**2) / jnp.sum(true**2)))
    return jnp.stack(errs)

  t_err = np.asarray(teacher_err(t_params))
  fresh = model.init(jax.random.key(0), jnp.zeros(2), jnp.ones(()))
  runs = {"distill, teacher init": (make_distill_loss(student_denoise, teacher, sigma_data),
                                    e_params),
          "distill, fresh init": (make_distill_loss(student_denoise, teacher, sigma_data), fresh),
          "energy DSM, scratch": (make_dsm_loss(student_denoise, sigma_data), fresh)}
  histories, wall = {}, {}
  for name, (loss_fn, p0) in runs.items():
    t0 = time.perf_counter()
    _, histories[name] = train(loss_fn, p0, batches, jax.random.key(2), args.steps, 2e-3,
                               lambda p: np.asarray(rel_err(p)), args.eval_every)
    wall[name] = time.perf_counter() - t0
  print(f"\n## 3. Relative score error to the exact score, mean over σ ∈ {SIGMAS} "
        f"(Adam 2e-3, cosine, batch {args.batch})")
  print(f"teacher ({args.teacher_steps} DSM steps): {t_err.mean():.4f} "
        f"(per σ: {', '.join(f'{e:.3f}' for e in t_err)})")
  names = list(runs)
  print("| step | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
  for i, (step, _) in enumerate(histories[names[0]]):
    print(f"| {step} | " + " | ".join(f"{histories[n][i][1].mean():.4f}" for n in names) + " |")
  print("| wall (s) | " + " | ".join(f"{wall[n]:.1f}" for n in names) + " |")
  for threshold in (1.5 * t_err.mean(), 1.2 * t_err.mean()):
    reach = {n: next((s for s, e in histories[n] if e.mean() <= threshold), None) for n in names}
    print(f"steps to reach error ≤ {threshold:.4f}: " +
          ", ".join(f"{n}: {'not reached' if v is None else v}" for n, v in reach.items()))

  # 4. Teacher asymmetry per σ.
  print("\n## 4. Teacher's non-conservative share ‖A‖_F/‖J‖_F of its score Jacobian "
        "(mean over 4,096 points of p_σ, 4 probes each)")
  print("| σ | " + " | ".join(f"{s:g}" for s in (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)) + " |")
  print("|---|" + "---|" * 6)
  row = []
  for s in (0.05, 0.2, 0.5, 1.0, 2.0, 5.0):
    xs, _ = gmm.sample(mix, jax.random.key(8), 4096, s)
    keys = jax.random.split(jax.random.key(9), 4096)
    a = jax.jit(jax.vmap(lambda z, k: asymmetry(lambda y, t: teacher_denoise(t_params, y, t),
                                                z, s, k, num_probes=4)))(xs, keys)
    row.append(float(jnp.mean(a)))
  print("| teacher | " + " | ".join(f"{a:.3f}" for a in row) + " |")
  print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
  main()
