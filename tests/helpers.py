"""Test helpers: a minimal jitted optax loop for tests that train a loss directly (not through the
trainer), and random FID-Inception weight files."""

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


def random_state_dict(seed: int = 0) -> dict:
  """Random FID-Inception weights in pytorch-fid's layout, He-scaled so features stay O(1); every
  batch-norm array (scale, bias, running mean and variance) differs from its identity value.
  NumPy alone, so tests regenerate the weights a fixture was made with (by
  benchmarks/inception_parity.py)."""
  import numpy as np
  from fkdiff.evaluation import inception
  rng = np.random.default_rng(seed)
  abstract = jax.tree.map(lambda s: np.zeros(s.shape, np.float32),
                          inception.abstract_variables())
  state = inception.to_state_dict(abstract)
  for key, value in state.items():
    if key.endswith("conv.weight"):
      fan_in = np.prod(value.shape[1:])
      state[key] = rng.normal(0, np.sqrt(2 / fan_in), value.shape).astype(np.float32)
    elif key.endswith("running_var"):
      state[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    elif key.endswith("bn.weight"):
      state[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    else:
      state[key] = rng.normal(0, 0.1, value.shape).astype(np.float32)
  return state


def write_random_fid_weights(path: str, seed: int = 0) -> str:
  """Writes :func:`random_state_dict` as the ``.npz`` the FID job reads (with the classifier
  head the real file has, which is ignored); returns ``path``."""
  import numpy as np
  state = random_state_dict(seed)
  state["fc.weight"] = np.zeros((1008, 2048), np.float32)
  state["fc.bias"] = np.zeros((1008,), np.float32)
  np.savez(path, **state)
  return path
