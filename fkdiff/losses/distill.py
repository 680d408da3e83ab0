"""Distillation of a frozen teacher into an energy by conservative projection (METHOD.md §3).

``L(θ) = E_{σ, x_0, ε} λ(σ) ‖D^E_θ(x_σ, σ) − sg(D_T(x_σ, σ))‖²``: a ``λσ⁴``-weighted regression of
``−∇E_θ`` on the teacher's score. Over conservative fields its minimiser is the ``p_σ``-weighted L²
projection of the teacher's score onto gradients; any part ``r`` with ``∇·(p_σ r) = 0`` is
discarded (weighted Helmholtz decomposition).
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from fkdiff.losses.dsm import noisy_batch, weighted_sq_error

Array = jax.Array


def make_distill_loss(student_denoise_fn: Callable, teacher_denoise_fn: Callable,
                      sigma_data: float, p_mean: float = -1.2, p_std: float = 1.2) -> Callable:
  """The conservative projection loss.

  Args:
    student_denoise_fn: ``(params, x, σ, label) -> D^E`` per example (e.g. the energy's
      ``x − σ²∇E``).
    teacher_denoise_fn: ``(x, σ, label) -> D_T`` per example, frozen (no gradient flows to it).
    sigma_data: σ_d of the loss weight ``λ(σ)``.
    p_mean, p_std: log-normal σ sampling.
  Returns:
    ``loss_fn(params, batch, key) -> (loss, aux)``; ``aux`` has per-example ``sigma``, ``loss``
    and ``score_rel_err2 = ‖s_E − s_T‖² / ‖s_T‖²`` (relative squared score error to the teacher).
  """

  def loss_fn(params, batch, key):
    x0, label = batch["x"], batch.get("label")
    x_sigma, sigma = noisy_batch(key, x0, p_mean, p_std)
    label_axis = None if label is None else 0
    target = jax.lax.stop_gradient(
        jax.vmap(teacher_denoise_fn, in_axes=(0, 0, label_axis))(x_sigma, sigma, label))
    pred = jax.vmap(student_denoise_fn, in_axes=(None, 0, 0, label_axis))(
        params, x_sigma, sigma, label)
    per_example = weighted_sq_error(pred, target, sigma, sigma_data)
    flat = lambda a: a.reshape(a.shape[0], -1)
    # Scores are (D − x)/σ²: the σ⁴ cancels in the ratio.
    rel = jnp.sum(flat(pred - target)**2, -1) / jnp.maximum(
        jnp.sum(flat(target - x_sigma)**2, -1), 1e-20)
    return jnp.mean(per_example), {"sigma": sigma, "loss": per_example, "score_rel_err2": rel}

  return loss_fn


def asymmetry(denoise_fn: Callable[[Array, Array], Array], x: Array, sigma: Array,
              key: Array) -> Array:
  """How non-conservative a denoiser is at ``x``: ``‖(J − Jᵀ) v‖ / ‖(J + Jᵀ) v‖``, ``v ~ N(0, I)``.

  ``J = ∂D/∂x``. A conservative model (``D = x − σ²∇E``) has a symmetric ``J`` and scores 0; the
  ratio measures the rotational part that distillation must discard. One ``jvp`` and one ``vjp``
  per call; per example (vmap over ``x``, σ and keys).
  """
  v = jax.random.normal(key, x.shape, x.dtype)
  fn = lambda z: denoise_fn(z, sigma)
  jv = jax.jvp(fn, (x,), (v,))[1]
  jtv = jax.vjp(fn, x)[1](v)[0]
  return jnp.linalg.norm((jv - jtv).ravel()) / jnp.maximum(jnp.linalg.norm((jv + jtv).ravel()),
                                                           1e-20)
