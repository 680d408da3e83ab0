"""Figures, written as PNG files: samples over the exact density (2-D), image sample grids.

Every 2-D panel is fitted to its exact target: the view is the square around the region holding
99.9% of the target's mass (:func:`support_box`), the density is drawn beneath the samples and its
50 / 90 / 99% highest-density contours above them, so a sampler's misses and excess read at a
glance.
"""

from typing import Optional, Sequence, Tuple

import jax
import numpy as np

from fkdiff.data import gmm as gmm_lib

MASS_CONTOURS = (0.5, 0.9, 0.99)


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


def mass_levels(density: np.ndarray, masses: Sequence[float]) -> np.ndarray:
  """Density thresholds whose superlevel sets hold ``masses`` of a density tabulated on equal
  cells (any shape); one per mass, in the same order (a larger mass gives a lower level)."""
  p = np.sort(np.asarray(density, np.float64).ravel())[::-1]
  mass = np.cumsum(p) / p.sum()
  return p[np.minimum(np.searchsorted(mass, masses), p.size - 1)]


def support_box(xx: np.ndarray, yy: np.ndarray, density: np.ndarray, mass: float = 0.999,
                pad: float = 0.1) -> Tuple[float, float, float, float]:
  """``(x_lo, x_hi, y_lo, y_hi)``: the square around the highest-density region holding ``mass``
  of a density tabulated at points ``(xx, yy)`` (equal cells, any 2-D layout), widened by ``pad``
  of its side on each side. Square, so both axes keep one scale."""
  inside = density >= mass_levels(density, [mass])[0]
  x, y = xx[inside], yy[inside]
  centre = np.array([x.min() + x.max(), y.min() + y.max()]) / 2
  half = max(x.max() - x.min(), y.max() - y.min()) / 2
  cell = max(np.ptp(xx), np.ptp(yy)) / (max(xx.shape) - 1)   # the cells' own width is support.
  half = (half + cell / 2) * (1 + 2 * pad)
  return (float(centre[0] - half), float(centre[0] + half), float(centre[1] - half),
          float(centre[1] + half))


def _density_panel(ax, xx, yy, density, box, samples, size: float, alpha: float) -> float:
  """Draws the density (filled, beneath), ``samples (N, 2)`` and the mass contours (above) in
  ``box``; returns the fraction of samples outside the view."""
  ax.contourf(xx, yy, density, levels=20, cmap="Blues")
  ax.scatter(samples[:, 0], samples[:, 1], s=size, c="tab:red", alpha=alpha, linewidths=0)
  levels = np.unique(mass_levels(density, MASS_CONTOURS))   # increasing, as contour wants.
  ax.contour(xx, yy, density, levels=levels, colors="k", linewidths=0.6)
  ax.set_xlim(box[0], box[1])
  ax.set_ylim(box[2], box[3])
  ax.set_aspect("equal")
  outside = ((samples[:, 0] < box[0]) | (samples[:, 0] > box[1]) | (samples[:, 1] < box[2])
             | (samples[:, 1] > box[3]))
  return float(np.mean(outside)) if len(samples) else 0.0


def _outside_note(fraction: float) -> str:
  return f" ({100 * fraction:.0f}% off view)" if fraction >= 0.005 else ""


def samples_figure(samples, mixture: Optional[gmm_lib.GaussianMixture], path: str,
                   title: str = "", max_points: int = 4000) -> None:
  """Scatter of 2-D ``samples (N, 2)`` over the exact density (when ``mixture`` is given, with
  its 50/90/99% mass contours, the view fitted to its support); saves ``path``. Samples of more
  dimensions: their first two coordinates, without contours."""
  plt = _figure()
  samples = np.asarray(samples)[:max_points]
  fig, ax = plt.subplots(figsize=(5, 5))
  if mixture is not None and mixture.dim == 2:
    lim = float(np.max(np.abs(np.asarray(mixture.means)))) + 4 * float(
        np.sqrt(np.max(np.asarray(mixture.covs))))
    xx, yy, log_p = density_grid(mixture, lim)
    density = np.exp(log_p)
    title += _outside_note(_density_panel(ax, xx, yy, density, support_box(xx, yy, density),
                                          samples, 2, 0.5))
  else:
    ax.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:red", alpha=0.5)
    ax.set_aspect("equal")
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def problem_figure(path: str, title: str, grid, samples: dict, methods, sources,
                max_points: int = 2000) -> Tuple[float, float, float, float]:
  """One panel per (energy source, method): ``samples[(title, method, source)][0] (N, 2)`` (blank
  where absent) over the exact target ``grid`` (a :class:`fkdiff.evaluation.grid.GridDensity`)
  with its 50/90/99% mass contours. Every panel shows :func:`support_box` of the target; returns
  the limits as drawn, ``(x_lo, x_hi, y_lo, y_hi)``."""
  plt = _figure()
  n = int(round(np.sqrt(grid.points.shape[0])))
  xx = np.asarray(grid.points[:, 0]).reshape(n, n)
  yy = np.asarray(grid.points[:, 1]).reshape(n, n)
  density = np.exp(np.asarray(grid.log_p)).reshape(n, n)
  box = support_box(xx, yy, density)
  fig, axes = plt.subplots(len(sources), len(methods), figsize=(3 * len(methods),
                                                               3 * len(sources)), squeeze=False)
  drawn = box
  for i, source in enumerate(sources):
    for j, method in enumerate(methods):
      ax = axes[i, j]
      if (title, method, source) not in samples:   # a method not run on this source.
        ax.axis("off")
        continue
      pts = np.asarray(samples[(title, method, source)][0])[:max_points]
      outside = _density_panel(ax, xx, yy, density, box, pts, 1, 0.4)
      drawn = ax.get_xlim() + ax.get_ylim()
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f"{method} / {source}{_outside_note(outside)}", fontsize=9)
  fig.suptitle(f"{title} (lines: {', '.join(f'{m:.0%}' for m in MASS_CONTOURS)} of the mass)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return tuple(float(v) for v in drawn)


def ess_figure(path: str, results: dict, sigmas) -> None:
  """SMC's ESS fraction against σ (log scale, decreasing to the right) for every run."""
  plt = _figure()
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for (problem, method, source), (_, ess) in results.items():
    if ess is not None:
      ax.plot(np.asarray(sigmas)[:len(ess)], np.asarray(ess),
              label=f"{problem} / {method} / {source}")
  ax.set_xscale("log")
  ax.invert_xaxis()
  ax.set_xlabel("σ")
  ax.set_ylabel("ESS / N")
  ax.set_ylim(0, 1.05)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  else:   # no SMC method ran: say so instead of an empty legend.
    ax.text(0.5, 0.5, "no SMC run", transform=ax.transAxes, ha="center", va="center")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def save_image_grid(samples, path: str, columns: Optional[int] = None) -> None:
  """Writes ``samples (N, H, W, C)`` in ``[-1, 1]`` as one PNG grid (1-pixel gaps), ``columns``
  wide (default ``⌈√N⌉``), upscaled by an integer factor to about 256 pixels."""
  from PIL import Image
  from fkdiff.data.images import to_uint8
  images = to_uint8(samples)
  n, h, w, c = images.shape
  cols = columns or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = images[i]
  scale = max(1, 256 // max(grid.shape[:2]))
  grid = np.repeat(np.repeat(grid, scale, 0), scale, 1)
  Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)


def error_vs_nfe_figure(path: str, results: dict) -> None:
  """The high-dimension study's figure: largest mode-mass error and ``|variance ratio − 1|``
  against NFE per sample, one line per method and dimension (``results[shape][problem][method]
  [budget]`` summaries of :func:`fkdiff.experiments.highdim.run`), one column per problem."""
  plt = _figure()
  problems = sorted({p for by_shape in results.values() for p in by_shape})
  fig, axes = plt.subplots(2, len(problems), figsize=(4.2 * len(problems), 7), squeeze=False)
  for col, pname in enumerate(problems):
    for shape, by_problem in results.items():
      size = int(np.prod([int(n) for n in shape.split("x")]))
      for method, by_budget in by_problem.get(pname, {}).items():
        rows = [by_budget[b] for b in sorted(by_budget, key=int)]
        nfe = [r["nfe_per_sample"] for r in rows]
        for row, (key, fn) in enumerate((("mode_mass_error", lambda v: v),
                                         ("var_ratio", lambda v: abs(v - 1.0)))):
          axes[row, col].plot(nfe, [max(fn(r[key]), 1e-4) for r in rows], marker="o",
                              label=f"{method}, d={size}")
    axes[0, col].set_title(pname)
    axes[0, col].set_ylabel("largest mode-mass error")
    axes[1, col].set_ylabel("|variance ratio − 1|")
    for row in range(2):
      axes[row, col].set_xscale("log")
      axes[row, col].set_yscale("log")
      axes[1, col].set_xlabel("NFE per sample")
  axes[0, -1].legend(fontsize=6, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
