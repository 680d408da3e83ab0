"""The FID protocol: Inception-v3 pool features of quantised images, Gaussian fits, Fréchet distance.

Samples and reference images go through one pipeline (:func:`inception_input`): ``[-1, 1]`` →
``uint8`` (what a saved PNG holds) → bilinear resize to 299×299 without antialiasing (as
pytorch-fid's ``F.interpolate``) → ``[-1, 1]``; grayscale is repeated to three channels. Features
are the FID Inception's 2048-d final pool (:mod:`fkdiff.evaluation.inception`); the distance is
:func:`fkdiff.evaluation.frechet.frechet_distance` between the two Gaussian fits. Statistics are
stored as ``.npz`` with ``mu``, ``sigma`` (and ``n``) — the layout pytorch-fid and TTUR use, so
their published reference statistics load too (note those were computed with TensorFlow's resize
and may differ from ours by a few tenths of FID).
"""

import os
from typing import Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fkdiff.evaluation import inception
from fkdiff.evaluation.frechet import FeatureStats, feature_stats, frechet_distance

Array = jax.Array
DEFAULT_NUM_SAMPLES = 50_000


def inception_input(images: Array) -> Array:
  """``(N, H, W, C)`` in ``[-1, 1]``, C ∈ {1, 3} → ``(N, 299, 299, 3)`` in ``[-1, 1]``."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"FID needs images (N, H, W, 1 or 3), got shape {images.shape}.")
  levels = jnp.round(jnp.clip((images + 1.0) * 127.5, 0.0, 255.0))   # as uint8
  x = levels / 127.5 - 1.0
  x = jax.image.resize(x, (x.shape[0], inception.RESOLUTION, inception.RESOLUTION, x.shape[-1]),
                       method="bilinear", antialias=False)
  return jnp.broadcast_to(x, x.shape[:-1] + (3,))


@jax.jit
def batch_features(variables: dict, images: Array) -> Array:
  """``(B, H, W, C)`` in ``[-1, 1]`` → Inception pool features ``(B, 2048)`` (weights are an
  argument, never a baked-in constant; one compilation per shape, shared by all callers)."""
  return inception.InceptionV3().apply(variables, inception_input(images))


def make_feature_fn(variables: dict, batch_size: int = 200) -> Callable[[np.ndarray], np.ndarray]:
  """``features(images (N, H, W, C) in [-1, 1]) -> (N, 2048)`` float32 NumPy, in jitted batches
  of ``batch_size`` (the last one padded; one compilation per image shape)."""
  def features(images) -> np.ndarray:
    images = np.asarray(images, np.float32)
    out = []
    for start in range(0, images.shape[0], batch_size):
      chunk = images[start:start + batch_size]
      pad = batch_size - chunk.shape[0]
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      out.append(np.asarray(batch_features(variables, chunk))[:batch_size - pad])
    return np.concatenate(out) if out else np.zeros((0, inception.FEATURES), np.float32)

  return features


def stats_of_batches(batches: Iterable[np.ndarray], features: Callable) -> FeatureStats:
  """Gaussian fit of the features of every image in ``batches`` (each ``(n, H, W, C)``)."""
  return feature_stats(np.concatenate([features(b) for b in batches]))


def save_stats(path: str, stats: FeatureStats) -> None:
  """Writes ``mu``, ``sigma``, ``n`` to ``path`` (``.npz``)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    np.savez(f, mu=stats.mu, sigma=stats.cov, n=stats.n)


def load_stats(path: str) -> FeatureStats:
  """Statistics saved by :func:`save_stats` (or pytorch-fid / TTUR's ``mu``/``sigma`` files)."""
  try:
    with np.load(path) as f:
      mu, cov = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
      n = int(f["n"]) if "n" in f.files else 0
  except (OSError, KeyError, ValueError) as e:
    raise ValueError(f"{path} is not an FID statistics file with 'mu' and 'sigma' "
                     f"({type(e).__name__}: {e}).") from e
  if mu.shape != (inception.FEATURES,) or cov.shape != (inception.FEATURES,) * 2:
    raise ValueError(f"{path}: expected mu ({inception.FEATURES},) and sigma "
                     f"({inception.FEATURES}, {inception.FEATURES}), got {mu.shape}, {cov.shape}.")
  return FeatureStats(mu, cov, n)


def reference_stats(images_uint8: np.ndarray, features: Callable, num: int,
                    cache: Optional[str] = None, batch_size: int = 1000) -> FeatureStats:
  """Statistics of the first ``num`` real images ``(M, H, W, C) uint8``, read from ``cache``
  when it exists and written there otherwise."""
  if cache and os.path.exists(cache):
    return load_stats(cache)
  images = images_uint8[:num]
  batches = (images[i:i + batch_size].astype(np.float32) / 127.5 - 1.0
             for i in range(0, images.shape[0], batch_size))
  stats = stats_of_batches(batches, features)
  if cache:
    save_stats(cache, stats)
  return stats


def fid(samples_stats: FeatureStats, reference: FeatureStats) -> float:
  """FID = squared Fréchet distance between the Inception-feature Gaussians."""
  return frechet_distance(samples_stats, reference)
