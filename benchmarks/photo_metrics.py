"""Real-photo measurements on the release's example photos (no 3D ground truth): `python -m
benchmarks.photo_metrics [--workdir=workdirs/default] [--images=DIR_OR_GLOB] [--output_dir=OUT]
[--reference=FILE]`.

Runs what `run_eval.py --images=... --photo_metrics` runs (`vrn_jax.photo_report`) on the fixture photos
(shared/fixtures/vrn_examples or $VRN_FIXTURES, cropped from their given landmarks) and prints, per
photo: the estimated |yaw| and its bin, the face-hull coverage and the share of inner landmarks on the
silhouette beside the synthetic ground truth's medians, the relief figures (camera z, then along the
face's axis; voxels) with the ground truth's range at that yaw ('!' outside it), the network's own
landmark NME (VRN-Multitask / VRN-Guided), and which of the issue's goals each photo meets. The JSON and
the contact sheet go to --output_dir (default: a new temporary folder, named at the end).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common
from vrn_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fixtures_dir() -> str:
  return os.environ.get("VRN_FIXTURES",
                        os.path.join(REPO, os.pardir, "shared", "fixtures", "vrn_examples"))


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.photo_metrics", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default=os.path.join(REPO, "workdirs", "default"))
  parser.add_argument("--images", default=None, help="photos (default: the fixture photos)")
  parser.add_argument("--output_dir", default=None)
  parser.add_argument("--reference", default=None,
                      help="ground-truth reference JSON (default: cached beside the evaluation dataset)")
  parser.add_argument("--host_threads", type=int, default=None)
  args = parser.parse_args(argv)
  from vrn_jax import photo_report

  images = args.images or fixtures_dir()
  output_dir = args.output_dir or tempfile.mkdtemp(prefix="vrn_photo_metrics_")
  report, _ = photo_report.reconstruct_and_score(
      args.workdir, images, output_dir, host_threads=args.host_threads, progress=False,
      reference_path=args.reference)
  model = report["model"]
  print(f"# photo metrics of {model['variant']} step {model['step']} ({model['workdir']}) on {images}; "
        f"CPU: {common.machine()}")
  print(f"# reference: {report['reference_source'] or 'none'}")
  print(photo_report.format_table(report))
  print(f"wrote {output_dir}/{photo_report.METRICS_FILE}, {photo_report.CONTACT_SHEET_FILE}")


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
