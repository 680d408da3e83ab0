"""CIFAR-10 (32×32), class-conditional: EDM teacher and distilled energy.

Variants: ``teacher``, ``distill``, ``fid`` (each optionally ``,smoke``: a tiny U-Net, two steps on
a CPU, used by the tests with ``tfds.testing.mock_data`` / a generated folder). Launch:
  python launch.py --config=configs/cifar10.py:teacher --workdir=runs/cifar10_teacher
  python launch.py --config=configs/cifar10.py:distill --workdir=runs/cifar10_energy \\
      --config.teacher.workdir=runs/cifar10_teacher
  python launch.py --config=configs/cifar10.py:fid --workdir=runs/cifar10_fid \\
      --config.run_workdir=runs/cifar10_energy --config.inception_weights=<fid_inception_v3.npz>
Data: tfds ``cifar10`` (prepare once: ``tfds build cifar10 --data_dir=<dir>``, then
``--config.data.data_dir=<dir>``); [-1, 1], horizontal flips, 10 classes, label dropout 0.1.

Model (EDM's DDPM++ at this resolution): width 128, channel_mult (2, 2, 2), 4 blocks per level,
attention at 16×16, 53.6M parameters; dropout 0.13 in every residual block (EDM's rate) for the
teacher, none for the distilled student (``image_common.as_distill``).
Accelerators: the global batch is split over all devices (data-parallel mesh; several hosts with
``--distributed``, docs/multihost.md). Batch 512 as in EDM: one 8-GPU A100/H100 node (or a v4-32
TPU slice); EDM trains
200M images (390k steps here). Measured teacher throughput: 1,300 img/s on one H200 (batch 128,
float32), i.e. ≈ 42 h on one H200 for the full run.
Distillation is second-order autodiff through the U-Net. Measured on one H200 (cifar10, batch
128, float32, benchmarks/RESULTS.md): a distillation step costs 2.2× a teacher step (27 GiB); with
``jax.checkpoint`` (``energy.remat`` and ``model.unet.remat_blocks``, off by default) 4.4× for
21.6 GiB — turn it on only where memory is short.
Expected: a full-length teacher should approach EDM's conditional CIFAR-10 FID (1.79 with
35-step Heun, Karras et al. 2022); the distilled energy's FID is not measured here yet.
"""

from fkdiff.training.config import config_module


def _common():
  return config_module("image_common.py", next_to=__file__)


def get_config(variant: str = "teacher"):
  common = _common()
  task, smoke = common.parse_variant(variant)
  if task == "fid":
    return common.fid_config(num_steps=18, smoke=smoke)
  config = common.base_config('cifar10')
  config.task = "teacher"
  config.data.batch_size = 512
  config.data.random_flip = True
  config.data.label_dropout = 0.1
  config.model.width = 128
  config.model.depth = 4
  config.model.emb_dim = 128
  config.model.num_classes = 10
  config.model.unet.channel_mult = (2, 2, 2)
  config.model.unet.attn_resolutions = (16,)
  config.model.unet.dropout = 0.13      # EDM's CIFAR-10 rate.
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 20000
  config.optim.decay = "constant"
  config.optim.ema_decay = 0.9993       # EMA half-life ≈ 0.5M images at batch 512.
  config.training.num_steps = 390000
  config.training.log_every = 500
  config.training.checkpoint_every = 5000
  config.training.sample_every = 20000
  config.eval.num_samples = 1024
  if task == "distill":
    common.as_distill(config, learning_rate=0.0001, num_steps=50000)
  if smoke:
    common.shrink_for_smoke(config)
  return config
