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
  """Prints the rows; a row's device is shown where it differs from the run's `device`."""
  header = ["measurement", "value", "units", "batch", "dtype", "ratio", "note"]
  table = [header] + [r.cells() for r in rows]
  if any(r.device != device for r in rows):
    header.insert(5, "device (if not the run's)")
    for cells, r in zip(table[1:], rows):
      cells.insert(5, "" if r.device == device else r.device)
  widths = [max(len(r[i]) for r in table) for i in range(len(header))]
  print(f"# {datetime.date.today().isoformat()} on {device}")
  for r in table:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


# ------------------------------------------------------------------ devices (training and inference)


def cores() -> int:
  """CPU cores this process may use."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def jax_platform() -> str:
  """'cpu', 'gpu' or 'tpu': where JAX runs (its first device)."""
  import jax  # pylint: disable=g-import-not-at-top

  return jax.devices()[0].platform


def jax_device(cpu: str) -> str:
  """What the JAX rows run on: `cpu` (the CPU's description), or the accelerators' kind and count."""
  import jax  # pylint: disable=g-import-not-at-top

  devices = jax.devices()
  if devices[0].platform == "cpu":
    return cpu
  return f"{devices[0].platform.upper()}: {len(devices)} x {devices[0].device_kind} (JAX {jax.__version__})"


def run_devices(cpu: str) -> tuple[bool, str, str | None]:
  """(whether JAX has an accelerator, what the JAX rows run on, what the PyTorch rows run on).

  The PyTorch description is None where its rows are not comparable: PyTorch on the CPU while ours runs
  on an accelerator.
  """
  accelerator = jax_platform() != "cpu"
  _, tdev, tdesc = torch_setup()
  if tdev.type == "cuda":
    torch_device = tdesc
  else:  # PyTorch on the CPU: comparable only when ours runs there too
    torch_device = None if accelerator else f"{cpu}; {tdesc}"
  return accelerator, jax_device(cpu), torch_device


def torch_setup():
  """(torch, device, description) for the PyTorch baselines: CUDA if torch sees it, else the CPU.

  On the CPU, torch gets every core: run.py sets OMP_NUM_THREADS=1 for the NumPy geometry rows, and
  XLA's CPU client uses all cores whatever that variable says; both sides of a ratio get the same cores.
  """
  import torch  # pylint: disable=g-import-not-at-top

  if torch.cuda.is_available():
    return torch, torch.device("cuda"), f"GPU: {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
  torch.set_num_threads(cores())
  return torch, torch.device("cpu"), f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def timed(fn, sync, repeats: int, warmup: int = 1) -> tuple[float, float]:
  """(first call's seconds, best of `repeats` timed calls), each ended by `sync(result)`.

  The first call is a warm-up (compilation for jitted and torch.compile'd functions) and its time is
  returned separately; `warmup - 1` further untimed calls follow it.
  """
  t = time.perf_counter()
  sync(fn())
  first = time.perf_counter() - t
  for _ in range(warmup - 1):
    sync(fn())
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    sync(fn())
    best = min(best, time.perf_counter() - t)
  return first, best


def not_measured(name: str, units: str, batch: int, dtype: str, device: str, why: str,
                 baseline: str = "") -> Row:
  """A row that says why it has no figure (never a number that was not measured)."""
  return Row(name, None, units, batch, dtype, device, baseline, None, f"not measured: {why}")


@dataclasses.dataclass
class Measured:
  """One timed variant: a rate (examples or images per second), or None and why not."""
  rate: float | None
  first_s: float = 0.0  # compilation + first call
  xla_flops: float | None = None  # per example, where XLA's cost analysis was read
  why: str = ""  # when rate is None


def try_variant(fn, *args, **kwargs) -> Measured:
  """An optional variant (torch.compile, autocast, bf16): its failure is a row that says why."""
  try:
    return fn(*args, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [""])[0]
    return Measured(None, why=f"{type(e).__name__}: {first}"[:160])
