"""Teacher train-step throughput on CPU: 1 vs 2 (fake) devices, and data-parallel overhead.

Run: python benchmarks/train_step.py [--steps 300] [--batch 512] [--config configs/toy2d_teacher.py]

Prints steps/s of (a) a plain ``jax.jit`` step on one device, (b) the trainer's data-parallel
step (NamedSharding over a 1-device mesh), (c) the same over 2 fake CPU devices, each measured in
its own process side by side, and the ratios (goal: (b)/(a) time ≤ 1.05×).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _time_steps(step, state, make_batch, steps: int) -> float:
  """Seconds per step over ``steps`` steps after two warm-up (compile) steps."""
  import jax
  for i in range(2):
    state, m = step(state, make_batch(i), None)
  jax.block_until_ready(state)
  best = float("inf")
  for _ in range(2):
    t0 = time.perf_counter()
    for i in range(steps):
      state, m = step(state, make_batch(i), None)
    jax.block_until_ready((state, m))
    best = min(best, (time.perf_counter() - t0) / steps)
  return best


def worker(config_path: str, steps: int, batch: int) -> dict:
  import jax
  from fkdiff.training.train import make_trainer
  from fkdiff.training.config import config_module
  config = config_module(config_path).get_config()
  config.data.batch_size = batch
  trainer = make_trainer(config)
  out = {"devices": jax.device_count()}
  plain = jax.jit(trainer.step_body, donate_argnums=0)
  dp, pl = [], []
  for _ in range(3):   # interleaved rounds: a busy machine slows both alike.
    dp.append(_time_steps(trainer.step_fn, trainer.make_state(trainer.init_key),
                          trainer.make_batch, steps))
    if jax.device_count() == 1:
      pl.append(_time_steps(plain, trainer.make_state(trainer.init_key), trainer.make_batch,
                            steps))
  out["data_parallel_s"] = min(dp)
  if pl:
    out["plain_jit_s"] = min(pl)
    out["overhead_ratios"] = sorted(d / p for d, p in zip(dp, pl))
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--config", default=os.path.join(ROOT, "configs/toy2d_teacher.py"))
  parser.add_argument("--worker", action="store_true")
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(args.config, args.steps, args.batch)))
    return
  results = {}
  for n in (1, 2):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(args.steps),
                          "--batch", str(args.batch), "--config", args.config],
                         env=env, capture_output=True, text=True, check=True)
    results[n] = json.loads(out.stdout.strip().splitlines()[-1])
  plain, dp1, dp2 = (results[1]["plain_jit_s"], results[1]["data_parallel_s"],
                     results[2]["data_parallel_s"])
  print(f"toy MLP teacher step, global batch {args.batch}, {args.steps} steps (best of 3):")
  print(f"  plain jit, 1 device            {1 / plain:8.1f} steps/s")
  print(f"  data-parallel, 1 device        {1 / dp1:8.1f} steps/s")
  print(f"  data-parallel, 2 fake devices  {1 / dp2:8.1f} steps/s")
  ratios = results[1]["overhead_ratios"]
  print(f"  overhead of the data-parallel path on 1 device: {dp1 / plain:.3f}x best-vs-best, "
        f"{ratios[1]:.3f}x median of 3 interleaved rounds (goal <= 1.05x)")
  print(f"  2 fake devices vs 1: {dp1 / dp2:.2f}x throughput (fake devices share the same cores)")


if __name__ == "__main__":
  main()
