"""Energy-parameterised diffusion models (METHOD.md §2).

An energy is a scalar per example, ``E(x, σ[, label])``; everything else derives from it:
score ``s = −∇_x E`` (``jax.grad``), denoiser ``D = x − σ² ∇_x E`` (Tweedie). The same functions
work for learned energies (bound to their parameters with :func:`bind`) and for closed-form ones:
both have the signature ``energy_fn(x, sigma) -> scalar`` that the samplers consume.

Parameterisations of :class:`EnergyModel`. Notation: ``y = c_in x``, ``h = h(y, c_noise[, label])``
a backbone whose output is shaped like its input (e.g. the teacher's architecture), and the
Gaussian base ``G = ‖x‖²/(2(σ²+σ_d²)) = ½‖y‖²``, the exact energy of ``N(0, σ_d² I)`` diffused
to σ (up to the gauge constant).

- ``'thornton'`` (default, Thornton et al. 2025):
  ``E = G − (σ_d/σ) ⟨h, y⟩``, so that ``D = c_skip x + c_out ∇_y⟨h(y), y⟩``: the EDM denoiser
  with the free output ``F`` replaced by a conservative field. ``h`` can start from a teacher's
  weights (:func:`init_from_teacher`).
- ``'autoencoder'`` (Du et al. 2023; Salimans & Ho 2021):
  ``E = G + (σ_d/σ) (½‖y − h‖² − ½‖y‖²) = G + (σ_d/σ) (½‖h‖² − ⟨h, y⟩)``, so that
  ``D = c_skip x + c_out ∇_y(⟨h, y⟩ − ½‖h‖²)``.
- ``'norm'`` (Du et al. 2023): ``E = G + (σ_d/σ) ½‖h‖²``, so that ``D = c_skip x − c_out J_hᵀ h``.

**The σ scaling [choice].** ``∇_x = c_in ∇_y`` and ``σ² c_in (σ_d/σ) = c_out``: the factor
``σ_d/σ`` on the network term is exactly what puts the network's contribution to ``D`` at the EDM
output scale ``c_out`` in all three forms, so a unit-size ``h`` is a unit-size change of EDM's
``F`` at every σ (the same optimiser settings work for all three, and the EDM loss weight
``λ(σ) = 1/c_out²`` makes every σ contribute equally). Without it (the unscaled
``½‖y − h‖²`` of Du et al.) the network enters ``D`` as ``σ² c_in = (σ/σ_d) c_out``: it vanishes
at small σ, where the data's detail lives, and must shrink like ``1/σ`` at large σ. The Gaussian
base ``G`` (already part of the autoencoder form, ``½‖y‖²``; added to the norm form) makes all
three equal the diffused ``N(0, σ_d² I)`` when ``h ≡ 0``, the EDM ``c_skip`` behaviour.
"""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from fkdiff.diffusion import edm

Array = jax.Array
EnergyFn = Callable[[Array, Array], Array]
PARAMETERIZATIONS = ("thornton", "autoencoder", "norm")


def _call_backbone(backbone: nn.Module, y: Array, c_noise: Array, label: Optional[Array],
                   deterministic: bool):
  if deterministic:   # the plain call: any backbone ``h(y, c_noise, label)`` works.
    return backbone(y, c_noise, label)
  return backbone(y, c_noise, label, deterministic=False)


class EnergyModel(nn.Module):
  """Scalar energy ``E(x, σ[, label])`` of one example ``x`` (any event shape).

  Attributes:
    backbone: the network ``h(y, c_noise, label) -> like y`` (a submodule: its parameters sit under
      ``params['params']['backbone']``, whatever ``remat`` is).
    sigma_data: σ_d of the EDM preconditioning.
    parameterization: ``'thornton'`` | ``'autoencoder'`` | ``'norm'`` (see the module docstring).
    remat: wrap the backbone call in ``jax.checkpoint`` (``nn.remat``): its activations are
      recomputed in the backward pass instead of stored. Training through ``∇_x E`` is second-order
      autodiff; on large backbones this trades ~one more forward pass for memory. Same values.

  Dropout: the backbone's own (e.g. ``UNet.dropout``), applied only in ``deterministic=False``
  calls with a ``'dropout'`` PRNG key (``dropout_key`` of :func:`energy` and the functions built on
  it: training losses). The mask depends on the key only, so within one call it is fixed and
  ``∇_x E`` is the gradient of one (thinned) energy.
  """
  backbone: nn.Module
  sigma_data: float
  parameterization: str = "thornton"
  remat: bool = False

  def setup(self):
    if self.parameterization not in PARAMETERIZATIONS:
      raise ValueError(f"Unknown energy parameterization {self.parameterization!r}; choose one "
                       f"of {PARAMETERIZATIONS}.")

  def __call__(self, x: Array, sigma: Array, label: Optional[Array] = None,
               deterministic: bool = True) -> Array:
    """``x``: one example, any event shape; ``sigma``: scalar; returns a scalar energy.

    ``deterministic=False`` turns the backbone's dropout on (needs ``rngs={'dropout': key}``).
    """
    p = edm.preconditioning(sigma, self.sigma_data)
    y = p.c_in * x
    # deterministic is a Python bool: static under jax.checkpoint (argument 4, the module is 0).
    call = nn.remat(_call_backbone, static_argnums=(4,)) if self.remat else _call_backbone
    h = call(self.backbone, y, p.c_noise, label, deterministic)
    gauss = 0.5 * jnp.sum(y**2)                    # = ‖x‖² / (2(σ²+σ_d²))
    scale = self.sigma_data / sigma                # puts h at the EDM output scale c_out.
    if self.parameterization == "thornton":
      return gauss - scale * jnp.sum(h * y)
    if self.parameterization == "autoencoder":
      return gauss + scale * (0.5 * jnp.sum(h**2) - jnp.sum(h * y))
    return gauss + scale * 0.5 * jnp.sum(h**2)


class Gauge(nn.Module):
  """``b(σ)``: a small network of ``log σ``, the σ-derivative of an energy's gauge ``c(σ)``.

  Used only by time-consistent distillation (``distill.time_weight > 0``): the energy forms above
  have no x-independent free term, so the time-score regression (``∂_σ E_θ + b(σ) ≈ ∂_σ E``,
  :func:`fkdiff.losses.distill.time_score_loss`) needs its own. Its parameters live beside the
  energy's, under ``params['gauge']``; they never change a score, a denoiser or a self-normalised
  weight. The output layer starts at zero (``b ≡ 0``).
  """
  width: int = 32

  @nn.compact
  def __call__(self, sigma: Array) -> Array:
    t = jnp.log(jnp.asarray(sigma, jnp.float32))[None]
    h = jnp.concatenate([t, jnp.sin(t), jnp.cos(t)])
    h = nn.silu(nn.Dense(self.width)(h))
    h = nn.silu(nn.Dense(self.width)(h))
    # b ~ 1/σ scale at small σ (the noise target is O(sqrt(d)/σ)): predict σ·b.
    return nn.Dense(1, kernel_init=nn.initializers.zeros)(h)[0] / jnp.asarray(sigma, jnp.float32)


def energy(model: EnergyModel, params: Any, x: Array, sigma: Array,
           label: Optional[Array] = None, dropout_key: Optional[Array] = None) -> Array:
  """``E(x, σ[, label])`` for one example ``x`` (event shape) and scalar σ; returns ``()``.

  Deterministic unless a ``dropout_key`` is given (training losses only): then the backbone's
  dropout is applied with masks drawn from that key. The same holds for :func:`energy_and_score`,
  :func:`score` and :func:`denoiser`.
  """
  if dropout_key is None:
    return model.apply(params, x, sigma, label)
  return model.apply(params, x, sigma, label, deterministic=False, rngs={"dropout": dropout_key})


def energy_and_score(model: EnergyModel, params: Any, x: Array, sigma: Array,
                     label: Optional[Array] = None, dropout_key: Optional[Array] = None):
  """``(E, −∇_x E)`` in one ``jax.value_and_grad`` pass; shapes ``()`` and like ``x``."""
  value, grad = jax.value_and_grad(energy, argnums=2)(model, params, x, sigma, label, dropout_key)
  return value, -grad


def score(model: EnergyModel, params: Any, x: Array, sigma: Array,
          label: Optional[Array] = None, dropout_key: Optional[Array] = None) -> Array:
  """Score ``−∇_x E(x, σ)``, shaped like ``x``."""
  return -jax.grad(energy, argnums=2)(model, params, x, sigma, label, dropout_key)


def denoiser(model: EnergyModel, params: Any, x: Array, sigma: Array,
             label: Optional[Array] = None, dropout_key: Optional[Array] = None) -> Array:
  """Denoiser ``D = x − σ² ∇_x E``, shaped like ``x``."""
  return x + sigma**2 * score(model, params, x, sigma, label, dropout_key)


def bind(model: EnergyModel, params: Any, label: Optional[Array] = None) -> EnergyFn:
  """``energy_fn(x, σ) -> scalar``: the learned energy with the analytic-energy signature.

  The result plugs in wherever a closed-form energy does (e.g. ``lambda x, s: gmm.energy(mix, x,
  s)``): :func:`score_from_energy`, :func:`denoiser_from_energy`, the SMC targets.
  """
  return lambda x, sigma: energy(model, params, x, sigma, label)


def score_from_energy(energy_fn: EnergyFn) -> Callable[[Array, Array], Array]:
  """``score_fn(x, σ) = −∇_x energy_fn(x, σ)`` for any per-example energy callable."""
  return lambda x, sigma: -jax.grad(energy_fn)(x, sigma)


def denoiser_from_energy(energy_fn: EnergyFn) -> Callable[[Array, Array], Array]:
  """``denoise_fn(x, σ) = x − σ² ∇_x energy_fn(x, σ)`` for any per-example energy callable."""
  return lambda x, sigma: x - sigma**2 * jax.grad(energy_fn)(x, sigma)


def init_from_teacher(energy_params: Any, teacher_params: Any) -> Any:
  """Energy parameters whose ``h`` holds the teacher's network weights.

  Args:
    energy_params: initialised :class:`EnergyModel` parameters (``{'params': {'backbone': …}}``),
      the template whose structure, shapes and dtypes the result keeps.
    teacher_params: the teacher backbone's parameters (``{'params': …}``, as ``backbone.init``
      returns them).
  Returns:
    A copy of ``energy_params`` with the backbone replaced by the teacher's weights (cast to the
    template's dtypes).
  Raises:
    ValueError: if either tree is not of the expected form, or naming every parameter whose path
      or shape differs (the teacher has another architecture).
  """
  if "backbone" not in energy_params.get("params", {}):
    raise ValueError("energy_params must be EnergyModel parameters {'params': {'backbone': …}}; "
                     f"got top-level keys {sorted(energy_params)}.")
  if "params" not in teacher_params:
    raise ValueError("teacher_params must be the teacher backbone's variables {'params': …}; got "
                     f"top-level keys {sorted(teacher_params)}.")
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
    shown = "; ".join(problems[:8]) + (f" … ({len(problems)} in all)" if len(problems) > 8 else "")
    raise ValueError("The student's network cannot be initialised from the teacher's weights: "
                     f"the architectures differ ({shown}). Give the student the teacher's "
                     "config.model, or set teacher.init_student=False.")
  backbone = jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray(t_leaves[path], s.dtype), student)
  return {**energy_params, "params": {**energy_params["params"], "backbone": backbone}}
