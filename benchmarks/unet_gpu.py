"""Cost of the paper-scale CIFAR-10 U-Net steps on one accelerator (float32, as the library trains).

Run: python benchmarks/unet_gpu.py [--batch 128] [--steps 20] [--smoke]

Model: configs/cifar10.py's U-Net (width 128, channel_mult (2, 2, 2), 4 blocks per level,
attention at 16×16, 10 classes; 53.6M parameters), copied below because the configs load
``fkdiff.training`` (clu, TensorFlow), which this script avoids. Data: synthetic
N(0, 0.5²) 32×32×3 images with random class labels (label dropout 0.1). Measured, each in its own
process (so that ``peak_bytes_in_use`` is that measurement's own peak):
- teacher NFE: one EDM denoiser forward on the batch;
- energy E + ∇E: ``models.energy.energy_and_score`` vmapped over the batch, with the distill
  config's remat (``energy.remat``, ``unet.remat_blocks``) and without;
- teacher step: ``value_and_grad`` of the EDM DSM loss (as ``teacher_task`` builds it), global-norm
  clip + AdamW + EMA (as ``train_step``, without metrics), jitted, state donated;
- distill step: the same with the conservative-projection loss (as ``distill_task`` builds it;
  the frozen teacher's parameters are a jit argument), with the distill config's remat and without.
Per measurement: median wall time of ``--steps`` calls after 3 warm-up calls (each call ends with
``jax.block_until_ready``), images/s, lower+compile seconds, the executable's XLA footprint
(arguments + outputs − donated aliases + temporaries, ``compiled.memory_analysis()``) and the
process's ``peak_bytes_in_use`` (n/a on CPU; it also counts buffers freed before the timed calls,
e.g. compile-time autotuning or eager initialisation: ≈ 7.5 GiB even for one forward pass on an
H200 at batch 128, whose own footprint is 1.4 GiB). ``--only a,b``: a subset. ``--smoke``: the
``:smoke`` U-Net, batch 4, 2 steps (checks the script on a CPU). Wall time on an H200 at batch 128:
≈ 8 min, mostly compilation (the distill step with remat alone compiles for ≈ 2 min).
"""

import argparse
import functools
import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fkdiff import losses, models

SIGMA_DATA = 0.5               # image configs (configs/common.py).
NUM_CLASSES = 10
LABEL_DROPOUT = 0.1
EMA_DECAY = 0.9993
LEARNING_RATE = {"teacher": 1e-3, "distill": 1e-4}
# configs/cifar10.py model settings (teacher and distill share them; distill adds remat).
FULL = dict(width=128, depth=4, emb_dim=128, num_classes=NUM_CLASSES, channel_mult=(2, 2, 2),
            attn_resolutions=(16,), num_heads=1)
# configs/common.py shrink_for_smoke (which also turns remat_blocks off).
SMOKE = dict(width=8, depth=1, emb_dim=16, num_classes=NUM_CLASSES, channel_mult=(1,),
             attn_resolutions=(), num_heads=1)
MEASUREMENTS = ("teacher_nfe", "energy_nfe_remat", "energy_nfe", "teacher_step",
                "distill_step_remat", "distill_step")
BASELINE = {"teacher_nfe": "teacher_nfe", "energy_nfe_remat": "teacher_nfe",
            "energy_nfe": "teacher_nfe", "teacher_step": "teacher_step",
            "distill_step_remat": "teacher_step", "distill_step": "teacher_step"}


def synthetic_batch(key, batch_size):
  k_x, k_label = jax.random.split(key)
  return {"x": 0.5 * jax.random.normal(k_x, (batch_size, 32, 32, 3)),
          "label": jax.random.randint(k_label, (batch_size,), 0, NUM_CLASSES)}


def drop_labels(batch, key):
  """Classifier-free dropout to the null class, as ``tasks.drop_labels`` for class labels."""
  drop = jax.random.bernoulli(key, LABEL_DROPOUT, batch["label"].shape)
  return {**batch, "label": jnp.where(drop, NUM_CLASSES, batch["label"])}


def teacher_denoiser(unet_kwargs):
  """``(init(key), denoise(params, x, σ, label))`` of the teacher (no remat, as trained)."""
  backbone = models.UNet(**unet_kwargs)
  init = lambda key: backbone.init(key, jnp.zeros((32, 32, 3)), jnp.zeros(()))
  return init, models.make_denoiser(backbone, SIGMA_DATA)


def energy_model(unet_kwargs, remat, remat_blocks):
  return models.EnergyModel(models.UNet(**unet_kwargs, remat_blocks=remat_blocks), SIGMA_DATA,
                            "thornton", remat=remat)


def teacher_loss(denoise):
  dsm = losses.make_dsm_loss(denoise, SIGMA_DATA)
  return lambda params, batch, key, frozen: dsm(params, drop_labels(batch, jax.random.fold_in(
      key, 2)), key)


def distill_loss(model, teacher_denoise):
  student = functools.partial(models.energy.denoiser, model)

  def loss_fn(params, batch, key, frozen):
    teacher = lambda x, s, label=None: teacher_denoise(frozen, x, s, label)
    return losses.make_distill_loss(student, teacher, SIGMA_DATA)(
        params, drop_labels(batch, jax.random.fold_in(key, 2)), key)
  return loss_fn


def make_train_step(loss_fn, learning_rate):
  """Jitted ``(state, batch, key, frozen) -> (state, loss)``; ``state`` is donated."""
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(learning_rate, weight_decay=0.0))

  def step(state, batch, key, frozen):
    params, ema, opt_state, t = state
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch, jax.random.fold_in(key, t), frozen)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    rate = jnp.minimum(EMA_DECAY, (1.0 + t) / (10.0 + t))
    ema = optax.incremental_update(params, ema, 1.0 - rate)
    return (params, ema, opt_state, t + 1), loss

  def init(params):   # own copies: the state is donated, the teacher's parameters are not.
    params = jax.tree.map(jnp.copy, params)
    return params, jax.tree.map(jnp.copy, params), tx.init(params), jnp.zeros((), jnp.int32)
  return jax.jit(step, donate_argnums=0), init


def build(name, unet_kwargs, batch_size, smoke):
  """``(jitted_fn, args, threads_state)`` of one measurement; all randomness from fixed keys."""
  k_teacher, k_batch, k_sigma, k_step = jax.random.split(jax.random.key(0), 4)
  teacher_init, teacher_denoise = teacher_denoiser(unet_kwargs)
  teacher_params = teacher_init(k_teacher)
  batch = synthetic_batch(k_batch, batch_size)
  remat = name.endswith("_remat")
  model = energy_model(unet_kwargs, remat=remat, remat_blocks=remat and not smoke)
  if not name.startswith("teacher"):
    energy_params = model.init(k_teacher, jnp.zeros((32, 32, 3)), jnp.ones(()))
    energy_params = models.init_from_teacher(energy_params, teacher_params)  # init_student
  sigma = jnp.exp(-1.2 + 1.2 * jax.random.normal(k_sigma, (batch_size,)))
  per_example = lambda f: jax.vmap(f, in_axes=(None, 0, 0, 0))
  if name == "teacher_nfe":
    fn = jax.jit(per_example(teacher_denoise))
    return fn, (teacher_params, batch["x"], sigma, batch["label"]), False
  if name.startswith("energy_nfe"):
    fn = jax.jit(per_example(functools.partial(models.energy.energy_and_score, model)))
    return fn, (energy_params, batch["x"], sigma, batch["label"]), False
  if name == "teacher_step":
    step, init = make_train_step(teacher_loss(teacher_denoise), LEARNING_RATE["teacher"])
    return step, (init(teacher_params), batch, k_step, None), True
  step, init = make_train_step(distill_loss(model, teacher_denoise), LEARNING_RATE["distill"])
  return step, (init(energy_params), batch, k_step, teacher_params), True


def measure(name, batch_size, steps, smoke):
  """Runs one measurement in this process; returns a dict of results."""
  unet_kwargs = SMOKE if smoke else FULL
  fn, args, threads_state = build(name, unet_kwargs, batch_size, smoke)
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(3 + steps):
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    if i >= 3:
      times.append(time.perf_counter() - t0)
    if threads_state:
      args = (out[0],) + args[1:]   # the donated state is replaced by the new one.
  seconds = float(np.median(times))
  mem = compiled.memory_analysis()   # XLA's plan for this executable alone.
  xla_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
               + mem.temp_size_in_bytes)
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  params = args[0][0] if threads_state else args[0]
  return {"name": name, "seconds": seconds, "images_per_s": batch_size / seconds,
          "compile_s": compile_s, "peak_gib": stats.get("peak_bytes_in_use", float("nan")) / 2**30,
          "xla_gib": xla_bytes / 2**30,
          "num_params": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)),
          "device": f"{device.platform} {device.device_kind} x{jax.device_count()}",
          "jax": jax.__version__}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=None, help="default 128 (4 with --smoke)")
  parser.add_argument("--steps", type=int, default=None, help="default 20 (2 with --smoke)")
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument("--only", default=",".join(MEASUREMENTS),
                      help="comma-separated subset of " + ", ".join(MEASUREMENTS))
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  a = parser.parse_args()
  batch = a.batch or (4 if a.smoke else 128)
  steps = a.steps or (2 if a.smoke else 20)
  names = a.only.split(",")
  if a.child:   # one measurement; the parent never touches a device (no preallocation there).
    print("RESULT " + json.dumps(measure(names[0], batch, steps, a.smoke)), flush=True)
    return
  results = {}
  for name in names:
    cmd = [sys.executable, __file__, "--child", "--only", name, "--batch", str(batch),
           "--steps", str(steps)] + (["--smoke"] if a.smoke else [])
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    results[name] = json.loads(lines[-1][7:]) if lines else {"failed": f"exit {proc.returncode}"}
    print(f"{name}: {results[name]}", flush=True)
  first = next((r for r in results.values() if "device" in r), {})
  print(f"\n# U-Net costs — {first.get('device', '?')}, jax {first.get('jax', '?')}, "
        f"batch {batch}, float32, median of {steps} calls after 3 warm-ups"
        f"{', SMOKE model' if a.smoke else ''}; params {first.get('num_params', '?'):,}")
  print("| measurement | ms / call | images/s | ratio | compile (s) | XLA footprint (GiB) "
        "| process peak (GiB) |")
  print("|---|---|---|---|---|---|---|")
  for name, r in results.items():
    if "failed" in r:
      print(f"| {name} | failed ({r['failed']}) | | | | | |")
      continue
    base = results.get(BASELINE[name], {})
    ratio = f"{r['seconds'] / base['seconds']:.2f}×" if "seconds" in base else "-"
    row = (f"| {name} | {1e3 * r['seconds']:.1f} | {r['images_per_s']:.0f} | {ratio} | "
           f"{r['compile_s']:.1f} | {r['xla_gib']:.2f} | {r['peak_gib']:.2f} |")
    print(row.replace("| nan |", "| n/a |"))


if __name__ == "__main__":
  main()
