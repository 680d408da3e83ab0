"""Sample-based distances between point clouds: sliced Wasserstein and energy distance."""

import jax
import jax.numpy as jnp

Array = jax.Array


def sliced_wasserstein(key: Array, x: Array, y: Array, num_projections: int = 256) -> Array:
  """Sliced 2-Wasserstein distance between ``x (N, d)`` and ``y (N, d)`` (equal sizes).

  ``sqrt(E_θ W₂²(θᵀx, θᵀy))`` over uniformly random unit directions θ; in 1-D, ``W₂`` pairs sorted
  samples.
  """
  if x.shape != y.shape:
    raise ValueError(f"sliced_wasserstein needs equal shapes, got {x.shape} and {y.shape}.")
  theta = jax.random.normal(key, (x.shape[-1], num_projections))
  theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
  px, py = jnp.sort(x @ theta, axis=0), jnp.sort(y @ theta, axis=0)
  return jnp.sqrt(jnp.mean((px - py)**2))


def energy_distance(x: Array, y: Array) -> Array:
  """Energy distance ``2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖`` (V-statistic) of ``x (N, d)``, ``y (M, d)``."""

  def mean_dist(a, b):
    d2 = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2 * a @ b.T
    return jnp.mean(jnp.sqrt(jnp.maximum(d2, 0.0)))

  return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)
