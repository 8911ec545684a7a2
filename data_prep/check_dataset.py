"""Checks that a built synthetic vrn_faces split agrees with its source geometry.

  python -m data_prep.check_dataset [--data_dir=~/tensorflow_datasets] [--split=test] [--count=-1]

For each example the procedural face is regenerated from its seed; at every visible, camera-facing
landmark (see tests/test_dataset.py) the front-most filled voxel of the stored volume is compared with
the landmark's z. Prints the error distribution in voxels.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from vrn_jax import cli
from vrn_jax.data import build, examples, pipeline
from vrn_jax.data.face_model import build_face_model
from vrn_jax.data.render import vertex_normals
from vrn_jax.data.synthetic import sample_face
from vrn_jax.geometry.pose import Pose
from vrn_jax.geometry.raster import rasterise
from vrn_jax.geometry.voxelise import Z_SCALE


def landmark_errors(model, face, example) -> np.ndarray:
  """Errors (voxels) at the example's visible, camera-facing landmarks."""
  pose = Pose.from_pose_para(face.pose_para)
  vertices, _ = examples.crop_vertices(model, pose, face.shape_para, face.exp_para,
                                       face.image.shape[:2])
  inner = model.landmark_indices[60:68]
  closed = np.concatenate([vertices, vertices[inner].mean(axis=0, keepdims=True)])
  fan = np.stack([inner, np.roll(inner, -1), np.full(8, len(vertices))], axis=1)
  depth, _, _ = rasterise(closed, np.concatenate([model.face_triangles(), fan]), (192, 192))
  normals = vertex_normals(vertices, model.triangles)
  volume = examples.decode_volume(example)
  errors = []
  for index, (x, y, z) in zip(model.landmark_indices, example["landmarks"]):
    ix, iy = int(round(x)), int(round(y))
    if not (0 <= ix < 192 and 0 <= iy < 192 and np.isfinite(depth[iy, ix])):
      continue
    if abs(z - depth[iy, ix]) > 1.0 or normals[index, 2] < 0.3:
      continue
    column = np.nonzero(volume[iy, ix])[0]
    errors.append(abs(column.max() - z / Z_SCALE) if column.size else np.inf)
  return np.asarray(errors)


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(prog="python -m data_prep.check_dataset", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data_dir", default="~/tensorflow_datasets")
  parser.add_argument("--split", default="test")
  parser.add_argument("--count", type=int, default=-1)
  args = parser.parse_args(argv)
  source = pipeline.data_source(args.data_dir, "synthetic", args.split)
  model = build_face_model()
  seed = build.SYNTHETIC_SPLIT_SEEDS[args.split]
  n = len(source) if args.count < 0 else min(args.count, len(source))
  errors = []
  for i in range(n):
    example = source[i]
    name = example["name"].decode() if isinstance(example["name"], bytes) else example["name"]
    index = int(name.rsplit("_", 1)[1])
    face = sample_face(model, np.random.default_rng([seed, index]))
    errors.append(landmark_errors(model, face, example))
  e = np.concatenate(errors)
  print(f"{n} examples, {e.size} visible landmarks: within 3 voxels {np.mean(e <= 3):.4%}, median "
        f"{np.median(e):.2f}, p99 {np.percentile(e, 99):.2f}, max {e.max():.2f} voxels")


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
