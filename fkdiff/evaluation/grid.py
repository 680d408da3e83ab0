"""Exact 2-D densities on a grid: any unnormalised target (tempered, product, restricted).

For a 2-D target known up to a constant — ``p^β``, ``Π p_i``, ``p·1_B`` — a fine grid gives the
normalised density, its log normaliser, mode masses and exact samples, to grid accuracy
(METHOD.md §5). This is the ground truth of the toy composition and low-temperature tasks.
"""

from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array


@struct.dataclass
class GridDensity:
  """A normalised density tabulated on a regular ``n × n`` grid of cell centres.

  Attributes:
    points: ``(n*n, 2)`` cell centres (row-major over ``x`` then ``y``).
    log_p: ``(n*n,)`` normalised log density at the centres.
    log_z: log normaliser of the unnormalised input, ``log ∫ exp(f)``.
    lim: the grid covers ``[-lim, lim]²``.
    cell: side length of a cell.
  """
  points: Array
  log_p: Array
  log_z: Array
  lim: float = struct.field(pytree_node=False)
  cell: float = struct.field(pytree_node=False)


def tabulate(log_density: Callable[[Array], Array], lim: float, n: int = 400) -> GridDensity:
  """Tabulates ``exp(log_density(x))`` (per point ``x (2,)``, unnormalised) on ``[-lim, lim]²``."""
  cell = 2 * lim / n
  ticks = -lim + cell * (jnp.arange(n) + 0.5)
  xx, yy = jnp.meshgrid(ticks, ticks, indexing="ij")
  points = jnp.stack([xx.ravel(), yy.ravel()], -1)
  f = jax.jit(jax.vmap(log_density))(points)
  f = jnp.where(jnp.isnan(f), -jnp.inf, f)
  log_z = jax.nn.logsumexp(f) + 2 * jnp.log(cell)
  return GridDensity(points, f - log_z, log_z, float(lim), float(cell))


def log_prob(grid: GridDensity, x: Array) -> Array:
  """Log density at points ``x (N, 2)`` (value of the containing cell; ``-inf`` outside)."""
  n = int(round(2 * grid.lim / grid.cell))
  idx = jnp.floor((x + grid.lim) / grid.cell).astype(jnp.int32)
  inside = jnp.all((idx >= 0) & (idx < n), axis=-1)
  flat = jnp.clip(idx[:, 0], 0, n - 1) * n + jnp.clip(idx[:, 1], 0, n - 1)
  return jnp.where(inside, grid.log_p[flat], -jnp.inf)


def sample(grid: GridDensity, key: Array, num: int) -> Array:
  """Exact samples (to grid accuracy): a cell by its mass, then uniform inside it; ``(num, 2)``."""
  k_cell, k_jitter = jax.random.split(key)
  # Inverse-CDF draw of the cells (categorical's Gumbel trick would need num × cells normals).
  cdf = jnp.cumsum(jnp.exp(grid.log_p - jax.nn.logsumexp(grid.log_p)))
  u = jax.random.uniform(k_cell, (num,)) * cdf[-1]
  cells = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, grid.log_p.shape[0] - 1)
  jitter = jax.random.uniform(k_jitter, (num, 2), minval=-0.5, maxval=0.5) * grid.cell
  return grid.points[cells] + jitter


def region_masses(grid: GridDensity, assign: Callable[[Array], Array], num_regions: int) -> Array:
  """Probability mass of each region; ``assign(points (M, 2)) -> region ids (M,)``."""
  ids = assign(grid.points)
  weights = jnp.exp(grid.log_p) * grid.cell**2
  return jax.ops.segment_sum(weights, ids, num_segments=num_regions)
