"""AFHQv2 64×64 (cat / dog / wild as classes): EDM teacher and distilled energy.

Data: a folder ``<dir>/train/{cat,dog,wild}/*.png`` (AFHQv2 as distributed by StarGAN v2;
resize to 64×64 first, e.g. EDM's ``dataset_tool.py``), read with tfds ImageFolder, flips, 3
classes with label dropout 0.1; ``DATA=--config.data.image_dir=<dir>`` below. Launch:
  python launch.py --config=configs/afhqv2_64.py:teacher --workdir=runs/afhqv2_64_teacher $DATA
  python launch.py --config=configs/afhqv2_64.py:distill --workdir=runs/afhqv2_64_energy $DATA \\
      --config.teacher.workdir=runs/afhqv2_64_teacher
  python launch.py --config=configs/afhqv2_64.py:fid --workdir=runs/afhqv2_64_fid \\
      --config.run_workdir=runs/afhqv2_64_energy --config.inception_weights=<fid_inception_v3.npz>
Expected: EDM's unconditional AFHQv2-64 FID is 1.96 (79-step Heun) for a full run; not
measured here.

Model (EDM's DDPM++ at this resolution): width 128, channel_mult (1, 2, 2, 2), 4 blocks per level,
attention at 16×16; dropout 0.25 in every residual block, EDM's AFHQv2 rate (its README:
``--dropout=0.25``; 15k images overfit easily), for the teacher; none for the distilled student
(``common.as_distill``).
Cost: batch 256, one 8-GPU node; EDM trains 200M images (780k steps); a distillation step costs
2.2× a teacher step (configs/common.py).
Variants (``teacher``, ``distill``, ``fid``) and their ``,smoke`` runs: configs/common.py.
"""

from fkdiff.training.config import config_module


def get_config(variant: str = "teacher"):
  return config_module("common.py", next_to=__file__).image_config(
      variant, dataset="afhqv2_64", batch_size=256, num_classes=3, label_dropout=0.1,
      channel_mult=(1, 2, 2, 2), dropout=0.25,   # EDM's AFHQv2-64 rate (FFHQ-64: 0.05).
      learning_rate=2e-4, warmup_steps=40000, ema_decay=0.9995, num_steps=780000,
      num_samples=256, distill_learning_rate=5e-5, fid_steps=40)
