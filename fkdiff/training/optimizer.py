"""Optimiser factory: AdamW with linear warm-up, optional cosine decay and global-norm clipping."""

import ml_collections
import optax


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up to ``learning_rate`` then constant or cosine decay to a fraction of it."""
  warmup = max(int(optim.warmup_steps), 1)
  if optim.decay == "constant":
    after = optax.constant_schedule(optim.learning_rate)
  elif optim.decay == "cosine":
    after = optax.cosine_decay_schedule(optim.learning_rate, max(num_steps - warmup, 1),
                                        alpha=optim.final_lr_fraction)
  else:
    raise ValueError(f"Unknown optim.decay {optim.decay!r}; use 'cosine' or 'constant'.")
  warm = optax.linear_schedule(0.0, optim.learning_rate, warmup)
  return optax.join_schedules([warm, after], [warmup])


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """The training optimiser for ``optim`` (a ``config.optim`` section)."""
  chain = []
  if optim.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(optim.grad_clip))
  chain.append(optax.adamw(learning_rate_schedule(optim, num_steps),
                           weight_decay=optim.weight_decay))
  return optax.chain(*chain)
