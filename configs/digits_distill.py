"""Class-conditional energy distilled from the digits teacher (conservative projection) — CPU.

First the teacher, then the energy (same data and architecture; h starts from the teacher):
  python launch.py --config=configs/digits_teacher.py --workdir=runs/digits_teacher
  python launch.py --config=configs/digits_distill.py --workdir=runs/digits_energy \\
      --config.teacher.workdir=runs/digits_teacher
Smoke (use the teacher's :smoke run):
  python launch.py --config=configs/digits_distill.py:smoke --workdir=runs/digits_energy_smoke \\
      --config.teacher.workdir=runs/digits_teacher_smoke

The same label dropout as the teacher trains ``E(x, σ | c)`` and ``E(x, σ | ∅)`` in one network
(the teacher sees the same dropped labels). Energy training is second-order autodiff through the
U-Net: expect a few times the teacher's time per step (not yet measured); 3,000 steps. To confirm
on a full run: the logged ``score_rel_err2`` to the teacher falls to a few percent.
"""

from fkdiff.training.config import config_module


def get_config(variant: str = ""):
  common = config_module("common.py", next_to=__file__)
  _, smoke = common.parse_variant(variant, tasks=("",))
  config = config_module("digits_teacher.py", next_to=__file__).get_config(variant)
  config = common.as_distill(config, learning_rate=2e-4, num_steps=2 if smoke else 3000)
  config.optim.warmup_steps = 1 if smoke else 100
  return config
