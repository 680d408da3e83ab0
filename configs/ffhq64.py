"""FFHQ 64×64, unconditional: EDM teacher and distilled energy.

Variants: ``teacher``, ``distill``, ``fid`` (each optionally ``,smoke``: a tiny U-Net, two steps on
a CPU, used by the tests with ``tfds.testing.mock_data`` / a generated folder). Launch:
  python launch.py --config=configs/ffhq64.py:teacher --workdir=runs/ffhq64_teacher \\
      --config.data.image_dir=<ffhq dir>
  python launch.py --config=configs/ffhq64.py:distill --workdir=runs/ffhq64_energy \\
      --config.data.image_dir=<ffhq dir> \\
      --config.teacher.workdir=runs/ffhq64_teacher
  python launch.py --config=configs/ffhq64.py:fid --workdir=runs/ffhq64_fid \\
      --config.run_workdir=runs/ffhq64_energy --config.inception_weights=<fid_inception_v3.npz>
Data: a folder ``<dir>/train/ffhq/*.png`` (70k images; resize to 64×64 first), read with
tfds ImageFolder, flips, no labels.

Model (EDM's DDPM++ at this resolution): width 128, channel_mult (1, 2, 2, 2), 4 blocks per level,
attention at 16×16; dropout 0.05 in every residual block (EDM's FFHQ-64 rate) for the teacher,
none for the distilled student (``image_common.as_distill``).
Accelerators: the global batch is split over all devices (data-parallel mesh; several hosts with
``--distributed``, docs/multihost.md). Batch 256: one 8-GPU node; EDM trains 200M images (780k
steps).
Distillation is second-order autodiff through the U-Net. Measured on one H200 (cifar10, batch
128, float32, benchmarks/RESULTS.md): a distillation step costs 2.2× a teacher step (27 GiB); with
``jax.checkpoint`` (``energy.remat`` and ``model.unet.remat_blocks``, off by default) 4.4× for
21.6 GiB — turn it on only where memory is short.
Expected: EDM's FFHQ-64 FID is 2.39 (79-step Heun) for a full run; not measured here.
"""

from fkdiff.training.config import config_module


def _common():
  return config_module("image_common.py", next_to=__file__)


def get_config(variant: str = "teacher"):
  common = _common()
  task, smoke = common.parse_variant(variant)
  if task == "fid":
    return common.fid_config(num_steps=40, smoke=smoke)
  config = common.base_config('ffhq64')
  config.task = "teacher"
  config.data.batch_size = 256
  config.data.random_flip = True
  config.model.width = 128
  config.model.depth = 4
  config.model.emb_dim = 128
  config.model.unet.channel_mult = (1, 2, 2, 2)
  config.model.unet.attn_resolutions = (16,)
  config.model.unet.dropout = 0.05      # EDM's FFHQ-64 rate.
  config.optim.learning_rate = 2e-4
  config.optim.warmup_steps = 40000
  config.optim.decay = "constant"
  config.optim.ema_decay = 0.9995
  config.training.num_steps = 780000
  config.training.log_every = 500
  config.training.checkpoint_every = 5000
  config.training.sample_every = 20000
  config.eval.num_samples = 256
  if task == "distill":
    common.as_distill(config, learning_rate=5e-05, num_steps=50000)
  if smoke:
    common.shrink_for_smoke(config)
  return config
