"""Shared pieces of the image configs (loaded by path from the other config files).

``image_config(dataset, task, smoke)`` returns a complete training config; the per-dataset files
(``digits_teacher.py``, ``cifar10.py``, ``celeba64.py``, ``afhqv2_64.py``, ``ffhq64.py``) set the
paper-scale sizes and document launch commands, time and expected metrics.
"""

from fkdiff.training.config import default_config


def base_config(data_name: str):
  """Defaults for every image run: U-Net, σ_d = 0.5, image sample grids, no toy metrics."""
  config = default_config()
  config.data.name = data_name
  config.data.sigma_data = 0.5
  config.model.name = "unet"
  config.training.sigma_bins = (0.1, 1.0, 10.0)
  config.eval.sample_steps = 32
  return config


def parse_variant(variant: str, tasks=("teacher", "distill", "fid")):
  """``'teacher'``, ``'distill'``, ``'fid'``, ``'teacher,smoke'`` … → ``(task, smoke)``."""
  parts = [p for p in variant.split(",") if p]
  smoke = "smoke" in parts
  rest = [p for p in parts if p != "smoke"]
  if len(rest) != 1 or rest[0] not in tasks:
    raise ValueError(f"Unknown variant {variant!r}; use one of {list(tasks)}, optionally "
                     "followed by ',smoke'.")
  return rest[0], smoke


def as_distill(config, learning_rate: float, num_steps: int):
  """The distillation config of a teacher config: same data and architecture, no dropout.

  Rematerialisation stays off: on an H200 (cifar10) it cut a step's memory only from 27 to
  21.6 GiB for twice the step time. ``energy.remat`` / ``model.unet.remat_blocks`` switch it on
  (the parameter tree is unchanged: the teacher's weights still fit).

  Dropout [choice]: off (``model.unet.dropout = 0``) for the student, whatever the teacher's rate
  (it is compute-only: the teacher's weights fit either way; the teacher itself is always
  evaluated without dropout). Dropout regularises DSM against memorising the finite training set
  through its noisy targets ``x_0``; the distillation target is the teacher's deterministic,
  already regularised denoiser, so that pressure is much weaker, and with dropout the loss would
  fit the student's thinned networks (plus their variance) rather than project the teacher onto
  the deterministic student that is sampled from. EDM never distilled, so there is no reference
  rate; ``--config.model.unet.dropout=<rate>`` turns it on.
  """
  config.task = "distill"
  config.model.unet.dropout = 0.0
  config.optim.learning_rate = learning_rate
  config.training.num_steps = num_steps
  config.optim.warmup_steps = 1000
  config.teacher.workdir = ""   # required: --config.teacher.workdir=<teacher run>
  config.teacher.log_asymmetry = False   # an extra jvp+vjp per example; enable to inspect.
  return config


def fid_config(num_steps: int, smoke: bool):
  """The FID job (:mod:`fkdiff.experiments.fid`) with EDM's Heun levels for this resolution;
  ``run_workdir`` and ``inception_weights`` are set on the command line."""
  from fkdiff.experiments.fid import job_config
  config = job_config()
  config.sampler.num_steps = num_steps
  if smoke:   # seconds on a CPU (Inception at 299×299 dominates).
    config.num_samples, config.batch_size, config.save_every = 8, 4, 1
    config.reference.num_images = 8
    config.sampler.num_steps = 2
    config.grid_samples = 8
  return config


def shrink_for_smoke(config):
  """Seconds on a CPU: a tiny U-Net, a batch of 8, two quickly compiled steps, four samples (quality
  meaningless)."""
  config.model.width = 8
  config.model.depth = 1
  config.model.emb_dim = 16
  config.model.unet.channel_mult = (1,)     # one level: the cheapest compile.
  config.model.unet.attn_resolutions = ()
  config.model.unet.num_heads = 1
  config.model.unet.remat_blocks = False
  config.data.batch_size = 8
  config.optim.warmup_steps = 1
  config.training.num_steps = 2
  config.training.log_every = 1
  config.training.checkpoint_every = 2
  config.training.sample_every = 0
  config.training.quick_compile = True   # two steps: compiling is all the cost.
  config.eval.num_samples = 4
  config.eval.sample_steps = 4
  return config
