"""vrn_jax benchmarks: `python benchmarks/run.py [--quick] [--json OUT.json] [--only geometry]`.

Prints a table (what was measured, value, units, batch, dtype, device, ratio against the baseline
measured in the same run) and optionally writes it as JSON. BENCHMARKS.md records the figures.
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

SUITES = ("geometry", "pipeline")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--quick", action="store_true", help="fewer repeats")
  parser.add_argument("--json", help="write the rows here")
  parser.add_argument("--only", choices=SUITES, action="append", help="run only these suites")
  args = parser.parse_args()
  os.environ.setdefault("OMP_NUM_THREADS", "1")
  cpu = "CPU: " + common.machine()
  rows = []
  for suite in args.only or SUITES:
    module = __import__(f"benchmarks.{suite}", fromlist=["run"])
    if suite == "geometry":  # the geometry targets are per core
      with common.one_core():
        rows += module.run(args.quick, cpu + " (pinned to one core)")
    else:
      rows += module.run(args.quick, cpu)
  device = cpu
  common.print_table(rows, device)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"date": datetime.date.today().isoformat(), "device": device,
                 "command": " ".join(sys.argv), "rows": [dataclasses.asdict(r) for r in rows]}, f,
                indent=1)


if __name__ == "__main__":
  main()
