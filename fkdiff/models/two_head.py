"""One network, two heads: an EDM denoiser (score) head and a scalar energy head on a shared
trunk (docs/METHOD.md §4e).

The backbone ``h(y, c_noise[, label])`` is built with ``output_heads=2``: everything but its last
layer is shared, and the last layer's output splits on the last axis into ``F`` (the score head)
and ``g`` (the energy head), both shaped like ``y = c_in x``:

- score head: ``D(x, σ) = c_skip x + c_out F`` — the EDM denoiser, unconstrained (trained by
  denoising score matching: the best-understood score estimator), score ``(D − x)/σ²``;
- energy head, in the paper's (Thornton et al.) form: ``E(x, σ) = ½‖y‖² − (σ_d/σ)⟨g, y⟩`` (the
  diffused ``N(0, σ_d² I)`` when ``g ≡ 0``; the factor ``σ_d/σ`` puts ``g``'s contribution to
  ``x − σ²∇E`` at the EDM output scale ``c_out``, as in :mod:`fkdiff.models.energy`).

One forward pass gives ``E`` and the score head's ``D``: SMC with
:class:`fkdiff.sampling.HeadRatio` proposes from the score head and weights with the energy
head's values (exact-ratio increments), so it needs no gradient of ``E`` — the weights correct
whatever the two heads disagree on. ``−∇E`` (by ``jax.grad``, as for any energy) is trained to
match the score head (:mod:`fkdiff.losses.two_head`).
"""

from typing import Any, Callable, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fkdiff.diffusion import edm
from fkdiff.models.energy import _call_backbone

Array = jax.Array


class TwoHeadModel(nn.Module):
  """``(E(x, σ[, label]), D(x, σ[, label]))`` of one example ``x`` from one backbone call.

  Attributes:
    backbone: ``h(y, c_noise, label) -> (..., 2 · last axis of y)`` (a backbone with
      ``output_heads=2``; its parameters sit under ``params['params']['backbone']``).
    sigma_data: σ_d of the EDM preconditioning.
  """
  backbone: nn.Module
  sigma_data: float

  def __call__(self, x: Array, sigma: Array, label: Optional[Array] = None,
               deterministic: bool = True) -> Tuple[Array, Array]:
    """``x``: one example, any event shape; ``sigma``: scalar; returns ``(E: (), D: like x)``."""
    p = edm.preconditioning(sigma, self.sigma_data)
    y = p.c_in * x
    out = _call_backbone(self.backbone, y, p.c_noise, label, deterministic)
    if out.shape[-1] != 2 * y.shape[-1]:
      raise ValueError(f"TwoHeadModel's backbone must output 2 heads ({2 * y.shape[-1]} numbers "
                       f"on the last axis for an input of {y.shape[-1]}), got {out.shape[-1]}: "
                       "build it with output_heads=2.")
    f, g = jnp.split(out, 2, axis=-1)
    denoised = p.c_skip * x + p.c_out * f
    value = 0.5 * jnp.sum(y**2) - (self.sigma_data / sigma) * jnp.sum(g * y)
    return value, denoised


def apply_heads(model: TwoHeadModel, params: Any, x: Array, sigma: Array,
                label: Optional[Array] = None,
                dropout_key: Optional[Array] = None) -> Tuple[Array, Array]:
  """``(E: (), D_F: like x)`` of one example (``dropout_key``: training losses only)."""
  if dropout_key is None:
    return model.apply(params, x, sigma, label)
  return model.apply(params, x, sigma, label, deterministic=False, rngs={"dropout": dropout_key})


def heads(model: TwoHeadModel, params: Any, x: Array, sigma: Array,
          label: Optional[Array] = None, dropout_key: Optional[Array] = None
          ) -> Tuple[Array, Array]:
  """``(E, s)``: the energy head's value and the score head's score ``(D − x)/σ²``, one forward
  pass; shapes ``()`` and like ``x``."""
  value, denoised = apply_heads(model, params, x, sigma, label, dropout_key)
  return value, (denoised - x) / sigma**2


def energy(model: TwoHeadModel, params: Any, x: Array, sigma: Array,
           label: Optional[Array] = None, dropout_key: Optional[Array] = None) -> Array:
  """The energy head ``E(x, σ[, label])``: ``()``."""
  return apply_heads(model, params, x, sigma, label, dropout_key)[0]


def energy_denoiser(model: TwoHeadModel, params: Any, x: Array, sigma: Array,
                    label: Optional[Array] = None, dropout_key: Optional[Array] = None) -> Array:
  """The energy head's Tweedie denoiser ``x − σ²∇_x E``, like ``x`` (a backward pass)."""
  grad = jax.grad(energy, argnums=2)(model, params, x, sigma, label, dropout_key)
  return x - sigma**2 * grad


class HeadEnergy(NamedTuple):
  """An energy callable that also carries its score head: ``E = f(x, σ[, label])`` is the
  energy head's value (a forward pass; differentiable, so ``−∇E`` and MCMC work as for any
  energy) and :meth:`value_and_score` gives ``(E, score head)`` from the same pass — what
  :class:`fkdiff.sampling.HeadRatio` uses (:meth:`fkdiff.sampling.targets.Target.
  energy_values_and_scores`).

  Attributes:
    heads_fn: ``(x, σ[, label]) -> (E: (), score: like x)`` for one example.
  """
  heads_fn: Callable

  def __call__(self, x: Array, sigma: Array, *label) -> Array:
    return self.heads_fn(x, sigma, *label)[0]

  def value_and_score(self, x: Array, sigma: Array, *label) -> Tuple[Array, Array]:
    return self.heads_fn(x, sigma, *label)


def bind(model: TwoHeadModel, params: Any, label: Optional[Array] = None) -> HeadEnergy:
  """The two-headed network on ``params`` (and ``label``) as a :class:`HeadEnergy`."""
  return HeadEnergy(lambda x, sigma: heads(model, params, x, sigma, label))
