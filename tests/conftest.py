"""Shared fixtures: tiny configs and helpers for running jobs in subprocesses."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_teacher_config(**training):
  """A toy teacher that trains in seconds (quality not meaningful)."""
  from fkdiff.training import default_config
  c = default_config()
  c.model.width, c.model.depth, c.model.emb_dim = 32, 1, 16
  c.data.batch_size = 64
  c.optim.warmup_steps = 5
  c.training.num_steps = 40
  c.training.log_every = 10
  c.training.checkpoint_every = 20
  c.training.sample_every = 0
  c.training.quick_compile = True
  c.eval.num_samples = 256
  c.eval.sample_steps = 8
  c.training.update(training)
  return c


def fake_devices_flags(devices: int) -> str:
  """``XLA_FLAGS`` for ``devices`` fake CPU devices in one process.

  Their collectives rendezvous in-process, and XLA:CPU aborts the process when one device thread
  is 40 s late (its default): on 2 CPU cores shared with the other test worker's compiles that
  happens, so the abort waits 600 s here; the tests' own subprocess timeouts catch hangs. (The
  trainer waits for each step on such devices: see ``in_process_collectives`` in
  fkdiff/training/train.py.)
  """
  return (f"--xla_force_host_platform_device_count={devices}"
          " --xla_cpu_collective_call_terminate_timeout_seconds=600")


def run_python(code: str, devices: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs ``code`` in a fresh interpreter with ``devices`` fake CPU devices."""
  env = dict(os.environ, XLA_FLAGS=fake_devices_flags(devices),
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=timeout, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


@pytest.fixture
def tiny_config():
  return tiny_teacher_config


# The suite runs on two workers, a file per worker at a time (``--dist loadfile``), in collection
# order: the longest files go first so that no long one starts last while the other worker idles
# (longest-first scheduling). Measured per-file times, longest first (pytest --durations, 2 cores);
# the other files keep their order after these.
LONGEST_FIRST = ("tests/test_toy2d_job.py", "tests/test_digits_job.py", "tests/test_images.py",
                 "tests/test_highdim.py", "tests/test_import_teacher_job.py",
                 "tests/test_two_head.py", "tests/test_multihost.py", "colabs/digits.ipynb",
                 "tests/test_training.py", "tests/test_score_only.py", "colabs/quickstart.ipynb")


def pytest_collection_modifyitems(config, items):
  rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
  position = lambda item: rank.get(os.path.relpath(str(item.path), ROOT).replace(os.sep, "/"),
                                   len(rank))
  items.sort(key=position)   # stable: the order within a file and among the rest is kept.
