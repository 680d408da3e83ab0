"""Fréchet distance between Gaussian fits of feature sets (the FID formula).

``d² = ‖μ_a − μ_b‖² + tr(C_a + C_b − 2 (C_a^{1/2} C_b C_a^{1/2})^{1/2})`` (Heusel et al. 2017,
Dowson & Landau 1982). The features can be Inception-v3 pool features (FID) or any other
embedding, e.g. the digits classifier's (:mod:`fkdiff.evaluation.classifier`). Computed in
float64 NumPy on the host: the matrix square roots are ill-conditioned in float32.
"""

from typing import NamedTuple

import numpy as np


class FeatureStats(NamedTuple):
  """Gaussian fit of ``n`` feature vectors: ``mu (D,)``, ``cov (D, D)`` (unbiased), ``n``."""
  mu: np.ndarray
  cov: np.ndarray
  n: int


def feature_stats(features) -> FeatureStats:
  """Mean and covariance of ``features (N, D)``, N ≥ 2."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"features must have shape (N, D) with N >= 2, got {f.shape}.")
  if not np.all(np.isfinite(f)):
    raise ValueError("features contain NaN or inf (non-finite samples?).")
  return FeatureStats(f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1]),
                      f.shape[0])


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
  """Square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
  vals, vecs = np.linalg.eigh((m + m.T) / 2)
  return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
  """Squared Fréchet distance ``d²`` between the Gaussian fits ``a`` and ``b`` (≥ 0)."""
  if a.mu.shape != b.mu.shape:
    raise ValueError(f"Feature dimensions differ: {a.mu.shape} vs {b.mu.shape}.")
  root_a = _sqrtm_psd(a.cov)
  cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ b.cov @ root_a), 0, None)))
  d2 = np.sum((a.mu - b.mu)**2) + np.trace(a.cov) + np.trace(b.cov) - 2 * cross
  return float(max(d2, 0.0))
