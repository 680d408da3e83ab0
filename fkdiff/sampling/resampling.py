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

Cost. Systematic and stratified resampling are O(N + num) without a search: the queries are sorted
with one per stratum ``[j/num, (j+1)/num)``, so the number of queries below ``C_i``,
``b_i = #{j : q_j < C_i}``, follows from ``num · C_i`` alone, and the ancestors are
``a_j = #{i : b_i ≤ j}`` (a histogram of ``b`` and its cumulative sum). This selects exactly what
the inverse-CDF search does, up to float32 rounding of ``num · C_i`` (valid for ``num < 2²⁴``);
the offspring counts are ``b_i − b_{i−1}``, so ``E[#offspring of i] = num · (C_i − C_{i−1})``
exactly for the float32 CDF. Multinomial (and residual's multinomial part) search the CDF for
i.i.d. uniforms, O(num log N) (measured faster on CPU than drawing sorted uniforms as
normalised cumulative exponential spacings, which is what would make the count trick apply).
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


def _cdf(log_weights: Array) -> Array:
  """Normalised cumulative weights ``C`` ending at exactly 1.0 in float32; ``(N,)``."""
  cdf = jnp.cumsum(normalized_weights(log_weights))
  return cdf / cdf[-1]


def _inverse_cdf(log_weights: Array, uniforms: Array) -> Array:
  """Ancestors ``i`` with ``C_{i-1} ≤ u < C_i`` for the normalised CDF ``C``; int32 ``(num,)``."""
  cdf = _cdf(log_weights)
  u = jnp.clip(uniforms, 0.0, jnp.nextafter(jnp.float32(1), jnp.float32(0)))
  idx = jnp.searchsorted(cdf, u.astype(cdf.dtype), side="right")
  return jnp.clip(idx, 0, log_weights.shape[0] - 1).astype(jnp.int32)


def _ancestors_from_below(below: Array, num: int) -> Array:
  """``a_j = #{i : below_i ≤ j}`` for ``j < num`` from non-decreasing ``below (N,)`` in
  ``[0, num]`` (the number of sorted queries under each ``C_i``); int32 ``(num,)``.

  Particle ``i`` gets the queries ``below_{i−1} ≤ j < below_i``; a zero weight
  (``below_i = below_{i−1}``) gets none. Since ``below_N = num`` (``C_N = 1``), ``a_j < N``.
  """
  hist = jnp.zeros((num + 1,), jnp.int32).at[below].add(1)
  return jnp.cumsum(hist[:num]).astype(jnp.int32)


def systematic(key: Array, log_weights: Array, num: int) -> Array:
  """Systematic resampling: one uniform ``U``, queries ``(U + j)/num``.

  ``#{j : (U + j)/num < C_i} = ceil(num C_i − U)`` (clipped to ``[0, num]``): O(N + num).
  """
  u = jax.random.uniform(key, ())
  below = jnp.clip(jnp.ceil(num * _cdf(log_weights) - u), 0, num).astype(jnp.int32)
  return jnp.minimum(_ancestors_from_below(below, num), log_weights.shape[0] - 1)


def stratified(key: Array, log_weights: Array, num: int) -> Array:
  """Stratified resampling: independent ``U_j``, queries ``(U_j + j)/num``.

  With ``k_i = floor(num C_i)``, every stratum ``j < k_i`` lies below ``C_i`` and stratum ``k_i``
  does iff ``U_{k_i} < num C_i − k_i``: O(N + num), no search.
  """
  u = jax.random.uniform(key, (num,))
  scaled = num * _cdf(log_weights)
  k = jnp.clip(jnp.floor(scaled), 0, num).astype(jnp.int32)
  last = (k < num) & (u[jnp.minimum(k, num - 1)] < scaled - k)
  below = jnp.minimum(k + last.astype(jnp.int32), num)
  return jnp.minimum(_ancestors_from_below(below, num), log_weights.shape[0] - 1)


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
