"""SMC on the digits, one sample per independent run: which weights and which remedies help?

Runs the digits job's targets — ``p(x | c)^β`` and digit c AND heavy stroke — with the energies
and judge of a finished digits run (default: the shipped demo models, ``colabs/digits_demo``) and
prints, per method and target: adherence (AND: ``both``), judge diversity, Fréchet distance in the
judge's feature space, ``unique`` (distinct samples), NFE per sample, and SMC's within-set
diagnostics (minimum ESS / N, distinct fraction of a resampled final set, rejuvenation
acceptance). Every method draws ``--samples`` samples per condition, so Fréchet distances are
comparable between rows (they shrink with more samples: compare within one sample count).

A method is a name with options, ``+``-separated:
  ``naive``, ``cfg`` (reverse diffusion; at β = 1 both are the plain conditional sampler),
  ``smc_score`` / ``smc_ratio`` (score-only / exact-ratio weights) with any of
  ``+mala`` / ``+hmc`` (rejuvenation after each resampling; ``--mcmc_steps``, ``--step_size``),
  ``+w=LO:HI`` (resample only for σ in [LO, HI]), ``+ess=T`` (ESS threshold; 0 never, 1 always),
  ``+n=N`` (particles per run), ``+k=K`` (levels), ``+set`` (one set of ``--samples`` particles,
  final resampling: the within-set mode), ``+matched`` / ``+trap`` (score-only weights with noise
  matched to the target / the trapezoid rule instead of the left-point rule, the default).
Each method compiles once (β is an argument); ``--keys=2`` evaluates each row with two keys, so
the spread between them shows the metrics' noise.

  python benchmarks/digits_particles.py --betas=1,2,4 --samples=64 --particles=16 --levels=64 \\
      --methods=naive,cfg,smc_score,smc_ratio,smc_score+mala,smc_score+w=0.1:80

On a machine without tensorflow-datasets the digits' arrays come from ``--arrays`` (default
``<workdir>/digits_arrays.npz``), which a first run with tfds writes. ``--out`` writes the results
as JSON after every row.
"""

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from fkdiff.data import images
from fkdiff.evaluation import classifier as classifier_lib
from fkdiff.experiments import common, digits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_arrays(path: str, data_dir: str) -> dict:
  """Train/test digits and the heavy-stroke threshold, cached in ``path`` (an ``.npz``)."""
  if not os.path.exists(path):
    train, test = digits.digits_arrays(data_dir, "train"), digits.digits_arrays(data_dir, "test")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, train_x=train["x"], train_label=train["label"], test_x=test["x"],
             test_label=test["label"], threshold=images.heavy_stroke_threshold(data_dir or None))
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def method_config(spec: str, config, args):
  """``(base method, sampler config)`` of a method spec (module doc)."""
  base, *options = spec.split("+")
  s = config.sampler
  s.num_samples, s.num_steps = args.samples, args.levels
  s.smc_mode, s.particles_per_run = "runs", args.particles
  s.ess_threshold, s.resample_sigma_range = 0.5, ()
  s.rejuvenation, s.rejuvenation_steps = "", args.mcmc_steps
  s.rejuvenation_step_size, s.score_noise, s.score_rule = args.step_size, "unit", "left"
  for option in options:
    name, _, value = option.partition("=")
    if name in ("mala", "hmc"):
      s.rejuvenation = name
    elif name == "w":
      s.resample_sigma_range = tuple(float(v) for v in value.split(":"))
    elif name == "ess":
      s.ess_threshold = float(value)
    elif name == "n":
      s.particles_per_run = int(value)
    elif name == "set":
      s.smc_mode = "set"
    elif name == "matched":
      s.score_noise = "matched"
    elif name == "trap":
      s.score_rule = "trapezoid"
    elif name == "k":
      s.num_steps = int(value)
    else:
      raise ValueError(f"Unknown method option {option!r} in {spec!r}.")
  if options and base not in digits.SMC_METHODS:
    raise ValueError(f"Options only apply to SMC methods, got {spec!r}.")
  digits.validate_job_config(config)
  return base, config


def sampler_parser(doc: str, methods: str, particles: int,
                   levels: int) -> argparse.ArgumentParser:
  """The options of a digits sampling benchmark (described by its module ``doc``): the run
  (judge, settings), the arrays, the methods and the sampler sizes (:func:`method_config`)."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--workdir", default=os.path.join(ROOT, "colabs", "digits_demo"),
                      help="a finished digits run (default: the shipped demo models)")
  parser.add_argument("--arrays", default="", help="digits arrays cache (.npz)")
  parser.add_argument("--methods", default=methods)
  parser.add_argument("--samples", type=int, default=64, help="samples (= SMC runs) per condition")
  parser.add_argument("--particles", type=int, default=particles, help="particles per SMC run")
  parser.add_argument("--levels", type=int, default=levels)
  parser.add_argument("--mcmc_steps", type=int, default=2, help="rejuvenation steps")
  parser.add_argument("--step_size", type=float, default=0.05, help="MALA h = this · σ²")
  parser.add_argument("--betas", default="1,2,4", help="comma-separated β of p(x | c)^β")
  return parser


def load_run(args):
  """``(config, arrays, judge, reference)`` of the run in ``args.workdir``."""
  config = digits.read_job_config(args.workdir)
  arrays = load_arrays(args.arrays or os.path.join(args.workdir, "digits_arrays.npz"),
                       config.data_dir)
  judge = classifier_lib.load(os.path.join(args.workdir, "classifier"), arrays["train_x"])
  reference = digits.make_reference(judge, {"x": arrays["train_x"], "label": arrays["train_label"]},
                                    float(arrays["threshold"]))
  return config, arrays, judge, reference


def main():
  parser = sampler_parser(__doc__, "naive,cfg,smc_score,smc_ratio", particles=16, levels=64)
  parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
  parser.add_argument("--problems", default="low_temperature,and")
  parser.add_argument("--keys", type=int, default=1, help="evaluations per row (other keys)")
  parser.add_argument("--out", default="", help="JSON file for the results")
  args = parser.parse_args()

  config, arrays, judge, reference = load_run(args)
  energies = common.load_energies({name: os.path.join(args.workdir, "energies", name)
                                   for name in digits.MODELS})
  params = {name: e.params for name, e in energies.items()}
  potentials = digits.potentials(energies)
  classes = tuple(int(c) for c in args.classes.split(","))
  event_shape = tuple(arrays["train_x"].shape[1:])
  betas = [float(b) for b in args.betas.split(",")]
  device = f"{jax.devices()[0].device_kind} ({platform.machine()}), jax {jax.__version__}"
  print(f"{device}; {len(classes)} classes; {args.samples} samples per condition; "
        f"N = {args.particles} particles per run, {args.levels} levels unless the method says")
  print(f"{'target':6s} {'method':26s} {'adh/both':>8s} {'divers.':>7s} {'frechet':>8s} "
        f"{'unique':>6s} {'NFE/smp':>8s} {'ess_min':>7s} {'set_unq':>7s} {'accept':>6s} "
        f"{'s':>6s} {'1st s':>6s}", flush=True)
  results = []
  for spec in args.methods.split(","):      # method-major: an interrupted sweep has whole methods
    for problem in args.problems.split(","):
      base, cfg = method_config(spec, digits.read_job_config(args.workdir), args)
      if problem == "and" and base == "cfg":
        continue
      # β is an argument: one compile.
      sampler = digits.make_sampler(base, potentials[problem, base], cfg, event_shape)
      key = jax.random.key(cfg.seed)
      t0 = time.perf_counter()
      jax.block_until_ready(sampler(params, key, *digits.sampler_conditions(classes, 1.0)))
      first_call = time.perf_counter() - t0    # compile + run
      for beta in (betas if problem == "low_temperature" else [1.0]):
        for k in range(args.keys):
          t0 = time.perf_counter()
          _, m, _ = digits.evaluate(sampler, params, jax.random.fold_in(key, 1 + k), problem, beta,
                                    classes, judge, reference)
          seconds = time.perf_counter() - t0
          target = f"β={beta:g}" if problem == "low_temperature" else "AND"
          results.append({"problem": problem, "beta": beta, "method": spec, "key": k,
                          "samples": args.samples, "particles": cfg.sampler.particles_per_run,
                          "levels": cfg.sampler.num_steps, "seconds": seconds,
                          "first_call_seconds": first_call, **m})
          na = lambda name, fmt: format(m[name], fmt) if name in m else "-"
          print(f"{target:6s} {spec:26s} {m['both' if problem == 'and' else 'adherence']:8.3f} "
                f"{m['diversity']:7.2f} {m['frechet']:8.1f} {m['unique']:6.3f} "
                f"{m['nfe_per_sample']:8.0f} {na('ess_min_fraction', '7.3f'):>7s} "
                f"{na('set_unique', '7.3f'):>7s} {na('acceptance', '6.3f'):>6s} "
                f"{seconds:6.1f} {first_call:6.1f}", flush=True)
          if args.out:   # after every row: an interrupted sweep keeps what it measured.
            with open(args.out, "w") as f:
              json.dump({"device": device, "classes": classes, "args": vars(args),
                         "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
