"""Named 2-D toy mixtures (ring, grid, bar, …) used by configs, tests and notebooks."""

import numpy as np

from fkdiff.data.gmm import GaussianMixture, make_mixture


def ring(num_modes: int = 8, radius: float = 2.0, std=0.2, weights=None) -> GaussianMixture:
  """``num_modes`` isotropic modes evenly spaced on a circle of ``radius``.

  ``std`` is one standard deviation for all modes or one per mode.
  """
  angles = 2 * np.pi * np.arange(num_modes) / num_modes
  means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
  weights = np.ones(num_modes) if weights is None else weights
  return make_mixture(weights, means, np.broadcast_to(np.asarray(std, float)**2, (num_modes,)))


def grid(num_per_side: int = 3, spacing: float = 1.5, std: float = 0.2,
         weights=None) -> GaussianMixture:
  """A ``num_per_side × num_per_side`` grid of isotropic modes centred on the origin."""
  ticks = spacing * (np.arange(num_per_side) - (num_per_side - 1) / 2)
  means = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), axis=-1).reshape(-1, 2)
  k = num_per_side**2
  weights = np.ones(k) if weights is None else weights
  return make_mixture(weights, means, np.full(k, std**2))


def bar(separation: float = 2.0, long_std: float = 1.0, short_std: float = 0.15,
        vertical: bool = True, weights=(0.5, 0.5)) -> GaussianMixture:
  """Two elongated modes side by side: long along one axis, thin and separated along the other.

  With ``vertical=True`` the modes sit at ``x = ±separation/2`` and stretch along ``y``.
  """
  half = separation / 2
  if vertical:
    means = [[-half, 0.0], [half, 0.0]]
    variances = [[short_std**2, long_std**2]] * 2
  else:
    means = [[0.0, -half], [0.0, half]]
    variances = [[long_std**2, short_std**2]] * 2
  return make_mixture(weights, means, variances)


def unequal(weights=(0.7, 0.2, 0.1), radius: float = 1.5, std=0.25) -> GaussianMixture:
  """Modes of unequal weights (and optionally widths) on a circle (low temperature, energies)."""
  return ring(len(weights), radius, std, weights=np.asarray(weights))


def anisotropic(cov=((1.0, 0.6), (0.6, 0.5)), mean=(0.0, 0.0)) -> GaussianMixture:
  """A single anisotropic Gaussian."""
  return make_mixture([1.0], [mean], [cov])


_LAYOUTS = {"ring": ring, "grid": grid, "bar": bar, "unequal": unequal,
            "anisotropic": anisotropic}


def get_mixture(name: str, **kwargs) -> GaussianMixture:
  """Looks a named layout up; keyword arguments go to its constructor."""
  if name not in _LAYOUTS:
    raise ValueError(f"Unknown toy mixture {name!r}; choose one of {sorted(_LAYOUTS)}.")
  return _LAYOUTS[name](**kwargs)

