"""Training data sources by name: ``make_data_source(config.data)`` → a
:class:`~fkdiff.data.source.DataSource` (toy 2-D mixtures, image-spectrum mixtures in any
dimension and example files here, images in
:mod:`fkdiff.data.images`).
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fkdiff.data import gmm as gmm_lib
from fkdiff.data import spectral, toy
from fkdiff.data.source import DataSource, in_memory_sample_fn


def toy2d_source(data: ml_collections.ConfigDict) -> DataSource:
  """Samples from a named 2-D Gaussian mixture of :mod:`fkdiff.data.toy`."""
  try:
    mixture = toy.get_mixture(data.mixture, **data.mixture_kwargs.to_dict())
  except TypeError as e:
    raise ValueError(f"Bad data.mixture_kwargs for mixture {data.mixture!r}: {e}") from e
  sigma_data = data.sigma_data if data.sigma_data > 0 else gmm_lib.data_std(mixture)

  def sample(key, batch_size):
    return {"x": gmm_lib.sample(mixture, key, batch_size)[0]}

  return DataSource(sample, (mixture.dim,), float(sigma_data), mixture)


def spectral_source(data: ml_collections.ConfigDict) -> DataSource:
  """Samples from a named image-spectrum mixture of :mod:`fkdiff.data.spectral` (``data.mixture``:
  a layout of ``spectral.LAYOUTS``; ``data.mixture_kwargs``: ``dim``, ``separation``, spectrum
  options), with its exact density as ``mixture`` (a high-dimensional stand-in with ground truth).
  A layout with attributes also gives each example a ``label`` (:func:`spectral.sample_labelled`:
  ``0 … A−1`` one attribute, ``A`` the null label with the whole mixture's draws) for a
  class-conditional model with ``model.num_classes = A``.

  Raises:
    ValueError: on bad ``mixture_kwargs``, or label dropout on a labelled layout (the null label's
      examples must be the whole mixture's; dropout would add conditional ones).
  """
  try:
    sm = spectral.layout(data.mixture, **data.mixture_kwargs.to_dict())
  except TypeError as e:
    raise ValueError(f"Bad data.mixture_kwargs for spectral layout {data.mixture!r}: {e}") from e
  mixture = spectral.as_gmm(sm)
  sigma_data = data.sigma_data if data.sigma_data > 0 else gmm_lib.data_std(mixture)
  if spectral.num_labels(sm) == 0:
    sample = lambda key, batch_size: {"x": spectral.sample(sm, key, batch_size)[0]}
  elif data.label_dropout > 0 or data.attribute_dropout > 0:
    raise ValueError(f"Spectral layout {data.mixture!r} has labels: its null label "
                     f"({spectral.num_labels(sm)}) already draws from the whole mixture, and "
                     "label dropout would put conditional draws under it (p(x|null) != p(x)). "
                     "Set data.label_dropout = data.attribute_dropout = 0.")
  else:
    sample = lambda key, batch_size: dict(zip(("x", "label"),
                                              spectral.sample_labelled(sm, key, batch_size)))
  return DataSource(sample, sm.event_shape, float(sigma_data), mixture)


def arrays_source(data: ml_collections.ConfigDict) -> DataSource:
  """Examples from the ``.npz`` file ``data.array_file``: ``x`` float ``(N, *event)`` (images in
  [-1, 1]) and optionally ``label`` int ``(N,)``, drawn uniformly with replacement in ``jit``
  (e.g. a teacher's own samples, :mod:`fkdiff.experiments.imported`). σ_d: ``data.sigma_data``,
  else 0.5 for images ``(H, W, C)``, else the examples' RMS std."""
  path = data.array_file
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(f"data.array_file {path!r} is not a file; data.name 'arrays' reads "
                            "examples from an .npz file with 'x' (N, *event) [and 'label' (N,)].")
  try:
    with np.load(path) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"data.array_file {path} is not a readable .npz file: {e}.") from None
  if "x" not in arrays or arrays["x"].ndim < 2 or not len(arrays["x"]):
    raise ValueError(f"data.array_file {path} has no examples 'x' (N, *event); keys "
                     f"{sorted(arrays)}.")
  x = jnp.asarray(arrays["x"], jnp.float32)
  labels = None if "label" not in arrays else jnp.asarray(arrays["label"], jnp.int32)
  if labels is not None and labels.shape != x.shape[:1]:
    raise ValueError(f"data.array_file {path}: 'label' has shape {labels.shape}, not "
                     f"({x.shape[0]},).")
  if data.sigma_data > 0:
    sigma_data = float(data.sigma_data)
  else:
    sigma_data = 0.5 if x.ndim == 4 else float(np.sqrt(np.mean(np.var(arrays["x"], axis=0))))

  return DataSource(in_memory_sample_fn(x, labels), tuple(x.shape[1:]), sigma_data)


def image_source(data: ml_collections.ConfigDict) -> DataSource:
  """An image dataset of :mod:`fkdiff.data.images` (imports TensorFlow: loaded on use)."""
  from fkdiff.data import images
  return images.image_source(data)


_SOURCES = {"toy2d": toy2d_source, "spectral": spectral_source, "arrays": arrays_source,
            "digits": image_source, "cifar10": image_source, "celeb_a": image_source, "afhqv2_64": image_source,
            "ffhq64": image_source}


def make_data_source(data: ml_collections.ConfigDict) -> DataSource:
  """The data source named ``data.name``."""
  if data.name not in _SOURCES:
    raise ValueError(f"Unknown data.name {data.name!r}; choose one of {sorted(_SOURCES)}.")
  return _SOURCES[data.name](data)
