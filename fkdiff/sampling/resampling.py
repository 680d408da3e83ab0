"""Resampling schemes for SMC: systematic (default), multinomial, stratified, residual.

Every scheme has one signature, ``resample(key, log_weights, num) -> ancestors``: ``log_weights``
is ``(N,)`` (unnormalised, any finite offset), ``num`` is a static int, and the result is
``(num,)`` int32 ancestor indices in ``[0, N)``. All are jittable with static shapes and
unbiased: ``E[#offspring of i] = num · w̄_i`` with ``w̄ = softmax(log_weights)``.

Robustness (each has a regression test in ``tests/test_resampling.py``):
- Weights are normalised in log space (``logsumexp``); ``log(0) = −inf`` weights are fine and
  such particles are never selected (unless every weight is invalid, below).
- NaN log-weights are treated as ``−inf`` (the particle is dropped).
- The float32 cumulative sum is divided by its own last entry, so it ends at exactly 1, and the
  uniform queries are kept strictly below 1: a cumsum that ends slightly below 1 can neither
  produce an out-of-range index nor select a trailing zero-weight particle.
- **All weights −inf/NaN**: there is no distribution to sample from. The schemes then resample
  *uniformly* (as if all weights were equal) so shapes and particles stay valid; callers detect
  this case with :func:`all_weights_invalid` (the SMC sampler reports it in its diagnostics).
"""

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Resampler = Callable[[Array, Array, int], Array]


def all_weights_invalid(log_weights: Array) -> Array:
  """True when no log-weight is finite or ``+inf`` (all are ``−inf`` or NaN); scalar bool."""
  return ~jnp.any(log_weights > -jnp.inf)


def _sanitize(log_weights: Array) -> Array:
  """NaN → −inf; if every entry is then −inf, all entries become 0 (uniform weights)."""
  log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
  return jnp.where(all_weights_invalid(log_weights), jnp.zeros_like(log_weights), log_weights)


def normalized_weights(log_weights: Array) -> Array:
  """``softmax(log_weights)`` with the NaN / all-invalid conventions of this module; ``(N,)``."""
  return jax.nn.softmax(_sanitize(log_weights))


def log_ess(log_weights: Array) -> Array:
  """Log effective sample size ``log(1/Σ w̄²) = 2 lse(l) − lse(2l)``; ``−inf`` if all invalid."""
  lw = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
  invalid = all_weights_invalid(lw)
  # Shift by the max first (exact in float32), so large offsets lose no precision.
  l0 = lw - jnp.where(invalid, 0.0, jnp.max(lw))
  return jnp.where(invalid, -jnp.inf, 2 * jax.nn.logsumexp(l0) - jax.nn.logsumexp(2 * l0))


def ess(log_weights: Array) -> Array:
  """Effective sample size ``1/Σ w̄_i²`` computed in log space; 0 if all weights invalid."""
  return jnp.exp(log_ess(log_weights))


def _inverse_cdf(log_weights: Array, uniforms: Array) -> Array:
  """Ancestors ``i`` with ``C_{i-1} ≤ u < C_i`` for the normalised CDF ``C``; int32 ``(num,)``."""
  w = normalized_weights(log_weights)
  cdf = jnp.cumsum(w)
  cdf = cdf / cdf[-1]                                     # ends at exactly 1.0 in float32
  u = jnp.clip(uniforms, 0.0, jnp.nextafter(jnp.float32(1), jnp.float32(0)))
  idx = jnp.searchsorted(cdf, u.astype(cdf.dtype), side="right")
  return jnp.clip(idx, 0, log_weights.shape[0] - 1).astype(jnp.int32)


def systematic(key: Array, log_weights: Array, num: int) -> Array:
  """Systematic resampling: one uniform ``U``, queries ``(U + j)/num``."""
  u = (jax.random.uniform(key, ()) + jnp.arange(num)) / num
  return _inverse_cdf(log_weights, u)


def stratified(key: Array, log_weights: Array, num: int) -> Array:
  """Stratified resampling: independent ``U_j``, queries ``(U_j + j)/num``."""
  u = (jax.random.uniform(key, (num,)) + jnp.arange(num)) / num
  return _inverse_cdf(log_weights, u)


def multinomial(key: Array, log_weights: Array, num: int) -> Array:
  """Multinomial resampling: ``num`` i.i.d. draws from ``w̄``."""
  return _inverse_cdf(log_weights, jax.random.uniform(key, (num,)))


def residual(key: Array, log_weights: Array, num: int) -> Array:
  """Residual resampling: ``floor(num w̄_i)`` copies of ``i``, the rest multinomial on residuals.

  Static shapes: the deterministic copies fill the first ``S = Σ floor(num w̄_i)`` slots; slots
  ``≥ S`` take i.i.d. draws from the residual weights ``num w̄_i − floor(num w̄_i)``.
  """
  n = log_weights.shape[0]
  w = normalized_weights(log_weights)
  counts = jnp.floor(num * w).astype(jnp.int32)
  total = jnp.sum(counts)
  det = jnp.repeat(jnp.arange(n, dtype=jnp.int32), counts, total_repeat_length=num)
  resid = jnp.clip(num * w - counts, 0.0, None)
  # If the residuals vanish (every num·w̄_i integral) the draws are unused; avoid log(0) = all −inf.
  resid = jnp.where(jnp.sum(resid) > 0, resid, w)
  draws = _inverse_cdf(jnp.log(resid), jax.random.uniform(key, (num,)))
  return jnp.where(jnp.arange(num) < total, det, draws)


_RESAMPLERS = {
    "systematic": systematic,
    "multinomial": multinomial,
    "stratified": stratified,
    "residual": residual,
}


def get_resampler(name: str) -> Resampler:
  """Looks a resampling scheme up by name (``systematic``, ``multinomial``, ``stratified``,
  ``residual``).

  Raises:
    ValueError: for an unknown name.
  """
  if name not in _RESAMPLERS:
    raise ValueError(f"Unknown resampling scheme {name!r}; choose one of {sorted(_RESAMPLERS)}.")
  return _RESAMPLERS[name]
