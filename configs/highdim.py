"""SMC in image dimensions on exact targets (fkdiff/experiments/highdim.py).

Tempered (β = 2, 4) three-component mixtures and a product of two mixtures, all on an image-like
DCT spectrum, for d = 2, 64, 256, 1,024, 3,072 and 12,288 (the last with the ``study.large_methods``
only), every method at NFE budgets of 512 and 2,048 per sample; exact answers in every dimension
(:mod:`fkdiff.data.spectral`). No training, no data.

Launch:
  python launch.py --config=configs/highdim.py --workdir=runs/highdim
  python launch.py --config=configs/highdim.py:smoke --workdir=runs/highdim_smoke

Outputs in the workdir: results.json / results.txt (one line per dimension, target, method and
budget: largest mode-mass error, mean variance ratio over the principal axes, plane-mean error,
NFE and seconds per sample, smallest ESS), error_vs_nfe.png, TensorBoard scalars.
Expected time on 2 CPU cores: about 35 min (d = 12,288 is a third of it); :smoke ≈ 1 min.
Measured figures: docs/experiments.md ("SMC in image dimensions"), benchmarks/RESULTS.md.
"""

from fkdiff.experiments.highdim import job_config


def get_config(variant: str = ""):
  if variant not in ("", "smoke"):
    raise ValueError(f"Unknown variant {variant!r}; use '' or 'smoke'.")
  c = job_config()
  if variant == "smoke":
    c.study.update(shapes=("2", "16x16"), problems=("tempered2", "product"),
                   methods=("score_unit", "exact_ratio", "shaped"), budgets=(128,),
                   num_particles=64, runs=2, batches=2)
  return c
