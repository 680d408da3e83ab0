"""MCMC kernels (ULA, MALA, HMC) on a potential, and annealed MCMC samplers (Du et al. 2023).

Kernels are pure, per example (blackjax style): ``kernel(key, state, log_density_terms...) ->
(state, info)`` with ``state`` an :class:`MCMCState` holding the position and the cached potential
value and gradient, and a potential ``U(x) -> scalar`` (a target ``∝ exp(−U)``) whose σ is bound
by the caller. The caller owns ``vmap`` over particles.

Non-finite potentials: a proposal with ``U = +inf`` (e.g. outside a hard box) or NaN is always
rejected; a state with ``U = +inf`` accepts any finite proposal.
"""

import functools
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

Array = jax.Array
PotentialFn = Callable[[Array], Array]


class MCMCState(NamedTuple):
  """Position ``x`` (event shape) with cached ``U(x)`` (scalar) and ``∇U(x)`` (like x)."""
  position: Array
  potential: Array
  grad: Array


class MCMCInfo(NamedTuple):
  """``acceptance_prob``: the MH acceptance probability (1 for ULA); ``accepted``: bool."""
  acceptance_prob: Array
  accepted: Array


def init(position: Array, potential_fn: PotentialFn) -> MCMCState:
  """Builds the state at ``position`` (one example)."""
  u, g = jax.value_and_grad(potential_fn)(position)
  return MCMCState(position, u, g)


def init_along_drift(position: Array, potential_fn) -> MCMCState:
  """The state at ``position`` for MALA along a drift that is not ``−∇U``: ``grad`` holds
  ``−b(x)`` from ``potential_fn.value_and_drift`` (a target at one σ,
  :class:`fkdiff.sampling.targets.AtSigma`: the score heads' drift of two-headed networks, one
  forward pass, no gradient)."""
  value_and_drift = getattr(potential_fn, "value_and_drift", None)
  if value_and_drift is None:
    raise ValueError("MALA along the score heads (drift='heads') needs a potential with "
                     "value_and_drift (an SMC target at one σ, fkdiff.sampling.targets.AtSigma); "
                     f"got {potential_fn!r}.")
  u, b = value_and_drift(position)
  return MCMCState(position, u, -b)


def _mh_accept(key, log_alpha, u_new, u_old):
  """Accept/reject with the non-finite conventions of the module docstring."""
  log_alpha = jnp.where(jnp.isposinf(u_old) & jnp.isfinite(u_new), 0.0, log_alpha)
  log_alpha = jnp.where(jnp.isnan(log_alpha) | ~jnp.isfinite(u_new), -jnp.inf, log_alpha)
  prob = jnp.exp(jnp.minimum(log_alpha, 0.0))
  accepted = jnp.log(jax.random.uniform(key, ())) < log_alpha
  return prob, accepted


def _select(accepted, new: MCMCState, old: MCMCState) -> MCMCState:
  return jax.tree.map(lambda a, b: jnp.where(accepted, a, b), new, old)


def ula_kernel(key: Array, state: MCMCState, potential_fn: PotentialFn,
               step_size) -> tuple[MCMCState, MCMCInfo]:
  """Unadjusted Langevin: ``x' = x − h ∇U(x) + sqrt(2h) z`` (always accepted; biased O(h))."""
  z = jax.random.normal(key, state.position.shape, state.position.dtype)
  x_new = state.position - step_size * state.grad + jnp.sqrt(2 * step_size) * z
  return init(x_new, potential_fn), MCMCInfo(jnp.ones(()), jnp.array(True))


def mala_kernel(key: Array, state: MCMCState, potential_fn: PotentialFn, step_size,
                init_fn: Callable = init) -> tuple[MCMCState, MCMCInfo]:
  """Metropolis-adjusted Langevin; the accept/reject uses the potential *values* ``U``.

  Proposal ``q(x'|x) = N(x'; x − h g(x), 2h I)``; accept with probability
  ``min(1, exp(−U(x') + U(x)) q(x|x') / q(x'|x))``, where ``g`` is the state's ``grad``:
  ``∇U`` (``init_fn = init``, the default) or any other field that every state is built with
  (:func:`init_along_drift`: ``−b``, the score heads' drift) — the MH ratio keeps
  ``exp(−U)`` invariant for any such drift.
  """
  k_prop, k_acc = jax.random.split(key)
  x = state.position
  z = jax.random.normal(k_prop, x.shape, x.dtype)
  x_new = x - step_size * state.grad + jnp.sqrt(2 * step_size) * z
  new = init_fn(x_new, potential_fn)

  def log_q(to, frm, grad_frm):  # log q(to | frm) up to the shared normalisation
    return -jnp.sum((to - frm + step_size * grad_frm)**2) / (4 * step_size)

  log_alpha = (-new.potential + state.potential
               + log_q(x, x_new, new.grad) - log_q(x_new, x, state.grad))
  prob, accepted = _mh_accept(k_acc, log_alpha, new.potential, state.potential)
  return _select(accepted, new, state), MCMCInfo(prob, accepted)


def hmc_kernel(key: Array, state: MCMCState, potential_fn: PotentialFn, step_size,
               num_leapfrog: int = 5) -> tuple[MCMCState, MCMCInfo]:
  """Hamiltonian Monte Carlo with identity mass and ``num_leapfrog`` leapfrog steps."""
  k_mom, k_acc = jax.random.split(key)
  x = state.position
  p0 = jax.random.normal(k_mom, x.shape, x.dtype)
  grad_fn = jax.value_and_grad(potential_fn)

  def leapfrog(carry, _):
    x, p, _, g = carry
    p = p - 0.5 * step_size * g
    x = x + step_size * p
    u, g = grad_fn(x)
    p = p - 0.5 * step_size * g
    return (x, p, u, g), None

  (x_new, p_new, u_new, g_new), _ = jax.lax.scan(
      leapfrog, (x, p0, state.potential, state.grad), None, length=num_leapfrog)
  log_alpha = (-u_new - 0.5 * jnp.sum(p_new**2)) - (-state.potential - 0.5 * jnp.sum(p0**2))
  prob, accepted = _mh_accept(k_acc, log_alpha, u_new, state.potential)
  return _select(accepted, MCMCState(x_new, u_new, g_new), state), MCMCInfo(prob, accepted)


def get_kernel(name: str, num_leapfrog: int = 5):
  """``'ula' | 'mala' | 'hmc'`` → ``kernel(key, state, potential_fn, step_size)``."""
  if name == "ula":
    return ula_kernel
  if name == "mala":
    return mala_kernel
  if name == "hmc":
    return lambda key, state, fn, h: hmc_kernel(key, state, fn, h, num_leapfrog)
  raise ValueError(f"Unknown MCMC kernel {name!r}; choose 'ula', 'mala' or 'hmc'.")


def run_chains(key: Array, states: MCMCState, potential_fn: PotentialFn, kernel, step_size,
               num_steps: int) -> tuple[MCMCState, Array]:
  """Runs ``num_steps`` of ``kernel`` on a batch of states (vmapped over the leading axis).

  Returns:
    ``(states, mean acceptance probability over steps and chains)``.
  """
  num = states.position.shape[0]
  step = jax.vmap(lambda k, s: kernel(k, s, potential_fn, step_size))

  def body(states, k):
    states, info = step(jax.random.split(k, num), states)
    return states, jnp.mean(info.acceptance_prob)

  states, acc = jax.lax.scan(body, states, jax.random.split(key, num_steps))
  return states, jnp.mean(acc)


DRIFTS = ("gradient", "heads")


def rejuvenation(kernel: str = "mala", num_steps: int = 1,
                 step_size: Union[float, Callable[[Array], Array], None] = None,
                 num_leapfrog: int = 5, drift: str = "gradient"):
  """An SMC rejuvenation kernel: ``rejuvenate(key, chains, potential_fn, σ) -> (chains, acc)``.

  Runs ``num_steps`` of ``kernel`` (``'mala'`` | ``'hmc'``; ``'ula'`` is accepted but biased) on
  every particle, leaving ``exp(−U(·, σ))`` invariant (MALA/HMC compare energies at one σ only).

  Args:
    step_size: float or function of σ; default :func:`default_step_size` (``0.05 σ²``).
    num_leapfrog: leapfrog steps for HMC.
    drift: ``'gradient'`` (``−∇U``) or ``'heads'`` (MALA only): the proposal follows the
      target's score heads (:meth:`fkdiff.sampling.targets.Target.potential_and_drift`; ``−∇U``
      for energies without one), so a step is one forward pass of a two-headed network and no
      gradient (docs/METHOD.md §4e); the chains start from their positions' heads (the cached
      gradient is not used).
  """
  if drift not in DRIFTS:
    raise ValueError(f"Unknown rejuvenation drift {drift!r}; choose one of {DRIFTS}.")
  if drift == "heads" and kernel != "mala":
    raise ValueError(f"drift='heads' works with the 'mala' kernel only, got {kernel!r} (HMC's "
                     "leapfrog needs the potential's gradient).")
  kern = (functools.partial(mala_kernel, init_fn=init_along_drift) if drift == "heads"
          else get_kernel(kernel, num_leapfrog))
  step_size_fn = resolve_step_size(step_size)
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}.")

  def rejuvenate(key, chains: MCMCState, potential_fn: PotentialFn, sigma):
    if drift == "heads":
      chains = jax.vmap(lambda x: init_along_drift(x, potential_fn))(chains.position)
    return run_chains(key, chains, potential_fn, kern, step_size_fn(sigma), num_steps)
  return rejuvenate


class AnnealedMCMCResult(NamedTuple):
  """``particles (N, *event)`` at the last level; ``acceptance_rate (K,)`` and the kernel's
  ``step_size (K,)`` per σ level."""
  particles: Array
  acceptance_rate: Array
  step_size: Array


def default_step_size(sigma, scale: float = 0.05):
  """Default MCMC step size at level σ: ``scale · σ²`` (the diffused target is ≥ σ wide)."""
  return scale * sigma**2


def annealed_mcmc_sample(key: Array, potential: Callable[[Array, Array], Array], x_init: Array,
                         sigmas: Array, kernel: str = "mala", num_steps_per_level: int = 5,
                         step_size: Union[float, Callable[[Array], Array], None] = None,
                         num_leapfrog: int = 5,
                         target_acceptance: Optional[float] = None) -> AnnealedMCMCResult:
  """Annealed MCMC (Du et al. 2023 baselines): ``k`` kernel steps targeting ``exp(−U(·, σ_k))``
  at each level ``σ_0 > … > σ_K``, without weights.

  Args:
    key: PRNG key.
    potential: per-example ``U(x, σ) -> scalar`` (e.g. from :mod:`fkdiff.sampling.targets`).
    x_init: ``(N, *event_shape)`` start (e.g. :func:`fkdiff.sampling.reverse.prior_sample`).
    sigmas: decreasing ``(K,)`` levels.
    kernel: ``'ula'``, ``'mala'`` or ``'hmc'``.
    num_steps_per_level: kernel steps per level.
    step_size: float, or a function of σ; default :func:`default_step_size`.
    num_leapfrog: leapfrog steps for HMC.
    target_acceptance: if given, the step size is tuned level by level (Du et al. 2023 tune per
      level): level k uses ``h_k``, fixed within the level (so each level's kernel is a valid
      MCMC kernel), and ``h_{k+1} = h_k · (σ_{k+1}/σ_k)^p · exp(2 (acc_k − target))`` from level
      k's mean acceptance, with ``p`` the power of σ in ``step_size`` between the two levels
      (2 for the default). ``h_0 = step_size(σ_0)``.
  Returns:
    :class:`AnnealedMCMCResult`; acceptance is 1 for ULA.
  """
  kern = get_kernel(kernel, num_leapfrog)
  step_size_fn = resolve_step_size(step_size)
  sigmas = jnp.asarray(sigmas, x_init.dtype)   # the samples' dtype (float64 under x64)
  if target_acceptance is not None and not 0.0 < target_acceptance < 1.0:
    raise ValueError(f"target_acceptance must be in (0, 1), got {target_acceptance}.")

  def level(carry, inp):
    x, h = carry
    k, sigma, sigma_next = inp
    fn = lambda y: potential(y, sigma)
    states = jax.vmap(init, in_axes=(0, None))(x, fn)
    states, acc = run_chains(k, states, fn, kern, h, num_steps_per_level)
    if target_acceptance is None:
      h_next = step_size_fn(sigma_next)
    else:   # the schedule's own change to the next level, times the acceptance correction.
      h_next = (h * step_size_fn(sigma_next) / step_size_fn(sigma)
                * jnp.exp(2.0 * (acc - target_acceptance)))
    return ((states.position.astype(x.dtype), jnp.asarray(h_next, h.dtype)),
            (jnp.asarray(acc, h.dtype), h))

  h0 = jnp.asarray(step_size_fn(sigmas[0]), x_init.dtype)
  nexts = jnp.append(sigmas[1:], sigmas[-1])
  (x, _), (acc, h) = jax.lax.scan(
      level, (x_init, h0), (jax.random.split(key, sigmas.shape[0]), sigmas, nexts))
  return AnnealedMCMCResult(x, acc, h)


def resolve_step_size(step_size) -> Callable[[Array], Array]:
  """``None`` → :func:`default_step_size`; a callable of σ as is; a float → constant."""
  if step_size is None:
    return default_step_size
  if callable(step_size):
    return step_size
  return lambda sigma: jnp.asarray(step_size, jnp.float32)
