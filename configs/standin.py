"""Learned energies on high-dimensional stand-ins with exact answers (fkdiff/experiments/standin.py).

Trains an MLP teacher on samples of each closed-form image-spectrum mixture over ``dim`` numbers
(a three-mode layout for tempering at β = 2, two two-mode layouts for their product, and a
six-component layout with two attributes whose class-conditional teacher gives the AND
p(x|a) p(x|b) / p(x)), distils each into an energy (plain, and time-consistent at λ = 0.1),
then samples every problem with
``smc_sample``'s default, exact-ratio SMC and the naive sampler on the learned energies and on
the same mixtures' exact energies, and scores every row against the exact target.

Variants:
  ''      d = 64 (≈ 30 min on 2 CPU cores); ``--config.dim=256`` for d = 256.
  smoke   d = 16, tiny models, 2 runs per row (≈ 2 min): a pipeline check.

Launch:
  python launch.py --config=configs/standin.py --workdir=runs/standin
  python launch.py --config=configs/standin.py --config.dim=256 --workdir=runs/standin_256
  python launch.py --config=configs/standin.py:smoke --workdir=runs/standin_smoke

Outputs in the workdir: results.json / results.txt (problem × method × energy → largest mode-mass
error, variance ratio, their standard errors and the distance to the exact energies' row; every
learned energy's score error, inter-mode level error and heat-residual spread per σ), teachers/,
energies/, energies_consistent/ (stage runs, reused on relaunch), TensorBoard scalars.
Measured figures: docs/experiments.md ("Learned energies on high-dimensional stand-ins").
"""

from fkdiff.experiments.standin import job_config
from fkdiff.training.config import config_module

VARIANTS = ("", "smoke")


def get_config(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r}; use one of {VARIANTS}.")
  smoke = variant == "smoke"
  c = job_config()
  # No stage evaluations: the job scores its energies itself.
  config_module("common.py", next_to=__file__).mlp_stages((c.teacher, c.distill), smoke, 256, 3,
                                                          0)
  c.teacher.optim.learning_rate = 2e-3
  c.teacher.training.num_steps = 60 if smoke else 3000
  c.teacher.training.checkpoint_every = 60 if smoke else 1000
  c.distill.optim.learning_rate = 3e-4
  c.distill.training.num_steps = 60 if smoke else 1500
  c.distill.training.checkpoint_every = 60 if smoke else 1000
  c.consistent.num_steps = 60 if smoke else 3000
  if smoke:
    c.dim = 16
    c.sampler.update(num_steps=16, num_particles=64)
    c.eval.update(runs=2, points=16)
  return c
