"""Dispatch from a config to the job that runs it."""

import jax
import ml_collections
from absl import logging


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the job described by ``config`` in ``workdir`` and returns its results.

  Configs with ``job = 'toy2d'`` run the toy composition pipeline
  (:mod:`fkdiff.experiments.toy2d`), ``job = 'digits'`` the digits one
  (:mod:`fkdiff.experiments.digits`), ``job = 'fid'`` the FID of an image run
  (:mod:`fkdiff.experiments.fid`); all others are one training run
  (:func:`fkdiff.training.train_and_evaluate`).
  """
  logging.info("JAX devices: %s", jax.devices())
  if config.get("job") == "toy2d":
    from fkdiff.experiments import toy2d
    return toy2d.run(config, workdir)
  if config.get("job") == "digits":
    from fkdiff.experiments import digits
    return digits.run(config, workdir)
  if config.get("job") == "fid":
    from fkdiff.experiments import fid
    return fid.run(config, workdir)
  from fkdiff.training import train_and_evaluate
  results = train_and_evaluate(config, workdir)
  print(results, flush=True)
  return results
