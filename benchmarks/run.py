"""vrn_jax benchmarks: `python benchmarks/run.py [--quick] [--tiny] [--json OUT.json] [--only SUITE]`.

Prints a table (what was measured, value, units, batch, dtype, device, ratio against the baseline
measured in the same run) and optionally writes it as JSON. BENCHMARKS.md records the figures.

Suites: geometry, pipeline, training, inference. The training and inference suites measure on the
accelerator when JAX has one (and PyTorch on CUDA); on a CPU-only machine their GPU rows print
"not measured". `--tiny` shrinks them to a tiny network (seconds; used by the tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top

SUITES = ("geometry", "pipeline", "training", "inference")
SIZED = ("training", "inference")  # suites that take `tiny`
MODULES = {"training": "train_step"}  # suite -> module of benchmarks/, where the names differ


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller sizes")
  parser.add_argument("--tiny", action="store_true",
                      help="training/inference suites at a tiny network size (smoke test)")
  parser.add_argument("--json", help="write the rows here")
  parser.add_argument("--only", choices=SUITES, action="append", help="run only these suites")
  args = parser.parse_args()
  os.environ.setdefault("OMP_NUM_THREADS", "1")
  # On a GPU, JAX would take 75% of its memory up front and starve the PyTorch baselines of the same run.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  cpu = "CPU: " + common.machine()
  if any(s in SIZED for s in args.only or SUITES):
    # The process settings run_train.py trains under (glibc keeps freed memory for reuse); they must be
    # made before the JAX backend and other threads start, and apply to the PyTorch baselines too.
    from vrn_jax import host_memory  # pylint: disable=g-import-not-at-top

    host_memory.keep_freed_memory()
  rows = []
  for suite in args.only or SUITES:
    module = __import__(f"benchmarks.{MODULES.get(suite, suite)}", fromlist=["run"])
    if suite == "geometry":  # the geometry targets are per core
      with common.one_core():
        rows += module.run(args.quick, cpu + " (pinned to one core)")
    elif suite in SIZED:
      rows += module.run(args.quick, cpu, tiny=args.tiny)
    else:
      rows += module.run(args.quick, cpu)
  device = cpu
  if any(s in SIZED for s in args.only or SUITES):
    device = common.jax_device(cpu)
    if device != cpu:
      device += f"; host {cpu}"
  common.print_table(rows, device)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"date": datetime.date.today().isoformat(), "device": device,
                 "command": " ".join(sys.argv), "rows": [dataclasses.asdict(r) for r in rows]}, f,
                indent=1)


if __name__ == "__main__":
  main()
