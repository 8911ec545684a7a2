"""The 68 landmarks of a posed 3DMM face as a 2D annotator places them (landmark marching).

A morphable model names one fixed vertex per iBUG landmark. For the 51 inner landmarks (brows, eyes,
nose, mouth) that is what an annotator marks. The 17 jaw landmarks are different: in 2D annotations
(300W, and the landmark detectors trained on it: FAN in the release's pipeline, dlib's predictor
here) they follow the face's *visible outline*, wherever the head is turned, while a fixed vertex
stays where it is on the skin, inside the outline of a frontal face and behind the cheek of a turned
one. 300W-LP's
2D landmarks move each jaw point along a horizontal line on the face (a "parallel") to the outline
("landmark marching"; Zhu et al., CVPR 2016). This does the same with the model's own parallels: for jaw
landmark k, the face-region vertices at its height (within a band) on its side of the face; after
posing, the one furthest out along the face's left-right axis in the image. The parallels stay inside
the model's `face_mask` (the procedural model's stops in front of the ears); a 3DMM loaded without a
face region (all vertices in it) would march its jaw points onto the ears.

Why it matters here: the crop (`geometry.crop.crop_from_landmarks`, the release's run.m rule) is sized
from the landmarks' bounding box. Photos are cropped from 2D-annotated (outline) landmarks; on the
procedural test faces, the face finder's landmarks span a box 16% wider than the fixed vertices' at
|yaw| < 15 deg and 20% wider at 15-30 deg, so a network trained on crops from fixed vertices met faces
8-12% smaller in the crops of real photos than in training (docs/experiments.md, "Jaw landmarks on the
outline").
"""

from __future__ import annotations

import numpy as np

from vrn_jax.geometry.morphable_model import MorphableModel, per_model_cache

# 0-based iBUG indices: the jaw line without the chin (8), which stays the model's vertex (its lowest
# point is where both annotations put it).
JAW_LEFT = tuple(range(0, 8))
JAW_RIGHT = tuple(range(9, 17))
# A parallel: the face-region vertices within this share of the outer interocular distance (landmarks
# 36 and 45) of the jaw landmark's height on the mean face (~1.8 mm on a face 90 mm across the eyes:
# one row of the procedural model's grid, a few of a dense 3DMM's).
BAND_SHARE = 0.02
# and at least this share of the jaw landmark's own distance from the midline: keeps the nose and lips
# (which stick out past a turned cheek at eye and mouth height) off the outline.
MIN_LATERAL_SHARE = 0.5


@per_model_cache
def _parallels(model: MorphableModel) -> list[np.ndarray]:
  """For each jaw landmark but the chin (JAW_LEFT + JAW_RIGHT order), its candidate vertices."""
  mean = model.mean.reshape(-1, 3).astype(np.float64)
  fixed = np.asarray(model.landmark_indices)
  mask = np.asarray(model.face_mask, bool)
  # Vertices with the face region all around them: on the region's own boundary a landmark would sit on
  # the edge of the target volume, whose column there may hold the face or nothing.
  boundary = np.zeros(len(mean), bool)
  triangles = np.asarray(model.triangles)
  boundary[triangles[~np.all(mask[triangles], axis=1)].reshape(-1)] = True
  eligible = mask & ~boundary
  band = BAND_SHARE * np.linalg.norm(mean[fixed[36]] - mean[fixed[45]])
  out = []
  for k in JAW_LEFT + JAW_RIGHT:
    x_k, y_k = mean[fixed[k], 0], mean[fixed[k], 1]
    same_side = np.sign(mean[:, 0]) == np.sign(x_k)
    lateral = np.abs(mean[:, 0]) >= MIN_LATERAL_SHARE * abs(x_k)
    candidates = np.nonzero(eligible & same_side & lateral & (np.abs(mean[:, 1] - y_k) <= band))[0]
    # The fixed vertex always competes: a parallel never does worse than the model's own landmark.
    out.append(np.union1d(candidates, [fixed[k]]))
  return out


def outline_landmark_indices(model: MorphableModel, posed: np.ndarray) -> np.ndarray:
  """The vertex of each of the 68 landmarks on this posed face: the jaw's 17 but the chin marched to the
  visible outline, the others the model's fixed vertices.

  Args:
    model: the morphable model the vertices come from.
    posed: (N, 3) its vertices posed and projected, x right and y down in the image (photo or crop
      frame: a similarity of the image plane does not change the choice).
  Returns:
    (68,) int64 vertex indices.
  """
  posed = np.asarray(posed, np.float64)
  fixed = np.asarray(model.landmark_indices, np.int64)
  if posed.ndim != 2 or posed.shape[1] < 2 or posed.shape[0] != model.num_vertices:
    raise ValueError(f"posed vertices have shape {posed.shape}; expected ({model.num_vertices}, 3)")
  # The face's left-right axis in the image: from the outer corner of one eye to the other's, in 3D,
  # then its image part (it keeps its direction under yaw; it shrinks only toward a full profile).
  axis = posed[fixed[45], :2] - posed[fixed[36], :2]
  norm = np.linalg.norm(axis)
  out = fixed.copy()
  if norm < 1e-9:
    return out
  axis /= norm
  along = posed[:, :2] @ axis
  for k, candidates in zip(JAW_LEFT + JAW_RIGHT, _parallels(model)):
    # Landmarks 0-7 lie on the side of landmark 36, 9-16 on 45's: outward is -axis and +axis.
    sign = -1.0 if k < 8 else 1.0
    out[k] = candidates[np.argmax(sign * along[candidates])]
  return out
