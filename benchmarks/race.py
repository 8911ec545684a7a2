"""A recipe race: train one variant of the default config, then score it on the synthetic test split and
on real photos, as one row beside the others.

  python -m benchmarks.race --name=NAME [--steps=2800] [--images=DIR] [--reference=FILE]
                            [--results=workdirs/race/results.jsonl] -- [--config.x=y ...]

Trains `python run_train.py --workdir=workdirs/race/NAME --config.num_train_steps=STEPS` with the given
overrides (the learning-rate decay stays at 80% of the run, as in the default), which prints the held-out
volume IoU on the first `eval_examples` faces of `data.eval_config`'s test split; then runs the photo
metrics (`vrn_jax.photo_report`, as `run_eval.py --images --photo_metrics`) on the fixture photos (or
--images) against one fixed ground-truth reference (--reference; every row must use the same one), and
appends a JSON line to --results and prints a markdown row: IoU, hull coverage (mean / min), inner
landmarks (min), relief figures inside the ground truth's range, photos meeting every goal, wall time;
for VRN-Multitask / VRN-Guided the JSON line also holds the landmark NME (mean, max) on the photos.
A workdir that is already trained to STEPS is only scored.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common
from benchmarks.photo_metrics import fixtures_dir
from vrn_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DECAY_AT = 0.8  # of the run, as configs/default.py (4.48 of 5.6 epochs)


def train(workdir: str, steps: int, overrides: list[str]) -> tuple[float | None, float]:
  """Runs the training; returns (the held-out IoU it printed, wall seconds)."""
  # decay_epochs is in epochs of the training split; the loop converts with the split's size. Passing
  # it as a fraction of the steps needs the size: the default's 4,000 training faces.
  train_size = 4000
  epochs = DECAY_AT * steps * 8 / train_size
  config_file = [o for o in overrides if o.startswith("--config=")]  # e.g. configs/default.py:multitask
  command = [sys.executable, "run_train.py", f"--workdir={workdir}", *config_file,
             f"--config.num_train_steps={steps}", f"--config.optim.decay_epochs=({epochs:.6g},)",
             *(o for o in overrides if o not in config_file)]
  print("$", " ".join(command), flush=True)
  start = time.perf_counter()
  out = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       check=False)
  wall = time.perf_counter() - start
  with open(os.path.join(workdir, "race_train.log"), "w", encoding="utf-8") as f:
    f.write(out.stdout)
  if out.returncode:
    sys.exit(f"training {workdir} failed (exit {out.returncode}); its log: {workdir}/race_train.log")
  match = re.findall(r"held-out volume IoU ([0-9.]+)", out.stdout)
  return (float(match[-1]) if match else None), wall


def trained_iou(workdir: str, steps: int) -> tuple[float, float] | None:
  """(held-out IoU, training wall seconds) from the workdir's metrics.jsonl when it was trained to
  `steps` already; None otherwise."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    lines = [json.loads(line) for line in f if line.strip()]
  evals = [l["eval"] for l in lines if "eval" in l and l["eval"].get("step") == steps]
  elapsed = [l["elapsed_s"] for l in lines if l.get("step") == steps and "elapsed_s" in l]
  return (evals[-1]["iou"], elapsed[-1] if elapsed else float("nan")) if evals else None


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.race", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--name", required=True)
  parser.add_argument("--steps", type=int, default=2800)
  parser.add_argument("--images", default=None, help="photos (default: the fixture photos)")
  parser.add_argument("--reference", required=True, help="the ground-truth reference JSON every row uses")
  parser.add_argument("--results", default=os.path.join(REPO, "workdirs", "race", "results.jsonl"))
  parser.add_argument("overrides", nargs="*", help="--config.x=y for run_train.py (after --)")
  args = parser.parse_args(argv)
  from vrn_jax import photo_report

  workdir = os.path.join(REPO, "workdirs", "race", args.name)
  os.makedirs(workdir, exist_ok=True)
  done = trained_iou(workdir, args.steps)
  iou, wall = done if done else train(workdir, args.steps, args.overrides)
  output_dir = os.path.join(workdir, "photos")
  report, _ = photo_report.reconstruct_and_score(workdir, args.images or fixtures_dir(), output_dir,
                                                 progress=False, reference_path=args.reference)
  faces = [r for r in report["faces"] if not r.get("error")]
  relief = [v for r in faces for kind in ("relief", "relief_face")
            for v in (r.get(f"{kind}_inside") or {}).values() if v is not None]
  row = {
      "name": args.name, "steps": args.steps, "overrides": args.overrides, "iou": iou,
      "wall_s": round(wall, 1), "hull_mean": report["summary"]["hull_coverage"]["mean"],
      "hull_min": report["summary"]["hull_coverage"]["min"],
      "inner_min": report["summary"]["inner_share"]["min"],
      "relief_inside": f"{sum(relief)}/{len(relief)}",
      "photos_all_goals": f"{sum(all(v is not False for v in r['passes'].values()) for r in faces)}"
                          f"/{len(report['faces'])}",
      "cpu": common.machine(), "date": time.strftime("%Y-%m-%d"),
  }
  nme = report["summary"].get("landmark_nme")
  if nme:  # VRN-Multitask / VRN-Guided: their own landmarks against the given ones
    row.update(nme_mean=nme["mean"], nme_max=nme["max"])
  with open(args.results, "a", encoding="utf-8") as f:
    f.write(json.dumps(row) + "\n")
  print(photo_report.format_table(report))
  print(f"| {row['name']} | {row['steps']} | {iou} | {row['hull_mean']:.3f} / {row['hull_min']:.3f} | "
        f"{row['inner_min']:.3f} | {row['relief_inside']} | {row['photos_all_goals']} | "
        f"{wall / 60:.1f} min |")


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
