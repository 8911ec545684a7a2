"""Shared pieces of the benchmarks: the machine's description, timing, and result rows."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import platform
import time


def machine() -> str:
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


@contextlib.contextmanager
def one_core():
  """Runs the block pinned to one core (benchmarks of single-core targets)."""
  if not hasattr(os, "sched_setaffinity"):
    yield
    return
  cores = os.sched_getaffinity(0)
  os.sched_setaffinity(0, {sorted(cores)[0]})
  try:
    yield
  finally:
    os.sched_setaffinity(0, cores)


def best_time(fn, repeats: int, warmup: int = 1) -> float:
  """Best wall time of `repeats` calls, in seconds (the least disturbed run)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


@dataclasses.dataclass
class Row:
  name: str
  value: float | None  # None: not measured
  units: str
  batch: int
  dtype: str
  device: str
  baseline: str = ""
  ratio: float | None = None  # ours / baseline in the same run (higher is better for rates)
  note: str = ""

  def cells(self):
    value = "not measured" if self.value is None else f"{self.value:.4g}"
    ratio = "" if self.ratio is None else f"{self.ratio:.2f}x vs {self.baseline}"
    return [self.name, value, self.units, str(self.batch), self.dtype, ratio, self.note]


def print_table(rows: list[Row], device: str) -> None:
  header = ["measurement", "value", "units", "batch", "dtype", "ratio", "note"]
  table = [header] + [r.cells() for r in rows]
  widths = [max(len(r[i]) for r in table) for i in range(len(header))]
  print(f"# {datetime.date.today().isoformat()} on {device}")
  for r in table:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
