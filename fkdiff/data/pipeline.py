"""Training data sources by name: ``make_data_source(config.data)`` → a
:class:`~fkdiff.data.source.DataSource` (toy 2-D mixtures here, images in
:mod:`fkdiff.data.images`).
"""

import ml_collections

from fkdiff.data import gmm as gmm_lib
from fkdiff.data import toy
from fkdiff.data.source import DataSource


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
