"""Host memory settings for training on a CPU (standard library only: import it before NumPy or JAX).

XLA's CPU runtime allocates each step's buffers afresh -- about 2.5 GB per step for the default config
before the fused loss, still hundreds of MB after it (the logits' gradient, targets, activations) -- and
glibc hands blocks this large back to the kernel when they are freed, so every step page-faulted and
zeroed all of them again: on a 2-core VM that was more than half of the step time. `keep_freed_memory`
makes glibc keep freed memory for reuse. It must run before any other thread has allocated memory
(NumPy's and XLA's thread pools do so as they start), which is why `run_train.py` calls it first thing.

Only where JAX will run on the CPU: on an accelerator the step's buffers live in the device allocator,
so there is nothing to gain, and one arena for all threads serialises every malloc of XLA's GPU
compiler, which runs LLVM on a thread per core. On the 2-core VM the paper-size training step compiled
in 18-26 s with one arena against 15-20 s without (XLA:CPU, 3 runs each, 2026-11-29); on a 16-core H200
machine, with one arena, the same step had not compiled after 220 s. The next lease (2026-11-30, no
arena setting) points at XLA's default GPU autotuning instead: with it the step had still not compiled
after 46 s, with `--xla_gpu_autotune_level=1` it compiled in 41 s and trained (BENCHMARKS.md). The
arena's share, if any, was not measured.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys

# glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


# Device nodes of the accelerators JAX runs on: NVIDIA GPUs, TPUs, AMD GPUs (ROCm).
ACCELERATOR_NODES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/kfd")


def jax_runs_on_cpu() -> bool:
  """Whether JAX will run on the CPU, decided without importing it (JAX must start after the settings).

  JAX_PLATFORMS, when set, decides (cpu alone, or cpu first); otherwise the CPU unless the machine has
  an accelerator's device node.
  """
  platforms = [p.strip() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if platforms:
    return platforms[0] == "cpu"
  return not any(glob.glob(pattern) for pattern in ACCELERATOR_NODES)


def keep_freed_memory() -> bool:
  """One malloc arena for all threads, no mmap'd chunks, no trimming (Linux/glibc only, JAX on the CPU).

  Set VRN_KEEP_FREED_MEMORY=0 to leave malloc alone, =1 to apply the settings even where JAX would run
  on an accelerator. Returns whether the settings were applied.
  """
  forced = os.environ.get("VRN_KEEP_FREED_MEMORY", "")
  if not sys.platform.startswith("linux") or forced == "0" or (forced != "1" and not jax_runs_on_cpu()):
    return False
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to set
    return False
  # Threads share the main arena (a second arena would still mmap any block over 64 MB); the main arena
  # never mmaps; -1 as M_TRIM_THRESHOLD is SIZE_MAX (glibc converts it to size_t): never trim.
  return all(mallopt(param, value) == 1 for param, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
