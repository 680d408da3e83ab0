"""Energy-parameterised diffusion models (METHOD.md §2).

An energy is a scalar per example, ``E(x, σ[, label])``; everything else derives from it:
score ``s = −∇_x E`` (``jax.grad``), denoiser ``D = x − σ² ∇_x E`` (Tweedie). The same functions
work for learned energies (bound to their parameters with :func:`bind`) and for closed-form ones:
both have the signature ``energy_fn(x, sigma) -> scalar`` that the samplers consume.

Parameterisations of :class:`EnergyModel` (``y = c_in x``, ``h`` a backbone whose output is shaped
like its input, e.g. the teacher's architecture):

- ``'thornton'`` (default, Thornton et al. 2025):
  ``E = ‖x‖²/(2(σ²+σ_d²)) − (σ_d/σ) ⟨h(y, c_noise), y⟩``, so that
  ``D = c_skip x + c_out ∇_y⟨h(y), y⟩``: the EDM denoiser with the free output ``F`` replaced by a
  conservative field. ``h`` can start from a teacher's weights (:func:`init_from_teacher`).
- ``'autoencoder'`` (Du et al. 2023): ``E = ½ ‖y − h(y, c_noise)‖²``.
- ``'norm'`` (Du et al. 2023): ``E = ‖x‖²/(2(σ²+σ_d²)) + (σ_d/σ) ½ ‖h(y, c_noise)‖²``.

All three equal the exact energy of ``N(0, σ_d² I)`` diffused to σ (up to the gauge constant)
when ``h ≡ 0``; the ``σ_d/σ`` factors give the network's contribution to ``D`` the EDM scale
``c_out``. The baselines' Gaussian base term is our choice, so that every parameterisation starts
from the same sensible model.
"""

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from fkdiff.diffusion import edm

Array = jax.Array
EnergyFn = Callable[[Array, Array], Array]
PARAMETERIZATIONS = ("thornton", "autoencoder", "norm")


class EnergyModel(nn.Module):
  """Scalar energy ``E(x, σ[, label])`` of one example ``x`` (any event shape).

  Attributes:
    backbone: the network ``h(y, c_noise, label) -> like y`` (a submodule: its parameters sit under
      ``params['params']['backbone']``).
    sigma_data: σ_d of the EDM preconditioning.
    parameterization: ``'thornton'`` | ``'autoencoder'`` | ``'norm'`` (see the module docstring).
  """
  backbone: nn.Module
  sigma_data: float
  parameterization: str = "thornton"

  def setup(self):
    if self.parameterization not in PARAMETERIZATIONS:
      raise ValueError(f"Unknown energy parameterization {self.parameterization!r}; choose one "
                       f"of {PARAMETERIZATIONS}.")

  def __call__(self, x: Array, sigma: Array, label: Optional[Array] = None) -> Array:
    p = edm.preconditioning(sigma, self.sigma_data)
    y = p.c_in * x
    h = self.backbone(y, p.c_noise, label)
    gauss = 0.5 * jnp.sum(x**2) / (sigma**2 + self.sigma_data**2)
    if self.parameterization == "thornton":
      return gauss - (self.sigma_data / sigma) * jnp.sum(h * y)
    if self.parameterization == "autoencoder":
      return 0.5 * jnp.sum((y - h)**2)
    return gauss + (self.sigma_data / sigma) * 0.5 * jnp.sum(h**2)


def energy(model: EnergyModel, params, x: Array, sigma: Array,
           label: Optional[Array] = None) -> Array:
  """``E(x, σ[, label])`` for one example; a scalar."""
  return model.apply(params, x, sigma, label)


def energy_and_score(model: EnergyModel, params, x: Array, sigma: Array,
                     label: Optional[Array] = None):
  """``(E, −∇_x E)`` in one ``jax.value_and_grad`` pass; shapes ``()`` and like ``x``."""
  value, grad = jax.value_and_grad(energy, argnums=2)(model, params, x, sigma, label)
  return value, -grad


def score(model: EnergyModel, params, x: Array, sigma: Array,
          label: Optional[Array] = None) -> Array:
  """Score ``−∇_x E(x, σ)``, shaped like ``x``."""
  return -jax.grad(energy, argnums=2)(model, params, x, sigma, label)


def denoiser(model: EnergyModel, params, x: Array, sigma: Array,
             label: Optional[Array] = None) -> Array:
  """Denoiser ``D = x − σ² ∇_x E``, shaped like ``x``."""
  return x + sigma**2 * score(model, params, x, sigma, label)


def bind(model: EnergyModel, params, label: Optional[Array] = None) -> EnergyFn:
  """``energy_fn(x, σ) -> scalar``: the learned energy with the analytic-energy signature."""
  return lambda x, sigma: energy(model, params, x, sigma, label)


def score_from_energy(energy_fn: EnergyFn) -> Callable[[Array, Array], Array]:
  """``score_fn(x, σ) = −∇_x energy_fn(x, σ)`` for any energy callable."""
  return lambda x, sigma: -jax.grad(energy_fn)(x, sigma)


def denoiser_from_energy(energy_fn: EnergyFn) -> Callable[[Array, Array], Array]:
  """``denoise_fn(x, σ) = x − σ² ∇_x energy_fn(x, σ)`` for any energy callable."""
  return lambda x, sigma: x - sigma**2 * jax.grad(energy_fn)(x, sigma)


def init_from_teacher(energy_params, teacher_params):
  """Energy parameters whose ``h`` holds the teacher's network weights.

  Args:
    energy_params: initialised :class:`EnergyModel` parameters (``{'params': {'backbone': …}}``).
    teacher_params: the teacher backbone's parameters (``{'params': …}``).
  Returns:
    A copy of ``energy_params`` with the backbone replaced by the teacher's weights.
  Raises:
    ValueError: naming every parameter whose path or shape differs (another architecture).
  """
  student = energy_params["params"]["backbone"]
  teacher = teacher_params["params"]
  s_leaves = dict(jax.tree_util.tree_leaves_with_path(student))
  t_leaves = dict(jax.tree_util.tree_leaves_with_path(teacher))
  fmt = jax.tree_util.keystr
  problems = [f"{fmt(p)} missing in the teacher" for p in s_leaves if p not in t_leaves]
  problems += [f"{fmt(p)} only in the teacher" for p in t_leaves if p not in s_leaves]
  problems += [f"{fmt(p)}: student {s_leaves[p].shape} vs teacher {t_leaves[p].shape}"
               for p in s_leaves if p in t_leaves and s_leaves[p].shape != t_leaves[p].shape]
  if problems:
    shown = "; ".join(problems[:8]) + (" …" if len(problems) > 8 else "")
    raise ValueError("The student's network cannot be initialised from the teacher's weights: "
                     f"the architectures differ ({shown}). Give the student the teacher's "
                     "config.model, or set teacher.init_student=False.")
  params = dict(energy_params["params"])
  params["backbone"] = jax.tree.map(lambda t, s: jnp.asarray(t, s.dtype), teacher, student)
  return {**energy_params, "params": params}
