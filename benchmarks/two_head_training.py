"""Training cost of a two-headed network vs teacher + distillation, to equal score error (issue 28).

  python benchmarks/two_head_training.py                          # ~6 minutes on a 2-core CPU
  python benchmarks/two_head_training.py --dataset ring --steps 6000,9000,12000

One dataset of the toy job (``configs/toy2d.py:full``'s settings): its teacher (3,000 steps) then
its plain distillation (1,500), and the two-headed network trained from the data with no teacher
(the job's time term λ = 0.1) for each budget of ``--steps``, each a whole run of that length
(its own learning-rate schedule) in a fresh directory. Every row: wall time of its training
stages (compilation included, as a user waits for it) and the trainer's final ``score_rel_error``
(the energy's, or the energy head's, Tweedie score against the exact score at σ = 0.5).
"""

import argparse
import os
import platform
import tempfile
import time

import jax

from fkdiff.experiments import common, toy2d
from fkdiff.training import train_and_evaluate
from fkdiff.training.config import config_module


def stage(config, workdir):
  """``(wall seconds, final score_rel_error)`` of one training stage."""
  start = time.perf_counter()
  results = train_and_evaluate(config, workdir)
  return time.perf_counter() - start, float(results["score_rel_error"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="ring", choices=("ring", "bar", "unequal"))
  parser.add_argument("--steps", default="9000,12000",
                      help="two-headed training budgets (comma-separated)")
  args = parser.parse_args()
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "toy2d.py")
  job = config_module(root).get_config("full")
  dataset = job.datasets[args.dataset]
  make = lambda base, task, t_dir="": toy2d._stage_config(base, task, dataset, t_dir)
  print(f"# {args.dataset}: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}")
  print("| stages | steps | wall s | score_rel_error |\n|---|---|---|---|")
  with tempfile.TemporaryDirectory() as tmp:
    t_dir, e_dir = os.path.join(tmp, "teacher"), os.path.join(tmp, "energy")
    t_time, _ = stage(make(job.teacher, "teacher"), t_dir)
    d_time, d_err = stage(make(job.distill, "distill", t_dir), e_dir)
    print(f"| teacher + distillation | {job.teacher.training.num_steps} + "
          f"{job.distill.training.num_steps} | {t_time + d_time:.0f} ({t_time:.0f} + "
          f"{d_time:.0f}) | {d_err:.4f} |", flush=True)
    for steps in (int(s) for s in args.steps.split(",")):
      job.two_head.num_steps = steps
      config = make(common.two_head_training(job.teacher, job.two_head), "two_head")
      h_time, h_err = stage(config, os.path.join(tmp, f"two_head_{steps}"))
      print(f"| two-headed, time term λ = {job.two_head.time_weight:g} | {steps} | "
            f"{h_time:.0f} | {h_err:.4f} |", flush=True)


if __name__ == "__main__":
  main()
