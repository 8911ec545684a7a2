"""Host memory settings for training on a CPU (standard library only: import it before NumPy or JAX).

XLA's CPU runtime allocates each step's buffers afresh -- about 2.5 GB per step for the default config
before the fused loss, still hundreds of MB after it (the logits' gradient, targets, activations) -- and
glibc hands blocks this large back to the kernel when they are freed, so every step page-faulted and
zeroed all of them again: on a 2-core VM that was more than half of the step time. `keep_freed_memory`
makes glibc keep freed memory for reuse. It must run before any other thread has allocated memory
(NumPy's and XLA's thread pools do so as they start), which is why `run_train.py` calls it first thing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
  """One malloc arena for all threads, no mmap'd chunks, no trimming (Linux/glibc only).

  Set VRN_KEEP_FREED_MEMORY=0 to leave malloc alone. Returns whether the settings were applied.
  """
  if not sys.platform.startswith("linux") or os.environ.get("VRN_KEEP_FREED_MEMORY", "1") == "0":
    return False
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to set
    return False
  # Threads share the main arena (a second arena would still mmap any block over 64 MB); the main arena
  # never mmaps; -1 as M_TRIM_THRESHOLD is SIZE_MAX (glibc converts it to size_t): never trim.
  return all(mallopt(param, value) == 1 for param, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
