"""Multi-process JAX (``jax.distributed``): one controller process per host, one global mesh.

Every process runs the same program. After :func:`initialize`, ``jax.devices()`` lists the devices
of *all* processes, so the data mesh of :mod:`fkdiff.training.parallel` spans the whole job:
each process generates and computes only its own batch shards, gradients are all-reduced by
XLA, orbax writes one checkpoint together, and only process 0 writes files meant for humans.

How the processes find each other (:func:`resolve_options`), first match wins:

1. explicit ``coordinator_address``, ``num_processes`` and ``process_id`` (flags of ``launch.py``
   or the environment variables ``FKDIFF_COORDINATOR_ADDRESS``, ``FKDIFF_NUM_PROCESSES``,
   ``FKDIFF_PROCESS_ID``);
2. JAX's own cluster detection (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes jobs) when
   only ``distributed`` is requested.

Failure handling: when a process dies, the others fail within seconds if they wait for it in a
collective (broken connection), and at the latest after ``heartbeat_timeout_s`` (the coordination
service misses its heartbeats and terminates every other process). A process that raises exits
at once under :func:`exit_promptly_on_error` instead of waiting at JAX's exit barrier. No process
is left blocked; relaunching the same command resumes from the last checkpoint.
"""

import contextlib
import os
import re
import sys
import traceback
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import numpy as np
from absl import logging

ENV_PREFIX = "FKDIFF_"


class DistributedOptions(NamedTuple):
  """How (and whether) to start ``jax.distributed``.

  Attributes:
    enabled: start the multi-process runtime at all.
    coordinator_address: ``host:port`` of process 0's coordination service, or ``None`` to let
      JAX detect the cluster.
    num_processes: number of processes of the job, or ``None`` (detected).
    process_id: this process's index in ``[0, num_processes)``, or ``None`` (detected).
    local_device_ids: accelerator ids this process owns, or ``None`` (all visible, or JAX's
      per-cluster default).
    heartbeat_timeout_s: a process silent for this long is declared dead and the job stops.
    initialization_timeout_s: how long processes wait for each other at start-up.
    shutdown_timeout_s: how long a finished process waits for the others at exit.
    cpu_collectives: cross-process collectives on CPU (``'gloo'`` or ``'mpi'``); only used by
      CPU backends (tests, CPU clusters).
  """
  enabled: bool = False
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  local_device_ids: Optional[Sequence[int]] = None
  heartbeat_timeout_s: int = 100
  initialization_timeout_s: int = 300
  shutdown_timeout_s: int = 300
  cpu_collectives: str = "gloo"


def _env_int(environ: Mapping[str, str], name: str) -> Optional[int]:
  value = environ.get(ENV_PREFIX + name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError as e:
    raise ValueError(f"{ENV_PREFIX}{name}={value!r} is not an integer.") from e


def resolve_options(enabled: bool = False, coordinator_address: Optional[str] = None,
                    num_processes: Optional[int] = None, process_id: Optional[int] = None,
                    local_device_ids: Optional[Sequence[int]] = None,
                    environ: Optional[Mapping[str, str]] = None, **timeouts) -> DistributedOptions:
  """Combines flag values with ``FKDIFF_*`` environment variables (flags win) and validates them.

  Giving any of ``coordinator_address``, ``num_processes``, ``process_id`` (or
  ``FKDIFF_DISTRIBUTED=1``) implies ``enabled``; a job of one process is not distributed.

  Args:
    enabled: request multi-process mode (with nothing else: JAX detects the cluster).
    coordinator_address: ``host:port`` of process 0.
    num_processes: number of processes.
    process_id: index of this process.
    local_device_ids: accelerator ids owned by this process.
    environ: environment to read (default ``os.environ``).
    **timeouts: other :class:`DistributedOptions` fields (``heartbeat_timeout_s``, ...).
  Returns:
    The resolved :class:`DistributedOptions`.
  Raises:
    ValueError: for a partial explicit specification, or a process id out of range.
  """
  environ = os.environ if environ is None else environ
  if not coordinator_address:
    coordinator_address = environ.get(ENV_PREFIX + "COORDINATOR_ADDRESS") or None
  if num_processes is None:
    num_processes = _env_int(environ, "NUM_PROCESSES")
  if process_id is None:
    process_id = _env_int(environ, "PROCESS_ID")
  explicit = [coordinator_address, num_processes, process_id]
  enabled = bool(enabled or environ.get(ENV_PREFIX + "DISTRIBUTED", "0") not in ("", "0")
                 or any(v is not None for v in explicit))
  if num_processes == 1 and process_id in (None, 0):
    enabled = False
  if enabled and any(v is not None for v in explicit) and None in explicit:
    names = ("coordinator_address", "num_processes", "process_id")
    missing = [n for n, v in zip(names, explicit) if v is None]
    raise ValueError(f"Multi-process launch needs all of {', '.join(names)}; missing "
                     f"{', '.join(missing)} (flags --{missing[0]}=... or env "
                     f"{ENV_PREFIX}{missing[0].upper()}). Give none of them to let JAX detect "
                     "the cluster (TPU pod, SLURM, Open MPI).")
  if num_processes is not None and not 0 <= (process_id or 0) < num_processes:
    raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes}).")
  return DistributedOptions(enabled, coordinator_address, num_processes, process_id,
                            local_device_ids, **timeouts)


def initialize(options: DistributedOptions) -> bool:
  """Starts ``jax.distributed`` as ``options`` say; call before any JAX computation.

  Args:
    options: from :func:`resolve_options`.
  Returns:
    Whether the multi-process runtime was started.
  Raises:
    RuntimeError: if JAX already ran a computation (its backend is fixed at first use).
  """
  if not options.enabled:
    return False
  jax.config.update("jax_cpu_collectives_implementation", options.cpu_collectives)
  jax.distributed.initialize(
      coordinator_address=options.coordinator_address,
      num_processes=options.num_processes,
      process_id=options.process_id,
      local_device_ids=options.local_device_ids,
      initialization_timeout=options.initialization_timeout_s,
      heartbeat_timeout_seconds=options.heartbeat_timeout_s,
      shutdown_timeout_seconds=options.shutdown_timeout_s)
  return True


def _short(message: str, limit: int = 600) -> str:
  """An XLA error message without its repeated ``Error dispatching computation:`` prefixes."""
  message = re.sub(r"(Error dispatching computation: )+", "", message)
  return message if len(message) <= limit else message[:limit] + " ..."


@contextlib.contextmanager
def exit_promptly_on_error():
  """In a multi-process job, ends this process at once (status 1) when the body raises.

  Every process of a job takes part in every collective. A process that stops with an ordinary
  exception would wait up to ``shutdown_timeout_s`` at JAX's exit barrier while the others block
  in a collective with it. Exiting at once closes its connections: the others fail within
  seconds (a broken collective) or within ``heartbeat_timeout_s`` (the coordination service), and
  each says why. In a single-process run the exception propagates unchanged.

  Yields:
    Nothing; wrap the whole job.
  """
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if not jax.distributed.is_initialized():
      raise
    traceback.print_exc()
    me = jax.process_index()
    logging.error(
        "Process %d of the job stopped: %s: %s\nThe whole job stops with it. If another process "
        "died, was preempted or lost its network, this error is the consequence: relaunch every "
        "process with the same command; training resumes from the last checkpoint in its workdir.",
        me, type(e).__name__, _short(str(e)))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # skip JAX's exit barrier (it would wait for processes that may be gone).


def to_host(tree: Any) -> Any:
  """Numpy copies of the (possibly process-spanning) arrays of ``tree``, on every process.

  ``np.asarray`` fails on an array sharded over several processes (each holds only its shards);
  those are all-gathered. Every process must call this (it is a collective).
  """
  from jax.experimental import multihost_utils

  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(fetch, tree)


def describe() -> str:
  """One line on this process's place in the job, for the log."""
  return (f"process {jax.process_index()}/{jax.process_count()}: "
          f"{jax.local_device_count()} local of {jax.device_count()} devices "
          f"({jax.devices()[0].platform})")
