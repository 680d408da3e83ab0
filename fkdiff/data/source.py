"""The one interface of every training data source (toy mixtures, images).

A :class:`DataSource` draws a global batch from a PRNG key inside ``jit``. Training derives that
key from the step number, so the data stream is a pure function of ``(seed, step)``: a resumed run
sees exactly the batches an uninterrupted run would have seen, on any number of devices.
"""

from typing import Callable, NamedTuple, Optional

import jax

from fkdiff.data import gmm as gmm_lib

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


def in_memory_sample_fn(x: Array,
                        labels: Optional[Array] = None) -> Callable[[Array, int], dict]:
  """A jittable ``sample(key, batch_size)`` drawing examples of ``x (N, *event)`` (and their
  ``labels (N,)``) uniformly with replacement. ``x`` becomes a constant of every program that
  calls it: for small sets only."""

  def sample(key, batch_size):
    idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
    batch = {"x": x[idx]}
    if labels is not None:
      batch["label"] = labels[idx]
    return batch

  return sample
