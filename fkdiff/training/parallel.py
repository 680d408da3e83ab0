"""Data parallelism: one mesh axis ``'data'`` over all devices, batch split, parameters replicated.

The train step is an ordinary ``jax.jit`` function whose inputs carry ``NamedSharding``s; XLA
partitions it and inserts the gradient all-reduce. The same code runs on one CPU, eight
accelerators, or several hosts (the mesh spans ``jax.devices()``, i.e. every process's devices).
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh named ``'data'`` over ``devices`` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy on every device (parameters, optimiser state)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch/particle) axis over the ``'data'`` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_divisible(batch_size: int, mesh: Mesh, what: str = "data.batch_size") -> None:
  """Raises ``ValueError`` unless ``batch_size`` splits evenly over the mesh's devices."""
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"{what}={batch_size} must be divisible by the number of devices ({n}).")
