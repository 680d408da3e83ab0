"""Toy 2-D teacher: an EDM denoiser (residual MLP) on a ring of 8 Gaussians.

Launch:
  python launch.py --config=configs/toy2d_teacher.py --workdir=runs/toy2d_teacher
  python launch.py --config=configs/toy2d_teacher.py:smoke --workdir=runs/toy2d_teacher_smoke

Other layouts: --config.data.mixture=bar (or grid, unequal, anisotropic).

Expected (2-core CPU): full ≈ 1 min for 4,000 steps; relative score error at σ = 0.5 below 0.1 and
mode-mass total variation below 0.05 (eval.json). ``:smoke`` finishes in seconds (quality not
meaningful).
"""

from fkdiff.training.config import config_module, default_config


def get_config(variant: str = ""):
  common = config_module("common.py", next_to=__file__)
  _, smoke = common.parse_variant(variant, tasks=("",))
  config = default_config()
  config.task = "teacher"
  config.data.update(name="toy2d", mixture="ring", batch_size=512)
  config.model.update(width=128, depth=3)
  config.training.update(num_steps=4000, log_every=200, checkpoint_every=1000, sample_every=2000)
  if smoke:
    config.model.update(width=32, depth=1)
    common.smoke_schedule(config, num_steps=60, checkpoint_every=30, log_every=20, warmup_steps=10,
                          batch_size=128, num_samples=512, sample_steps=16)
  return config
