"""Feynman–Kac Sequential Monte Carlo for diffusion models (METHOD.md §4).

Levels ``σ_0 > σ_1 > … > σ_K`` (``sigmas``, K+1 entries) and a potential ``U(x, σ)`` (built with
:mod:`fkdiff.sampling.targets`, or any per-example energy callable) define the intermediate
targets ``γ_k(x) = exp(−U_k(x))``, ``U_k = U(·, σ_k)``. Every weight below is the formula of
METHOD.md §4; the names in the code follow it.

- Start: ``x ~ N(0, (σ_0² + σ_d²)/s I)``, ``log w = −U_0(x) − log prior(x)``.
- At each level k (k = 0 … K−1), in this order:
  1. **resample** if ``ESS < τ N`` and ``σ_k`` lies in ``resample_sigma_range`` (default: every
     level): ``log Ẑ += log mean(w)``, ancestors drawn with the chosen scheme, ``log w ← 0``; then
     optionally **rejuvenate** with MALA/HMC steps that leave ``γ_k`` invariant;
  2. **propose** with an Euler–Maruyama step of the reverse SDE
     ``M_k(x'|x) = N(x'; x + Δ b_k(x), Δ I)``, ``Δ = (σ_k² − σ_{k+1}²)/s``, drift ``b_k = −∇U_k``
     by default (``drift_fn`` overrides it);
  3. **reweight**, ``log w += log G_{k+1}`` with (``weight_mode='exact'``, the default, exact for
     any proposal) ``log G_{k+1} = −U_{k+1}(x') + U_k(x) + log N(x; x', Δ I) − log M_k(x'|x)``,
     the backward kernel being the forward noising step ``L_k(x|x') = N(x; x', Δ I)``.
  ``s`` is ``potential_scale`` (default 1: METHOD.md §4 as written). For a potential
  ``U ≈ s E`` (β-tempering: ``s = β``) the targets ``∝ p_σ^s`` narrow like a diffusion with
  variance steps ``Δ_k / s``; with ``s = 1`` instead, the start and every kernel are too wide by
  a factor ``s`` and the exact weights degenerate exponentially in the dimension.
- End: ``log Ẑ += log mean(w)``; the result is the weighted particle set at ``σ_K`` (optionally
  resampled once, optionally denoised with ``denoise_fn(x, σ_K)``).

``exp(log Ẑ)`` is an unbiased estimate of ``Z_K = ∫ exp(−U_K(x)) dx`` (up to the negligible effect
of the adaptive resampling trigger); ``log Ẑ`` itself is biased low. Only absolute energies give
an absolute ``Z``: an energy gauge ``c(σ)`` shifts ``log Ẑ`` by ``−c(σ_K)`` (times β when tempered).

**Approximate weights** (``weight_mode='approximate'``; METHOD.md §4 [choice]): given the model's own
(β = 1) energy ``E`` as ``base_energy``, the proposal drift is ``−∇E_k`` (the model's reverse
kernel) and ``log G_{k+1} ≈ −[(U−E)_{k+1}(x') − (U−E)_k(x)]`` — for ``U = βE`` this is
``−(β−1)(E_{k+1}(x') − E_k(x))``. It assumes that the reverse kernel maps ``p_{σ_k}`` to
``p_{σ_{k+1}}`` exactly, which holds only as the steps shrink: it is **approximate** (biased for
finite steps), cheaper only in that it needs no Gaussian-kernel terms, and ``log Ẑ`` is not
an estimate of ``Z_K`` in this mode.

**Invalid weights.** NaN or ``+inf`` increments and non-finite particles get log-weight ``−inf``
(the particle is dropped at the next resampling). If *all* weights are ``−inf`` at some level
(e.g. every particle outside a hard box), resampling is uniform (see
:mod:`fkdiff.sampling.resampling`), ``log Ẑ = −inf``, and ``SMCResult.weights_invalid`` is True
(per level: ``SMCInfo.weights_invalid``); the particles are then *not* samples of the target.
``SMCResult.num_nonfinite`` counts particles with non-finite coordinates (they carry weight 0).

**Sharding.** With ``mesh`` (a 1-D ``jax.sharding.Mesh``) the particle axis of every carried array
is constrained to ``NamedSharding(mesh, P(axis))``; XLA partitions the scan and performs the
global (cross-device) resampling. The random numbers do not depend on the sharding, so the
result equals the single-device one for the same key (up to float reduction order).

The function is ``jax.jit``-able (close over the callables and static options); the loop is a
``lax.scan`` over the K+1 levels (compile time independent of the number of levels) with no host
callbacks, and the potential is evaluated at a single place in it (level k evaluates ``U_k`` and
completes the weights of the move into σ_k), so an image-scale energy is compiled once.
"""

import functools
import math
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fkdiff.sampling import mcmc, targets
from fkdiff.sampling import resampling as resampling_lib

Array = jax.Array
EnergyFn = Callable[[Array, Array], Array]


class SMCState(NamedTuple):
  """The particle system at one level σ_k (carried through the scan).

  Attributes:
    particles: ``(N, *event_shape)``.
    log_weights: ``(N,)`` unnormalised log-weights since the last resampling.
    log_Z: scalar, ``Σ log mean(w)`` over the resampling events so far.
    potential: ``(N,)`` cached ``U_k(particles)``.
    drift_grad: ``(N, *event_shape)`` cached gradient of the drift potential at σ_k
      (``∇U_k``; ``∇E_k`` in approximate mode).
    base_energy: ``(N,)`` cached ``E_k(particles)`` in approximate mode, zeros otherwise.
  """
  particles: Array
  log_weights: Array
  log_Z: Array
  potential: Array
  drift_grad: Array
  base_energy: Array


class _Pending(NamedTuple):
  """Terms of the last move's log G_{k+1} known before the new level is evaluated, each (N,)."""
  potential: Array        # U_k(x) of the particle that moved (after resampling/rejuvenation)
  base_energy: Array      # E_k(x) in approximate mode, zeros otherwise
  log_backward: Array     # log L_k(x | x')
  log_proposal: Array     # log M_k(x' | x); at the start, log prior(x)


class _Carry(NamedTuple):
  """What the scan carries into level σ_k: particles not yet evaluated there, their weights
  without the last move's increment, ``log Ẑ`` so far, and that increment's pending terms."""
  particles: Array
  log_weights: Array
  log_Z: Array
  pending: _Pending


class SMCInfo(NamedTuple):
  """Per-level diagnostics, each ``(K,)`` (level ``σ_k``, k = 0 … K−1, before moving).

  Attributes:
    sigma: the level σ_k.
    ess: effective sample size before the resampling decision at σ_k.
    resampled: whether the particles were resampled at σ_k.
    acceptance_rate: mean MCMC acceptance probability of the rejuvenation at σ_k
      (0 where there was no rejuvenation).
    weights_invalid: all weights were ``−inf``/NaN at σ_k.
  """
  sigma: Array
  ess: Array
  resampled: Array
  acceptance_rate: Array
  weights_invalid: Array


class SMCResult(NamedTuple):
  """Output of :func:`smc_sample`.

  Attributes:
    particles: ``(N, *event_shape)`` at σ_K (denoised if ``denoise_fn`` was given).
    log_weights: ``(N,)`` unnormalised final log-weights (zeros after ``final_resample``).
    log_Z: scalar ``log Ẑ`` (see module docstring).
    ess: final effective sample size (before any final resampling).
    info: :class:`SMCInfo`, per level.
    weights_invalid: True if the weights were all ``−inf``/NaN at any level or at the end.
    num_nonfinite: number of returned particles with a non-finite coordinate.
  """
  particles: Array
  log_weights: Array
  log_Z: Array
  ess: Array
  info: SMCInfo
  weights_invalid: Array
  num_nonfinite: Array


def _log_normal(x: Array, mean: Array, var: Array) -> Array:
  """``log N(x; mean, var I)`` for one example of any shape; scalar."""
  d = x.size
  return -0.5 * (d * jnp.log(2 * jnp.pi * var) + jnp.sum((x - mean)**2) / var)


def _over_particles(fn: Callable, chunk: Optional[int]) -> Callable:
  """``fn(x, σ)`` per particle → over ``x (N, ...)``: one vmap, or ``lax.map`` over chunks."""
  if chunk is None:
    return jax.vmap(fn, in_axes=(0, None))
  return lambda x, sigma: jax.lax.map(lambda xi: fn(xi, sigma), x, batch_size=chunk)


def _check_sigmas(sigmas) -> None:
  try:
    s = np.asarray(sigmas)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return  # traced: the shape is still checked below, the values cannot be
  if s.ndim != 1 or s.shape[0] < 2:
    raise ValueError(f"sigmas must be a 1-D array with at least 2 levels, got shape {s.shape}.")
  if not np.all(np.isfinite(s)) or np.any(s <= 0):
    raise ValueError(f"sigmas must be finite and > 0, got {s}.")
  if np.any(np.diff(s) >= 0):
    raise ValueError("sigmas must be strictly decreasing (σ_0 > σ_1 > … > σ_K); got "
                     f"{s}.")


def _check_callable(name: str, fn, event_shape, want_shape) -> None:
  """Traces ``fn(x, σ)`` abstractly and checks its output shape; clear ValueError otherwise."""
  x = jax.ShapeDtypeStruct(tuple(event_shape), jnp.float32)
  s = jax.ShapeDtypeStruct((), jnp.float32)
  try:
    out = jax.eval_shape(fn, x, s)
  except Exception as e:  # shape errors inside user code surface as many exception types
    raise ValueError(f"{name} could not be evaluated on one example of event_shape "
                     f"{tuple(event_shape)} with a scalar sigma ({type(e).__name__}: {e}). "
                     "Energies are per example: energy_fn(x, sigma) -> scalar.") from e
  if not hasattr(out, "shape") or tuple(out.shape) != tuple(want_shape):
    got = getattr(out, "shape", type(out))
    raise ValueError(f"{name} must return shape {tuple(want_shape)} for one example of "
                     f"event_shape {tuple(event_shape)}, got {got}.")


def smc_sample(
    key: Array,
    potential: EnergyFn,
    sigmas: Array,
    num_particles: int,
    event_shape: Sequence[int],
    *,
    sigma_data: float,
    weight_mode: str = "exact",
    base_energy: Optional[EnergyFn] = None,
    drift_fn: Optional[Callable[[Array, Array], Array]] = None,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    resample_sigma_range: Optional[Tuple[float, float]] = None,
    final_resample: bool = False,
    denoise_fn: Optional[Callable[[Array, Array], Array]] = None,
    rejuvenation: Optional[str] = None,
    rejuvenation_steps: int = 1,
    rejuvenation_step_size: Union[float, Callable[[Array], Array], None] = None,
    num_leapfrog: int = 5,
    init_std: Optional[float] = None,
    potential_scale: Union[float, Array, None] = None,
    mesh: Optional[Mesh] = None,
    particle_axis: Optional[str] = None,
    particle_chunk_size: Optional[int] = None,
) -> SMCResult:
  """Feynman–Kac SMC from ``σ_0`` down to ``σ_K`` for the targets ``exp(−U(x, σ_k))``.

  Args:
    key: PRNG key.
    potential: per-example ``U(x, σ) -> scalar`` (any energy callable, or a target from
      :mod:`fkdiff.sampling.targets`).
    sigmas: strictly decreasing ``(K+1,)`` levels, e.g. ``karras_sigmas(K+1, 0.002, 80)``.
    num_particles: N ≥ 2 (static).
    event_shape: shape of one example, e.g. ``(2,)`` or ``(H, W, C)`` (static).
    sigma_data: σ_d of the prior ``N(0, (σ_0² + σ_d²) I)``.
    weight_mode: ``'exact'`` (default) or ``'approximate'`` (needs ``base_energy``; see module
      docstring — biased).
    base_energy: the model's own energy ``E(x, σ)`` for ``weight_mode='approximate'``.
    drift_fn: per-example proposal drift ``b(x, σ) -> like x``; default ``−∇U`` (exact mode) or
      ``−∇E`` (approximate mode; a custom drift there is not allowed).
    resampling: ``'systematic'`` | ``'multinomial'`` | ``'stratified'`` | ``'residual'``.
    ess_threshold: τ; resample when ``ESS < τ N``.
    resample_sigma_range: ``(σ_lo, σ_hi)``: resample only at levels with ``σ_lo ≤ σ_k ≤ σ_hi``.
    final_resample: return one equally weighted (resampled) particle set.
    denoise_fn: if given, particles are mapped through ``denoise_fn(x, σ_K)`` at the end.
    rejuvenation: ``None`` | ``'mala'`` | ``'hmc'`` (``'ula'`` is accepted but biased): kernel
      steps leaving ``γ_k`` invariant after each resampling.
    rejuvenation_steps: kernel steps per resampling event.
    rejuvenation_step_size: float or function of σ; default ``0.05 σ_k²``.
    num_leapfrog: leapfrog steps for HMC.
    init_std: standard deviation of the initial Gaussian; default ``sqrt((σ_0² + σ_d²) / s)``.
    potential_scale: ``s`` > 0 (may be traced); default the scale the potential records
      (:func:`fkdiff.sampling.targets.scale_of`; 1 for a plain energy). The potential is about
      ``s`` times a diffused energy, ``U_k ≈ s E_k`` — β for ``tempered(E, β)``, ``Σ w_i`` for
      ``product``, 1 for ``conditional_and``. The intermediate targets ``∝ p_{σ_k}^s`` then shrink like a diffusion
      whose variance falls by ``Δ_k / s`` per level, so the proposal uses the step ``Δ_k / s``
      (``N(x'; x + (Δ_k/s) b_k(x), (Δ_k/s) I)``), the backward kernel ``N(x; x', (Δ_k/s) I)`` and
      the initial width ``sqrt((σ_0² + σ_d²)/s)``. The weights stay exact for any ``s``; the
      matching ``s`` keeps them from degenerating in high dimension (with ``s = 1`` a
      β-tempered target in d dimensions starts at ESS ≈ N·(4/√7)^(−d) for β = 4).
    mesh: optional 1-D device mesh to shard the particles over (N divisible by its size).
    particle_axis: mesh axis name (default: the mesh's only axis).
    particle_chunk_size: evaluate the potential, drift and denoiser on at most this many particles
      at a time (``lax.map`` over vmapped chunks) to bound memory for image-scale energies; same
      results as unchunked. MCMC rejuvenation is not chunked. Not combined with ``mesh``.
  Returns:
    :class:`SMCResult`.
  Raises:
    ValueError: for N < 2, a σ grid that is not strictly decreasing and positive, a potential
      (or drift/denoiser/base energy) that does not map one example of ``event_shape`` to a
      scalar (to ``event_shape``), or invalid options.
  """
  # ---- validation (trace time) ------------------------------------------------------------
  if not isinstance(num_particles, (int, np.integer)) or num_particles < 2:
    raise ValueError(f"num_particles must be an int >= 2, got {num_particles!r}.")
  num = int(num_particles)
  event_shape = tuple(int(d) for d in event_shape)
  _check_sigmas(sigmas)
  sigmas = jnp.asarray(sigmas, jnp.float32)
  if sigmas.ndim != 1 or sigmas.shape[0] < 2:
    raise ValueError(f"sigmas must be 1-D with at least 2 levels, got shape {sigmas.shape}.")
  if not 0.0 <= ess_threshold <= 1.0:
    raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}.")
  if weight_mode not in ("exact", "approximate"):
    raise ValueError(f"weight_mode must be 'exact' or 'approximate', got {weight_mode!r}.")
  approximate = weight_mode == "approximate"
  if approximate and base_energy is None:
    raise ValueError("weight_mode='approximate' needs base_energy (the model's own energy E).")
  if potential_scale is None:
    potential_scale = 1.0 if approximate else targets.scale_of(potential)
  if approximate and not (isinstance(potential_scale, (int, float)) and potential_scale == 1):
    raise ValueError("weight_mode='approximate' uses the model's own (β = 1) reverse kernel; "
                     f"potential_scale must be 1, got {potential_scale!r}.")
  if isinstance(potential_scale, (int, float)) and not potential_scale > 0:
    raise ValueError(f"potential_scale must be > 0, got {potential_scale}.")
  if approximate and drift_fn is not None:
    raise ValueError("weight_mode='approximate' uses the model's drift −∇E; drift_fn must be None.")
  resample_fn = resampling_lib.get_resampler(resampling)
  kernel = None if rejuvenation is None else mcmc.get_kernel(rejuvenation, num_leapfrog)
  step_size_fn = mcmc.resolve_step_size(rejuvenation_step_size)
  _check_callable("potential", potential, event_shape, ())
  if base_energy is not None:
    _check_callable("base_energy", base_energy, event_shape, ())
  if drift_fn is not None:
    _check_callable("drift_fn", drift_fn, event_shape, event_shape)
  if denoise_fn is not None:
    _check_callable("denoise_fn", denoise_fn, event_shape, event_shape)
  if resample_sigma_range is None:
    sigma_lo, sigma_hi = -jnp.inf, jnp.inf
  else:
    sigma_lo, sigma_hi = resample_sigma_range
  if particle_chunk_size is not None and (particle_chunk_size < 1 or mesh is not None):
    raise ValueError("particle_chunk_size must be >= 1 and cannot be combined with mesh; got "
                     f"{particle_chunk_size} (mesh given: {mesh is not None}).")
  sharding = None
  if mesh is not None:
    axis = particle_axis if particle_axis is not None else mesh.axis_names[0]
    if num % mesh.shape[axis]:
      raise ValueError(f"num_particles={num} must be divisible by the mesh axis size "
                       f"{mesh.shape[axis]}.")
    sharding = NamedSharding(mesh, P(axis))

  def constrain(state):
    if sharding is None:
      return state
    return jax.tree.map(
        lambda a: jax.lax.with_sharding_constraint(a, sharding) if a.ndim else a, state)

  # ---- per-particle functions (unbatched), vmapped over particles --------------------------
  over_particles = functools.partial(_over_particles, chunk=particle_chunk_size)
  value_and_grad_u = over_particles(jax.value_and_grad(potential))
  value_u = over_particles(potential)
  if approximate:
    value_and_grad_e = over_particles(jax.value_and_grad(base_energy))

  def evaluate(x, sigma):
    """(U, drift gradient, base energy) at σ for all particles."""
    if approximate:
      e, g = value_and_grad_e(x, sigma)
      return value_u(x, sigma), g, e
    u, g = value_and_grad_u(x, sigma)
    return u, g, jnp.zeros_like(u)

  def kernel_terms(x, x_new, mean, delta):
    """``(log L_k(x | x'), log M_k(x' | x))`` for one particle (METHOD.md §4)."""
    return (_log_normal(x, x_new, delta),        # log L_k(x | x') = log N(x; x', Δ I)
            _log_normal(x_new, mean, delta))     # log M_k(x' | x) = log N(x'; x + Δ b, Δ I)

  kernel_terms = jax.vmap(kernel_terms, in_axes=(0, 0, 0, None))

  def log_increment(pending: _Pending, u_new, e_new):
    """log G_{k+1} (METHOD.md §4), from the move's pending terms and the new evaluation."""
    if approximate:
      return -((u_new - e_new) - (pending.potential - pending.base_energy))
    return -u_new + pending.potential + pending.log_backward - pending.log_proposal

  def sanitize(log_w, x):
    """NaN/+inf log-weights and non-finite particles → −inf (documented behaviour)."""
    bad = jnp.isnan(log_w) | jnp.isposinf(log_w)
    bad |= ~jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=-1)
    return jnp.where(bad, -jnp.inf, log_w)

  # ---- initialisation ---------------------------------------------------------------------
  k_init, k_final, k_steps = jax.random.split(key, 3)
  s0 = sigmas[0]
  scale = jnp.asarray(potential_scale, jnp.float32)
  std0 = jnp.sqrt((s0**2 + sigma_data**2) / scale) if init_std is None else jnp.float32(init_std)
  x0 = std0 * jax.random.normal(k_init, (num, *event_shape), jnp.float32)
  log_prior = jax.vmap(_log_normal, in_axes=(0, None, None))(x0, jnp.zeros(event_shape), std0**2)
  zeros = jnp.zeros((num,), jnp.float32)
  # The start's log w = −U_0(x) − log prior(x) is completed by the first level's evaluation.
  carry = constrain(_Carry(x0, zeros, jnp.zeros((), jnp.float32),
                           _Pending(zeros, zeros, zeros, log_prior)))

  # ---- one level --------------------------------------------------------------------------
  def resample_and_rejuvenate(state, key, sigma):
    k_res, k_mcmc = jax.random.split(key)
    lw = state.log_weights
    log_mean_w = jax.nn.logsumexp(jnp.where(jnp.isnan(lw), -jnp.inf, lw)) - math.log(num)
    idx = resample_fn(k_res, lw, num)
    take = lambda a: a[idx]
    state = SMCState(take(state.particles), jnp.zeros_like(lw), state.log_Z + log_mean_w,
                     take(state.potential), take(state.drift_grad), take(state.base_energy))
    state = constrain(state)
    if kernel is None:
      return state, jnp.zeros((), jnp.float32)
    fn = lambda y: potential(y, sigma)
    # In exact mode the cached (U_k, ∇U_k) is the MCMC state; in approximate mode ∇U is needed.
    if approximate:
      u, g = value_and_grad_u(state.particles, sigma)
    else:
      u, g = state.potential, state.drift_grad
    chains = mcmc.MCMCState(state.particles, u, g)
    chains, acc = mcmc.run_chains(k_mcmc, chains, fn, kernel, step_size_fn(sigma),
                                  rejuvenation_steps)
    if approximate:
      _, g_e, e = evaluate(chains.position, sigma)
      state = state._replace(particles=chains.position, potential=chains.potential,
                             drift_grad=g_e, base_energy=e)
    else:
      state = state._replace(particles=chains.position, potential=chains.potential,
                             drift_grad=chains.grad)
    return constrain(state), acc

  def no_resample(state, key, sigma):
    return state, jnp.zeros((), jnp.float32)

  def level(carry, inp):
    """Level σ_k, k = 0 … K: evaluate U_k (the only evaluation of the potential, so it is
    compiled once) and complete the weights of the move into σ_k; then, for k < K, resample
    (+ rejuvenate) and move to σ_{k+1}."""
    key, s_cur, s_next, k = inp
    first, last = k == 0, k == num_levels
    x = carry.particles
    u, g, e = evaluate(x, s_cur)
    start = -u - carry.pending.log_proposal              # log w = −U_0(x) − log prior(x)
    inc = jnp.where(first, start, log_increment(carry.pending, u, e))
    log_w = sanitize(carry.log_weights + inc, x)
    state = constrain(SMCState(x, log_w, carry.log_Z, u, g, e))
    # 1. adaptive resampling (+ rejuvenation) at σ_k (k < K).
    ess = resampling_lib.ess(log_w)
    invalid = resampling_lib.all_weights_invalid(log_w)
    in_range = (s_cur >= sigma_lo) & (s_cur <= sigma_hi)
    do_resample = (ess < ess_threshold * num) & in_range & ~last
    k_res, k_move = jax.random.split(key)
    state, acc = jax.lax.cond(do_resample, resample_and_rejuvenate, no_resample,
                              state, k_res, s_cur)
    # 2. Euler–Maruyama proposal M_k(x'|x) = N(x'; x + Δ b_k(x), Δ I), Δ = Δ_k / s; at k = K
    #    a dummy move (Δ = 1), discarded.
    x = state.particles
    delta = jnp.where(last, 1.0, (s_cur**2 - s_next**2) / scale)
    if drift_fn is None:
      drift = -state.drift_grad
    else:
      drift = over_particles(drift_fn)(x, s_cur)
    mean = x + delta * drift
    x_new = mean + jnp.sqrt(delta) * jax.random.normal(k_move, x.shape, x.dtype)
    log_backward, log_proposal = kernel_terms(x, x_new, mean, delta)
    pending = _Pending(state.potential, state.base_energy, log_backward, log_proposal)
    out = _Carry(jnp.where(last, x, x_new), state.log_weights, state.log_Z, pending)
    return constrain(out), SMCInfo(s_cur, ess, do_resample, acc, invalid)

  num_levels = sigmas.shape[0] - 1
  keys = jax.random.split(k_steps, num_levels)
  carry, info = jax.lax.scan(
      level, carry, (jnp.concatenate([keys, keys[:1]]), sigmas, jnp.append(sigmas[1:], sigmas[-1]),
                     jnp.arange(num_levels + 1)))
  info = jax.tree.map(lambda a: a[:-1], info)      # levels σ_0 … σ_{K−1}

  # ---- end ----------------------------------------------------------------------------------
  lw = carry.log_weights                            # complete at σ_K
  final_invalid = resampling_lib.all_weights_invalid(lw)
  log_Z = carry.log_Z + jax.nn.logsumexp(lw) - math.log(num)
  final_ess = resampling_lib.ess(lw)
  x = carry.particles
  if final_resample:
    idx = resample_fn(k_final, lw, num)
    x, lw = x[idx], jnp.zeros_like(lw)
  if denoise_fn is not None:
    x = over_particles(denoise_fn)(x, sigmas[-1])
  if sharding is not None:
    x = jax.lax.with_sharding_constraint(x, sharding)
    lw = jax.lax.with_sharding_constraint(lw, sharding)
  num_nonfinite = jnp.sum(~jnp.all(jnp.isfinite(x.reshape(num, -1)), axis=-1))
  return SMCResult(particles=x, log_weights=lw, log_Z=log_Z, ess=final_ess, info=info,
                   weights_invalid=jnp.any(info.weights_invalid) | final_invalid,
                   num_nonfinite=num_nonfinite)


def weighted_mean(result: SMCResult, fn: Callable[[Array], Array] = lambda x: x) -> Array:
  """Self-normalised estimate ``Σ_i w̄_i fn(x_i)`` (``fn`` per example, vmapped)."""
  w = resampling_lib.normalized_weights(result.log_weights)
  vals = jax.vmap(fn)(result.particles)
  # Zero-weight particles may be non-finite (documented); keep 0·NaN out of the sum.
  vals = jnp.where(w.reshape((-1,) + (1,) * (vals.ndim - 1)) > 0, vals, 0)
  return jnp.tensordot(w, vals, axes=1)
