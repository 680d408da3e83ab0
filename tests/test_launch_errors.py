"""launch.py reports the library's errors about its input as one short message and a non-zero
exit (``--verbose``: the traceback); other exceptions keep their traceback."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import pytest

from conftest import ROOT
from fkdiff.training import checkpoint, train_and_evaluate, validate_config
from fkdiff.training.config import config_module

MAX_LINES = 15   # the message, plus JAX's and TensorFlow's start-up log lines.


def _launch(*args, timeout=300):
  proc = subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  return proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()


def _bad_config_file(tmp_path):
  path = tmp_path / "typo.py"
  path.write_text(textwrap.dedent("""\
      from fkdiff.training.config import default_config

      def get_config():
        c = default_config()
        c.optim.learnig_rate = 1e-3
        return c
      """))
  return str(path)


def test_a_bad_config_key_is_one_message(tmp_path):
  config = _bad_config_file(tmp_path)
  rc, lines = _launch(f"--config={config}", f"--workdir={tmp_path / 'run'}")
  assert rc != 0 and len(lines) <= MAX_LINES, "\n".join(lines)
  assert "ValueError: Unknown config key 'optim.learnig_rate'. Did you mean 'optim.learning_rate'?" \
      in "\n".join(lines) and "Traceback" not in "\n".join(lines), "\n".join(lines)
  rc, lines = _launch(f"--config={config}", f"--workdir={tmp_path / 'run'}", "--verbose")
  out = "\n".join(lines)
  assert rc != 0 and "Traceback (most recent call last)" in out and "learnig_rate" in out, out


def test_an_unknown_override_is_one_message(tmp_path):
  rc, lines = _launch("--config=configs/toy2d.py", f"--workdir={tmp_path}",
                      "--config.teacher.optim.learning_rat=1", timeout=120)
  out = "\n".join(lines)
  assert rc != 0 and len(lines) <= MAX_LINES and "Traceback" not in out, out
  assert ("Unknown config key 'teacher.optim.learning_rat' in "
          "--config.teacher.optim.learning_rat=1. Did you mean 'teacher.optim.learning_rate'?") \
      in out, out


def test_a_corrupt_checkpoint_is_one_message(tmp_path):
  """The issue's case: the newest of two checkpoints unreadable (array data overwritten, metadata
  intact: orbax's asynchronous reads fail, each with a traceback of its own)."""
  config = config_module(os.path.join(ROOT, "configs", "toy2d_teacher.py")).get_config("smoke")
  config.eval.num_samples = 0
  train_and_evaluate(config, str(tmp_path))                  # checkpoints 30 and 60.
  data = [os.path.join(root, name) for root, _, files in os.walk(tmp_path / "checkpoints" / "60")
          for name in files if os.path.basename(root) == "d"]
  assert data
  for path in data:
    with open(path, "wb") as f:
      f.write(b"garbage")
  rc, lines = _launch("--config=configs/toy2d_teacher.py:smoke", f"--workdir={tmp_path}",
                      "--config.training.num_steps=90", "--config.eval.num_samples=0")
  out = "\n".join(lines)
  assert rc != 0 and len(lines) <= MAX_LINES and "Traceback" not in out, out
  assert "CheckpointError: Cannot restore checkpoint step 60" in out, out
  assert f"Remove {tmp_path / 'checkpoints' / '60'} to resume from step 30" in out, out


def test_a_workdir_that_is_a_file_is_one_message(tmp_path):
  """It was a 30-line traceback after 15 s; now one line, before any training is set up."""
  (tmp_path / "file").write_text("x")
  rc, lines = _launch("--config=configs/toy2d_teacher.py:smoke", f"--workdir={tmp_path / 'file'}")
  out = "\n".join(lines)
  assert rc != 0 and len(lines) <= MAX_LINES and "Traceback" not in out, out
  assert f"CheckpointError: --workdir {tmp_path / 'file'} is a file" in out, out
  assert (tmp_path / "file").read_text() == "x"


def _launch_module():
  spec = importlib.util.spec_from_file_location("launch", os.path.join(ROOT, "launch.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_only_the_librarys_own_errors_count_as_input_errors():
  launch = _launch_module()

  def raised(fn):
    with pytest.raises(Exception) as info:
      fn()
    return info.value

  config = config_module(os.path.join(ROOT, "configs", "toy2d_teacher.py")).get_config()
  config.optim.lrr = 1.0
  assert launch.is_input_error(raised(lambda: validate_config(config)))            # fkdiff's
  assert launch.is_input_error(checkpoint.CheckpointError("unreadable"))           # its class
  assert not launch.is_input_error(raised(lambda: jnp.zeros(3).reshape(2)))        # JAX's
  assert not launch.is_input_error(raised(lambda: {}["key"]))                      # a bug
