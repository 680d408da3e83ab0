"""Feynman–Kac Sequential Monte Carlo for diffusion models, in parts (METHOD.md §4, §4b).

Levels ``σ_0 > σ_1 > … > σ_K`` and a target ``U(x, σ)`` (:class:`fkdiff.sampling.targets.Target`
or any per-example energy callable) define the intermediate targets ``γ_k = exp(−U(·, σ_k))``.
The sampler is three pure functions over a carried :class:`SMCState`, in the manner of blackjax's
``smc/base.py``:

- :func:`init` draws ``x ~ N(0, (σ_0² + σ_d²)/s I)`` and weights it exactly,
  ``log w = −U_0(x) − log N(x; 0, (σ_0² + σ_d²)/s I)``;
- :func:`step` goes from σ_k to σ_{k+1}: **resample** (scheme, ESS threshold τ and σ window of
  :class:`Resampling`; ``log Ẑ += log mean w``, ``log w ← 0``) and optionally **rejuvenate**
  (a kernel callable, :func:`fkdiff.sampling.mcmc.rejuvenation`) at σ_k; **propose** with the
  Euler–Maruyama step ``x' = x − (Δ_k/s) ∇ + sqrt(Δ_k/s) z``, ``Δ_k = σ_k² − σ_{k+1}²``; evaluate
  at σ_{k+1} (the only evaluation of the step) and **reweight** with the weight scheme's
  increment (:mod:`fkdiff.sampling.weights`: :class:`~fkdiff.sampling.weights.ExactRatio`,
  :class:`~fkdiff.sampling.weights.ScoreOnly`, or any object with the methods of
  :class:`~fkdiff.sampling.weights.WeightScheme`: the sampler only calls them);
- :func:`finish` completes ``log Ẑ``, optionally resamples once and denoises.

:func:`smc_sample` is the ``lax.scan`` driver over them. The configuration of a sampler (target,
scheme, resampling, rejuvenation, sharding) is one :class:`SMC` value: other JAX code can run
``state = init(sampler, …)`` and ``state, info = step(sampler, key, state, σ_next)`` itself (e.g. to guide
between levels) and ``vmap`` the driver over keys or conditions.

``exp(log Ẑ)`` under exact-ratio weights is an unbiased estimate of ``Z_K = ∫ exp(−U_K(x)) dx``
(up to the negligible effect of the adaptive resampling trigger); ``log Ẑ`` itself is biased low,
and an energy gauge ``c(σ)`` shifts it by ``−c(σ_K)``. Under score-only weights it is NaN.

**Where the target is zero or undefined.** The support of ``γ_k`` is ``S_k = {x : U(x, σ_k)
finite}``: a particle whose potential is ``+inf`` (a hard bound) or NaN (undefined) gets
log-weight ``−inf`` under every scheme (it is dropped at the next resampling); NaN potentials are
counted per level (``SMCInfo.num_nan``; in all: ``SMCResult.num_nan_energies``). The backward
kernel ``N(x; x', v I)`` of the weights (METHOD.md §4) must live on ``S_k`` too, or a particle that
would leave and re-enter the support is missing from the weights and the particles are pushed
away from the boundary (docs/METHOD.md §4d): it is renormalised to ``S_k``, which multiplies the
increment by ``1/P_k(x')``, ``P_k(x') = Pr(x' + sqrt(v) z ∈ S_k)``, estimated without bias by
counting draws of ``z`` until ``SUPPORT_HITS`` of them land in ``S_k`` (a negative-binomial count
over ``SUPPORT_HITS``, mean ``1/P_k``; at
most ``MAX_SUPPORT_TRIALS``; value-only evaluations of ``U(·, σ_k)``; ``SMCInfo.support_trials``).
The trials run at a level only when some particle of it has a non-finite potential, so a target
that is finite everywhere pays nothing.

**Invalid weights.** NaN or ``+inf`` increments and non-finite particles get log-weight ``−inf``.
If *all* weights are ``−inf`` at some level (e.g. every particle outside a hard box), resampling
is uniform (see :mod:`fkdiff.sampling.resampling`), ``log Ẑ = −inf``, and
``SMCResult.weights_invalid`` is True (per level: ``SMCInfo.weights_invalid``); the particles are
then *not* samples of the target. ``SMCResult.num_nonfinite`` counts particles with non-finite
coordinates (they carry weight 0).

**Sharding.** With ``mesh`` (a 1-D ``jax.sharding.Mesh``) the particle axis of every carried array
is constrained to ``NamedSharding(mesh, P(axis))``; XLA partitions the scan and performs the
global (cross-device) resampling. The random numbers do not depend on the sharding, so the
result equals the single-device one for the same key (up to float reduction order).

Everything is ``jax.jit``-able (close over the callables and static options); the driver's loop is
a ``lax.scan`` over the K levels (compile time independent of K) with no host callbacks. With
score-only left-rule weights and no rejuvenation the last level runs after the scan without the
energies' gradients at σ_K: its increment needs only the terms there and the values (for the
support), and the gradient would only feed a next proposal (K value-and-gradient evaluations of
the energies in all, at σ_0 … σ_{K−1}, as plain reverse diffusion, and one value-only pass).
"""

import functools
import math
import warnings
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fkdiff.sampling import resampling as resampling_lib
from fkdiff.sampling import targets as targets_lib
from fkdiff.sampling import weights as weights_lib
from fkdiff.sampling.mcmc import MCMCState
from fkdiff.sampling.weights import Evaluation

Array = jax.Array
# rejuvenate(key, chains: MCMCState (N, ...), potential_fn: x -> U, σ) -> (chains, acceptance).
Rejuvenation = Callable[[Array, MCMCState, Callable[[Array], Array], Array],
                        Tuple[MCMCState, Array]]


class Resampling(NamedTuple):
  """When and how to resample: at σ_k if ``ESS < ess_threshold · N`` and σ_k lies in
  ``sigma_range`` (``(σ_lo, σ_hi)``, inclusive; default every level), with ``scheme``
  (``'systematic'`` | ``'multinomial'`` | ``'stratified'`` | ``'residual'``)."""
  scheme: str = "systematic"
  ess_threshold: float = 0.5
  sigma_range: Optional[Tuple[float, float]] = None


class SMC(NamedTuple):
  """A sampler's parts. Build with :func:`build` (validates); pass to :func:`init`/:func:`step`.

  Attributes:
    target: the :class:`~fkdiff.sampling.targets.Target`.
    scheme: the weight scheme (a :class:`~fkdiff.sampling.weights.WeightScheme`).
    resampling: :class:`Resampling`.
    rejuvenation: None or a kernel callable (:func:`fkdiff.sampling.mcmc.rejuvenation`) leaving
      ``γ_k`` invariant, run after each resampling.
    sharding: None or the particle-axis ``NamedSharding``.
    particle_chunk_size: None or evaluate at most this many particles at a time (``lax.map``).
  """
  target: targets_lib.Target
  scheme: weights_lib.Scheme = weights_lib.DEFAULT
  resampling: Resampling = Resampling()
  rejuvenation: Optional[Rejuvenation] = None
  sharding: Optional[NamedSharding] = None
  particle_chunk_size: Optional[int] = None


class SMCState(NamedTuple):
  """The particle system at one level σ_k.

  Attributes:
    particles: ``(N, *event_shape)``.
    log_weights: ``(N,)`` unnormalised log-weights since the last resampling, complete at σ_k.
    log_Z: scalar, ``Σ log mean(w)`` over the resampling events so far.
    sigma: scalar σ_k.
    evaluation: the scheme's :class:`~fkdiff.sampling.weights.Evaluation` at σ_k, ``(N, …)``.
  """
  particles: Array
  log_weights: Array
  log_Z: Array
  sigma: Array
  evaluation: Evaluation


class SMCInfo(NamedTuple):
  """Per-step diagnostics (scalars; ``(K,)`` from the driver), at the level σ_k left by the step.

  Attributes:
    sigma: the level σ_k.
    ess: effective sample size before the resampling decision at σ_k.
    resampled: whether the particles were resampled at σ_k.
    acceptance_rate: mean MCMC acceptance probability of the rejuvenation at σ_k (0 if none).
    weights_invalid: all weights were ``−inf``/NaN at σ_k.
    num_nan: number of particles whose potential at σ_k is NaN (before the resampling).
    support_trials: mean number of support trials per particle for the proposals of this step
      (0 where every potential was finite: module docstring).
  """
  sigma: Array
  ess: Array
  resampled: Array
  acceptance_rate: Array
  weights_invalid: Array
  num_nan: Array
  support_trials: Array


class SMCResult(NamedTuple):
  """Output of :func:`smc_sample` / :func:`finish`.

  Attributes:
    particles: ``(N, *event_shape)`` at σ_K (denoised if ``denoise_fn`` was given).
    log_weights: ``(N,)`` unnormalised final log-weights (zeros after ``final_resample``).
    log_Z: scalar ``log Ẑ`` (exact-ratio weights; NaN under score-only weights).
    ess: final effective sample size (before any final resampling).
    info: :class:`SMCInfo`, per level σ_0 … σ_{K−1}.
    weights_invalid: True if the weights were all ``−inf``/NaN at any level or at the end.
    num_nonfinite: number of returned particles with a non-finite coordinate.
    num_nan_energies: NaN potentials met, summed over the levels σ_0 … σ_K (those particles
      carry weight 0: module docstring).
  """
  particles: Array
  log_weights: Array
  log_Z: Array
  ess: Array
  info: SMCInfo
  weights_invalid: Array
  num_nonfinite: Array
  num_nan_energies: Array


# ---------------------------------------------------------------------------------------------
# Construction and validation.


def build(target, scheme: weights_lib.Scheme = weights_lib.DEFAULT,
          resampling: Resampling = Resampling(),
          rejuvenation: Optional[Rejuvenation] = None, mesh: Optional[Mesh] = None,
          particle_axis: Optional[str] = None,
          particle_chunk_size: Optional[int] = None) -> SMC:
  """A validated :class:`SMC` (a plain energy callable becomes a one-energy target).

  Raises:
    ValueError: for an unknown weight or resampling scheme, ``ess_threshold`` outside [0, 1],
      ``particle_chunk_size < 1`` or combined with ``mesh``.
  """
  target = targets_lib.as_target(target)
  weights_lib.check_scheme(scheme)
  resampling_lib.get_resampler(resampling.scheme)
  if not 0.0 <= resampling.ess_threshold <= 1.0:
    raise ValueError(f"ess_threshold must be in [0, 1], got {resampling.ess_threshold}.")
  if particle_chunk_size is not None and (particle_chunk_size < 1 or mesh is not None):
    raise ValueError("particle_chunk_size must be >= 1 and cannot be combined with mesh; got "
                     f"{particle_chunk_size} (mesh given: {mesh is not None}).")
  sharding = None
  if mesh is not None:
    axis = particle_axis if particle_axis is not None else mesh.axis_names[0]
    sharding = NamedSharding(mesh, P(axis))
  return SMC(target, scheme, resampling, rejuvenation, sharding, particle_chunk_size)


def _check_sigmas(sigmas) -> None:
  s = targets_lib.concrete(sigmas)
  if s is None:
    return  # traced: the shape is still checked below, the values cannot be
  if s.ndim != 1 or s.shape[0] < 2:
    raise ValueError(f"sigmas must be a 1-D array with at least 2 levels, got shape {s.shape}.")
  if not np.all(np.isfinite(s)) or np.any(s <= 0):
    raise ValueError(f"sigmas must be finite and > 0, got {s}.")
  if np.any(np.diff(s) >= 0):
    raise ValueError("sigmas must be strictly decreasing (σ_0 > σ_1 > … > σ_K); got "
                     f"{s}.")


def check_event_shape(event_shape) -> Tuple[int, ...]:
  """``event_shape`` as a tuple of positive ints; a clear ValueError for anything else (an int,
  a zero or negative size)."""
  if not isinstance(event_shape, (tuple, list)) or not all(
      isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in event_shape):
    raise ValueError("event_shape must be a tuple of positive ints, the shape of one example "
                     f"(e.g. (2,) or (32, 32, 3)), got {event_shape!r}.")
  return tuple(int(d) for d in event_shape)


def _check_concrete_positive_scalar(name: str, value) -> None:
  v = targets_lib.concrete(value)
  if v is not None and (v.shape != () or not np.isfinite(v) or not v > 0):
    raise ValueError(f"{name} must be a finite scalar > 0, got {value!r}.")


def _start_sigma_data(target, sigma_data, init_std):
  """The σ_d of the start: the one passed (checked), else the target's; with neither (and no
  ``init_std``) a ValueError saying how to give one."""
  if sigma_data is not None:
    _check_concrete_positive_scalar("sigma_data", sigma_data)
    return sigma_data
  own = targets_lib.as_target(target).sigma_data if callable(target) else None
  if own is not None:
    return own
  if init_std is not None:
    return 1.0   # unused: init_std sets the start width.
  raise ValueError("smc_sample needs the data std σ_d of its start N(0, (σ_0² + σ_d²)/s): pass "
                   "sigma_data=..., or build the target from energies that carry it "
                   "(fkdiff.sampling.targets.as_target(energy_fn, sigma_data=...), or "
                   "LoadedEnergy.target of a trained run).")


# ---------------------------------------------------------------------------------------------
# The parts.


def _log_normal(x: Array, mean: Array, var: Array) -> Array:
  """``log N(x; mean, var I)`` for one example of any shape; scalar."""
  d = x.size
  return -0.5 * (d * jnp.log(2 * jnp.pi * var) + jnp.sum((x - mean)**2) / var)


def _over_particles(fn: Callable, chunk: Optional[int]) -> Callable:
  """``fn(x, σ)`` per particle → over ``x (N, ...)``: one vmap, or ``lax.map`` over chunks."""
  if chunk is None:
    return jax.vmap(fn, in_axes=(0, None))
  return lambda x, sigma: jax.lax.map(lambda xi: fn(xi, sigma), x, batch_size=chunk)


def _over_particles_args(fn: Callable, chunk: Optional[int]) -> Callable:
  """``fn(*per-particle arrays)`` over a leading particle axis (vmap, or chunked ``lax.map``)."""
  if chunk is None:
    return jax.vmap(fn)
  return lambda *args: jax.lax.map(lambda a: fn(*a), args, batch_size=chunk)


def _float_dtype(a) -> jnp.dtype:
  """The sampler's working dtype: the levels' floating dtype (float64 under ``jax_enable_x64``
  with float64 levels), else float32."""
  dtype = jnp.asarray(a).dtype
  return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(jnp.float32)


def _like(tree, ref):
  """``tree`` with every leaf cast to the dtype of the matching leaf of ``ref`` (energies that
  promote to another dtype do not change the scan's carry)."""
  return jax.tree.map(lambda a, r: jnp.asarray(a).astype(r.dtype), tree, ref)


def _cast(tree, dtype):
  """Floating leaves of ``tree`` cast to ``dtype``."""
  return jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _constrain(sampler: SMC, tree):
  if sampler.sharding is None:
    return tree
  return jax.tree.map(
      lambda a: jax.lax.with_sharding_constraint(a, sampler.sharding) if a.ndim else a, tree)


def _evaluate(sampler: SMC, x: Array, sigma: Array, key: Optional[Array] = None) -> Evaluation:
  """The scheme's evaluation of every particle at σ; ``(N, …)``. ``key`` is shared by all
  particles (the Hutchinson probes of a level are common to them)."""
  fn = lambda xi, s: sampler.scheme.evaluate(sampler.target, xi, s, key)
  return _over_particles(fn, sampler.particle_chunk_size)(x, sigma)


def _eval_key(key: Array) -> Array:
  """The key of a level's evaluation, derived without changing the step's other streams."""
  return jax.random.fold_in(key, 0x5eed)


def _support_key(key: Array) -> Array:
  """The key of a step's support trials (another stream of its own)."""
  return jax.random.fold_in(key, 0x5a77)


def _sanitize(log_w: Array, x: Array, potential: Array) -> Array:
  """NaN/+inf log-weights, non-finite particles and particles outside the support (a
  non-finite potential) → −inf (module docstring)."""
  bad = jnp.isnan(log_w) | jnp.isposinf(log_w) | ~jnp.isfinite(potential)
  bad |= ~jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=-1)
  return jnp.where(bad, -jnp.inf, log_w)


# The most support trials per particle and level (module docstring): a particle needing more
# (P_k(x') ≲ 1/64) keeps the count reached, an underestimate of 1/P_k.
MAX_SUPPORT_TRIALS = 64
SUPPORT_HITS = 4


def _log_inv_support_prob(sampler: SMC, key: Array, x: Array, need: Array, sigma: Array,
                          var: Array) -> Tuple[Array, Array]:
  """``log`` of an unbiased estimate of ``1/P(x)``, ``P(x) = Pr(x + sqrt(var) z ∈ S)`` with
  ``S = {U(·, σ) finite}``, for the particles ``need`` (0 elsewhere): the number of draws of
  ``z`` until ``SUPPORT_HITS`` land in ``S``, over ``SUPPORT_HITS`` (negative binomial, mean
  ``1/P``). Returns ``((N,), mean
  trials per particle)``; no evaluation at all when ``need`` is all False."""
  potential = _over_particles(sampler.target, sampler.particle_chunk_size)

  def body(carry):
    i, count, hits = carry
    z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
    inside = jnp.isfinite(potential(x + jnp.sqrt(var) * z, sigma))
    todo = hits < SUPPORT_HITS
    return i + 1, count + todo.astype(jnp.int32), hits + (todo & inside).astype(jnp.int32)

  zeros = jnp.zeros(need.shape, jnp.int32)
  init_hits = jnp.where(need, 0, SUPPORT_HITS).astype(jnp.int32)
  _, count, _ = jax.lax.while_loop(
      lambda c: (c[0] < MAX_SUPPORT_TRIALS) & jnp.any(c[2] < SUPPORT_HITS), body,
      (jnp.zeros((), jnp.int32), zeros, init_hits))
  log_inv = jnp.where(need, jnp.log(jnp.maximum(count, 1).astype(x.dtype) / SUPPORT_HITS), 0.0)
  return log_inv, jnp.mean(count.astype(x.dtype))


def _num_nan(potential: Array) -> Array:
  return jnp.sum(jnp.isnan(potential)).astype(jnp.int32)


def init(sampler: SMC, key: Array, sigma: Array, num_particles: int, event_shape: Sequence[int], *,
         sigma_data: Optional[float] = None, init_std: Optional[float] = None) -> SMCState:
  """``N`` particles at ``σ_0 = sigma``, exactly weighted for ``γ_0`` (module docstring).

  Args:
    sigma_data: σ_d of the start; default the target's own (as in :func:`smc_sample`).
    init_std: standard deviation of the initial Gaussian; default ``sqrt((σ_0² + σ_d²)/s)``
      with the scheme's start scale ``s``.
  """
  dtype = _float_dtype(sigma)
  sigma = jnp.asarray(sigma, dtype)
  sigma_data = _start_sigma_data(sampler.target, sigma_data, init_std)
  start_scale, _ = sampler.scheme.scales(sampler.target)
  std = (jnp.sqrt((sigma**2 + sigma_data**2) / start_scale) if init_std is None
         else jnp.asarray(init_std, dtype)).astype(dtype)
  x = std * jax.random.normal(key, (num_particles, *event_shape), dtype)
  x = _constrain(sampler, x)
  log_prior = jax.vmap(_log_normal, in_axes=(0, None, None))(x, jnp.zeros(event_shape, dtype),
                                                              std**2)
  ev = _cast(_evaluate(sampler, x, sigma, _eval_key(key)), dtype)
  log_w = _sanitize(-ev.potential - log_prior, x, ev.potential).astype(dtype)
  return _constrain(sampler, SMCState(x, log_w, jnp.zeros((), dtype), sigma, ev))


def _resample(sampler: SMC, key: Array, state: SMCState) -> Tuple[SMCState, Array]:
  """Resampling (``log Ẑ += log mean w``, ``log w ← 0``) then the optional rejuvenation."""
  k_res, k_mcmc = jax.random.split(key)
  lw = state.log_weights
  num = lw.shape[0]
  log_mean_w = jax.nn.logsumexp(jnp.where(jnp.isnan(lw), -jnp.inf, lw)) - math.log(num)
  idx = resampling_lib.get_resampler(sampler.resampling.scheme)(k_res, lw, num)
  take = lambda a: a[idx]
  state = _constrain(sampler, SMCState(take(state.particles), jnp.zeros_like(lw),
                                   (state.log_Z + log_mean_w).astype(state.log_Z.dtype),
                                   state.sigma, jax.tree.map(take, state.evaluation)))
  if sampler.rejuvenation is None:
    return state, jnp.zeros((), state.log_Z.dtype)
  sigma, ev = state.sigma, state.evaluation
  potential_fn = targets_lib.AtSigma(sampler.target, sigma)
  cached = sampler.scheme.cached_potential_and_grad(sampler.target, ev)
  if cached is None:   # else the cached (U, ∇U) is the chains' state
    cached = _over_particles(jax.value_and_grad(sampler.target), sampler.particle_chunk_size)(
        state.particles, sigma)
  chains, acc = sampler.rejuvenation(k_mcmc, MCMCState(state.particles, *cached), potential_fn,
                                 sigma)
  ev = sampler.scheme.evaluation_after_mcmc(ev, chains.potential, chains.grad)
  if ev is None:
    ev = _evaluate(sampler, chains.position, sigma, _eval_key(k_mcmc))
  new = _like(state._replace(particles=chains.position, evaluation=ev), state)
  return _constrain(sampler, new), jnp.asarray(acc, state.log_Z.dtype)


def _keep(sampler: SMC, key: Array, state: SMCState) -> Tuple[SMCState, Array]:
  return state, jnp.zeros((), state.log_Z.dtype)


def step(sampler: SMC, key: Array, state: SMCState, sigma_next: Array) -> Tuple[SMCState, SMCInfo]:
  """One level: resample (+ rejuvenate) at σ_k, move to ``σ_{k+1} = sigma_next``, reweight.

  Returns:
    ``(state at σ_{k+1}, SMCInfo of σ_k)``.
  """
  return _step(sampler, key, state, sigma_next, evaluate=True)


def _values_only(sampler: SMC, x: Array, sigma: Array) -> Evaluation:
  """The potential ``U(x, σ)`` and terms ``T(x, σ)`` of every particle, without gradients (the
  gradient and rate fields are NaN: not evaluated)."""
  over = lambda fn: _over_particles(fn, sampler.particle_chunk_size)(x, sigma)
  terms = over(sampler.target.term_potential)
  nan = jnp.full_like(terms, jnp.nan)
  return Evaluation(over(sampler.target), jnp.full_like(x, jnp.nan), nan, terms)


def _last_needs_values_only(sampler: SMC) -> bool:
  """Whether the driver's last step may skip the energies' gradients at σ_K: the score-only left
  rule's increment reads the rate at σ_k and the terms only (the values are needed for the
  support), and without rejuvenation the last step can run outside the scan."""
  return not sampler.scheme.last_level_needs_gradient and sampler.rejuvenation is None


def _step(sampler: SMC, key: Array, state: SMCState, sigma_next: Array, *,
          evaluate: bool) -> Tuple[SMCState, SMCInfo]:
  """:func:`step`; ``evaluate=False`` (only where :func:`_last_needs_values_only`) evaluates
  no gradients at σ_{k+1}, so the returned state cannot be stepped from."""
  k_res, k_move = jax.random.split(key)
  num = state.log_weights.shape[0]
  sigma = state.sigma
  sigma_next = jnp.asarray(sigma_next, sigma.dtype)
  # 1. adaptive resampling (+ rejuvenation) at σ_k.
  ess = resampling_lib.ess(state.log_weights)
  invalid = resampling_lib.all_weights_invalid(state.log_weights)
  num_nan = _num_nan(state.evaluation.potential)
  outside_before = jnp.any(~jnp.isfinite(state.evaluation.potential))
  lo, hi = sampler.resampling.sigma_range or (-jnp.inf, jnp.inf)
  do_resample = (ess < sampler.resampling.ess_threshold * num) & (sigma >= lo) & (sigma <= hi)
  state, acc = jax.lax.cond(do_resample, functools.partial(_resample, sampler),
                            functools.partial(_keep, sampler), k_res, state)
  # 2. the scheme's proposal (Euler–Maruyama N(x'; x + (Δ/s) b(x), (Δ/s) I), or its own move).
  x = state.particles
  _, kernel_scale = sampler.scheme.scales(sampler.target)
  var = (sigma**2 - sigma_next**2) / kernel_scale
  noise = jnp.sqrt(var) * jax.random.normal(k_move, x.shape, x.dtype)
  propose = lambda xi, evi, ni: sampler.scheme.propose(sampler.target, xi, evi, ni, var, sigma)
  x_new, mean = _over_particles_args(propose, sampler.particle_chunk_size)(x, state.evaluation, noise)
  # 3. evaluate at σ_{k+1} (the step's only evaluation) and reweight.
  ev = (_evaluate(sampler, x_new, sigma_next, _eval_key(key)) if evaluate
        else _values_only(sampler, x_new, sigma_next))
  kernel_ratio = jax.vmap(lambda a, b, m: _log_normal(a, b, var) - _log_normal(b, m, var))(
      x, x_new, mean)                                 # log L_k(x | x') − log M_k(x' | x)
  inc = sampler.scheme.log_increment(state.evaluation, ev, kernel_ratio, sigma, sigma_next)
  # 4. the backward kernel renormalised to S_k where the support is not everything (docstring).
  inside_old, inside_new = jnp.isfinite(state.evaluation.potential), jnp.isfinite(ev.potential)
  outside = outside_before | jnp.any(~inside_old) | jnp.any(~inside_new)
  need = outside & inside_old & inside_new & (state.log_weights > -jnp.inf)
  log_inv_p, trials = _log_inv_support_prob(sampler, _support_key(key), x_new, need, sigma, var)
  log_w = _sanitize(state.log_weights + inc + log_inv_p, x_new, ev.potential)
  new = _like(SMCState(x_new, log_w, state.log_Z, sigma_next, ev), state)
  return _constrain(sampler, new), SMCInfo(sigma, ess, do_resample, acc, invalid, num_nan, trials)


def finish(sampler: SMC, key: Array, state: SMCState, info: SMCInfo, *, final_resample: bool = False,
           denoise_fn: Optional[Callable[[Array, Array], Array]] = None) -> SMCResult:
  """The result at the last level: ``log Ẑ`` completed, optionally one resampling and a
  denoiser ``denoise_fn(x, σ_K)`` applied to every particle."""
  lw, x = state.log_weights, state.particles
  num = lw.shape[0]
  final_invalid = resampling_lib.all_weights_invalid(lw)
  log_Z = state.log_Z + jax.nn.logsumexp(lw) - math.log(num)
  if not sampler.scheme.estimates_log_z:
    log_Z = jnp.full((), jnp.nan, state.log_Z.dtype)
  final_ess = resampling_lib.ess(lw)
  if final_resample:
    idx = resampling_lib.get_resampler(sampler.resampling.scheme)(key, lw, num)
    x, lw = x[idx], jnp.zeros_like(lw)
  if denoise_fn is not None:
    x = _over_particles(denoise_fn, sampler.particle_chunk_size)(x, state.sigma)
  x, lw = _constrain(sampler, (x, lw))
  num_nonfinite = jnp.sum(~jnp.all(jnp.isfinite(x.reshape(num, -1)), axis=-1))
  num_nan = jnp.sum(info.num_nan) + _num_nan(state.evaluation.potential)
  return SMCResult(particles=x, log_weights=lw, log_Z=log_Z, ess=final_ess, info=info,
                   weights_invalid=jnp.any(info.weights_invalid) | final_invalid,
                   num_nonfinite=num_nonfinite, num_nan_energies=num_nan)


# ---------------------------------------------------------------------------------------------
# The driver.


def smc_sample(
    key: Array,
    target,
    sigmas: Array,
    num_particles: int,
    event_shape: Sequence[int],
    *,
    sigma_data: Optional[float] = None,
    scheme: weights_lib.Scheme = weights_lib.DEFAULT,
    resampling: Resampling = Resampling(),
    rejuvenation: Optional[Rejuvenation] = None,
    final_resample: bool = False,
    denoise_fn: Optional[Callable[[Array, Array], Array]] = None,
    init_std: Optional[float] = None,
    mesh: Optional[Mesh] = None,
    particle_chunk_size: Optional[int] = None,
) -> SMCResult:
  """Feynman–Kac SMC from ``σ_0`` down to ``σ_K`` for the targets ``exp(−U(x, σ_k))``.

  Args:
    key: PRNG key.
    target: a :class:`~fkdiff.sampling.targets.Target` (or a per-example energy ``U(x, σ)``).
    sigmas: strictly decreasing ``(K+1,)`` levels, e.g. ``karras_sigmas(K+1, 0.002, 80)``.
    num_particles: N ≥ 2 (static).
    event_shape: shape of one example, a tuple of positive ints, e.g. ``(2,)`` or ``(H, W, C)``
      (static).
    sigma_data: σ_d of the start ``N(0, (σ_0² + σ_d²)/s I)``, > 0; default the target's own
      (:attr:`~fkdiff.sampling.targets.Target.sigma_data`: its energies' σ_d, combined), which
      a target built from energies that carry it has (``targets.as_target(E, sigma_data)``,
      ``LoadedEnergy.target``). ``init_std`` replaces the whole start width.
    scheme: the weight scheme. Default :data:`fkdiff.sampling.weights.DEFAULT`:
      ``ScoreOnly(rule='trapezoid', noise='matched', proposal='shaped')`` — no energy values
      compared across σ (holds on learned energies), noise matched to the target's scale, the
      Hessian-shaped proposal and, above 16 numbers per example, shared Hutchinson probes for the
      Laplacian (docs/METHOD.md §4c: measured correct on exact targets from d = 2 to 12,288).
      Or :class:`~fkdiff.sampling.weights.ExactRatio` (exact for any step, needs energies whose
      σ-direction is right; also reports ``log Ẑ``; its weights degenerate in high dimension).
    resampling: :class:`Resampling` (scheme, ESS threshold, σ window).
    rejuvenation: None or a kernel callable, e.g. ``mcmc.rejuvenation('mala', num_steps=2)``.
    final_resample: return one equally weighted (resampled) particle set.
    denoise_fn: if given, particles are mapped through ``denoise_fn(x, σ_K)`` at the end.
    init_std: standard deviation of the initial Gaussian (default: matched to the target).
    mesh: optional 1-D device mesh to shard the particles over (N divisible by its size; the
      mesh's only axis).
    particle_chunk_size: evaluate the target (and denoiser) on at most this many particles at a
      time (``lax.map`` over vmapped chunks) to bound memory for image-scale energies; same
      results as unchunked. MCMC rejuvenation is not chunked. Not combined with ``mesh``.
  Returns:
    :class:`SMCResult`.
  Raises:
    ValueError: for N < 2, a σ grid that is not strictly decreasing and positive, a target (or
      drift/denoiser) that does not map one example of ``event_shape`` to a scalar (to
      ``event_shape``), or invalid options.
  """
  if not isinstance(num_particles, (int, np.integer)) or num_particles < 2:
    raise ValueError(f"num_particles must be an int >= 2, got {num_particles!r}.")
  num = int(num_particles)
  event_shape = check_event_shape(event_shape)
  sigma_data = _start_sigma_data(target, sigma_data, init_std)
  _check_sigmas(sigmas)
  sigmas = jnp.asarray(sigmas, _float_dtype(sigmas))
  if sigmas.ndim != 1 or sigmas.shape[0] < 2:
    raise ValueError(f"sigmas must be 1-D with at least 2 levels, got shape {sigmas.shape}.")
  sampler = build(target, scheme, resampling, rejuvenation, mesh,
              particle_chunk_size=particle_chunk_size)
  if mesh is not None and num % mesh.shape[mesh.axis_names[0]]:
    raise ValueError(f"num_particles={num} must be divisible by the mesh axis size "
                     f"{mesh.shape[mesh.axis_names[0]]}.")
  weights_lib.check_per_example("target", sampler.target, event_shape, ())
  weights_lib.check_scheme(sampler.scheme, event_shape)   # its callables on this event shape
  if denoise_fn is not None:
    weights_lib.check_per_example("denoise_fn", denoise_fn, event_shape, event_shape)
  for message in setting_warnings(sampler, event_shape):
    warnings.warn(message, SMCSettingWarning, stacklevel=2)

  k_init, k_final, k_steps = jax.random.split(key, 3)
  state = init(sampler, k_init, sigmas[0], num, event_shape, sigma_data=sigma_data, init_std=init_std)
  keys = jax.random.split(k_steps, sigmas.shape[0] - 1)
  body = lambda st, inp: step(sampler, inp[0], st, inp[1])
  if not _last_needs_values_only(sampler):
    state, info = jax.lax.scan(body, state, (keys, sigmas[1:]))
  else:   # the same steps; the last one without the energies' σ_K evaluation (module docstring)
    state, info = jax.lax.scan(body, state, (keys[:-1], sigmas[1:-1]))
    state, last = _step(sampler, keys[-1], state, sigmas[-1], evaluate=False)
    info = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), info, last)
  return finish(sampler, k_final, state, info, final_resample=final_resample, denoise_fn=denoise_fn)


class SMCSettingWarning(UserWarning):
  """A sampler setting that is known not to sample its target (:func:`setting_warnings`)."""


# Above this many numbers per example, settings measured wrong on exact targets are warned about.
HIGH_DIMENSION = 256


def setting_warnings(sampler: SMC, event_shape: Sequence[int]) -> list:
  """Messages for settings measured not to sample their target on exact energies
  (docs/METHOD.md §4c, benchmarks/RESULTS.md "SMC in image dimensions"): in more than
  ``HIGH_DIMENSION`` numbers per example, score-only weights with unit noise on a target of
  scale ``s ≠ 1`` (its proposal is the summed/scaled-score SDE, whose width the weights cannot
  correct), and the plain Euler–Maruyama proposal with weights that cannot see it (score-only,
  matched noise: ≈ 1.2× the variance at d = 3,072 on 64 levels). A traced scale is not checked."""
  size = int(np.prod(tuple(event_shape)))
  if size <= HIGH_DIMENSION:
    return []
  # From the concrete weights (a target closed over by jit is still concrete here).
  weights = targets_lib.concrete(sampler.target.weights)
  total = None if weights is None else float(np.sum(weights))
  scale = None if total is None else (total if total > 0 else 1.0)
  return list(sampler.scheme.setting_warnings(scale, size))


def diagnostics(result: SMCResult, min_ess: float = 2.0) -> list:
  """What a result's own numbers say about its weights, as messages for a user (empty if
  nothing): all weights invalid at some level, non-finite particles, NaN potentials, or an ESS
  below ``min_ess`` at some level (the weights degenerated: the particles are then a few draws
  of the proposal, not of the target)."""
  out = []
  if bool(result.weights_invalid):
    out.append("all weights were invalid (-inf/NaN) at some level: the particles are not "
               "samples of the target.")
  if int(result.num_nonfinite):
    out.append(f"{int(result.num_nonfinite)} particles have non-finite coordinates.")
  if int(result.num_nan_energies):
    out.append(f"{int(result.num_nan_energies)} NaN potentials met over the levels: those "
               "particles got weight 0, so the target is taken as zero where it is undefined.")
  ess = np.asarray(result.info.ess)
  low = int(np.sum(ess < min_ess)) + int(float(result.ess) < min_ess)
  if low:
    out.append(f"weights degenerate: ESS < {min_ess:g} at {low} of {ess.size + 1} levels "
               f"(lowest {float(min(ess.min(), float(result.ess))):.2f}); the particles are "
               "close to draws of the proposal. docs/METHOD.md §4c lists settings that hold.")
  return out


def weighted_mean(result: SMCResult, fn: Callable[[Array], Array] = lambda x: x) -> Array:
  """Self-normalised estimate ``Σ_i w̄_i fn(x_i)`` (``fn`` per example, vmapped)."""
  w = resampling_lib.normalized_weights(result.log_weights)
  vals = jax.vmap(fn)(result.particles)
  # Zero-weight particles may be non-finite (documented); keep 0·NaN out of the sum.
  vals = jnp.where(w.reshape((-1,) + (1,) * (vals.ndim - 1)) > 0, vals, 0)
  return jnp.tensordot(w, vals, axes=1)
