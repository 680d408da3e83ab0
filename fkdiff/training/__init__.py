"""Training: config schema, optimiser, data parallelism, checkpoints, the training loop."""
from fkdiff.training.config import default_config, validate_config
from fkdiff.training.train import TrainState, train_and_evaluate
