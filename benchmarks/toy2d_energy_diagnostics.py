"""Heat-equation diagnostics and score error of every energy of a finished toy2d job, plain vs
time-consistent (METHOD.md §3b), side by side.

Run after the main job (configs/toy2d.py, which trains both sources):
  python benchmarks/toy2d_energy_diagnostics.py --workdir runs/toy2d

For each model (ring, bar, unequal) and source (``energies/`` = plain, ``energies_consistent/``),
evaluates the stage's EMA parameters exactly as the stage's own evaluation does
(``fkdiff.training.train.time_diagnostics`` and the relative score error at ``eval.score_sigma``,
same keys), so runs trained before the diagnostics existed are measured too. Prints one row per
model × source: the heat residual's spread between modes and the inter-mode level error against
the exact energy at σ ∈ eval.time_sigmas, and the score error (the stage evaluation's figure,
and at five σ over four keys); then the done-when ratios.
"""

import argparse
import json
import os

import jax

from fkdiff.training import runs
from fkdiff.training import train

SOURCES = (("plain", "energies"), ("consistent", "energies_consistent"))


SCORE_SIGMAS = (0.05, 0.1, 0.2, 0.5, 1.0)
SCORE_KEYS = 4


def diagnostics(stage_dir: str) -> dict:
  """The score error and time diagnostics of a finished toy energy stage (its EMA parameters):
  ``score_rel_error`` at ``eval.score_sigma`` with the stage evaluation's key, and
  ``score_rel_error/sigma_<σ>`` at each σ of :data:`SCORE_SIGMAS`, averaged over
  :data:`SCORE_KEYS` keys of 4,096 points (the single-key figure moves by several percent)."""
  run = runs.load(stage_dir)
  config, params = run.config, run.params
  trainer = train.make_trainer(config)
  key_score = jax.random.split(jax.random.key(config.seed + 1))[1]   # train.evaluate's key
  out = {"score_rel_error": train.score_error(trainer.task, trainer.data, params, config,
                                              key_score)}
  for sigma in SCORE_SIGMAS:
    out[f"score_rel_error/sigma_{sigma:g}"] = sum(
        train.score_error(trainer.task, trainer.data, params, config, jax.random.key(100 + k),
                          sigma) for k in range(SCORE_KEYS)) / SCORE_KEYS
  return {**out, **train.time_diagnostics(trainer.task, trainer.data, params, config)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a finished toy2d job's workdir")
  args = parser.parse_args()
  models = sorted(os.listdir(os.path.join(args.workdir, "energies")))
  rows = {(m, s): diagnostics(os.path.join(args.workdir, folder, m))
          for m in models for s, folder in SOURCES
          if os.path.isdir(os.path.join(args.workdir, folder, m))}
  sigmas = sorted({k.split("sigma_")[1] for r in rows.values() for k in r
                   if k.startswith("level_error/sigma_")}, key=float)
  print("| model | source | r_E mode spread σ = " + " / ".join(sigmas)
        + " | level error (nats) | score error (eval key) | score error σ = "
        + " / ".join(f"{x:g}" for x in SCORE_SIGMAS) + f" ({SCORE_KEYS} keys) |")
  print("|---|---|---|---|---|---|")
  for (m, s), r in rows.items():
    spread = " / ".join(f"{r[f'heat_residual_mode_spread/sigma_{x}']:.3g}" for x in sigmas)
    level = " / ".join(f"{r[f'level_error/sigma_{x}']:.3f}" for x in sigmas)
    score = " / ".join(f"{r[f'score_rel_error/sigma_{x:g}']:.4f}" for x in SCORE_SIGMAS)
    print(f"| {m} | {s} | {spread} | {level} | {r['score_rel_error']:.4f} | {score} |")
  for m in models:
    if (m, "plain") in rows and (m, "consistent") in rows:
      p, c = rows[m, "plain"], rows[m, "consistent"]
      down = [p[f"heat_residual_mode_spread/sigma_{x}"] / c[f"heat_residual_mode_spread/sigma_{x}"]
              for x in sigmas if float(x) <= 0.1]
      worst = max(c[f"level_error/sigma_{x}"] for x in sigmas)
      ratio = lambda key: c[key] / p[key] - 1
      per_sigma = ", ".join(f"{ratio(f'score_rel_error/sigma_{x:g}'):+.0%}" for x in SCORE_SIGMAS)
      print(f"{m}: spread at σ ≤ 0.1 down {min(down):.0f}× (worst), level error max "
            f"{worst:.3f} nats, score error vs plain {ratio('score_rel_error'):+.0%} (eval key), "
            f"{per_sigma} at σ = {', '.join(f'{x:g}' for x in SCORE_SIGMAS)} ({SCORE_KEYS} keys)")
  print(json.dumps({f"{m}/{s}": r for (m, s), r in rows.items()}))


if __name__ == "__main__":
  main()
