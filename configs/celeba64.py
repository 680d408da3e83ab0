"""CelebA 64×64 with its 40 attributes (multi-label): EDM teacher and distilled energy.

Variants: ``teacher``, ``distill``, ``fid`` (each optionally ``,smoke``: a tiny U-Net, two steps on
a CPU, used by the tests with ``tfds.testing.mock_data`` / a generated folder). Launch:
  python launch.py --config=configs/celeba64.py:teacher --workdir=runs/celeba64_teacher
  python launch.py --config=configs/celeba64.py:distill --workdir=runs/celeba64_energy \\
      --config.teacher.workdir=runs/celeba64_teacher
  python launch.py --config=configs/celeba64.py:fid --workdir=runs/celeba64_fid \\
      --config.run_workdir=runs/celeba64_energy --config.inception_weights=<fid_inception_v3.npz>
Data: tfds ``celeb_a`` (its files go to ``<dir>/downloads/manual`` first, see the tfds
catalog; then ``tfds build celeb_a --data_dir=<dir>`` and ``--config.data.data_dir=<dir>``), centre
crop
140×140 → 64×64, flips; labels are the 40 attributes (0/1, 2 = unspecified). Dropout: the whole
label with 0.1 and each attribute with 0.9, so that partial conditions such as "male" or
"eyeglasses" alone (every other attribute unspecified) are trained — the AND of the paper.

Model (EDM's DDPM++ at this resolution): width 128, channel_mult (1, 2, 2, 2), 4 blocks per level,
attention at 16×16 (as EDM's FFHQ/AFHQv2 64×64), attribute embedding. Dropout 0.1 in every
residual block for the teacher (none for the distilled student, ``image_common.as_distill``).
EDM has no CelebA config, so the rate is a choice, not tuned: 0.1 is the rate of DDPM (Ho et al.
2020) on CIFAR-10 and of the DDPM++/NCSN++ default configs (Song et al. 2021), and lies between
EDM's 0.05 for FFHQ-64 (70k images) and 0.13 for CIFAR-10 (50k): CelebA's 163k training images
argue for less, its 40-attribute conditioning (few images per attribute combination) for more.
Accelerators: the global batch is split over all devices (data-parallel mesh; several hosts with
``--distributed``, docs/multihost.md). Batch 256: one 8-GPU node; 200M images would be 780k steps,
the
config trains 400k.
Distillation is second-order autodiff through the U-Net. Measured on one H200 (cifar10, batch
128, float32, benchmarks/RESULTS.md): a distillation step costs 2.2× a teacher step (27 GiB); with
``jax.checkpoint`` (``energy.remat`` and ``model.unet.remat_blocks``, off by default) 4.4× for
21.6 GiB — turn it on only where memory is short.
Expected: no reference FID in EDM for CelebA 64; unconditional FID on the order of 2–3
for a full run is our expectation, not a measurement.
"""

from fkdiff.training.config import config_module


def _common():
  return config_module("image_common.py", next_to=__file__)


def get_config(variant: str = "teacher"):
  common = _common()
  task, smoke = common.parse_variant(variant)
  if task == "fid":
    return common.fid_config(num_steps=40, smoke=smoke)
  config = common.base_config('celeb_a')
  config.task = "teacher"
  config.data.batch_size = 256
  config.data.random_flip = True
  config.data.label_dropout = 0.1
  config.data.attribute_dropout = 0.9
  config.model.width = 128
  config.model.depth = 4
  config.model.emb_dim = 128
  config.model.unet.channel_mult = (1, 2, 2, 2)
  config.model.unet.attn_resolutions = (16,)
  config.model.unet.num_attributes = 40
  config.model.unet.dropout = 0.1       # no EDM reference: see the module docstring.
  config.optim.learning_rate = 2e-4
  config.optim.warmup_steps = 40000
  config.optim.decay = "constant"
  config.optim.ema_decay = 0.9995
  config.training.num_steps = 400000
  config.training.log_every = 500
  config.training.checkpoint_every = 5000
  config.training.sample_every = 20000
  config.eval.num_samples = 256
  if task == "distill":
    common.as_distill(config, learning_rate=5e-05, num_steps=50000)
  if smoke:
    common.shrink_for_smoke(config)
  return config
