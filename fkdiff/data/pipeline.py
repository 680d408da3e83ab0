"""Training data sources behind one interface.

A :class:`DataSource` draws a global batch from a PRNG key inside ``jit``. Training derives that
key from the step number, so the data stream is a pure function of ``(seed, step)``: a resumed run
sees exactly the batches an uninterrupted run would have seen, on any number of devices.
"""

from typing import Callable, NamedTuple, Optional

import jax
import ml_collections

from fkdiff.data import gmm as gmm_lib
from fkdiff.data import toy

Array = jax.Array


class DataSource(NamedTuple):
  """A dataset as a pure sampler.

  Attributes:
    sample: ``sample(key, batch_size) -> {'x': (B, *event_shape)[, 'label': (B,)]}``, jittable.
    event_shape: shape of one example.
    sigma_data: the data standard deviation σ_d used for preconditioning.
    mixture: the exact density for toy data (ground truth for evaluation), else ``None``.
    host_batch: for datasets served from host memory (images, :mod:`fkdiff.data.images`),
      ``host_batch(seed, step, batch_size) -> batch`` of NumPy arrays, this process's
      ``batch_size // process_count`` rows of the global batch of ``step`` (a pure function of
      its arguments); the trainer then uses it instead of ``sample``. ``None`` otherwise.
  """
  sample: Callable[[Array, int], dict]
  event_shape: tuple
  sigma_data: float
  mixture: Optional[gmm_lib.GaussianMixture] = None
  host_batch: Optional[Callable[[int, int, int], dict]] = None


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


def image_source(data: ml_collections.ConfigDict) -> DataSource:
  """An image dataset of :mod:`fkdiff.data.images` (imports TensorFlow: loaded on use)."""
  from fkdiff.data import images
  return images.image_source(data)


_SOURCES = {"toy2d": toy2d_source, "digits": image_source, "cifar10": image_source,
            "celeb_a": image_source, "afhqv2_64": image_source, "ffhq64": image_source}


def make_data_source(data: ml_collections.ConfigDict) -> DataSource:
  """The data source named ``data.name``."""
  if data.name not in _SOURCES:
    raise ValueError(f"Unknown data.name {data.name!r}; choose one of {sorted(_SOURCES)}.")
  return _SOURCES[data.name](data)
