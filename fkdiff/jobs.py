"""Dispatch from a config to the job that runs it (training now; pipelines later)."""

import jax
import ml_collections
from absl import logging


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the job described by ``config`` in ``workdir`` and returns its results."""
  from fkdiff.training import train_and_evaluate
  logging.info("JAX devices: %s", jax.devices())
  results = train_and_evaluate(config, workdir)
  logging.info("Results: %s", results)
  print({k: v for k, v in results.items()})
  return results
