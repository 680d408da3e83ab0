"""Toy 2-D energy distillation: a frozen teacher's denoiser projected onto a conservative energy.

First train a teacher, then distil it (same data and architecture):
  python launch.py --config=configs/toy2d_teacher.py --workdir=runs/toy2d_teacher
  python launch.py --config=configs/toy2d_distill.py --workdir=runs/toy2d_energy \\
      --config.teacher.workdir=runs/toy2d_teacher
Smoke (seconds; use the teacher's :smoke run and variant):
  python launch.py --config=configs/toy2d_distill.py:smoke --workdir=runs/toy2d_energy_smoke \\
      --config.teacher.workdir=runs/toy2d_teacher_smoke

Variants: ``scratch`` trains the same energy from scratch with denoising score matching (the
baseline; no teacher needed). Expected (2-core CPU): full ≈ 2 min for 2,000 steps, relative score
error at σ = 0.5 within a few percent of the teacher's (eval.json); the log shows the score error
to the teacher per σ bin and the teacher's non-conservative part (``teacher_asymmetry``).
"""

from fkdiff.training.config import config_module


def _teacher_config(variant):
  return config_module("toy2d_teacher.py", next_to=__file__).get_config(variant)


def get_config(variant: str = ""):
  task, smoke = config_module("common.py", next_to=__file__).parse_variant(
      variant, tasks=("", "scratch"))
  scratch = task == "scratch"
  config = _teacher_config("smoke" if smoke else "")   # same data and architecture.
  config.task = "energy_dsm" if scratch else "distill"
  config.training.num_steps = 60 if smoke else 2000
  config.training.checkpoint_every = 30 if smoke else 1000
  config.training.sample_every = 0 if smoke else 1000
  config.optim.learning_rate = 1e-3 if scratch else 3e-4
  config.optim.warmup_steps = 10 if smoke else 100
  config.teacher.workdir = ""   # required for 'distill': --config.teacher.workdir=<teacher run>
  return config
