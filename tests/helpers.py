"""A minimal jitted optax loop for tests that train a loss directly (not through the trainer)."""

from typing import Callable, List, Optional, Tuple

import jax
import optax


def fit(loss_fn: Callable, params, sample_batch: Callable, key: jax.Array, steps: int,
        learning_rate: float = 1e-3, eval_fn: Optional[Callable] = None,
        eval_every: int = 0) -> Tuple[object, List[Tuple[int, object]]]:
  """Minimises ``loss_fn(params, batch, key) -> (loss, aux)`` with Adam (cosine decay over ``steps``).

  Args:
    loss_fn: a loss of the library's convention.
    params: initial parameters.
    sample_batch: ``sample_batch(key) -> batch`` (jittable).
    key: PRNG key; step ``i`` uses the ``i``-th of ``split(key, steps)``.
    steps: number of optimiser steps.
    learning_rate: peak learning rate.
    eval_fn: optional ``eval_fn(params) -> value``, called on the host every ``eval_every`` steps
      (and at step 0).
    eval_every: evaluation period; must divide ``steps`` when ``eval_fn`` is given.
  Returns:
    ``(params, history)`` with ``history = [(step, eval_fn(params)), …]`` (empty without
    ``eval_fn``).
  """
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05))
  chunk = eval_every if eval_fn is not None else steps
  if steps % chunk:
    raise ValueError(f"eval_every={eval_every} must divide steps={steps}.")

  def step(carry, k):
    params, opt_state = carry
    k_data, k_loss = jax.random.split(k)
    grads = jax.grad(lambda p: loss_fn(p, sample_batch(k_data), k_loss)[0])(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  run = jax.jit(lambda carry, keys: jax.lax.scan(step, carry, keys)[0])
  keys = jax.random.split(key, steps).reshape(steps // chunk, chunk)
  carry, history = (params, tx.init(params)), []
  for i, chunk_keys in enumerate(keys):
    if eval_fn is not None:
      history.append((i * chunk, eval_fn(carry[0])))
    carry = run(carry, chunk_keys)
  if eval_fn is not None:
    history.append((steps, eval_fn(carry[0])))
  return carry[0], history
