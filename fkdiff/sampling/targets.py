"""Feynman–Kac potentials ``U(x, σ) -> scalar`` built from energy callables (METHOD.md §4).

Every function here takes per-example energy callables ``E(x, σ) -> scalar`` (``x`` of shape
``event_shape``, scalar σ; analytic or a learned closure over parameters) and returns a new
callable **with the same signature**, so targets compose freely, e.g.
``product([tempered(E1, 2.0), E2])`` or ``bounded_soft(conditional_and(E, [E_c]), lo, hi)``.
The SMC sampler uses ``U_k(x) = U(x, σ_k)`` as the k-th intermediate target
``γ_k = exp(−U_k)``; its final target is ``exp(−U(x, σ_K))`` at the last level ``σ_K`` of the grid
(at small ``σ_K`` this is, to ``O(σ_K²)``, the density listed under "Final target" in each
docstring, whose ``p`` stands for the model's ``p_0``; exactly, ``p`` is ``p_{σ_K}``).

Each target records its **potential scale** ``s`` (``U ≈ s E``: β for :func:`tempered`, ``Σ w_i``
for :func:`product` and :func:`label_sum`), read with :func:`scale_of`;
:func:`fkdiff.sampling.smc_sample` matches its start and kernels to it (see its
``potential_scale``). Plain energies have ``s = 1``; the OR and NOT targets report 1. Scales
compose linearly (a ratio ``E(x|c) − E(x|∅)`` records 0); :func:`scale_of` reports a total ≤ 0 as 1.

Energies need only be defined up to an additive gauge ``c(σ)`` (METHOD.md §2): it cancels in
the self-normalised SMC weights, but not in ``log Ẑ``; :func:`tempered` multiplies it by β,
and :func:`disjunction` (OR) needs normalised or gauge-consistent energies to mean what it says.
"""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fkdiff.models.energy import denoiser_from_energy

Array = jax.Array
EnergyFn = Callable[[Array, Array], Array]


def _check_concrete_positive(name: str, value) -> None:
  """Raises ValueError if a concrete (non-traced) ``value`` has entries ≤ 0."""
  try:
    v = np.asarray(value)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return  # traced under jit: cannot be checked here
  if np.any(~(v > 0)):
    raise ValueError(f"{name} must be > 0, got {v}.")


def _recorded_scale(energy_fn: EnergyFn):
  """The scale ``energy_fn`` records, any sign; 1 for any other callable."""
  return getattr(energy_fn, "potential_scale", 1.0)


def scale_of(potential: EnergyFn):
  """The potential scale ``s > 0`` of a target (``U ≈ s E``); 1 for any other callable, and for a
  target whose recorded scale is ≤ 0 (e.g. a product with weights summing to ≤ 0)."""
  scale = _recorded_scale(potential)
  if isinstance(scale, (int, float)):
    return scale if scale > 0 else 1.0
  return jnp.where(scale > 0, scale, 1.0)   # an array, possibly traced


def _with_scale(potential: EnergyFn, scale) -> EnergyFn:
  """``potential`` recording ``scale``."""
  potential.potential_scale = scale
  return potential


def _weights(weights, num: int, name: str = "weights") -> Array:
  if weights is None:
    return jnp.ones((num,), jnp.float32)
  w = jnp.asarray(weights, jnp.float32)
  if w.shape != (num,):
    raise ValueError(f"{name} must have shape ({num},) to match the energies, got {w.shape}.")
  return w


def tempered(energy_fn: EnergyFn, beta) -> EnergyFn:
  """Low temperature: ``U(x, σ) = β E(x, σ)``.

  Final target: ``∝ p^β``. Intermediate targets are the tempered *diffused* densities ``p_σ^β``.

  Raises:
    ValueError: if β ≤ 0 (β must be concrete to be checked; a traced β is not checked).
  """
  _check_concrete_positive("beta", beta)

  def potential(x, sigma):
    return beta * energy_fn(x, sigma)
  return _with_scale(potential, beta * _recorded_scale(energy_fn))


def product(energy_fns: Sequence[EnergyFn], weights=None) -> EnergyFn:
  """Weighted product (AND): ``U(x, σ) = Σ_i w_i E_i(x, σ)``; default ``w_i = 1``.

  Final target: ``∝ Π_i p_i^{w_i}``. Weights may have any sign (a negative one is a negation).
  """
  energy_fns = tuple(energy_fns)
  if not energy_fns:
    raise ValueError("product needs at least one energy.")
  w = _weights(weights, len(energy_fns))

  def potential(x, sigma):
    return sum(w[i] * e(x, sigma) for i, e in enumerate(energy_fns))
  return _with_scale(potential, sum(w[i] * _recorded_scale(e) for i, e in enumerate(energy_fns)))


def conditional_and(uncond_energy_fn: EnergyFn, cond_energy_fns: Sequence[EnergyFn],
                    weights=None) -> EnergyFn:
  """Classifier-free conditional AND: ``U = E(x,σ) + Σ_i w_i (E(x,σ|c_i) − E(x,σ))``.

  Args:
    uncond_energy_fn: unconditional energy ``E(x, σ)``.
    cond_energy_fns: conditional energies ``E(x, σ | c_i)``, one callable per condition
      (e.g. ``functools.partial(energy, cond=c_i)``).
    weights: guidance weights ``w_i`` (default 1 each).

  Final target: ``∝ p(x) Π_i (p(x|c_i)/p(x))^{w_i}``.
  """
  cond_energy_fns = tuple(cond_energy_fns)
  w = _weights(weights, len(cond_energy_fns))

  def potential(x, sigma):
    e0 = uncond_energy_fn(x, sigma)
    return e0 + sum(w[i] * (e(x, sigma) - e0) for i, e in enumerate(cond_energy_fns))
  s0 = _recorded_scale(uncond_energy_fn)
  return _with_scale(potential, s0 + sum(w[i] * (_recorded_scale(e) - s0)
                                         for i, e in enumerate(cond_energy_fns)))


def label_sum(cond_energy_fn: Callable[[Array, Array, Array], Array], labels,
              weights=None) -> EnergyFn:
  """``U(x, σ) = Σ_i w_i E(x, σ | c_i)`` for one conditional energy, in one batched call.

  Args:
    cond_energy_fn: ``E(x, σ, label) -> scalar`` (e.g. a class-conditional network).
    labels: ``(L, ...)``: one label per term (e.g. a class and the null label ∅).
    weights: ``(L,)`` (default 1 each).

  The network runs once on ``L`` labels (``vmap``) rather than ``L`` times: classifier-free
  guidance ``E(x|∅) + w (E(x|c) − E(x|∅))`` is ``label_sum(E, [∅, c], [1 − w, w])``, the ratio
  ``E(x|c) − E(x|∅)`` (scale 0) is ``label_sum(E, [c, ∅], [1, −1])``. Same values as
  :func:`product` of the ``L`` conditionals; a compiled sampler holds one copy of the network.

  Final target: ``∝ Π_i p(x|c_i)^{w_i}``.
  """
  labels = jnp.asarray(labels)
  w = _weights(weights, labels.shape[0])

  def potential(x, sigma):
    return jnp.dot(w, jax.vmap(lambda c: cond_energy_fn(x, sigma, c))(labels))
  return _with_scale(potential, jnp.sum(w) * _recorded_scale(cond_energy_fn))


def disjunction(energy_fns: Sequence[EnergyFn], weights=None) -> EnergyFn:
  """OR (mixture): ``U(x, σ) = −log Σ_i π_i exp(−E_i(x, σ))`` with ``π = weights / Σ weights``.

  Final target: ``Σ_i π_i p_i`` when the ``E_i`` are normalised (``∫ e^{−E_i} = 1``); with
  unnormalised energies the mixture weights are effectively ``π_i Z_i``. The diffused mixture of
  the diffused components is exactly the diffused mixture, so intermediate targets are exact too.
  """
  energy_fns = tuple(energy_fns)
  w = _weights(weights, len(energy_fns))
  _check_concrete_positive("disjunction weights", w)
  log_pi = jnp.log(w) - jnp.log(jnp.sum(w))

  def potential(x, sigma):
    neg_e = jnp.stack([-e(x, sigma) for e in energy_fns])
    return -jax.nn.logsumexp(log_pi + neg_e)
  return potential


def negation(energy_fn: EnergyFn, negated_energy_fn: EnergyFn, alpha=1.0) -> EnergyFn:
  """NOT (Du et al. 2023, "Reduce, Reuse, Recycle"): ``U = E_1(x, σ) − α E_2(x, σ)``.

  Final target: ``∝ p_1(x) / p_2(x)^α`` ("``p_1`` and not ``p_2``"); it is normalisable only if
  ``p_1`` decays faster than ``p_2^α`` (e.g. ``α < 1`` for equal-width Gaussians).
  """
  def potential(x, sigma):
    return energy_fn(x, sigma) - alpha * negated_energy_fn(x, sigma)
  return potential


def box_sq_distance(x: Array, lower, upper) -> Array:
  """Squared Euclidean distance from ``x`` to the box ``[lower, upper]`` (broadcast to x)."""
  return jnp.sum((x - jnp.clip(x, lower, upper))**2)


def annealed_penalty_schedule(strength: float, sigma_ref: float = 0.1) -> Callable[[Array], Array]:
  """``λ(σ) = strength · σ_ref² / (σ² + σ_ref²)``: ~0 at large σ, → ``strength`` as σ → 0."""
  def schedule(sigma):
    return strength * sigma_ref**2 / (sigma**2 + sigma_ref**2)
  return schedule


def bounded_soft(energy_fn: EnergyFn, lower, upper,
                 schedule: Optional[Callable[[Array], Array]] = None) -> EnergyFn:
  """Soft box constraint: ``U(x, σ) = E(x, σ) + λ(σ) dist(x, B)²``, ``B = [lower, upper]``.

  Args:
    energy_fn: the unconstrained energy.
    lower, upper: box corners (scalars or arrays broadcastable to the event shape).
    schedule: ``λ(σ)``; default :func:`annealed_penalty_schedule` ``(1e4, 0.1)``.

  Final target: ``∝ p(x) exp(−λ(σ_K) dist(x, B)²)``, which tends to ``p`` restricted to ``B`` as
  ``λ(σ_K) → ∞``; samples may lie slightly outside ``B``.
  """
  schedule = annealed_penalty_schedule(1e4) if schedule is None else schedule

  def potential(x, sigma):
    return energy_fn(x, sigma) + schedule(sigma) * box_sq_distance(x, lower, upper)
  return _with_scale(potential, _recorded_scale(energy_fn))


def bounded_hard(energy_fn: EnergyFn, lower, upper, sigma_on) -> EnergyFn:
  """Hard box constraint: ``U = E`` inside ``B = [lower, upper]``; ``+inf`` outside at the
  levels ``σ ≤ sigma_on``.

  The indicator's gradient is zero, so the drift is the unconstrained one; particles outside
  ``B`` get weight 0 (log-weight ``−inf``) and are removed by resampling.

  **Choose ``sigma_on`` between the last two levels, ``σ_K ≤ sigma_on < σ_{K−1}``** (the
  indicator acts at the final level only): the SMC weights are then exact. If the indicator is on
  at two consecutive levels, the backward kernel ``L_k(x|x') = N(x; x', Δ_k I)`` of METHOD.md §4
  puts mass on ``x ∉ B`` where ``γ_k(x) = 0`` and the proposal never goes, so the weights are
  biased (towards the interior of ``B``: the measured mean of ``N(0,1)`` on ``[−0.5, 1.5]`` was
  0.40 instead of 0.356 with the indicator on at every level). ``sigma_on = jnp.inf`` (every
  level) is allowed but biased in this way; for an annealed constraint use :func:`bounded_soft`.

  Final target: ``p`` restricted to ``B`` (``∝ p(x) 1[x ∈ B]``); with weighted output every
  particle of non-zero weight is inside ``B``.
  """
  def potential(x, sigma):
    inside = jnp.all((x >= lower) & (x <= upper))
    active = sigma <= sigma_on
    e = energy_fn(x, sigma)
    return jnp.where(inside | ~active, e, jnp.inf)
  return _with_scale(potential, _recorded_scale(energy_fn))


def tweedie_denoiser(energy_fn: EnergyFn) -> Callable[[Array, Array], Array]:
  """``D(x, σ) = x − σ² ∇_x E(x, σ)`` (the denoiser of an energy model, METHOD.md §2)."""
  return denoiser_from_energy(energy_fn)


def reward_tilt(energy_fn: EnergyFn, reward_fn: Callable[[Array], Array], strength,
                denoise_fn: Optional[Callable[[Array, Array], Array]] = None) -> EnergyFn:
  """Reward / classifier tilt: ``U(x, σ) = E(x, σ) − λ r(D(x, σ))``.

  Args:
    energy_fn: base energy.
    reward_fn: per-example reward ``r(x_0) -> scalar`` (e.g. a classifier log-probability).
    strength: λ.
    denoise_fn: ``D(x, σ)``; default the energy's own Tweedie denoiser (:func:`tweedie_denoiser`;
      the drift ``−∇U`` then differentiates through ``∇E``, i.e. second-order autodiff).

  Final target: ``∝ p(x) exp(λ r(x))`` (``D(x, σ_K) ≈ x`` at small σ_K).
  """
  denoise_fn = tweedie_denoiser(energy_fn) if denoise_fn is None else denoise_fn

  def potential(x, sigma):
    return energy_fn(x, sigma) - strength * reward_fn(denoise_fn(x, sigma))
  return _with_scale(potential, _recorded_scale(energy_fn))
