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


def task_figure(path: str, title: str, grid, samples: dict, methods, sources,
                max_points: int = 2000) -> None:
  """One panel per (energy source, method): samples over the exact target density (a grid)."""
  plt = _figure()
  n = int(round(np.sqrt(grid.points.shape[0])))
  xx = np.asarray(grid.points[:, 0]).reshape(n, n)
  yy = np.asarray(grid.points[:, 1]).reshape(n, n)
  density = np.exp(np.asarray(grid.log_p)).reshape(n, n)
  fig, axes = plt.subplots(len(sources), len(methods), figsize=(3 * len(methods),
                                                               3 * len(sources)), squeeze=False)
  for i, source in enumerate(sources):
    for j, method in enumerate(methods):
      ax = axes[i, j]
      ax.contourf(xx, yy, density, levels=20, cmap="Blues")
      pts = samples[(title, method, source)][0][:max_points]
      ax.scatter(pts[:, 0], pts[:, 1], s=1, c="tab:red", alpha=0.4)
      ax.set_xlim(-grid.lim, grid.lim)
      ax.set_ylim(-grid.lim, grid.lim)
      ax.set_aspect("equal")
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f"{method} / {source}", fontsize=9)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def ess_figure(path: str, results: dict, sigmas) -> None:
  """SMC's ESS fraction against σ (log scale, decreasing to the right) for every run."""
  plt = _figure()
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for (task, method, source), (_, ess) in results.items():
    if ess is not None:
      ax.plot(np.asarray(sigmas)[:len(ess)], np.asarray(ess), label=f"{task} / {source}")
  ax.set_xscale("log")
  ax.invert_xaxis()
  ax.set_xlabel("σ")
  ax.set_ylabel("ESS / N")
  ax.set_ylim(0, 1.05)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
