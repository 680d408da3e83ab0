"""Shared pieces of the config files, loaded by path:
``config_module("common.py", next_to=__file__)``.

``image_config`` is the EDM recipe of the paper-scale image datasets; ``cifar10.py``,
``celeba64.py``, ``afhqv2_64.py`` and ``ffhq64.py`` pass it only the values that make their dataset
and document launch commands, time and expected metrics. ``parse_variant`` and ``smoke_schedule``
serve every config file with a ``smoke`` variant (toy 2-D, digits, images).

Image variants: ``teacher``, ``distill`` (needs ``--config.teacher.workdir``) and ``fid`` (needs
``--config.run_workdir`` and ``--config.inception_weights``), each optionally followed by
``,smoke``: a tiny U-Net, two steps on a CPU, used by the tests with ``tfds.testing.mock_data`` /
a generated folder.
Accelerators: the global batch is split over all devices (data-parallel mesh; several hosts with
``--distributed``, docs/multihost.md).
Distillation is second-order autodiff through the U-Net. Measured on one H200 (cifar10, batch
128, float32, benchmarks/RESULTS.md): a distillation step costs 2.2× a teacher step (27 GiB); with
``jax.checkpoint`` (``energy.remat`` and ``model.unet.remat_blocks``, off by default) 4.4× for
21.6 GiB — turn it on only where memory is short.
"""

from fkdiff.training.config import default_config


def parse_variant(variant: str, tasks=("teacher", "distill", "fid")):
  """``'teacher'``, ``'distill,smoke'``, ``'smoke'`` (where ``''`` is one of ``tasks``) … →
  ``(task, smoke)``."""
  parts = [p for p in variant.split(",") if p]
  smoke = "smoke" in parts
  rest = [p for p in parts if p != "smoke"] or [""]
  if len(rest) != 1 or rest[0] not in tasks:
    forms = [f for t in tasks for f in (t, f"{t},smoke" if t else "smoke")]
    raise ValueError(f"Unknown variant {variant!r}; use one of {forms}.")
  return rest[0], smoke


def smoke_schedule(config, *, num_steps: int, checkpoint_every: int, log_every: int,
                   warmup_steps: int, batch_size: int, num_samples: int, sample_steps: int):
  """A run of seconds on a CPU: ``num_steps`` quickly compiled steps (compiling dominates), no
  periodic sample grids, a short final evaluation; the caller shrinks the model (quality
  meaningless)."""
  config.training.update(num_steps=num_steps, checkpoint_every=checkpoint_every,
                         log_every=log_every, sample_every=0, quick_compile=True)
  config.optim.warmup_steps = warmup_steps
  config.data.batch_size = batch_size
  config.eval.update(num_samples=num_samples, sample_steps=sample_steps)
  return config


def mlp_stages(stages, smoke: bool, width: int, depth: int, num_samples: int) -> None:
  """The vector jobs' (toy2d, standin) teacher and distillation stages: an MLP of ``width`` and
  ``depth`` (smoke: 32 × 1, quickly compiled), batches of 512 (128), no periodic sample
  figures, a final evaluation of ``num_samples`` (smoke: none)."""
  for stage in stages:
    stage.model.width, stage.model.depth = (32, 1) if smoke else (width, depth)
    stage.data.batch_size = 128 if smoke else 512
    stage.training.sample_every = 0
    stage.training.quick_compile = smoke
    stage.training.log_every = 20 if smoke else 500
    stage.eval.num_samples = 0 if smoke else num_samples
    stage.eval.sample_steps = 8 if smoke else 32
    stage.optim.warmup_steps = 10 if smoke else 100


def base_config(data_name: str):
  """Defaults for every image run: U-Net, σ_d = 0.5, image sample grids, no toy metrics."""
  config = default_config()
  config.data.name = data_name
  config.data.sigma_data = 0.5
  config.model.name = "unet"
  config.training.sigma_bins = (0.1, 1.0, 10.0)
  config.eval.sample_steps = 32
  return config


def shrink_for_smoke(config):
  """Seconds on a CPU: a tiny U-Net, a batch of 8, two quickly compiled steps, four samples (quality
  meaningless)."""
  config.model.update(width=8, depth=1, emb_dim=16)
  config.model.unet.channel_mult = (1,)     # one level: the cheapest compile.
  config.model.unet.update(attn_resolutions=(), num_heads=1, remat_blocks=False)
  return smoke_schedule(config, num_steps=2, checkpoint_every=2, log_every=1, warmup_steps=1,
                        batch_size=8, num_samples=4, sample_steps=4)


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


def image_config(variant: str, *, dataset: str, batch_size: int, channel_mult: tuple,
                 dropout: float, learning_rate: float, warmup_steps: int, ema_decay: float,
                 num_steps: int, num_samples: int, distill_learning_rate: float, fid_steps: int,
                 num_classes: int = 0, label_dropout: float = 0.0, num_attributes: int = 0,
                 attribute_dropout: float = 0.0):
  """Variant ``teacher`` / ``distill`` / ``fid`` (optionally ``,smoke``) of a paper-scale image run.

  Fixed here (EDM's DDPM++ recipe): U-Net width 128 with 4 residual blocks per level, embedding
  width 128, attention at 16×16, horizontal flips, a constant learning rate after warm-up, a log
  line every 500 steps, a checkpoint every 5,000 and a sample grid every 20,000; distillation
  (:func:`as_distill`) runs 50,000 steps. The arguments are the dataset's own values: its
  ``data.name``, global batch, ``model.unet.channel_mult`` and teacher dropout rate, the teacher's
  optimiser (peak rate, warm-up, EMA decay) and length, the final evaluation's sample count, the
  distillation learning rate, the FID job's Heun levels, and its conditioning (classes,
  multi-label attributes and their dropout rates; none by default).
  """
  task, smoke = parse_variant(variant)
  if task == "fid":
    return fid_config(num_steps=fid_steps, smoke=smoke)
  config = base_config(dataset)
  config.task = "teacher"
  config.data.update(batch_size=batch_size, random_flip=True, label_dropout=label_dropout,
                     attribute_dropout=attribute_dropout)
  config.model.update(width=128, depth=4, emb_dim=128, num_classes=num_classes)
  config.model.unet.update(channel_mult=channel_mult, attn_resolutions=(16,),
                           num_attributes=num_attributes, dropout=dropout)
  config.optim.update(learning_rate=learning_rate, warmup_steps=warmup_steps, decay="constant",
                      ema_decay=ema_decay)
  config.training.update(num_steps=num_steps, log_every=500, checkpoint_every=5000,
                         sample_every=20000)
  config.eval.num_samples = num_samples
  if task == "distill":
    as_distill(config, learning_rate=distill_learning_rate, num_steps=50000)
  if smoke:
    shrink_for_smoke(config)
  return config
