"""Class-conditional EDM teacher (small U-Net) on scikit-learn's 8×8 digits — runs on a CPU.

The digits are a custom tfds builder prepared offline on first use (fkdiff.data.images).
Launch:
  python launch.py --config=configs/digits_teacher.py --workdir=runs/digits_teacher
  python launch.py --config=configs/digits_teacher.py:smoke --workdir=runs/digits_teacher_smoke

Model: U-Net width 32, levels (8×8, 4×4), 2 blocks per level, attention at 4×4, class labels
with a null token (10 = ∅), classifier-free label dropout 0.1. Data 8×8×1 in [-1, 1], no flips
(digits are not mirror-symmetric). Expected (2-core CPU): not yet measured end to end; compiling
the step takes about a minute on a loaded 2-core machine. Quality targets to confirm: the loss
falls steadily and the samples in ``samples/`` look like digits.
``:smoke`` trains two steps of a tiny one-level U-Net (≈ 1 min, mostly compilation).
"""

from fkdiff.training.config import config_module


def get_config(variant: str = ""):
  common = config_module("common.py", next_to=__file__)
  _, smoke = common.parse_variant(variant, tasks=("",))
  config = common.base_config("digits")
  config.task = "teacher"
  config.data.update(batch_size=128, label_dropout=0.1)
  config.model.update(width=32, depth=2, emb_dim=64, num_classes=10)
  config.model.unet.update(channel_mult=(1, 2), attn_resolutions=(4,))
  config.optim.update(learning_rate=1e-3, warmup_steps=200, ema_decay=0.999)
  config.training.update(num_steps=10000, log_every=100, checkpoint_every=1000, sample_every=2000)
  config.eval.num_samples = 256
  if smoke:
    common.shrink_for_smoke(config)
  return config
