"""Digits end to end on a CPU: conditional low temperature and AND, SMC vs CFG vs plain sampling.

Two class-conditional U-Net teachers on scikit-learn's 8×8 digits (the digit; the attribute
"heavy stroke"), each distilled into an energy, a small judge classifier, then
(1) ``∝ p(x|c)^β`` for every digit and β ∈ {1, 2, 4} by SMC with score-only weights
(``smc_score``), with exact-ratio weights (``smc_ratio``) and with ``smc_sample``'s default
(``smc_default``), the naive β-scaled score and CFG
with weight β; (2) digit c AND heavy stroke by the three SMC methods and the CFG-style score sum
(see fkdiff/experiments/digits.py for the targets and metrics). Every method draws
``sampler.num_samples`` samples per condition; SMC draws each from its own independent run of
``sampler.particles_per_run`` particles (``sampler.smc_mode = 'runs'``; ``'set'``: one run of
``num_samples`` particles, resampled), and every row reports its NFE per sample.

Launch:
  python launch.py --config=configs/digits.py --workdir=runs/digits
  python launch.py --config=configs/digits.py:smoke --workdir=runs/digits_smoke
  python launch.py --config=configs/digits.py:demo --workdir=runs/digits_demo   # notebook models
  cp -r colabs/digits_demo runs/digits_two_head &&
    python launch.py --config=configs/digits.py:two_head --workdir=runs/digits_two_head

Outputs in the workdir: results.json / results.txt, sample grids (one row per condition),
teachers/, energies/, classifier/ (reused on relaunch), TensorBoard scalars.
Expected time on 2 CPU cores: training ≈ 31 min (teachers ≈ 14 steps/s, distillation ≈ 3.5
steps/s; measured on a shared machine); sampling: an SMC row costs more than ``particles_per_run``
times a reverse-diffusion row of as many samples (the one-set job of 2026-11-25 sampled in 40 min;
with 8 particles per run, estimated from the demo models' rows and not measured, 1.5–3 h for all
rows: reduce ``num_samples`` or the ``methods`` for a quicker look); :smoke ≈ 2 min (quality
meaningless). Measured figures: docs/experiments.md, benchmarks/RESULTS.md ("Digits SMC, one
sample per independent run", on the demo models).
"""

from fkdiff.experiments.digits import job_config
from fkdiff.training.config import config_module


def get_config(variant: str = ""):
  variants = ("", "smoke", "demo", "consistent", "two_head")
  if variant not in variants:
    raise ValueError(f"Unknown variant {variant!r}; use one of {variants}.")
  if variant == "consistent":
    return _consistent()
  if variant == "two_head":
    return _two_head()
  if variant == "demo":
    return _demo()
  smoke = variant == "smoke"
  c = job_config()
  # smc_score's quadrature: the left rule, with which the measured digits figures were made
  # (docs/experiments.md); the jobs' shared default is the trapezoid.
  c.sampler.score_rule = "left"
  c.teacher = config_module("digits_teacher.py", next_to=__file__).get_config(variant)
  c.distill = config_module("digits_distill.py", next_to=__file__).get_config(variant)
  c.distill.teacher.workdir = "set-by-the-job"
  for stage in (c.teacher, c.distill):
    stage.training.sample_every = 0
    if smoke:   # the job samples the models itself; the stages' own final samples only cost.
      stage.eval.num_samples = 0
    if not smoke:   # CPU-sized: ~14 teacher steps/s, ~3 distillation steps/s on 2 cores.
      stage.model.width, stage.model.depth, stage.data.batch_size = 16, 1, 64
      stage.training.log_every = 100
  if not smoke:
    c.teacher.training.num_steps = 3000
    c.teacher.optim.warmup_steps = 100
    c.distill.training.num_steps = 800
    c.distill.training.checkpoint_every = 400
    c.distill.optim.warmup_steps = 50
  if smoke:
    c.low_temperature.update(classes=(0, 1, 7), betas=(1.0, 3.0))
    c.conjunction.classes = (0, 7)
    c.sampler.update(num_samples=8, particles_per_run=4, num_steps=6)
    c.classifier.num_steps = 100
    c.eval.grid_samples = 4
  return c


def _demo():
  """The models the digits notebook ships (colabs/digits_demo): the full run's training with the
  smoke run's one-level U-Net (width 16), whose samplers compile in seconds; 32 samples per
  condition (SMC: 32 runs of 8 particles) × 32 levels. Retrain them with
  ``python launch.py --config=configs/digits.py:demo --workdir=runs/digits_demo`` (≈ 15 min)."""
  c = get_config()
  for stage in (c.teacher, c.distill):
    stage.model.width, stage.model.emb_dim = 16, 16
    stage.model.unet.channel_mult, stage.model.unet.attn_resolutions = (1,), ()
    stage.model.unet.remat_blocks = False
    stage.training.keep_checkpoints = 1
  c.sampler.num_samples = c.sampler.num_steps = 32
  return c


def _consistent():
  """Plain vs time-consistent energies (METHOD.md §3b) under both SMC weight schemes at β = 1, on
  the demo models' teachers: copy ``colabs/digits_demo`` to the workdir first (its teachers and
  plain energies are reused; only ``energies_consistent/`` trains), then
  ``python launch.py --config=configs/digits.py:consistent --workdir=runs/digits_demo_copy``."""
  c = _demo()
  c.energies = ("learned", "consistent")
  c.problems = ("low_temperature",)
  c.low_temperature.betas = (1.0,)
  c.low_temperature.methods = ("smc_score", "smc_ratio")
  return c


def _two_head():
  """Two-headed networks (docs/METHOD.md §4e: one network per model with a score head and an
  energy head, trained from the data with no teacher, the demo teachers' U-Net, data, optimiser
  and 3,000 steps) beside the demo's distilled energies, 640 samples per row (64 per digit), 32
  levels: β = 1 (the plain reverse sampler on each source, and SMC along the score heads), β = 2
  and AND (exact-ratio SMC on the distilled energies, ``smc_heads`` on the two-headed ones, both
  without rejuvenation: one forward pass per particle and level on the heads). Copy
  ``colabs/digits_demo`` to the workdir first (its teachers and energies are reused; only
  ``two_head/`` trains), then
  ``python launch.py --config=configs/digits.py:two_head --workdir=runs/digits_two_head``."""
  c = _demo()
  c.energies = ("learned", "two_head")
  c.sampler.num_samples = 64
  c.low_temperature.betas = (1.0, 2.0)
  c.low_temperature.methods = ("naive", "smc_ratio")
  c.conjunction.methods = ("naive", "smc_ratio")
  c.two_head.methods = ("naive", "smc_heads")
  return c
