"""Checks that a built synthetic vrn_faces split agrees with its source geometry.

  python -m data_prep.check_dataset [--data_dir=~/tensorflow_datasets] [--split=test] [--count=-1]

Example (the first 100 test examples, once `python run_train.py` has built the synthetic dataset):
  python -m data_prep.check_dataset --count=100

For each example the procedural face is regenerated from its seed; at every visible landmark (see
`landmark_errors`) the front-most filled voxel of the stored volume at the landmark's (x, y) is compared
with the landmark's z. Prints the error distribution in voxels; the acceptance is every one within 3.
"""

from __future__ import annotations

import numpy as np
from absl import flags

from vrn_jax import cli
from vrn_jax.data import build, examples, pipeline
from vrn_jax.faces.face_model import build_face_model
from vrn_jax.faces.synthetic import sample_face
from vrn_jax.geometry.mesh import outward_vertex_normals
from vrn_jax.geometry.pose import Pose
from vrn_jax.geometry.raster import depth_buffer
from vrn_jax.geometry.voxelise import DEPTH_MAP_SHAPE, VOLUME_SHAPE, Z_SCALE, CompactVolume
from vrn_jax.geometry.voxelise import decode_volume

TOLERANCE_VOXELS = 3.0  # the acceptance: front-most filled voxel within 3 voxels of the landmark's z
# Visibility (see `landmark_errors`).
ON_SURFACE_PX = 1.0  # the landmark is the front-most surface at its (x, y), to this depth
MIN_NORMAL_Z = 0.3  # and faces the camera
CONTOUR_RADIUS_PX = 0.5  # and no occluding contour lies within half a pixel of it:
CONTOUR_TOLERANCE_PX = TOLERANCE_VOXELS * Z_SCALE  # the surface there stays this close to its plane
_CONTOUR_GRID = 5  # samples per side of the square around the landmark (0.25 px apart)

FLAGS = flags.FLAGS


def hole_filling_surface(model, vertices: np.ndarray, compact: CompactVolume):
  """The surface the voxeliser puts across holes (an open mouth), as crop-frame triangles.

  The frontal depth map's cells that the face's own triangles do not cover but the stored map does are
  the filled holes; each 2x2 block of stored cells touching one becomes two triangles at the stored
  depth, mapped back to the crop frame with the stored affine.

  Returns:
    (points (P, 3) crop frame x, y pixels, z mesh units; triangles (T, 3) into points).
  """
  a = np.asarray(compact.affine, np.float64)
  frontal = (vertices / [1.0, 1.0, Z_SCALE]) @ a[:, :3].T + a[:, 3]
  own = np.isfinite(depth_buffer(frontal, model.face_triangles(), DEPTH_MAP_SHAPE))
  stored = np.asarray(compact.depth) > 0
  hole = stored & ~own
  v, u = np.nonzero(stored)
  ids = np.full(stored.shape, -1)
  ids[v, u] = np.arange(v.size)
  kf = compact.back + compact.step * np.asarray(compact.depth)[v, u].astype(np.float64)
  voxels = np.linalg.solve(a[:, :3], (np.stack([u, v, kf], 1) - a[:, 3]).T).T
  c00, c01, c10, c11 = ids[:-1, :-1], ids[:-1, 1:], ids[1:, :-1], ids[1:, 1:]
  block = (hole[:-1, :-1] | hole[:-1, 1:] | hole[1:, :-1] | hole[1:, 1:]) & (
      (c00 >= 0) & (c01 >= 0) & (c10 >= 0) & (c11 >= 0))
  triangles = np.concatenate([np.stack([c00[block], c01[block], c11[block]], 1),
                              np.stack([c00[block], c11[block], c10[block]], 1)])
  return voxels * [1.0, 1.0, Z_SCALE], triangles


def column_at(compact: CompactVolume, x: float, y: float) -> np.ndarray:
  """(200,) bool: the volume's column at crop position (x, y), not rounded to a pixel centre.

  The stored volume is a rule evaluated per voxel (`decode_volume`); this evaluates it at (x, y, k) for
  every k, by decoding a one-column volume whose affine is shifted to (x, y). It is the column that a
  sub-pixel translation of the crop (as augmentation makes) puts on a pixel centre.
  """
  a = np.asarray(compact.affine, np.float64).copy()
  a[:, 3] += a[:, 0] * x + a[:, 1] * y
  shifted = CompactVolume(depth=compact.depth, back=compact.back, step=compact.step,
                          affine=a.astype(np.float32))
  return decode_volume(shifted, (1, 1, VOLUME_SHAPE[2]))[0, 0]


def _depth_around(points, triangles, boxes, x, y):
  """Front-most depth on a square grid of half-width CONTOUR_RADIUS_PX centred on (x, y), and the grid
  offsets (the centre sample is (x, y) itself). boxes: (T, 4) the triangles' x, y bounds (x lo, y lo,
  x hi, y hi), to pass the rasteriser only the triangles that can cover the grid."""
  n = _CONTOUR_GRID
  r = CONTOUR_RADIUS_PX
  near = triangles[(boxes[:, 0] <= x + r) & (boxes[:, 2] >= x - r) & (boxes[:, 1] <= y + r)
                   & (boxes[:, 3] >= y - r)]
  spacing = 2 * r / (n - 1)
  p = np.array(points, np.float64)
  p[:, 0] = (p[:, 0] - x) / spacing + (n - 1) / 2
  p[:, 1] = (p[:, 1] - y) / spacing + (n - 1) / 2
  offsets = (np.arange(n) - (n - 1) / 2) * spacing
  return depth_buffer(p, near, (n, n)), offsets


def landmark_errors(model, face, example) -> np.ndarray:
  """Errors (voxels) at the example's visible landmarks: |front-most filled voxel - landmark z| in the
  volume's column at the landmark's (x, y) (`column_at`; inf for an empty column).

  Visible means, in the crop:
  - on the front surface: the front-most depth at (x, y) is within ON_SURFACE_PX of the landmark's z. The
    surface is the face region's triangles with its holes (an open mouth) closed as the voxeliser closes
    them (`hole_filling_surface`): a landmark behind that fill is hidden in the target by construction.
  - facing the camera (vertex normal z >= MIN_NORMAL_Z): at grazing angles the depth is ill-posed.
  - not on an occluding contour: within CONTOUR_RADIUS_PX (half a pixel, one voxel's footprint) the front
    surface exists and stays within CONTOUR_TOLERANCE_PX (the acceptance tolerance) of the landmark's
    tangent plane. Otherwise the landmark sits on the edge of a nearer surface, on its own silhouette (a
    nose ridge in profile, a lip edge beside an open mouth seen from the side) or on the face region's
    outline, where the depth is not defined to the tolerance at the volume's resolution: the volume
    places silhouettes to ~0.35 px (its frontal grid has two cells per pixel) and a tenth of a pixel
    there changes the front-most voxel by tens of voxels.
  """
  pose = Pose.from_pose_para(face.pose_para)
  vertices, _ = examples.crop_vertices(model, pose, face.shape_para, face.exp_para,
                                       face.image.shape[:2])
  compact = examples.compact_from_example(example)
  fill, fill_triangles = hole_filling_surface(model, vertices, compact)
  points = np.concatenate([vertices, fill])
  triangles = np.concatenate([model.face_triangles(), fill_triangles + len(vertices)])
  corners = points[triangles, :2]
  boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
  normals = outward_vertex_normals(vertices, model.triangles)
  errors = []
  for index, (x, y, z) in zip(examples.landmark_indices(model, vertices), example["landmarks"]):
    normal = normals[index]
    if normal[2] < MIN_NORMAL_Z:
      continue
    depth, offsets = _depth_around(points, triangles, boxes, x, y)
    centre = len(offsets) // 2
    if not np.isfinite(depth[centre, centre]) or abs(z - depth[centre, centre]) > ON_SURFACE_PX:
      continue
    dx, dy = np.meshgrid(offsets, offsets)
    disc = dx ** 2 + dy ** 2 <= CONTOUR_RADIUS_PX ** 2 + 1e-9
    plane = z - (normal[0] * dx + normal[1] * dy) / normal[2]
    with np.errstate(invalid="ignore"):
      if not np.all(np.abs(depth - plane)[disc] <= CONTOUR_TOLERANCE_PX):  # also False where empty
        continue
    filled = np.nonzero(column_at(compact, x, y))[0]
    errors.append(abs(filled.max() - z / Z_SCALE) if filled.size else np.inf)
  return np.asarray(errors)


def define_flags() -> None:
  flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "Where the vrn_faces dataset was built.")
  flags.DEFINE_string("split", "test", "The synthetic split to check: train or test.")
  flags.DEFINE_integer("count", -1, "Check the first N examples (-1: all).")


def main(argv: list[str]) -> None:
  del argv
  source = pipeline.data_source(FLAGS.data_dir, "synthetic", FLAGS.split)
  model = build_face_model()
  seed = build.SYNTHETIC_SPLIT_SEEDS[FLAGS.split]
  n = len(source) if FLAGS.count < 0 else min(FLAGS.count, len(source))
  errors, worst = [], []
  for i in range(n):
    example = source[i]
    name = example["name"].decode() if isinstance(example["name"], bytes) else example["name"]
    index = int(name.rsplit("_", 1)[1])
    face = sample_face(model, np.random.default_rng([seed, index]))
    e = landmark_errors(model, face, example)
    errors.append(e)
    if e.size and e.max() > TOLERANCE_VOXELS:
      worst.append((float(e.max()), name))
  e = np.concatenate(errors)
  print(f"{n} examples, {e.size} visible landmarks: within {TOLERANCE_VOXELS:g} voxels "
        f"{np.mean(e <= TOLERANCE_VOXELS):.4%}, median {np.median(e):.2f}, p99 "
        f"{np.percentile(e, 99):.2f}, max {e.max():.2f} voxels; fewest per example "
        f"{min(x.size for x in errors)}")
  for error, name in sorted(worst, reverse=True)[:20]:
    print(f"  {name}: {error:.2f} voxels")


if __name__ == "__main__":
  cli.run_absl_command(main, define_flags, __name__, config_file=False, log_progress=False)
