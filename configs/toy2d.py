"""The main job: toy 2-D composition and low temperature with distilled energies and SMC.

Trains three teachers on embedded 2-D Gaussian mixtures (a ring of 8; an elongated vertical
two-mode "bar"; three modes of unequal weight), distils each into an energy, then samples
(a) the product ring × bar and (b) the unequal mixture at β = 3 over several seeds and scores
every sample set against the exact target.

Variants:
  ''      the first command (≈ 9 min on 2 CPU cores): ``smc_sample``'s default weights and the
          naive score-sum / scaled-score sampler, each with the learned and the exact energies,
          4 seeds.
  full    the whole study (≈ 45 min), 8 seeds: also score-only SMC with the job's unit-noise setting,
          exact-ratio SMC, annealed MALA / HMC (step sizes tuned per level to an acceptance
          rate), time-consistent energies (SMC only) and two-headed networks trained without a
          teacher (their SMC methods only). Rows other studies add go here.
  smoke   the full study's every row on tiny models, 2 seeds (≈ 5 min): a pipeline check.

Launch:
  python launch.py --config=configs/toy2d.py --workdir=runs/toy2d
  python launch.py --config=configs/toy2d.py:full --workdir=runs/toy2d_full
  python launch.py --config=configs/toy2d.py:smoke --workdir=runs/toy2d_smoke

Outputs in the workdir: results.json / results.txt (problem × method × energy → metrics), product.png,
low_temperature.png, ess.png, teachers/, energies/ (and, with ``full``, energies_consistent/ and
two_head/):
stage runs, reused on relaunch (the default and ``full`` train the same teachers and plain
energies, so ``full`` in the default's workdir reuses them), TensorBoard scalars. Expected
figures: docs/experiments.md and benchmarks/RESULTS.md (SMC's mode-mass error well below the naive
sampler's on both problems; exact-ratio SMC holds on the time-consistent energies).
"""

from fkdiff.experiments.toy2d import job_config
from fkdiff.training.config import config_module


VARIANTS = ("", "full", "smoke")


def get_config(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r}; use one of {VARIANTS}.")
  smoke = variant == "smoke"
  c = job_config()
  c.datasets.ring = {"mixture": "ring", "mixture_kwargs": {"num_modes": 8, "radius": 2.0,
                                                          "std": 0.2}}
  c.datasets.bar = {"mixture": "bar", "mixture_kwargs": {"separation": 2.4, "long_std": 1.5,
                                                        "short_std": 0.2,
                                                        "weights": (0.7, 0.3)}}
  # Unequal weights *and* widths: at β = 3 the narrow mode takes most of the mass (exact masses
  # 0.08 / 0.88 / 0.03), which score scaling cannot know (it keeps ≈ 0.70 / 0.23 / 0.07).
  c.datasets.unequal = {"mixture": "unequal", "mixture_kwargs": {"weights": (0.5, 0.3, 0.2),
                                                                "radius": 1.5,
                                                                "std": (0.4, 0.15, 0.25)}}
  c.low_temperature.beta = 3.0
  # Resample at every level and rejuvenate with 2 MALA steps: with the default τ = 0.5 and no
  # moves, the product problem's mode masses varied by up to 0.27 (TV) between seeds; with these,
  # ≤ 0.04 (2,048-4,096 particles, 100 levels).
  c.sampler.ess_threshold = 1.0
  c.sampler.rejuvenation = "mala"
  c.sampler.rejuvenation_steps = 2
  # Annealed MCMC baselines tune their step per level (Du et al. 2023): with the fixed 0.05 σ²
  # (HMC's step is a length, MALA's a variance) HMC barely moved at small σ (product NLL 9.9).
  c.sampler.mala_target_acceptance = 0.6
  c.sampler.hmc_target_acceptance = 0.75
  c.eval.num_seeds = 2 if smoke else 8
  # Smoke: no stage evaluations (the job's sampling is enough).
  config_module("common.py", next_to=__file__).mlp_stages((c.teacher, c.distill), smoke, 96, 3,
                                                          2048)
  c.teacher.training.num_steps = 60 if smoke else 3000
  c.teacher.training.checkpoint_every = 60 if smoke else 1000
  c.distill.training.num_steps = 60 if smoke else 1500
  c.distill.training.checkpoint_every = 60 if smoke else 500
  c.distill.optim.learning_rate = 3e-4
  # Time-consistent energies beside the plain ones (METHOD.md §3): the teacher's heat-equation
  # target at λ = 0.1 and 6,000 steps keeps every model's score error at or below plain
  # distillation's (λ = 0.3: ring +9 … +18 %) and the inter-mode levels within 0.08 nats
  # (benchmarks/RESULTS.md, "Time-consistent energies in the jobs").
  c.consistent.time_weight = 0.1
  c.consistent.num_steps = 60 if smoke else 6000
  c.teacher.optim.learning_rate = 2e-3
  if variant == "":   # the first command: the library's default SMC against the naive sampler.
    c.methods = ("smc_default", "naive")
    c.energies = ("learned", "exact")
    # 4 seeds (one SMC run of the learned product: ≈ 20 s here) and no stage evaluations (the
    # distillations' heat-equation diagnostics: ≈ 25 s each); the stages are the full study's.
    c.eval.num_seeds = 4
    for stage in (c.teacher, c.distill):
      stage.eval.num_samples = 0
  else:   # every method (job_config's default) on every energy source.
    c.energies = ("learned", "consistent", "two_head", "exact")
  # Two-headed networks trained from the data, no teacher (docs/METHOD.md §4e): the teachers'
  # network and optimiser, 6,000 steps with the energy head's time term at λ = 0.1 (without it
  # the energy head's levels between modes are off by ~1 nat at σ ≤ 0.1, and exact-ratio SMC
  # on it missed the product by TV 0.61), sampled by exact-ratio weights from the energy head
  # and the score head's proposal with no rejuvenation: one forward pass per level
  # (benchmarks/RESULTS.md, "Two-headed networks").
  c.two_head.num_steps = 60 if smoke else 6000
  c.two_head.time_weight = 0.1
  c.two_head.methods = ("smc_heads",)
  c.two_head.sampler = {"rejuvenation": "", "ess_threshold": 0.5}
  if smoke:
    c.sampler.update(num_particles=256, num_steps=24, annealed_steps_per_level=2)
    c.eval.update(grid_size=120, num_distance_samples=256)
  return c
