"""Figures: samples over exact density contours (2-D), written as PNG files."""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from fkdiff.data import gmm as gmm_lib


def _figure():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def density_grid(mixture: gmm_lib.GaussianMixture, lim: float, n: int = 200):
  """Exact log density on an ``n × n`` grid over ``[-lim, lim]²``: ``(xs, ys, log_p (n, n))``."""
  ticks = np.linspace(-lim, lim, n, dtype=np.float32)
  xx, yy = np.meshgrid(ticks, ticks)
  pts = np.stack([xx.ravel(), yy.ravel()], -1)
  log_p = _log_prob_batch(mixture, pts).reshape(n, n)
  return xx, yy, np.asarray(log_p)


_log_prob_batch = jax.jit(jax.vmap(gmm_lib.log_prob, in_axes=(None, 0)))


def samples_figure(samples, mixture: Optional[gmm_lib.GaussianMixture], path: str,
                   title: str = "", max_points: int = 4000) -> None:
  """Scatter of 2-D ``samples (N, 2)`` over the exact density's contours; saves ``path``."""
  plt = _figure()
  samples = np.asarray(samples)[:max_points]
  fig, ax = plt.subplots(figsize=(5, 5))
  if mixture is not None:
    lim = float(np.max(np.abs(np.asarray(mixture.means)))) + 3 * float(
        np.sqrt(np.max(np.asarray(mixture.covs))))
    xx, yy, log_p = density_grid(mixture, lim)
    ax.contourf(xx, yy, np.exp(log_p), levels=20, cmap="Blues")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
  ax.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:red", alpha=0.5)
  ax.set_aspect("equal")
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
