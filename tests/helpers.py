"""A minimal jitted optax loop for tests that train a loss directly (not through the trainer)."""

import jax
import optax


def fit(loss_fn, params, sample_batch, key, steps: int, learning_rate: float = 1e-3):
  """Minimises ``loss_fn(params, batch, key)`` with Adam; ``sample_batch(key) -> batch``."""
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05))

  @jax.jit
  def step(carry, k):
    params, opt_state = carry
    k_data, k_loss = jax.random.split(k)
    grads = jax.grad(lambda p: loss_fn(p, sample_batch(k_data), k_loss)[0])(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  run = jax.jit(lambda carry, keys: jax.lax.scan(step, carry, keys)[0])
  params, _ = run((params, tx.init(params)), jax.random.split(key, steps))
  return params
