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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from fkdiff.jobs import run   # after flag parsing: keeps --help fast.
  logging.set_verbosity(logging.INFO)
  # Orbax logs every step of every save at INFO; keep its warnings and errors only.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= logging.converter.STANDARD_WARNING or "orbax" not in r.pathname)
  run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
