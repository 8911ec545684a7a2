"""Shared start-up for the command-line entry points (absl flags): --help exits 0; a bad flag is one
`error:` line and exit 2; bad input (an `InputError`) is one `error:` line and exit 1."""

from __future__ import annotations

import difflib
import importlib.util
import logging as python_logging
import os
import sys
from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from vrn_jax.errors import InputError

USAGE_ERROR = 2  # a bad flag or a stray argument (argparse's status, and a bad `--config.x=y` override's)


def run_main(main: Callable[[list[str]], None], argv: list[str] | None = None) -> int:
  try:
    main(sys.argv[1:] if argv is None else argv)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def _flat_keys(config, prefix: str = "") -> list[str]:
  keys = []
  for k, v in config.items():
    keys.append(prefix + k)
    if hasattr(v, "items"):
      keys += _flat_keys(v, prefix + k + ".")
  return keys


def check_config_overrides(argv: list[str], default_config: str) -> None:
  """Fails early, naming the closest keys, when a `--config.a.b=v` override names no config field.

  (ml_collections would raise an AttributeError from deep inside flag parsing instead.)
  """
  spec = default_config
  for a in argv:
    if a.startswith("--config="):
      spec = a.split("=", 1)[1]
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise InputError(f"--config={spec}: no such config file {path}.")
  module_spec = importlib.util.spec_from_file_location("_vrn_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  keys = _flat_keys(module.get_config(arg or None))
  for a in argv:
    if a.startswith("--config."):
      key = a[len("--config."):].split("=", 1)[0]
      if key not in keys:
        close = difflib.get_close_matches(key, keys, n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise InputError(f"--config.{key}: no such config field in {path}{hint}.")


def exit_on_bad_config_overrides(argv: list[str], default_config: str | None) -> None:
  """`check_config_overrides` before absl parses the flags: a bad override prints one line, exits 2.

  default_config None: the entry point has no default config file (its config comes from a workdir), so
  overrides need an explicit --config=FILE.
  """
  has_file = any(a.startswith("--config=") for a in argv)
  try:
    if default_config is None and not has_file:
      if any(a.startswith("--config.") for a in argv):
        raise InputError("--config.x=y overrides need --config=FILE (the workdir's config.json takes none).")
      return
    check_config_overrides(argv, default_config or "")
  except (InputError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with the conventions the commands share: `--help` (or `-h`, `--helpshort`,
  `--helpfull`) prints the help and exits 0; an unknown, malformed or missing flag, or an argument that
  is not a flag (no command takes one), is one `error:` line and exit 2. Returns [argv[0]]."""
  app.define_help_flags()
  if "h" not in flags.FLAGS:
    flags.DEFINE_alias("h", "help")  # argparse's short help, which the photo tools had
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {'; '.join(str(e).splitlines())}", file=sys.stderr)  # (one line per missing flag)
    sys.exit(USAGE_ERROR)
  except SystemExit as e:  # absl's help flags print the help, then exit 1; help is not a failure
    sys.exit(0 if e.code == 1 else e.code)
  if len(rest) > 1:
    print(f"error: unexpected argument(s) {' '.join(rest[1:])}: every input is a --flag (see --help).",
          file=sys.stderr)
    sys.exit(USAGE_ERROR)
  return rest


def run_absl_command(main: Callable[[list[str]], None], define_flags: Callable[[], None],
                     module_name: str, default_config: str | None = None, *,
                     config_file: bool = True, log_progress: bool = True) -> None:
  """Runs an absl command defined in `module_name` (flags and docstring) as the program: checks the
  `--config.x=y` overrides of a command with a config file (a bad one: one line, exit 2), defines the
  flags, parses them (`parse_flags`), runs `main(argv)` (an `InputError`: one `error:` line, exit 1).

  config_file False: the command has no ml_collections config (a `--config` flag, if it has one, is
  something else), so there are no overrides to check. log_progress: absl's log at INFO (the command
  narrates its progress there); False keeps absl's default, warnings and errors only (the photo tools and
  data_prep print their results and nothing else).

  absl's --help lists the flags and prints the docstring of the program's own module (sys.argv[0],
  `__main__`); the commands' flags live in vrn_jax/commands/*.py, which neither `python run_*.py` nor the
  installed `vrn-*` script is, so they are declared the program's, and its docstring theirs.
  """
  if config_file:
    exit_on_bad_config_overrides(sys.argv[1:], default_config)
  define_flags()
  module = sys.modules[module_name]
  for owner in (module, sys.modules[__name__]):  # (define_checkpoint_flags defines flags here)
    for flag in flags.FLAGS.get_key_flags_for_module(owner):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  sys.modules["__main__"].__doc__ = module.__doc__

  def run(argv):
    if log_progress:
      logging.set_verbosity(logging.INFO)
      # Orbax narrates every checkpoint at INFO; keep the log to the command's own progress.
      logging.get_absl_handler().addFilter(lambda r: "/orbax/" not in r.pathname)
    else:  # (libraries that set their own loggers to INFO, as tfds does, would pass absl's verbosity)
      logging.get_absl_handler().setLevel(python_logging.WARNING)
    sys.exit(run_main(main, argv[1:]))

  app.run(run, flags_parser=parse_flags)


_command_flags: list[str] = []  # the flags `set_command_flags` defined last


def set_command_flags(define_flags: Callable[[], None], argv: list[str]) -> None:
  """Sets a command's flags from `argv` as its command line would (`parse_flags`; a usage error raises
  SystemExit(2)), to run its `main` in this process (tests, benchmarks). Each call first removes the
  flags the previous call defined: commands share flag names (--output) and each checks its own
  required ones."""
  for name in _command_flags:
    delattr(flags.FLAGS, name)
  before = set(flags.FLAGS)
  define_flags()
  _command_flags[:] = [name for name in flags.FLAGS if name not in before]
  flags.FLAGS.unparse_flags()
  parse_flags(["vrn_jax", *argv])


def define_checkpoint_flags(workdir_default: str | None, workdir_help: str) -> None:
  """--config, --workdir and --step of the commands that restore a trained model (evaluation, the web
  app): the model's config is the workdir's config.json unless --config names a file."""
  config_flags.DEFINE_config_file("config", None, "Config file (default: the workdir's config.json).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", workdir_default, workdir_help, required=workdir_default is None)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
