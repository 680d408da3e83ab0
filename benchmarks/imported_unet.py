"""Times of an imported diffusers ``UNet2DModel`` of CIFAR-10 size on this machine: its forward
pass, a distillation step of the energy initialised from it, and an SMC level on that energy.

The configuration is ``google/ddpm-cifar10-32``'s (block_out_channels (128, 256, 256, 256),
layers_per_block 2, attention at 16×16, DDPM's ``flip_sin_to_cos=False``, ``freq_shift=1``),
written here by hand, with random weights: nothing is downloaded. Measured side by side, each as
the median of ``--repeats`` timed calls after one compiling call:

- ``forward``: ``jax.jit(UNet2DModel.apply)`` on a batch of ``--batch`` 32×32×3 images;
- ``distill``: one step of fkdiff's trainer (``train.make_trainer``) on a distillation config
  with the random checkpoint (written to a temporary folder) as ``teacher.diffusers``, the student
  ``model.name = 'diffusers'`` started from its weights, ``energy.remat = --remat``, a batch of
  ``--batch`` (random images as ``data.name = 'arrays'``);
- ``smc``: an ``smc_sample`` run of ``--levels`` levels with ``--particles`` particles on the
  energy (after the timed steps, or as initialised from the teacher), with ``smc_sample``'s
  default scheme (``weights.DEFAULT``), compiled ahead of time (``lower().compile()``, timed
  apart) and then executed ``--smc-repeats`` times, divided by the levels (the run's setup and
  final step included: an upper bound); its energy evaluations per particle and level
  (``evaluations_per_level``) are printed with it.

::

  python benchmarks/imported_unet.py [--batch 8] [--repeats 5] [--parts forward,distill,smc]
      [--particles 8] [--levels 1] [--smc-repeats 1]
"""

import argparse
import os
import tempfile
import time

import jax
import numpy as np

from fkdiff.models.diffusers_unet import UNet2DConfig, UNet2DModel, init_params

DDPM_CIFAR10 = UNet2DConfig(
    in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None, norm_eps=1e-6)


def timed(fn, repeats: int):
  """``(first call seconds, [timed call seconds])`` of ``fn()`` (which blocks on its result)."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return first, times


def distill_and_smc(params, args, parts):
  """Times a distillation step and an SMC level (see the module doc)."""
  from fkdiff.experiments import common
  from fkdiff.models import imported
  from fkdiff.sampling import smc, weights
  from fkdiff.training import runs
  from fkdiff.training.config import default_config
  from fkdiff.training.train import make_trainer
  folder = tempfile.mkdtemp()
  imported.save_diffusers_unet(os.path.join(folder, "ckpt"), DDPM_CIFAR10, params)
  imported.save_scheduler_config(os.path.join(folder, "ckpt"), beta_schedule="linear",
                                 prediction_type="epsilon")
  x = np.random.default_rng(1).uniform(-1, 1, (64, 32, 32, 3)).astype(np.float32)
  np.savez(os.path.join(folder, "x.npz"), x=x)
  c = default_config()
  c.task = "distill"
  c.teacher.diffusers = os.path.join(folder, "ckpt")
  c.teacher.log_asymmetry = False
  c.model.name = "diffusers"
  c.data.update(name="arrays", array_file=os.path.join(folder, "x.npz"), batch_size=args.batch)
  c.energy.remat = args.remat
  trainer = make_trainer(c)
  state = [trainer.make_state(trainer.init_key)]
  batch = trainer.make_batch(0)

  def step():
    state[0], m = trainer.step_fn(state[0], batch, trainer.task.frozen)
    jax.block_until_ready(m)

  if "distill" in parts:
    first, times = timed(step, args.repeats)
    print(f"distillation step, batch {args.batch}, energy.remat={args.remat}: first call "
          f"{first:.1f} s, step {np.median(times):.2f} s (median of {args.repeats}; min "
          f"{min(times):.2f})", flush=True)
  if "smc" not in parts:
    return
  energy = common.LoadedEnergy(runs.network_fns(c, 0.5)[1], state[0].ema_params, 0.5)
  sigmas = common.levels(common.sampler_config(num_steps=args.levels + 1))

  def run(p, key):
    return smc.smc_sample(key, energy.target(p), sigmas, args.particles, (32, 32, 3)).particles

  p, key = state[0].ema_params, jax.random.key(2)
  start = time.perf_counter()
  compiled = jax.jit(run).lower(p, key).compile()   # compiled ahead: the runs time execution
  compile_s = time.perf_counter() - start
  times = []
  for i in range(args.smc_repeats):
    start = time.perf_counter()
    compiled(p, jax.random.fold_in(key, i)).block_until_ready()
    times.append(time.perf_counter() - start)
  evals = weights.DEFAULT.evaluations_per_level(32 * 32 * 3)
  print(f"SMC (smc_default), {args.particles} particles, {args.levels} levels: compile "
        f"{compile_s:.1f} s, run {np.median(times):.1f} s (median of {args.smc_repeats}) = "
        f"{np.median(times) / args.levels:.1f} s per level; {evals} energy evaluations per "
        f"particle and level ({evals * args.particles} per level)", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--parts", default="forward,distill,smc")
  parser.add_argument("--remat", action="store_true", help="energy.remat for the step")
  parser.add_argument("--particles", type=int, default=8)
  parser.add_argument("--levels", type=int, default=1)
  parser.add_argument("--smc-repeats", type=int, default=1)
  args = parser.parse_args()
  parts = args.parts.split(",")
  params = init_params(DDPM_CIFAR10, jax.random.key(0))
  if "distill" in parts or "smc" in parts:
    distill_and_smc(params, args, parts)
  if "forward" not in parts:
    return
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  x = np.random.default_rng(0).standard_normal((args.batch, 32, 32, 3), dtype=np.float32)
  t = np.linspace(0, 999, args.batch).astype(np.float32)
  forward = jax.jit(UNet2DModel(DDPM_CIFAR10).apply)
  start = time.perf_counter()
  forward(params, x, t).block_until_ready()
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    forward(params, x, t).block_until_ready()
    times.append(time.perf_counter() - start)
  print(f"DDPM CIFAR-10 UNet2DModel ({count / 1e6:.1f} M parameters), batch {args.batch}, "
        f"{jax.devices()[0].platform}: first call {compile_s:.1f} s, forward "
        f"{np.median(times) * 1e3:.0f} ms (median of {args.repeats}; min {min(times) * 1e3:.0f})",
        flush=True)


if __name__ == "__main__":
  main()
