"""Training: config schema, optimiser, data parallelism, checkpoints, the training loop.

``train_and_evaluate`` and ``TrainState`` load on first use, so that importing a submodule such
as ``fkdiff.training.checkpoint`` or ``fkdiff.training.config`` does not import clu and
TensorFlow (the training loop's metric writers).
"""
from fkdiff.training.config import default_config, validate_config


def __getattr__(name):
  if name in ("TrainState", "train_and_evaluate"):
    from fkdiff.training import train
    return getattr(train, name)
  raise AttributeError(f"module 'fkdiff.training' has no attribute {name!r}")
