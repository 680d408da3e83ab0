"""Is a learned energy consistent across σ? Heat-equation diagnostics (METHOD.md §3, §4b).

An exact diffused energy ``E = −log p_σ + c(σ)`` of the VE noising ``x_σ = x_0 + σ ε`` satisfies
the heat equation ``∂_σ E = σ (ΔE − ‖∇E‖²) + c(σ)`` (from ``∂_σ p = σ Δp``). Its *heat residual*

    ``r_E(x, σ) = ∂_σ E − σ (ΔE − ‖∇E‖²)``

is therefore the same (``c(σ)``) at every ``x``; any spread of ``r_E`` over ``x`` at fixed σ is
exactly what the exact-ratio SMC weights integrate (METHOD.md §4b). Distillation fits ``∇_x E`` at
each σ and leaves ``∂_σ E`` free, so the residual of a distilled energy varies with ``x``.

This module measures it, gauge-free (an additive ``c(σ)`` cancels in every figure):

- :func:`heat_residual`: ``r_E`` for one point (exact Laplacian: ``d`` forward passes of the
  gradient; or a Hutchinson estimate with Rademacher probes for large ``d``).
- :func:`residual_spread`: the standard deviation of ``r_E`` over data points noised to σ.
- :func:`mixture_diagnostics`: on a Gaussian mixture (toy data), per σ, the spread *between modes*
  of the mean residual (max − min over components of the mean of ``r_E`` over points drawn from
  that component) and the *inter-mode level error*: ``max_k δ_k − min_k δ_k`` with ``δ_k`` the
  mean of ``E_θ − E_exact`` over points of component ``k`` noised to σ (0 for any energy that
  equals the exact one up to a gauge).
"""

from typing import Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp

from fkdiff.data import gmm as gmm_lib

Array = jax.Array
EnergyFn = Callable[[Array, Array], Array]
DEFAULT_SIGMAS = (0.05, 0.1, 0.3, 1.0)


def heat_residual(energy_fn: EnergyFn, x: Array, sigma: Array, key: Optional[Array] = None,
                  num_probes: int = 0) -> Array:
  """``r_E(x, σ) = ∂_σ E − σ (ΔE − ‖∇_x E‖²)`` for one example.

  Args:
    energy_fn: ``(x, σ) -> scalar`` (e.g. :func:`fkdiff.models.energy.bind`).
    x: one example, any event shape.
    sigma: scalar σ.
    key: PRNG key of the Hutchinson probes (only with ``num_probes > 0``).
    num_probes: 0: the exact Laplacian (trace of the Hessian, one JVP of ``∇E`` per dimension:
      toy data); ``n > 0``: ``ΔE ≈ mean_v vᵀ (∇²E) v`` over ``n`` Rademacher probes.
  Returns:
    A scalar.
  """
  sigma = jnp.asarray(sigma, jnp.float32)
  d_sigma = jax.jvp(lambda s: energy_fn(x, s), (sigma,), (jnp.ones_like(sigma),))[1]
  grad_fn = lambda z: jax.grad(energy_fn)(z, sigma)
  grad = grad_fn(x)
  if num_probes == 0:
    eye = jnp.eye(x.size, dtype=x.dtype).reshape((x.size,) + x.shape)
    hv = jax.vmap(lambda v: jax.jvp(grad_fn, (x,), (v,))[1])(eye)
    lap = jnp.sum(hv.reshape(x.size, x.size) * jnp.eye(x.size, dtype=x.dtype))
  else:
    probes = jax.random.rademacher(key, (num_probes,) + x.shape, x.dtype)
    hv = jax.vmap(lambda v: jax.jvp(grad_fn, (x,), (v,))[1])(probes)
    lap = jnp.mean(jnp.sum((hv * probes).reshape(num_probes, -1), -1))
  return d_sigma - sigma * (lap - jnp.sum(grad**2))


def _residuals(energy_fn: EnergyFn, x: Array, sigma, key: Array, num_probes: int) -> Array:
  keys = jax.random.split(key, x.shape[0])
  return jax.vmap(lambda z, k: heat_residual(energy_fn, z, sigma, k, num_probes))(x, keys)


def residual_spread(energy_fn: EnergyFn, x0: Array, key: Array,
                    sigmas: Sequence[float] = DEFAULT_SIGMAS,
                    num_probes: int = 0) -> Dict[float, Array]:
  """Standard deviation over ``x_σ = x_0 + σ ε`` (``x0``: ``(N, *event)`` data) of ``r_E`` per σ.

  Returns ``{σ: std}``; jittable (``sigmas`` static).
  """
  out = {}
  for i, s in enumerate(sigmas):
    k_noise, k_probe = jax.random.split(jax.random.fold_in(key, i))
    x = x0 + s * jax.random.normal(k_noise, x0.shape, x0.dtype)
    out[s] = jnp.std(_residuals(energy_fn, x, s, k_probe, num_probes))
  return out


def _component_points(mixture: gmm_lib.GaussianMixture, key: Array, per_component: int,
                      sigma: float) -> Array:
  """``(K, n, d)``: ``n`` points of each component of the mixture diffused to σ."""
  g = gmm_lib.diffuse(mixture, sigma)
  chol = jnp.linalg.cholesky(g.covs)                                       # (K, d, d)
  z = jax.random.normal(key, (mixture.num_components, per_component, mixture.dim))
  return g.means[:, None, :] + jnp.einsum("kij,knj->kni", chol, z)


def mixture_diagnostics(energy_fn: EnergyFn, mixture: gmm_lib.GaussianMixture, key: Array,
                        sigmas: Sequence[float] = DEFAULT_SIGMAS, per_component: int = 256,
                        num_probes: int = 0) -> Dict[str, Array]:
  """Heat-residual and level diagnostics of an energy against a Gaussian mixture's exact one.

  For every σ, ``per_component`` points are drawn from each component diffused to σ.
  Returns a dict of scalars (jittable; ``sigmas`` static), for each σ (formatted ``%g``):

  - ``heat_residual_std/sigma_<σ>``: std of ``r_E`` over all points (each component's points
    weighted by its mixture weight, i.e. over ``p_σ``);
  - ``heat_residual_mode_spread/sigma_<σ>``: ``max_k − min_k`` of the per-component mean ``r_E``;
  - ``level_error/sigma_<σ>``: ``max_k δ_k − min_k δ_k``, ``δ_k`` the per-component mean of
    ``E − E_exact`` (nats; 0 for the exact energy up to a gauge ``c(σ)``).
  """
  exact = lambda x, s: gmm_lib.energy(mixture, x, s)
  out = {}
  for i, s in enumerate(sigmas):
    k_pts, k_probe = jax.random.split(jax.random.fold_in(key, i))
    pts = _component_points(mixture, k_pts, per_component, s)               # (K, n, d)
    out.update(level_diagnostics(energy_fn, exact, pts, mixture.weights, s, k_probe, num_probes))
  return out


def level_diagnostics(energy_fn: EnergyFn, exact_fn: EnergyFn, points: Array, weights: Array,
                      sigma: float, key: Array, num_probes: int = 0) -> Dict[str, Array]:
  """:func:`mixture_diagnostics` at one σ from given points: ``points (K, n, *event)``, ``n``
  draws of each component ``k`` (mixture weight ``weights[k]``) diffused to σ, and the exact
  energy ``exact_fn(x, σ)``; keys tagged ``sigma_<σ>``."""
  k, n = points.shape[:2]
  flat = points.reshape((k * n,) + points.shape[2:])
  r = _residuals(energy_fn, flat, sigma, key, num_probes).reshape(k, n)
  r_mode = jnp.mean(r, axis=1)
  mean_r = jnp.sum(weights * r_mode)
  var_r = jnp.sum(weights * jnp.mean((r - mean_r)**2, axis=1))
  diff = (jax.vmap(lambda z: energy_fn(z, sigma))(flat)
          - jax.vmap(lambda z: exact_fn(z, sigma))(flat)).reshape(k, n)
  delta = jnp.mean(diff, axis=1)
  tag = f"sigma_{sigma:g}"
  return {f"heat_residual_std/{tag}": jnp.sqrt(var_r),
          f"heat_residual_mode_spread/{tag}": jnp.max(r_mode) - jnp.min(r_mode),
          f"level_error/{tag}": jnp.max(delta) - jnp.min(delta)}
