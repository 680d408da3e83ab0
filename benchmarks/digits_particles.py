"""SMC on the digits: does weight degeneracy recede with more particles or more levels?

Runs the digits job's SMC targets — ``p(x | c)^β`` and digit c AND heavy stroke — with the
energies and judge of a finished digits run, for several (particles × levels) settings, and
prints per setting: adherence (AND: ``both``), ``unique`` (fraction of distinct samples),
diversity, Fréchet distance in the judge's feature space, minimum ESS fraction and sampling time.
Optionally the same for CFG (``--cfg``) as the diversity reference at each setting (Fréchet
distances are only comparable at equal sample counts).

  python launch.py --config=configs/digits.py --workdir=runs/digits     # the models (~70 min)
  python benchmarks/digits_particles.py --workdir=runs/digits --betas=1,2,4 --settings=64x64,1024x256

On a machine without tensorflow-datasets the digits' arrays come from
``<workdir>/digits_arrays.npz``, which a first run with tfds writes (so a GPU machine needs only
jax, flax, orbax and ml_collections). ``--out`` writes the results as JSON.
"""

import argparse
import json
import os
import platform
import time

import jax
import ml_collections
import numpy as np

from fkdiff.data import images
from fkdiff.evaluation import classifier as classifier_lib
from fkdiff.experiments import digits


def load_arrays(workdir: str, data_dir: str) -> dict:
  """Train/test digits and the heavy-stroke threshold, cached in ``<workdir>/digits_arrays.npz``."""
  path = os.path.join(workdir, "digits_arrays.npz")
  if not os.path.exists(path):
    train, test = digits.digits_arrays(data_dir, "train"), digits.digits_arrays(data_dir, "test")
    np.savez(path, train_x=train["x"], train_label=train["label"], test_x=test["x"],
             test_label=test["label"], threshold=images.heavy_stroke_threshold(data_dir or None))
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a finished digits run")
  parser.add_argument("--settings", default="64x64,256x64,1024x64",
                      help="comma-separated PARTICLESxLEVELS")
  parser.add_argument("--betas", default="4", help="comma-separated β of p(x | c)^β")
  parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
  parser.add_argument("--tasks", default="low_temperature,and")
  parser.add_argument("--cfg", action="store_true", help="also CFG with weight β")
  parser.add_argument("--out", default="", help="JSON file for the results")
  args = parser.parse_args()

  with open(os.path.join(args.workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))   # the run's own settings
  arrays = load_arrays(args.workdir, config.data_dir)
  judge = classifier_lib.load(os.path.join(args.workdir, "classifier"), arrays["train_x"])
  reference = digits.make_reference(judge, {"x": arrays["train_x"], "label": arrays["train_label"]},
                                    float(arrays["threshold"]))
  energies = {name: digits.load_energy(os.path.join(args.workdir, "energies", name))
              for name in digits.MODELS}
  params = {name: e.params for name, e in energies.items()}
  potentials = digits.potentials(energies)
  classes = tuple(int(c) for c in args.classes.split(","))
  event_shape = tuple(arrays["train_x"].shape[1:])
  tasks = args.tasks.split(",")
  betas = [float(b) for b in args.betas.split(",")]
  runs = [("low_temperature", m) for m in ("smc", "cfg")[:1 + args.cfg]
          if "low_temperature" in tasks] + [("and", "smc")] * ("and" in tasks)
  print(f"{jax.devices()[0].device_kind} ({platform.machine()}), jax {jax.__version__}; "
        f"{len(classes)} classes")
  header = (f"{'task':16s} {'β':>3s} {'method':6s} {'N':>5s} {'levels':>6s} {'adh/both':>8s} "
            f"{'unique':>7s} {'divers.':>7s} {'frechet':>8s} {'ess_min':>7s} {'s':>6s}")
  print(header)
  results = []
  for setting in args.settings.split(","):
    n, levels = (int(v) for v in setting.split("x"))
    config.sampler.num_samples, config.sampler.num_steps = n, levels
    for task, method in runs:
      sampler = digits.make_sampler(method, potentials[task, method], config, event_shape,
                                    images.IMAGE_SIGMA_DATA)   # β is an argument: one compile
      key = jax.random.key(config.seed)
      t0 = time.perf_counter()
      jax.block_until_ready(sampler(params, key, *digits.sampler_conditions(classes, 1.0)))   # compile + run
      compile_and_run = time.perf_counter() - t0
      for beta in (betas if task == "low_temperature" else [1.0]):
        t0 = time.perf_counter()
        _, metrics, _ = digits.evaluate(sampler, params, jax.random.fold_in(key, 1), task, beta,
                                     classes, judge, reference)
        seconds = time.perf_counter() - t0
        results.append({"task": task, "beta": beta, "method": method, "particles": n,
                        "levels": levels, "seconds": seconds,
                        "first_call_seconds": compile_and_run, **metrics})
        print(f"{task:16s} {beta:3g} {method:6s} {n:5d} {levels:6d} "
              f"{metrics['both' if task == 'and' else 'adherence']:8.3f} "
              f"{metrics['unique']:7.3f} {metrics['diversity']:7.3f} {metrics['frechet']:8.2f} "
              f"{metrics.get('ess_min_fraction', float('nan')):7.3f} {seconds:6.1f}", flush=True)
      if args.out:   # after every row: an interrupted sweep keeps what it measured.
        with open(args.out, "w") as f:
          json.dump({"device": jax.devices()[0].device_kind, "classes": classes,
                     "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
