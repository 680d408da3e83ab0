"""Distillation of a frozen teacher into an energy by conservative projection (METHOD.md §3).

``L(θ) = E_{σ, x_0, ε} λ(σ) ‖D^E_θ(x_σ, σ) − sg(D_T(x_σ, σ))‖²``: a ``λσ⁴``-weighted regression of
``−∇E_θ`` on the teacher's score. Over conservative fields its minimiser is the ``p_σ``-weighted L²
projection of the teacher's score onto gradients; any part ``r`` with ``∇·(p_σ r) = 0`` is
discarded (weighted Helmholtz decomposition). At convergence the logged ``score_rel_err2`` is
therefore an estimate of the fraction ``‖r‖²/‖s_T‖²`` of the teacher's field that was discarded
(plus the student's own approximation error); :func:`asymmetry` is a local, loss-free test of
whether there is anything to discard at all.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from fkdiff.losses.dsm import example_keys, noisy_batch, vmap_denoiser, weighted_sq_error

Array = jax.Array


def make_distill_loss(student_denoise_fn: Callable, teacher_denoise_fn: Callable,
                      sigma_data: float, p_mean: float = -1.2, p_std: float = 1.2,
                      time_weight: float = 0.0, student_energy_fn: Optional[Callable] = None,
                      gauge_fn: Optional[Callable] = None, time_target: str = "noise",
                      time_probes: int = 1) -> Callable:
  """The conservative projection loss.

  Dropout: the teacher is always evaluated deterministically (it gets no key): the target must
  be the teacher's actual denoiser, the network that is sampled from, not a thinned random
  version of it. The student gets per-example dropout keys when ``loss_fn`` is given a
  ``dropout_key`` (its config's dropout rate > 0), as in DSM training.

  Args:
    student_denoise_fn: ``(params, x, σ, label[, dropout_key]) -> D^E`` per example (the energy's
      ``x − σ²∇E``, e.g. :func:`fkdiff.models.energy.denoiser` bound to its model).
    teacher_denoise_fn: ``(x, σ, label) -> D_T`` per example, frozen: close over its parameters;
      its output is wrapped in ``stop_gradient`` (no gradient flows to it).
    sigma_data: σ_d of the loss weight ``λ(σ)``.
    p_mean, p_std: log-normal σ sampling (EDM).
    time_weight: λ of the time-score term (:func:`time_score_loss`, METHOD.md §3
      "Time-consistent distillation"); 0 (default) is the plain loss, bit for bit.
    student_energy_fn: ``(params, x, σ, label[, dropout_key]) -> E`` per example (needed when
      ``time_weight > 0``): its σ-derivative is regressed, and the student's denoiser is then
      computed from it as ``x − σ²∇_x E`` (one reverse pass gives ``∇_x E`` and ``∂_σ E``;
      ``student_denoise_fn`` is not called).
    gauge_fn: ``(params, σ) -> b(σ)``, the gauge's σ-derivative (needed when ``time_weight > 0``).
    time_target: ``'noise'`` (``(d − ‖ε‖²)/σ``) or ``'teacher'`` (``−σ(‖s_T‖² + ∇·s_T)``); see
      :func:`time_score_target`.
    time_probes: Hutchinson probes of the teacher's divergence (``'teacher'`` only); 0: exact
      trace (one JVP per dimension, small ``d`` only).
  Returns:
    ``loss_fn(params, batch, key, dropout_key=None) -> (loss, aux)`` with ``batch = {'x':
    (B, *event), 'label': (B,) optional}``; ``aux`` has per-example ``(B,)`` arrays ``sigma``,
    ``loss`` and ``score_rel_err2 = ‖s_E − s_T‖² / ‖s_T‖²`` (relative squared score error to the
    teacher; the ``σ⁴`` of ``s = (D − x)/σ²`` cancels), for logging per σ bin.
  """

  def loss_fn(params, batch, key, dropout_key=None):
    x0, label = batch["x"], batch.get("label")
    x_sigma, sigma = noisy_batch(key, x0, p_mean, p_std)
    label_axis = None if label is None else 0
    target = jax.lax.stop_gradient(     # deterministic: no dropout key for the teacher.
        jax.vmap(teacher_denoise_fn, in_axes=(0, 0, label_axis))(x_sigma, sigma, label))
    keys = example_keys(dropout_key, x0.shape[0])
    if time_weight == 0:
      pred = vmap_denoiser(student_denoise_fn, params, x_sigma, sigma, label, keys)
    else:   # ∇_x E and ∂_σ E from one reverse pass; D = x − σ²∇_x E (an energy's denoiser).
      grad_x, d_sigma = vmap_energy_grads(student_energy_fn, params, x_sigma, sigma, label, keys)
      pred = x_sigma - sigma.reshape((-1,) + (1,) * (x0.ndim - 1))**2 * grad_x
    per_example = weighted_sq_error(pred, target, sigma, sigma_data)
    flat = lambda a: a.reshape(a.shape[0], -1)
    rel = jnp.sum(flat(pred - target)**2, -1) / jnp.maximum(
        jnp.sum(flat(target - x_sigma)**2, -1), 1e-20)
    rel = jax.lax.stop_gradient(rel)
    aux = {"sigma": sigma, "loss": per_example, "score_rel_err2": rel}
    if time_weight == 0:
      return jnp.mean(per_example), aux
    if time_target == "noise":
      eps = (x_sigma - x0) / sigma.reshape((-1,) + (1,) * (x0.ndim - 1))
      t = noise_time_target(eps, sigma)
    else:
      t = jax.vmap(lambda x, s, lab, k: teacher_time_target(
          lambda z: teacher_denoise_fn(z, s, lab), x, s, k, time_probes),
          in_axes=(0, 0, label_axis, 0))(x_sigma, sigma, label,
                                         jax.random.split(jax.random.fold_in(key, 7),
                                                          x0.shape[0]))
    t = jax.lax.stop_gradient(t)
    b = jax.vmap(lambda s: gauge_fn(params, s))(sigma)
    time_per_example = time_score_loss(d_sigma, b, t, sigma, x0[0].size)
    aux["time_loss"] = time_per_example
    return jnp.mean(per_example + time_weight * time_per_example), aux

  return loss_fn


def noise_time_target(eps: Array, sigma: Array) -> Array:
  """``(d − ‖ε‖²)/σ`` per example: a conditionally unbiased target for ``∂_σ E``.

  Derivation: ``p_σ(x) = E_{x_0}[N(x; x_0, σ² I)]`` and ``∂_σ log N(x; x_0, σ²I) = (‖x − x_0‖²/σ³
  − d/σ) = (‖ε‖² − d)/σ``; differentiating under the integral and dividing by ``p_σ(x)``,
  ``∂_σ log p_σ(x) = E[(‖ε‖² − d)/σ | x_σ = x]``, so for ``E = −log p_σ``,
  ``E[(d − ‖ε‖²)/σ | x_σ] = ∂_σ E(x_σ, σ)``: the regression's minimiser over functions of
  ``(x, σ)`` is the exact ``∂_σ E`` (with ``c'(σ) = 0`` for the normalised energy). Its variance is
  at most ``Var(‖ε‖²)/σ² = 2d/σ²``, hence the weight ``σ²/(2d)`` of :func:`time_score_loss`.

  Args:
    eps: ``(B, *event)`` noise of ``x_σ = x_0 + σ ε``.
    sigma: ``(B,)``.
  """
  flat = eps.reshape(eps.shape[0], -1)
  return (flat.shape[1] - jnp.sum(flat**2, -1)) / sigma


def teacher_time_target(score_denoise_fn: Callable[[Array], Array], x: Array, sigma: Array,
                        key: Array, num_probes: int = 1) -> Array:
  """``−σ(‖s_T‖² + ∇·s_T)`` at ``x`` for one example: the heat equation's ``∂_σ E`` of the
  teacher's field (``∂_σE = σ(ΔE − ‖∇E‖²)`` with ``s = −∇E``), in the normalised gauge.

  Args:
    score_denoise_fn: ``z -> D_T(z, σ)`` (the teacher's denoiser at this σ); ``s = (D − z)/σ²``.
    x: one example; sigma: scalar.
    key: Rademacher probes of the Hutchinson divergence ``vᵀ (∂s/∂x) v``.
    num_probes: ``0``: the exact divergence (one JVP per dimension).
  """
  s_fn = lambda z: (score_denoise_fn(z) - z) / sigma**2
  s, lin = jax.linearize(s_fn, x)      # one primal pass shared by all tangents.
  if num_probes == 0:
    eye = jnp.eye(x.size, dtype=x.dtype).reshape((x.size,) + x.shape)
    jv = jax.vmap(lin)(eye).reshape(x.size, x.size)
    div = jnp.trace(jv)
  else:
    probes = jax.random.rademacher(key, (num_probes,) + x.shape, x.dtype)
    jv = jax.vmap(lin)(probes)
    div = jnp.mean(jnp.sum((jv * probes).reshape(num_probes, -1), -1))
  return -sigma * (jnp.sum(s**2) + div)


def vmap_energy_grads(energy_fn: Callable, params, x: Array, sigma: Array,
                      label: Optional[Array], keys: Optional[Array]):
  """``(∇_x E (B, *event), ∂_σ E (B,))`` per example from one reverse-mode pass through ``E``
  (the σ-derivative costs no extra network evaluation beyond the score's)."""
  label_axis = None if label is None else 0

  def one(z, s, lab, k=None):
    extra = () if k is None else (k,)
    return jax.grad(lambda zz, ss: energy_fn(params, zz, ss, lab, *extra), argnums=(0, 1))(z, s)

  if keys is None:
    return jax.vmap(one, in_axes=(0, 0, label_axis))(x, sigma, label)
  return jax.vmap(one, in_axes=(0, 0, label_axis, 0))(x, sigma, label, keys)


def vmap_sigma_derivative(energy_fn: Callable, params, x: Array, sigma: Array,
                          label: Optional[Array], keys: Optional[Array]) -> Array:
  """``∂_σ E(x, σ)`` at fixed ``x`` per example (one forward-mode JVP in σ); ``(B,)``."""
  label_axis = None if label is None else 0

  def one(z, s, lab, k=None):
    extra = () if k is None else (k,)
    return jax.jvp(lambda t: energy_fn(params, z, t, lab, *extra), (s,), (jnp.ones_like(s),))[1]

  if keys is None:
    return jax.vmap(one, in_axes=(0, 0, label_axis))(x, sigma, label)
  return jax.vmap(one, in_axes=(0, 0, label_axis, 0))(x, sigma, label, keys)


def time_score_loss(d_sigma: Array, gauge: Array, target: Array, sigma: Array,
                    dim: int) -> Array:
  """Per-example ``σ²/(2d) (∂_σ E_θ + b(σ) − t)²``.

  ``b(σ)`` absorbs the gauge: ``E_θ`` is defined up to ``c(σ)`` (its form has no
  x-independent free term), so the regression target ``t`` (the normalised energy's ``∂_σ``) is
  matched by ``∂_σ(E_θ + ∫b)``; at the optimum ``b(σ) = E[t − ∂_σE_θ | σ]``. The weight makes the
  noise target's variance (≤ ``2d/σ²``) of order one at every σ.
  """
  return sigma**2 / (2.0 * dim) * (d_sigma + gauge - target)**2


def asymmetry(denoise_fn: Callable[[Array, Array], Array], x: Array, sigma: Array,
              key: Array, num_probes: int = 1) -> Array:
  """How non-conservative a denoiser is at ``x``: the antisymmetric share of its score Jacobian.

  With ``J = ∂s/∂x`` the Jacobian of the score ``s = (D − x)/σ²`` (the σ² cancels; ``D − x`` is
  used), ``A = (J − Jᵀ)/2`` its antisymmetric part and probes ``v ~ N(0, I)``, returns
  ``sqrt(Σ_v ‖A v‖² / Σ_v ‖J v‖²)``, an estimate of ``‖A‖_F / ‖J‖_F`` (since
  ``‖J‖_F² = ‖S‖_F² + ‖A‖_F²`` for the symmetric part ``S``, it lies in ``[0, 1]`` in expectation):
  0 for a conservative field (``s = −∇E`` has a symmetric Hessian ``J``), 1 for a pure rotation.
  Using the score's Jacobian rather than ``∂D/∂x = I + σ² J`` keeps the figure comparable across
  σ (``∂D/∂x`` is dominated by the identity at small σ).

  What it measures: the local curl of the teacher's field. It is zero everywhere iff the teacher is
  a gradient field, i.e. iff distillation has nothing to discard; it is not the size of the
  discarded Helmholtz component (that is global: see ``score_rel_err2`` of
  :func:`make_distill_loss` at convergence). One ``jvp`` and one ``vjp`` per probe.

  Args:
    denoise_fn: ``(x, σ) -> D`` per example (a teacher with its parameters bound).
    x: one example, any event shape.
    sigma: scalar noise level.
    key: PRNG key for the probes.
    num_probes: number of Gaussian probes ``v``.
  Returns:
    A scalar in ``[0, 1]``; vmap over examples, σ and keys for a batch.
  """
  fn = lambda z: denoise_fn(z, sigma) - z
  _, vjp_fn = jax.vjp(fn, x)

  def probe(k):
    v = jax.random.normal(k, x.shape, x.dtype)
    jv = jax.jvp(fn, (x,), (v,))[1]
    anti = 0.5 * (jv - vjp_fn(v)[0])
    return jnp.sum(anti**2), jnp.sum(jv**2)

  anti2, full2 = jax.vmap(probe)(jax.random.split(key, num_probes))
  return jnp.sqrt(jnp.sum(anti2) / jnp.maximum(jnp.sum(full2), 1e-30))
