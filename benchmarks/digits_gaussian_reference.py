"""How diverse is ``p(x | c)^β`` itself? The digits' targets on a closed-form stand-in.

The digits job judges SMC's samples of ``p(x | c)^β`` against CFG's, which samples a different
distribution, ``p(x)^{1−β} p(x | c)^β`` (and only approximately). Whether "diversity ≥ 0.8× CFG's"
is reachable by a correct sampler of the target cannot be read off the learned models, whose
target is unknown. This script replaces the distilled class model by a closed form fitted to the
same digits — one Gaussian per class, ``p(x | c) = N(μ_c, Σ_c)`` (train-split mean and covariance
plus ``--ridge`` · I), ``p(x) = Σ_c π_c p(x | c)`` — whose diffused energies are exact at every
σ, and where ``p(x | c)^β = N(μ_c, Σ_c / β)`` is drawn exactly. ``--components=J`` fits J
Gaussians per class instead (EM; multimodal classes), where no exact draw exists and a large SMC
run (e.g. ``smc_ratio+n=64+k=128``, checked against the exact draws with one Gaussian) stands
in. Every row runs the digits job's own samplers (``digits.make_sampler``, same Karras grid, runs
of N particles) on the exact energies and is scored by the shipped demo judge, as in
``benchmarks/digits_particles.py``:

  ``exact``        exact draws of the target ``p(x | c)^β`` (the diversity a correct sampler has);
  ``naive``, ``cfg``, ``smc_score``, ``smc_ratio`` (+ that script's options) as in the job;
  ``cfg_target``   exact-ratio SMC on CFG's own target ``p(x)^{1−β} p(x | c)^β``.

Besides the judge's metrics it prints ``pixel div.`` (mean pairwise pixel distance within a class).

  python benchmarks/digits_gaussian_reference.py --arrays=runs/digits_arrays.npz --samples=64
"""

import platform

import jax
import jax.numpy as jnp
import numpy as np

from digits_particles import load_run, method_config, sampler_parser
from fkdiff.data import gmm, images
from fkdiff.evaluation import frechet
from fkdiff.experiments import common, digits


def exact_samples(key, em: gmm.EigenMixture, classes, beta: float, m: int) -> np.ndarray:
  """``m`` exact draws of ``p(x | c)^β = N(μ_c, Σ_c / β)`` per class: ``(C, m, d)``."""
  cls = jnp.asarray(classes)
  z = jax.random.normal(key, (len(classes), m, em.means.shape[1]))
  scaled = z * jnp.sqrt(em.eig[cls] / beta)[:, None]
  return np.asarray(em.means[cls][:, None] + jnp.einsum("cij,cmj->cmi", em.basis[cls], scaled))


def pixel_diversity(samples: np.ndarray) -> float:
  """Mean pairwise pixel distance within a condition, averaged: ``samples (C, M, ...)``."""
  c, m = samples.shape[:2]
  flat = np.clip(samples.reshape(c, m, -1), -1, 1)
  return float(np.mean([digits._mean_pairwise_distance(f) for f in flat]))


def main():
  parser = sampler_parser(__doc__, "exact,cfg,naive,smc_ratio,smc_score,cfg_target",
                          particles=8, levels=32)
  parser.add_argument("--ridge", type=float, default=0.01, help="added to each class covariance")
  parser.add_argument("--components", type=int, default=1,
                      help="Gaussians per class (> 1: EM fit; no exact draws of the target)")
  parser.add_argument("--seed", type=int, default=0, help="sampling keys and the EM fit")
  args = parser.parse_args()
  if args.components > 1 and "exact" in args.methods.split(","):
    parser.error("'exact' draws need --components=1 (a power of a mixture is not a mixture); "
                 "use e.g. smc_ratio+n=64+k=128 as the reference.")

  _, arrays, judge, reference = load_run(args)
  stats = frechet.feature_stats(reference.features)
  num_classes = digits.MODELS["class"][1]
  em = gmm.eigen(*gmm.fit_by_label(arrays["train_x"], arrays["train_label"], num_classes,
                                   args.ridge, args.components, args.seed))
  params = {"class": em}    # E(x, σ | c) exact; the null label (K) is the mixture p_σ(x).
  energy = lambda p, x, sigma, label: gmm.label_energy(p, x.reshape(-1), sigma, label)
  potentials = digits.potentials({"class": common.LoadedEnergy(energy, em, images.IMAGE_SIGMA_DATA,
                                                              num_classes)})
  classes = tuple(range(num_classes))
  event_shape = tuple(arrays["train_x"].shape[1:])
  betas = [float(b) for b in args.betas.split(",")]
  print(f"{jax.devices()[0].device_kind} ({platform.machine()}), jax {jax.__version__}; "
        f"{args.components} Gaussian(s) per class + {args.ridge:g} I; {args.samples} samples "
        f"per class; N = {args.particles} particles per run, {args.levels} levels")
  print(f"{'target':6s} {'method':22s} {'adh.':>6s} {'divers.':>7s} {'frechet':>8s} "
        f"{'pixel div.':>10s} {'NFE/smp':>8s} {'ess_min':>7s}", flush=True)
  key = jax.random.key(args.seed)
  for spec in args.methods.split(","):
    if spec == "exact":
      sampler = None
    else:   # cfg_target: exact-ratio SMC on CFG's potential.
      on_cfg = spec == "cfg_target"
      base, cfg = method_config("smc_ratio" if on_cfg else spec,
                                digits.read_job_config(args.workdir), args)
      potential = potentials["low_temperature", "cfg" if on_cfg else base]
      sampler = digits.make_sampler(base, potential, cfg, event_shape)
    for i, beta in enumerate(betas):
      k = jax.random.fold_in(key, i)
      if sampler is None:
        samples = exact_samples(k, em, classes, beta, args.samples)
        samples, diag = samples.reshape(*samples.shape[:2], *event_shape), {}
      else:
        samples, diag = sampler(params, k, *digits.sampler_conditions(classes, beta))
        samples = np.asarray(samples)
      m = digits.score_samples(samples, classes, judge, stats, reference.threshold, heavy=False)
      na = lambda name, fmt: format(float(np.mean(diag[name])), fmt) if name in diag else "-"
      print(f"β={beta:<4g} {spec:22s} {m['adherence']:6.3f} {m['diversity']:7.2f} "
            f"{m['frechet']:8.1f} {pixel_diversity(samples):10.3f} "
            f"{na('nfe_per_sample', '8.0f'):>8s} {na('ess_min_fraction', '7.3f'):>7s}", flush=True)


if __name__ == "__main__":
  main()
