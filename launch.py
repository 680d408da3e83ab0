"""Runs an fkdiff job: ``python launch.py --config=configs/<name>.py[:variant] --workdir=<dir>``.

Config fields can be overridden on the command line, e.g. ``--config.training.num_steps=100``;
unknown keys and wrongly typed values are rejected. The config names its job: ``job = 'toy2d'``
(:mod:`fkdiff.experiments.toy2d`), ``'digits'`` (:mod:`fkdiff.experiments.digits`), ``'fid'`` (:mod:`fkdiff.experiments.fid`),
``'highdim'`` (:mod:`fkdiff.experiments.highdim`), ``'standin'`` (:mod:`fkdiff.experiments.standin`,
learned energies on high-dimensional stand-ins with exact answers), ``'imported'``
(:mod:`fkdiff.experiments.imported`, an imported diffusers teacher); without ``job``, one training run
(:func:`fkdiff.training.train_and_evaluate`).

Errors: the library's own errors about its input (a bad config, an unreadable checkpoint, a missing
dataset, a diverged run) print as one message on stderr and exit with status 1; ``--verbose``
shows their traceback. Any other exception is a bug and keeps its traceback.
"""

import contextlib
import difflib
import importlib
import logging as std_logging
import os
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (optionally :variant).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and results.")
flags.mark_flags_as_required(["config", "workdir"])
flags.DEFINE_bool("verbose", False, "Show the traceback of the library's errors about its input "
                  "(and orbax's asynchronous-read errors after a failed restore) instead of "
                  "one message.")
# Multi-process runs (docs/multihost.md); each also reads FKDIFF_<NAME IN CAPITALS> from the env.
flags.DEFINE_bool("distributed", False, "Start jax.distributed. Alone, JAX detects the cluster "
                  "(Cloud TPU, SLURM, Open MPI); implied by the three flags below.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Number of processes of the job.")
flags.DEFINE_integer("process_id", None, "Index of this process, 0 .. num_processes-1.")
flags.DEFINE_integer("heartbeat_timeout", 100, "Seconds without heartbeat after which a process "
                     "is declared dead and every process of the job stops.")

_FKDIFF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fkdiff") + os.sep
# Built-in exception types the library raises for bad input, with a message naming the fix. They
# count as its own only when raised by its code (a ValueError inside JAX is a bug to report).
_INPUT_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)

# config.job -> the module of fkdiff.experiments whose run(config, workdir) runs it.
JOBS = {"toy2d": "toy2d", "digits": "digits", "fid": "fid", "highdim": "highdim",
        "standin": "standin", "imported": "imported"}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the job named by ``config.job`` (a training run without one) in ``workdir``; returns
  its results."""
  import jax
  logging.info("JAX devices: %s", jax.devices())
  job = config.get("job")
  if job in JOBS:
    return importlib.import_module(f"fkdiff.experiments.{JOBS[job]}").run(config, workdir)
  from fkdiff.training import train_and_evaluate
  results = train_and_evaluate(config, workdir)
  print(results, flush=True)
  return results


def is_input_error(error: BaseException) -> bool:
  """Whether ``error`` is one of the library's own errors about its input: an instance of an
  ``fkdiff`` exception class (``CheckpointError``, ``DatasetNotPreparedError``), or a
  ``ValueError`` / ``FileNotFoundError`` / ``FloatingPointError`` raised by fkdiff's code."""
  if type(error).__module__.split(".")[0] == "fkdiff":
    return True
  if not isinstance(error, _INPUT_ERRORS) or error.__traceback__ is None:
    return False
  tb = error.__traceback__
  while tb.tb_next is not None:
    tb = tb.tb_next
  return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_FKDIFF_DIR)


def fail(message: str) -> None:
  """Prints ``message`` to stderr and exits with status 1; in a multi-process job at once, past
  JAX's exit barrier (as :func:`fkdiff.training.distributed.exit_promptly_on_error` does)."""
  sys.stdout.flush()
  sys.stderr.write(message.rstrip() + "\n")
  sys.stderr.flush()
  jax = sys.modules.get("jax")
  if jax is not None and jax.distributed.is_initialized():
    os._exit(1)
  sys.exit(1)


def _drop_closed_loop_errors() -> None:
  """Silences orbax's ``RuntimeError: Event loop is closed``: after a failed restore, its pending
  asynchronous reads report one each as an unraisable exception (dozens of tracebacks)."""
  default = sys.unraisablehook

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and
            str(unraisable.exc_value) == "Event loop is closed"):
      default(unraisable)

  sys.unraisablehook = hook


def _unknown_override(argv) -> str:
  """The first ``--config.<path>=…`` of ``argv`` whose path the config of ``--config=<file>``
  lacks, with the closest valid key; or ``''``."""
  from fkdiff.training.config import config_module
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return ""
  filename, _, variant = spec.partition(":")
  module = config_module(filename)
  node = module.get_config(variant) if variant else module.get_config()
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    node_at, done = node, []
    for key in arg[len("--config."):].split("=", 1)[0].split("."):
      if not isinstance(node_at, ml_collections.ConfigDict) or key not in node_at:
        valid = sorted(node_at.keys()) if isinstance(node_at, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" Did you mean '{'.'.join(done + close)}'?" if close else ""
        return (f"Unknown config key '{'.'.join(done + [key])}' in {arg}.{hint} Valid keys "
                f"there: {valid}.")
      node_at, done = node_at[key], done + [key]
  return ""


def parse_flags(argv):
  """absl's flag parsing, with an override of a key the config lacks (which ml_collections
  reports as an ``AttributeError`` or ``KeyError`` traceback) reported in one message."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):
    if "--verbose" in argv:
      raise
    try:
      message = _unknown_override(argv)
    except Exception:  # pylint: disable=broad-except
      message = ""
    if not message:
      raise
    fail(f"FATAL Flags parsing error: {message}\n"
         "Pass --helpshort or --helpfull to see help on flags.")


@contextlib.contextmanager
def input_errors_as_messages(verbose: bool):
  """Ends the process with one message (:func:`fail`) when the body raises an input error
  (:func:`is_input_error`) and ``verbose`` is off; other exceptions propagate."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if verbose or not is_input_error(e):
      raise
    # The run is over: pending asynchronous reads of a failed orbax restore would each log the
    # same failure as "Task exception was never retrieved" when collected at exit.
    std_logging.getLogger("asyncio").disabled = True
    fail(f"{type(e).__name__}: {e}\n(Run with --verbose for the traceback.)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    config = FLAGS.config
    config.get("job")   # a config file that failed to load raises here (ml_collections).
  except OSError as e:
    fail(f"Cannot load --config: {e}")
  if not FLAGS.verbose:
    _drop_closed_loop_errors()
  from fkdiff.training import distributed   # after flag parsing: keeps --help fast.
  with input_errors_as_messages(FLAGS.verbose):
    distributed.initialize(distributed.resolve_options(   # before any JAX computation.
        FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
        heartbeat_timeout_s=FLAGS.heartbeat_timeout))
  logging.set_verbosity(logging.INFO)
  # Orbax logs every step of every save at INFO; keep its warnings and errors only.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= logging.converter.STANDARD_WARNING or "orbax" not in r.pathname)
  with distributed.exit_promptly_on_error(), input_errors_as_messages(FLAGS.verbose):
    run(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
