"""Train VRN: `python run_train.py` or `vrn-train` [--config=configs/default.py[:test]] [--workdir=DIR]
[--config.x=y].

Plain `python run_train.py` builds the synthetic dataset if it is missing, trains the small default
config on the CPU and prints the held-out volume IoU. Checkpoints go to <workdir>/checkpoints (resumed
automatically), the config to <workdir>/config.json, metrics to <workdir>/metrics.jsonl.
"""

import sys

from vrn_jax import host_memory

host_memory.keep_freed_memory()  # before NumPy and JAX start their threads (see vrn_jax/host_memory.py)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from ml_collections import config_flags

from vrn_jax import cli
from vrn_jax.configs import DEFAULT_CONFIG

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined once any `--config.x=y` override has been checked: ml_collections
  applies the overrides as the flag is defined)."""
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Training config file (default: the packaged "
                                  "configs/default.py); FILE:ARG passes ARG, e.g. configs/default.py:test.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", "workdirs/default", "Directory for checkpoints, config and metrics.")


def main(argv):
  del argv
  # JAX and TensorFlow load here, not at start-up: --help and a bad flag answer at once, and the dataset
  # build's spawned workers, which import the program (run_train.py, vrn-train: this module) again,
  # stay free of both.
  from vrn_jax.training import loop, steps  # pylint: disable=g-import-not-at-top

  try:
    result = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except steps.NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"held-out volume IoU {result['iou']:.4f} ({result['examples']} examples, step {result['step']})")


def console() -> None:
  """The installed command's entry point."""
  cli.run_absl_command(main, define_flags, __name__, DEFAULT_CONFIG)


if __name__ == "__main__":
  console()
