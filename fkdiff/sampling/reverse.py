"""Plain (unweighted) diffusion samplers: EDM Heun ODE and Euler–Maruyama reverse SDE.

Conventions are METHOD.md §1 (variance exploding, ``x_σ = x_0 + σ ε``). Callables are per
example: ``denoise_fn(x, sigma) -> like x`` and ``score_fn(x, sigma) -> like x`` with ``x`` of
shape ``event_shape`` and a scalar σ; the samplers vmap them over the leading particle axis.
Both loops are ``lax.scan``s, so compile time does not depend on the number of steps.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def prior_sample(key: Array, num: int, event_shape: Sequence[int], sigma_max: float,
                 sigma_data: float, dtype=jnp.float32) -> Array:
  """Draws ``num`` points from ``N(0, (σ_max² + σ_d²) I)``; returns ``(num, *event_shape)``."""
  std = jnp.sqrt(jnp.asarray(sigma_max, dtype)**2 + sigma_data**2).astype(dtype)
  return std * jax.random.normal(key, (num, *tuple(event_shape)), dtype)


def _per_particle(fn: Callable[[Array, Array], Array]) -> Callable[[Array, Array], Array]:
  """vmaps a per-example ``fn(x, sigma)`` over the leading axis of ``x`` (σ shared)."""
  return jax.vmap(fn, in_axes=(0, None))


def heun_sample(denoise_fn: Callable[[Array, Array], Array], x_init: Array,
                sigmas: Array) -> Array:
  """Deterministic probability-flow ODE sampler (EDM Algorithm 1, Karras et al. 2022).

  Heun's second-order method between consecutive levels of ``sigmas``; a final Euler step to
  σ = 0 is appended (it equals ``D(x, σ_{K-1})``), as in EDM.

  Args:
    denoise_fn: per-example denoiser ``D(x, σ)``, ``x`` of shape ``event_shape``.
    x_init: ``(N, *event_shape)`` start points at level ``sigmas[0]`` (see :func:`prior_sample`).
    sigmas: decreasing ``(K,)`` noise levels, all > 0.
  Returns:
    ``(N, *event_shape)`` samples at σ = 0.
  """
  sigmas = jnp.asarray(sigmas, x_init.dtype)   # the samples' dtype (float64 under x64)
  denoise = _per_particle(denoise_fn)

  def step(x, s):
    s_cur, s_next = s
    d_cur = (x - denoise(x, s_cur)) / s_cur
    x_euler = x + (s_next - s_cur) * d_cur
    d_next = (x_euler - denoise(x_euler, s_next)) / s_next
    return (x + (s_next - s_cur) * 0.5 * (d_cur + d_next)).astype(x.dtype), None

  x, _ = jax.lax.scan(step, x_init, (sigmas[:-1], sigmas[1:]))
  # Final Euler step σ_{K-1} → 0: x + (0 − σ)(x − D)/σ = D(x, σ_{K-1}).
  return denoise(x, sigmas[-1])


def euler_maruyama_sample(key: Array, score_fn: Callable[[Array, Array], Array],
                          x_init: Array, sigmas: Array) -> Array:
  """Reverse-SDE sampler, ``x' = x + Δ_k s(x, σ_k) + sqrt(Δ_k) z``, ``Δ_k = σ_k² − σ_{k+1}²``.

  Args:
    key: PRNG key.
    score_fn: per-example score ``s(x, σ) = ∇_x log p_σ(x)``.
    x_init: ``(N, *event_shape)`` start points at level ``sigmas[0]``.
    sigmas: decreasing ``(K,)`` noise levels.
  Returns:
    ``(N, *event_shape)`` samples at level ``sigmas[-1]`` (no final denoising).
  """
  sigmas = jnp.asarray(sigmas, x_init.dtype)   # the samples' dtype (float64 under x64)
  score = _per_particle(score_fn)
  keys = jax.random.split(key, sigmas.shape[0] - 1)

  def step(x, inp):
    k, s_cur, s_next = inp
    delta = s_cur**2 - s_next**2
    z = jax.random.normal(k, x.shape, x.dtype)
    return (x + delta * score(x, s_cur) + jnp.sqrt(delta) * z).astype(x.dtype), None

  x, _ = jax.lax.scan(step, x_init, (keys, sigmas[:-1], sigmas[1:]))
  return x
