"""Train VRN: `python run_train.py [--config=configs/default.py[:test]] [--workdir=DIR] [--config.x=y]`.

Plain `python run_train.py` builds the synthetic dataset if it is missing, trains the small default
config on the CPU and prints the held-out volume IoU. Checkpoints go to <workdir>/checkpoints (resumed
automatically), the config to <workdir>/config.json, metrics to <workdir>/metrics.jsonl.
"""

import sys

from vrn_jax import host_memory

host_memory.keep_freed_memory()  # before NumPy and JAX start their threads (see vrn_jax/host_memory.py)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags, logging
from ml_collections import config_flags

from vrn_jax import files

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/default.py", "Training config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", "workdirs/default", "Directory for checkpoints, config and metrics.")


def main(argv):
  del argv
  from vrn_jax import train  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.INFO)
  # Orbax narrates every checkpoint at INFO; keep the log to training progress.
  logging.get_absl_handler().addFilter(lambda r: "/orbax/" not in r.pathname)
  try:
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (files.InputError, train.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"held-out volume IoU {result['iou']:.4f} ({result['examples']} examples, step {result['step']})")


if __name__ == "__main__":
  from vrn_jax import cli  # pylint: disable=g-import-not-at-top

  cli.exit_on_bad_config_overrides(sys.argv[1:], "configs/default.py")
  app.run(main)
