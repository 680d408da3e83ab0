"""CelebA 64×64 with its 40 attributes (multi-label): EDM teacher and distilled energy.

Data: tfds ``celeb_a`` (its files go to ``<dir>/downloads/manual`` first, see the tfds
catalog; then ``tfds build celeb_a --data_dir=<dir>``), centre crop 140×140 → 64×64, flips; labels
are the 40 attributes (0/1, 2 = unspecified). Dropout: the whole label with 0.1 and each attribute
with 0.9, so that partial conditions such as "male" or "eyeglasses" alone (every other attribute
unspecified) are trained — the AND of the paper. Launch (with ``--config.data.data_dir=<dir>``):
  python launch.py --config=configs/celeba64.py:teacher --workdir=runs/celeba64_teacher
  python launch.py --config=configs/celeba64.py:distill --workdir=runs/celeba64_energy \\
      --config.teacher.workdir=runs/celeba64_teacher
  python launch.py --config=configs/celeba64.py:fid --workdir=runs/celeba64_fid \\
      --config.run_workdir=runs/celeba64_energy --config.inception_weights=<fid_inception_v3.npz>
Expected: no reference FID in EDM for CelebA 64; unconditional FID on the order of 2–3
for a full run is our expectation, not a measurement.

Model (EDM's DDPM++ at this resolution): width 128, channel_mult (1, 2, 2, 2), 4 blocks per level,
attention at 16×16 (as EDM's FFHQ/AFHQv2 64×64), attribute embedding. Dropout 0.1 in every
residual block for the teacher (none for the distilled student, ``common.as_distill``).
EDM has no CelebA config, so the rate is a choice, not tuned: 0.1 is the rate of DDPM (Ho et al.
2020) on CIFAR-10 and of the DDPM++/NCSN++ default configs (Song et al. 2021), and lies between
EDM's 0.05 for FFHQ-64 (70k images) and 0.13 for CIFAR-10 (50k): CelebA's 163k training images
argue for less, its 40-attribute conditioning (few images per attribute combination) for more.
Cost: batch 256, one 8-GPU node; 200M images would be 780k steps, the config trains 400k; a
distillation step costs 2.2× a teacher step (configs/common.py).
Variants (``teacher``, ``distill``, ``fid``) and their ``,smoke`` runs: configs/common.py.
"""

from fkdiff.training.config import config_module


def get_config(variant: str = "teacher"):
  return config_module("common.py", next_to=__file__).image_config(
      variant, dataset="celeb_a", batch_size=256, label_dropout=0.1, num_attributes=40,
      attribute_dropout=0.9, channel_mult=(1, 2, 2, 2),
      dropout=0.1,   # no EDM reference: see the module docstring.
      learning_rate=2e-4, warmup_steps=40000, ema_decay=0.9995, num_steps=400000,
      num_samples=256, distill_learning_rate=5e-5, fid_steps=40)
