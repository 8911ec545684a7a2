"""Shared start-up for the command-line entry points: user errors become one clear line and exit 1."""

from __future__ import annotations

import sys
from typing import Callable

from vrn_jax.files import InputError


def run_main(main: Callable[[list[str]], None], argv: list[str] | None = None) -> int:
  try:
    main(sys.argv[1:] if argv is None else argv)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0
