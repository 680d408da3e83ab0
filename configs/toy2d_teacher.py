"""Toy 2-D teacher: an EDM denoiser (residual MLP) on a ring of 8 Gaussians.

Launch:
  python launch.py --config=configs/toy2d_teacher.py --workdir=runs/toy2d_teacher
  python launch.py --config=configs/toy2d_teacher.py:smoke --workdir=runs/toy2d_teacher_smoke

Other layouts: --config.data.mixture=bar (or grid, unequal, anisotropic).

Expected (2-core CPU): full ≈ 1 min for 4,000 steps; relative score error at σ = 0.5 below 0.1 and
mode-mass total variation below 0.05 (eval.json). ``:smoke`` finishes in seconds (quality not
meaningful).
"""

from fkdiff.training.config import default_config


def get_config(variant: str = ""):
  config = default_config()
  config.task = "teacher"
  config.data.name = "toy2d"
  config.data.mixture = "ring"
  config.data.batch_size = 512
  config.model.width = 128
  config.model.depth = 3
  config.training.num_steps = 4000
  config.training.log_every = 200
  config.training.checkpoint_every = 1000
  config.training.sample_every = 2000
  if variant == "smoke":
    config.training.num_steps = 60
    config.training.log_every = 20
    config.training.checkpoint_every = 30
    config.training.sample_every = 0
    config.training.quick_compile = True
    config.optim.warmup_steps = 10
    config.model.width = 32
    config.model.depth = 1
    config.data.batch_size = 128
    config.eval.num_samples = 512
    config.eval.sample_steps = 16
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}; use '' or 'smoke'.")
  return config
