"""Runs an fkdiff job: ``python launch.py --config=configs/<name>.py[:variant] --workdir=<dir>``.

Config fields can be overridden on the command line, e.g. ``--config.training.num_steps=100``;
unknown keys and wrongly typed values are rejected.
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (optionally :variant).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and results.")
flags.mark_flags_as_required(["config", "workdir"])
# Multi-process runs (docs/multihost.md); each also reads FKDIFF_<NAME IN CAPITALS> from the env.
flags.DEFINE_bool("distributed", False, "Start jax.distributed. Alone, JAX detects the cluster "
                  "(Cloud TPU, SLURM, Open MPI); implied by the three flags below.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Number of processes of the job.")
flags.DEFINE_integer("process_id", None, "Index of this process, 0 .. num_processes-1.")
flags.DEFINE_integer("heartbeat_timeout", 100, "Seconds without heartbeat after which a process "
                     "is declared dead and every process of the job stops.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from fkdiff.training import distributed   # after flag parsing: keeps --help fast.
  distributed.initialize(distributed.resolve_options(   # before any JAX computation.
      FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
      heartbeat_timeout_s=FLAGS.heartbeat_timeout))
  from fkdiff.jobs import run
  logging.set_verbosity(logging.INFO)
  # Orbax logs every step of every save at INFO; keep its warnings and errors only.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= logging.converter.STANDARD_WARNING or "orbax" not in r.pathname)
  with distributed.exit_promptly_on_error():
    run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
