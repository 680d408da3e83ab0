"""Resampling schemes: unbiasedness (E[offspring] = num·w̄) and edge-case regression tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkdiff.sampling import resampling

SCHEMES = ["systematic", "multinomial", "stratified", "residual"]
WEIGHTS = np.array([0.1, 0.25, 0.0, 0.4, 0.05, 0.2], np.float32)   # includes log(0) = −inf


def _offspring(name, log_w, num, reps, seed=0):
  fn = resampling.get_resampler(name)
  idx = jax.jit(jax.vmap(lambda k: fn(k, log_w, num)))(jax.random.split(jax.random.key(seed),
                                                                         reps))
  idx = np.asarray(idx)
  assert idx.dtype == np.int32 and idx.shape == (reps, num)
  return np.stack([np.bincount(row, minlength=log_w.shape[0]) for row in idx])


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("num", [6, 11])
def test_unbiased_offspring(name, num):
  log_w = jnp.log(jnp.asarray(WEIGHTS)) + 3.0          # unnormalised offset must not matter
  reps = 4000
  counts = _offspring(name, log_w, num, reps)
  expected = num * WEIGHTS
  mean = counts.mean(0)
  se = counts.std(0) / np.sqrt(reps)
  # 4 standard errors (6 particles × 8 cases); deterministic parts (se = 0) must match exactly.
  np.testing.assert_array_less(np.abs(mean - expected), 4 * se + 1e-6)
  assert np.all(counts[:, 2] == 0), "a zero-weight particle was selected"
  assert np.all(counts.sum(1) == num)


def test_systematic_and_residual_counts_are_floor_or_ceil():
  log_w = jnp.log(jnp.asarray(WEIGHTS))
  num = 11
  for name in ["systematic", "residual"]:
    counts = _offspring(name, log_w, num, 500)
    assert np.all(counts >= np.floor(num * WEIGHTS) - 1e-6)
  counts = _offspring("systematic", log_w, num, 500)
  assert np.all(counts <= np.ceil(num * WEIGHTS) + 1e-6)


def test_float32_cumsum_below_one_never_selects_trailing_zero_weight():
  # Regression: 999 equal float32 weights sum to slightly ≠ 1; a query just below 1 must not run
  # past the last positive weight into the trailing zero-weight particle (or out of range).
  n = 1000
  log_w = jnp.zeros((n,)).at[-1].set(-jnp.inf)
  w = np.asarray(jax.nn.softmax(log_w))
  assert np.cumsum(w, dtype=np.float32)[-1] != 1.0    # the hazard is real in float32
  top = np.float32(np.nextafter(np.float32(1), np.float32(0)))
  idx = resampling._inverse_cdf(log_w, jnp.array([0.0, 0.5, top, 1.0], jnp.float32))
  assert np.all(np.asarray(idx) < n - 1)
  assert int(idx[2]) == n - 2 and int(idx[3]) == n - 2


@pytest.mark.parametrize("name", SCHEMES)
def test_log_zero_and_nan_are_never_selected(name):
  log_w = jnp.log(jnp.array([0.0, 0.5, 0.5, 0.0])).at[0].set(jnp.nan)
  idx = np.asarray(resampling.get_resampler(name)(jax.random.key(1), log_w, 1000))
  assert set(np.unique(idx)) <= {1, 2}


@pytest.mark.parametrize("name", SCHEMES)
def test_all_minus_inf_is_uniform_and_flagged(name):
  log_w = jnp.full((8,), -jnp.inf)
  idx = np.asarray(jax.jit(resampling.get_resampler(name), static_argnums=2)(
      jax.random.key(2), log_w, 8000))
  assert idx.min() >= 0 and idx.max() < 8
  counts = np.bincount(idx, minlength=8)
  assert np.all(np.abs(counts - 1000) < 5 * np.sqrt(1000))   # uniform (documented behaviour)
  assert bool(resampling.all_weights_invalid(log_w))
  assert float(resampling.ess(log_w)) == 0.0


def test_ess_in_log_space():
  n = 64
  assert np.isclose(float(resampling.ess(jnp.zeros((n,)) + 1e3)), n, rtol=1e-5)  # no overflow
  one_hot = jnp.full((n,), -jnp.inf).at[5].set(-1e3)
  assert np.isclose(float(resampling.ess(one_hot)), 1.0)
  lw = jnp.log(jnp.asarray(WEIGHTS))
  assert np.isclose(float(resampling.ess(lw)), 1 / np.sum(WEIGHTS**2), rtol=1e-5)


def test_unknown_scheme():
  with pytest.raises(ValueError, match="systematic"):
    resampling.get_resampler("bogus")


@pytest.mark.parametrize("name", ["systematic", "stratified"])
def test_counting_selects_what_the_inverse_cdf_search_selects(name):
  # Systematic and stratified count the sorted queries under each C_i instead of searching the
  # CDF; with the same uniforms they must pick the same ancestors as searchsorted on the queries.
  log_w = jnp.log(jnp.asarray(WEIGHTS)) + 3.0
  num = 11
  fn = jax.jit(resampling.get_resampler(name), static_argnums=2)
  for seed in range(50):
    key = jax.random.key(seed)
    u = jax.random.uniform(key, () if name == "systematic" else (num,))
    queries = (u + jnp.arange(num)) / num
    np.testing.assert_array_equal(fn(key, log_w, num), resampling._inverse_cdf(log_w, queries))


@pytest.mark.parametrize("name", ["systematic", "stratified"])
def test_counting_at_large_n_agrees_with_the_search(name):
  # N = 10⁵ skewed weights against a float64 search of the same float32 CDF with the same
  # uniforms: the counting differs only where float32 rounds num·C_i (the float32 search differs
  # from it as often: 0.04-0.09 % of queries here); systematic offspring stay floor/ceil of num·w̄.
  n = 100_000
  log_w = 3.0 * jax.random.normal(jax.random.key(7), (n,))
  key = jax.random.key(8)
  idx = np.asarray(resampling.get_resampler(name)(key, log_w, n))
  u = np.asarray(jax.random.uniform(key, () if name == "systematic" else (n,)), np.float64)
  cdf = np.asarray(resampling._cdf(log_w), np.float64)
  ref = np.minimum(np.searchsorted(cdf, (u + np.arange(n)) / n, side="right"), n - 1)
  assert np.all(np.diff(idx) >= 0) and idx.min() >= 0 and idx.max() < n
  assert np.mean(idx == ref) > 0.998
  counts = np.bincount(idx, minlength=n)
  assert np.max(np.abs(counts - np.bincount(ref, minlength=n))) <= 1
  if name == "systematic":
    expected = n * np.diff(cdf, prepend=0.0)
    assert np.all(counts >= np.floor(expected) - 1) and np.all(counts <= np.ceil(expected) + 1)
