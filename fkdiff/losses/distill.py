"""Distillation of a frozen teacher into an energy by conservative projection (METHOD.md §3).

``L(θ) = E_{σ, x_0, ε} λ(σ) ‖D^E_θ(x_σ, σ) − sg(D_T(x_σ, σ))‖²``: a ``λσ⁴``-weighted regression of
``−∇E_θ`` on the teacher's score. Over conservative fields its minimiser is the ``p_σ``-weighted L²
projection of the teacher's score onto gradients; any part ``r`` with ``∇·(p_σ r) = 0`` is
discarded (weighted Helmholtz decomposition). At convergence the logged ``score_rel_err2`` is
therefore an estimate of the fraction ``‖r‖²/‖s_T‖²`` of the teacher's field that was discarded
(plus the student's own approximation error); :func:`asymmetry` is a local, loss-free test of
whether there is anything to discard at all.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from fkdiff.losses.dsm import example_keys, noisy_batch, vmap_denoiser, weighted_sq_error

Array = jax.Array


def make_distill_loss(student_denoise_fn: Callable, teacher_denoise_fn: Callable,
                      sigma_data: float, p_mean: float = -1.2, p_std: float = 1.2) -> Callable:
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
    pred = vmap_denoiser(student_denoise_fn, params, x_sigma, sigma, label,
                         example_keys(dropout_key, x0.shape[0]))
    per_example = weighted_sq_error(pred, target, sigma, sigma_data)
    flat = lambda a: a.reshape(a.shape[0], -1)
    rel = jnp.sum(flat(pred - target)**2, -1) / jnp.maximum(
        jnp.sum(flat(target - x_sigma)**2, -1), 1e-20)
    rel = jax.lax.stop_gradient(rel)
    return jnp.mean(per_example), {"sigma": sigma, "loss": per_example, "score_rel_err2": rel}

  return loss_fn


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
