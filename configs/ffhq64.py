"""FFHQ 64×64, unconditional: EDM teacher and distilled energy.

Data: a folder ``<dir>/train/ffhq/*.png`` (70k images; resize to 64×64 first), read with
tfds ImageFolder, flips, no labels; ``DATA=--config.data.image_dir=<dir>`` below. Launch:
  python launch.py --config=configs/ffhq64.py:teacher --workdir=runs/ffhq64_teacher $DATA
  python launch.py --config=configs/ffhq64.py:distill --workdir=runs/ffhq64_energy $DATA \\
      --config.teacher.workdir=runs/ffhq64_teacher
  python launch.py --config=configs/ffhq64.py:fid --workdir=runs/ffhq64_fid \\
      --config.run_workdir=runs/ffhq64_energy --config.inception_weights=<fid_inception_v3.npz>
Expected: EDM's FFHQ-64 FID is 2.39 (79-step Heun) for a full run; not measured here.

Model (EDM's DDPM++ at this resolution): width 128, channel_mult (1, 2, 2, 2), 4 blocks per level,
attention at 16×16; dropout 0.05 in every residual block (EDM's FFHQ-64 rate) for the teacher,
none for the distilled student (``common.as_distill``).
Cost: batch 256, one 8-GPU node; EDM trains 200M images (780k steps); a distillation step costs
2.2× a teacher step (configs/common.py).
Variants (``teacher``, ``distill``, ``fid``) and their ``,smoke`` runs: configs/common.py.
"""

from fkdiff.training.config import config_module


def get_config(variant: str = "teacher"):
  return config_module("common.py", next_to=__file__).image_config(
      variant, dataset="ffhq64", batch_size=256,   # unconditional: no labels.
      channel_mult=(1, 2, 2, 2), dropout=0.05,   # EDM's FFHQ-64 rate.
      learning_rate=2e-4, warmup_steps=40000, ema_decay=0.9995, num_steps=780000,
      num_samples=256, distill_learning_rate=5e-5, fid_steps=40)
