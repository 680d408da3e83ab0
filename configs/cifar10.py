"""CIFAR-10 (32×32), class-conditional: EDM teacher and distilled energy.

Data: tfds ``cifar10`` (prepare once: ``tfds build cifar10 --data_dir=<dir>``, then
``--config.data.data_dir=<dir>``); [-1, 1], horizontal flips, 10 classes, label dropout 0.1.
Launch the teacher, its distilled energy, then the energy's FID:
  python launch.py --config=configs/cifar10.py:teacher --workdir=runs/cifar10_teacher
  python launch.py --config=configs/cifar10.py:distill --workdir=runs/cifar10_energy \\
      --config.teacher.workdir=runs/cifar10_teacher
  python launch.py --config=configs/cifar10.py:fid --workdir=runs/cifar10_fid \\
      --config.run_workdir=runs/cifar10_energy --config.inception_weights=<fid_inception_v3.npz>
Expected: a full-length teacher should approach EDM's conditional CIFAR-10 FID (1.79 with
35-step Heun, Karras et al. 2022); the distilled energy's FID is not measured here yet.

Model (EDM's DDPM++ at this resolution): width 128, channel_mult (2, 2, 2), 4 blocks per level,
attention at 16×16, 53.6M parameters; dropout 0.13 in every residual block (EDM's rate) for the
teacher, none for the distilled student (``common.as_distill``).
Cost: batch 512 as in EDM: one 8-GPU A100/H100 node (or a v4-32 TPU slice); EDM trains 200M images
(390k steps here). Measured teacher throughput: 1,300 img/s on one H200 (batch 128, float32),
i.e. ≈ 42 h on one H200 for the full run; a distillation step costs 2.2× a teacher step
(configs/common.py).
Variants (``teacher``, ``distill``, ``fid``) and their ``,smoke`` runs: configs/common.py.
"""

from fkdiff.training.config import config_module


def get_config(variant: str = "teacher"):
  return config_module("common.py", next_to=__file__).image_config(
      variant, dataset="cifar10", batch_size=512, num_classes=10, label_dropout=0.1,
      channel_mult=(2, 2, 2), dropout=0.13,   # EDM's CIFAR-10 rate.
      learning_rate=1e-3, warmup_steps=20000,
      ema_decay=0.9993,   # EMA half-life ≈ 0.5M images at batch 512.
      num_steps=390000, num_samples=1024, distill_learning_rate=1e-4, fid_steps=18)
