"""Joint training of a two-headed network (:mod:`fkdiff.models.two_head`, docs/METHOD.md §4e).

Per noisy example ``x_σ = x_0 + σ ε`` (EDM's σ distribution and weight ``λ(σ)``)::

  L = λ(σ) ‖D_F(x_σ) − t_F‖²  +  w λ(σ) ‖D_E(x_σ) − t_E‖²

with the score head's denoiser ``D_F`` and the energy head's Tweedie denoiser
``D_E = x − σ²∇_x E``, and targets

- ``'data'`` (no teacher): ``t_F = x_0`` (denoising score matching) and ``t_E = sg(D_F)``, the
  score head itself (stop-gradient, as distillation regresses on a teacher): the energy head is
  the conservative projection of the score head, trained at the same time;
- ``'teacher'``: ``t_F = t_E = sg(D_T)``, a frozen teacher's denoiser (distillation of both heads).

One forward and one backward pass of the network per example give ``E``, ``D_F``, ``∇_x E`` and
``∂_σ E``. With ``time_weight > 0`` the energy head's σ-derivative is also regressed, as in
time-consistent distillation (METHOD.md §3b): ``+ λ_t σ²/(2d) (∂_σE + b(σ) − t)²`` with a gauge
network ``b`` and ``t = −σ(‖ŝ‖² + ∇·ŝ)``, the heat equation's ``∂_σ E`` of the score head's (or the
teacher's) field, stop-gradient: it trains the energy head's levels between modes, which exact-ratio
weights read (docs/METHOD.md §4e).
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from fkdiff.losses.distill import teacher_time_target, time_score_loss
from fkdiff.losses.dsm import example_keys, noisy_batch, weighted_sq_error

Array = jax.Array
TARGETS = ("data", "teacher")


def make_two_head_loss(heads_fn: Callable, sigma_data: float, p_mean: float = -1.2,
                       p_std: float = 1.2, energy_weight: float = 1.0, target: str = "data",
                       teacher_denoise_fn: Optional[Callable] = None, time_weight: float = 0.0,
                       gauge_fn: Optional[Callable] = None, time_probes: int = 0) -> Callable:
  """The two-headed network's loss.

  Args:
    heads_fn: ``(params, x, σ, label, dropout_key) -> (E: (), D_F: like x)`` per example (e.g.
      :func:`fkdiff.models.two_head.apply_heads` bound to its model).
    sigma_data: σ_d of the loss weight ``λ(σ)``.
    p_mean, p_std: log-normal σ sampling (EDM).
    energy_weight: ``w``, the energy head's term.
    target: ``'data'`` or ``'teacher'`` (module docstring).
    teacher_denoise_fn: ``(x, σ, label) -> D_T`` (``'teacher'`` only), frozen.
    time_weight: ``λ_t`` of the time-score term (0: none, and ``gauge_fn`` is not used).
    gauge_fn: ``(params, σ) -> b(σ)`` (needed when ``time_weight > 0``).
    time_probes: Hutchinson probes of the target's divergence; 0: the exact trace (one JVP per
      dimension, small events only).
  Returns:
    ``loss_fn(params, batch, key, dropout_key=None) -> (loss, aux)``; ``aux`` has per-example
    ``(B,)`` arrays ``sigma``, ``loss``, ``score_head_loss``, ``energy_head_loss`` and
    ``head_gap_rel2 = ‖D_E − D_F‖² / ‖D_F − x_σ‖²`` (how far the energy's score is from the
    score head's, relative to the score: what the SMC weights must correct).
  """
  if target not in TARGETS:
    raise ValueError(f"Unknown two-head target {target!r}; choose one of {TARGETS}.")
  if target == "teacher" and teacher_denoise_fn is None:
    raise ValueError("target 'teacher' needs a teacher_denoise_fn.")
  if time_weight > 0 and gauge_fn is None:
    raise ValueError("time_weight > 0 needs a gauge_fn.")

  def one(params, x, sigma, label, key):
    energy_and_head = lambda z, s: heads_fn(params, z, s, label, key)
    (_, d_f), (grad, d_sigma) = jax.value_and_grad(energy_and_head, argnums=(0, 1),
                                                   has_aux=True)(x, sigma)
    return d_f, x - sigma**2 * grad, d_sigma

  def loss_fn(params, batch, key, dropout_key=None):
    x0, label = batch["x"], batch.get("label")
    x_sigma, sigma = noisy_batch(key, x0, p_mean, p_std)
    label_axis = None if label is None else 0
    keys = example_keys(dropout_key, x0.shape[0])
    d_f, d_e, d_sigma = jax.vmap(one, in_axes=(None, 0, 0, label_axis,
                                               None if keys is None else 0))(
        params, x_sigma, sigma, label, keys)
    if target == "data":
      t_f, t_e = x0, jax.lax.stop_gradient(d_f)
    else:
      t_f = t_e = jax.lax.stop_gradient(
          jax.vmap(teacher_denoise_fn, in_axes=(0, 0, label_axis))(x_sigma, sigma, label))
    score_loss = weighted_sq_error(d_f, t_f, sigma, sigma_data)
    energy_loss = weighted_sq_error(d_e, t_e, sigma, sigma_data)
    per_example = score_loss + energy_weight * energy_loss
    flat = lambda a: a.reshape(a.shape[0], -1)
    gap = jnp.sum(flat(d_e - d_f)**2, -1) / jnp.maximum(jnp.sum(flat(d_f - x_sigma)**2, -1),
                                                         1e-20)
    aux = {"sigma": sigma, "loss": per_example, "score_head_loss": score_loss,
           "energy_head_loss": energy_loss, "head_gap_rel2": jax.lax.stop_gradient(gap)}
    if time_weight > 0:
      if target == "data":     # the score head's field at these parameters (no gradient).
        field = lambda z, s, lab: heads_fn(params, z, s, lab, None)[1]
      else:
        field = teacher_denoise_fn
      probe_keys = jax.random.split(jax.random.fold_in(key, 7), x0.shape[0])
      t = jax.vmap(lambda x, s, lab, k: teacher_time_target(
          lambda z: field(z, s, lab), x, s, k, time_probes),
          in_axes=(0, 0, label_axis, 0))(x_sigma, sigma, label, probe_keys)
      b = jax.vmap(lambda s: gauge_fn(params, s))(sigma)
      time_loss = time_score_loss(d_sigma, b, jax.lax.stop_gradient(t), sigma, x0[0].size)
      aux["time_loss"] = time_loss
      per_example = per_example + time_weight * time_loss
    return jnp.mean(per_example), aux

  return loss_fn
