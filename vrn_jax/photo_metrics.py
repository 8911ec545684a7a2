"""Scores for reconstructions of real photos, which have no 3D ground truth: how well the predicted
volume covers the face its 68 landmarks outline, how much relief its front surface has, and (VRN-Multitask
/ VRN-Guided) how close the network's own landmarks come to the given ones. Pure NumPy/SciPy.

All figures are in the crop frame of DESIGN section 3: a (192, 192, 200) soft volume indexed (y, x, z)
with z toward the camera, and landmarks in crop pixels (x right, y down, origin at the top-left pixel
centre; 0-based iBUG 68 order).

  `hull_coverage`   share of the face hull (convex hull of landmarks 1-27: jaw 1-17 and brows 18-27)
                    that the silhouette of p > 0.5, seen along z, covers;
  `inner_share`     share of the inner landmarks 18-68 (brows, nose, eyes, mouth) on the silhouette;
  `relief`          the front surface's z at the nose tip, eye corners, mouth corners and cheeks, as
                    differences: nose - eyes, nose - mouth, nose - cheeks (voxels along z);
  `relief` with a pose ('relief_face')  the same differences along the face's own forward axis, the
                    points turned back to frontal by the pose estimated from the landmarks: the camera's
                    z differences of a turned head are mostly its pose (at |yaw| 30-60 the synthetic ground
                    truth's nose - eyes spans -7..56 voxels in camera z, 31.5..65.5 along the face's
                    axis: 5th-95th percentiles);
  `landmark_nme`    2D landmark error / the outer interocular distance (landmarks 37, 46), the
                    normaliser of `geometry.nme`;
  `surface_grid`    stair steps: how much more the front surface bends at the rows and columns where
                    the network's 48x48 samples sit than between them (1: no grid).

Without 3D ground truth these figures mean something only beside the same figures of the synthetic
ground-truth volumes at the same yaw: `reference_from_rows` bins those by |yaw| (0-30, 30-60, 60-90) and
keeps each figure's range. A photo's yaw and pose come from `estimate_pose`, a scaled orthographic fit
of a frontal landmark template (`frontal_template`, the ground truth's landmarks turned back to frontal
and averaged) to its inner landmarks.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage, optimize
from scipy.spatial import Delaunay, cKDTree
from scipy.spatial.transform import Rotation

from vrn_jax.data import examples
from vrn_jax.errors import InputError
from vrn_jax.geometry.isosurface import ISO_LEVEL
from vrn_jax.geometry.nme import OUTER_EYE_CORNERS, YAW_BIN_LABELS, yaw_bins
from vrn_jax.geometry.pose import Pose
from vrn_jax.geometry.voxelise import VOLUME_SHAPE, Z_SCALE

NUM_LANDMARKS = 68
# 0-based indices of iBUG 68 landmarks.
HULL_LANDMARKS = tuple(range(0, 27))     # 1-27: jaw line 1-17, brows 18-27
INNER_LANDMARKS = tuple(range(17, 68))   # 18-68: brows, nose, eyes, mouth
NOSE_TIP = 30                            # 31
EYE_CORNERS = (36, 39, 42, 45)           # 37, 40 (one eye), 43, 46 (the other)
MOUTH_CORNERS = (48, 54)                 # 49, 55
# A cheek point per side: midway between a jaw point and the nose wing on that side (landmarks 3 and
# 32, 15 and 36): the fleshy middle of the cheek, away from the jaw's silhouette edge and from the nose.
CHEEK_PAIRS = ((2, 31), (14, 35))
RELIEF_FIGURES = ("nose_minus_eyes", "nose_minus_mouth", "nose_minus_cheeks")
# A landmark counts as on the silhouette when a covered pixel centre lies within this distance (crop
# pixels). On a near-profile the nose bridge, nose tip and lips are the silhouette's edge: their
# ground-truth landmarks lie on the boundary of the ground truth's own silhouette, half of them just
# outside the covered pixel centres (1 px away at most), so without it the ground truth itself scores
# 0.88-0.96 there. One pixel is also the largest distance of a boundary point to the nearest covered
# pixel centre (sqrt(2) / 2) with some room for the voxelisation's 0.35 px.
ON_SILHOUETTE_PX = 1.0
# The ground truth's range of a figure: the order statistics that enclose at least 90% of its values
# (numpy's 'lower' 5th and 'higher' 95th percentiles): never narrower than the samples can tell.
RANGE_PERCENTILES = (5.0, 95.0)
# The goals on the fixtures with the default model.
GOALS = {"hull_coverage": 0.97, "inner_share": 0.95, "landmark_nme": 0.06}


# ------------------------------------------------------------------------------------------- checks


def _volume(volume, what: str) -> np.ndarray:
  v = np.asarray(volume)
  if v.shape != VOLUME_SHAPE:
    raise InputError(f"{what}: volume of shape {v.shape}; expected {VOLUME_SHAPE} (y, x, z).")
  return v


def _landmarks(landmarks, what: str, dims: int = 2) -> np.ndarray:
  p = np.asarray(landmarks, np.float64)
  if p.ndim != 2 or p.shape[0] != NUM_LANDMARKS or p.shape[1] < dims:
    raise InputError(f"{what}: landmarks of shape {p.shape}; expected ({NUM_LANDMARKS}, {dims}) "
                     "crop-frame points in iBUG 68 order.")
  if not np.all(np.isfinite(p[:, :dims])):
    raise InputError(f"{what}: landmarks contain NaN or infinity.")
  return p


# ----------------------------------------------------------------------------------- silhouette, hull


def silhouette(volume, level: float = ISO_LEVEL) -> np.ndarray:
  """(192, 192, 200) soft or binary volume -> (192, 192) bool: columns with any voxel above `level`
  (the volume seen along z)."""
  return np.any(_volume(volume, "silhouette") > level, axis=2)


def _pixel_centres(shape: tuple[int, int]) -> np.ndarray:
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64)


def face_hull_mask(landmarks, shape: tuple[int, int] = VOLUME_SHAPE[:2]) -> np.ndarray:
  """(H, W) bool: the pixels whose centres lie in the convex hull of landmarks 1-27 (jaw and brows).

  The convex hull, not the jaw+brow outline polygon (jaw 1-17, then brows 27 back to 18): the outline
  crosses itself once the head turns (the far jaw points pass the brows and the nose in 2D) and has no
  inside then; on a frontal face the two differ only by the notch between the brows, which is
  forehead the volume must cover as well. Hull pixels outside the crop are not counted.
  """
  p = _landmarks(landmarks, "face_hull_mask")[list(HULL_LANDMARKS), :2]
  try:
    hull = Delaunay(p)
  except Exception as e:  # scipy's QhullError: collinear points
    raise InputError(f"face_hull_mask: landmarks 1-27 span no area ({e}).") from None
  return (hull.find_simplex(_pixel_centres(shape)) >= 0).reshape(shape)


def hull_coverage(sil: np.ndarray, landmarks) -> float:
  """Share of the face hull (`face_hull_mask`) that the silhouette `sil` (H, W) bool covers."""
  hull = face_hull_mask(landmarks, sil.shape)
  area = int(hull.sum())
  if area == 0:
    raise InputError("hull_coverage: the face hull of landmarks 1-27 covers no pixel centre of the crop.")
  return float(np.count_nonzero(sil & hull) / area)


def _nearest_covered(sil: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Distance (crop pixels) from each (x, y) point to the nearest covered pixel centre, and that pixel
  as (row, column); inf and (-1, -1) when nothing is covered."""
  rows, cols = np.nonzero(sil)
  if rows.size == 0:
    return np.full(len(points), np.inf), np.full((len(points), 2), -1)
  distance, index = cKDTree(np.stack([cols, rows], axis=1).astype(np.float64)).query(points)
  return distance, np.stack([rows[index], cols[index]], axis=1)


def on_silhouette(sil: np.ndarray, points) -> np.ndarray:
  """(N,) bool: which (N, 2) crop points lie on the silhouette (within `ON_SILHOUETTE_PX` of a covered
  pixel centre)."""
  distance, _ = _nearest_covered(sil, np.asarray(points, np.float64)[:, :2])
  return distance <= ON_SILHOUETTE_PX


def inner_share(sil: np.ndarray, landmarks) -> float:
  """Share of the inner landmarks 18-68 on the silhouette (`on_silhouette`)."""
  p = _landmarks(landmarks, "inner_share")
  return float(np.mean(on_silhouette(sil, p[list(INNER_LANDMARKS), :2])))


# ------------------------------------------------------------------------------------------- relief


def front_surface(volume, level: float = ISO_LEVEL) -> np.ndarray:
  """(192, 192, 200) soft or binary volume -> (192, 192) float64 z (voxels) of its front-most crossing
  of `level` in each column, linearly interpolated between the last voxel above the level and the one
  in front of it (a binary volume: that voxel + 0.5); NaN where the column is empty."""
  v = np.asarray(_volume(volume, "front_surface"), np.float32)
  above = v > level
  depth = v.shape[2]
  filled = above.any(axis=2)
  k = depth - 1 - np.argmax(above[:, :, ::-1], axis=2)  # last voxel above the level
  inside = np.take_along_axis(v, k[..., None], axis=2)[..., 0].astype(np.float64)
  nxt = np.take_along_axis(v, np.minimum(k + 1, depth - 1)[..., None], axis=2)[..., 0].astype(np.float64)
  has_next = k + 1 < depth
  frac = np.where(has_next, (inside - level) / np.maximum(inside - nxt, 1e-12), 0.0)
  z = k + np.clip(frac, 0.0, 1.0)
  return np.where(filled, z, np.nan)


# The rows (and columns) of the 192-pixel crop where the heads' 48 samples sit: their x4 upsample aligns
# the corners (`models.layers.bilinear_matrix`), so sample k lands on output k * 191 / 47.
HEAD_SAMPLES = np.arange(VOLUME_SHAPE[0] // 4) * (VOLUME_SHAPE[0] - 1) / (VOLUME_SHAPE[0] // 4 - 1)
GRID_INSET_PX = 6  # surface_grid reads the surface this far inside the silhouette (off its steep edge)


def surface_grid(front: np.ndarray) -> float:
  """Stair steps of a (192, 192) front surface (`front_surface`): the mean |second difference| of its
  depth along y and x at rows (columns) within 1 px of a head sample (`HEAD_SAMPLES`) over the same at
  rows (columns) >= 1.5 px from one, where the surface lies `GRID_INSET_PX` inside its silhouette.

  A head that interpolates linearly between its samples bends the surface there and only there: ~2 and
  more. A surface without the grid: ~1 (the synthetic ground truth's binary volumes, whose steps follow
  the face and not the grid: 1.00 over 32 test faces). NaN without surface far enough inside.
  """
  front = np.asarray(front, np.float64)
  if front.shape != VOLUME_SHAPE[:2]:
    raise InputError(f"surface_grid: front surface has shape {front.shape}; expected {VOLUME_SHAPE[:2]}.")
  inside = ndimage.binary_erosion(np.isfinite(front), iterations=GRID_INSET_PX)
  centre = np.arange(1, front.shape[0] - 1)  # the centre row of each second difference
  dist = np.min(np.abs(centre[:, None] - HEAD_SAMPLES[None, :]), axis=1)[:, None]
  near, far = [], []
  for surface, mask in ((front, inside), (front.T, inside.T)):  # along y, then along x
    d2 = np.abs(np.diff(surface, 2, axis=0))
    ok = mask[1:-1] & np.isfinite(d2)
    near.append(d2[ok & (dist < 1.0)])
    far.append(d2[ok & (dist >= 1.5)])
  near, far = np.concatenate(near), np.concatenate(far)
  if near.size == 0 or far.size == 0 or far.mean() == 0:
    return math.nan
  return float(near.mean() / far.mean())


def relief_points(landmarks) -> dict[str, np.ndarray]:
  """The (x, y) crop points whose front-surface depth the relief compares: 'nose' (1, 2), 'eyes'
  (4, 2), 'mouth' (2, 2), 'cheeks' (2, 2) (see CHEEK_PAIRS)."""
  p = _landmarks(landmarks, "relief_points")[:, :2]
  return {"nose": p[[NOSE_TIP]], "eyes": p[list(EYE_CORNERS)], "mouth": p[list(MOUTH_CORNERS)],
          "cheeks": np.stack([(p[a] + p[b]) / 2 for a, b in CHEEK_PAIRS])}


def surface_depth_at(front: np.ndarray, points) -> np.ndarray:
  """(N,) front-surface z (voxels) at (N, 2) crop points: the value at the nearest covered pixel
  centre within `ON_SILHOUETTE_PX`, NaN for a point off the silhouette."""
  points = np.asarray(points, np.float64)[:, :2]
  distance, pixel = _nearest_covered(np.isfinite(front), points)
  z = np.full(len(points), np.nan)
  ok = distance <= ON_SILHOUETTE_PX
  z[ok] = front[pixel[ok, 0], pixel[ok, 1]]
  return z


def surface_points(front: np.ndarray, landmarks) -> dict[str, np.ndarray]:
  """`relief_points` with their front-surface z: {group: (n, 3) (x, y crop pixels, z voxels)}."""
  return {k: np.concatenate([p, surface_depth_at(front, p)[:, None]], axis=1)
          for k, p in relief_points(landmarks).items()}


def relief(points: Mapping[str, np.ndarray], rotation=None) -> dict[str, float]:
  """Relief figures in voxels along z, positive = the nose in front: 'nose_minus_eyes' (nose tip 31 -
  mean of eye corners 37, 40, 43, 46), 'nose_minus_mouth' (- mean of mouth corners 49, 55),
  'nose_minus_cheeks' (- mean of the two cheek points); NaN where a point is off the silhouette.

  Args:
    points: `surface_points` (or the same groups from 3D landmarks, z in voxels).
    rotation: None: differences of the camera's z (what the volume shows). A (3, 3) image-frame pose
      (`estimate_pose`): the same differences along the face's own forward axis, the points turned back
      to frontal first (x, y and z in crop pixels for that), so that a turned head's figures mean what a
      frontal one's do.
  """
  z = {}
  for k, p in points.items():
    p = np.asarray(p, np.float64)
    if rotation is None:
      z[k] = p[:, 2]
    else:
      xyz = np.concatenate([p[:, :2], p[:, 2:3] * Z_SCALE], axis=1)
      z[k] = (xyz @ np.asarray(rotation, np.float64))[:, 2] / Z_SCALE  # R^T p, per row
  nose = float(z["nose"][0])
  return {f"nose_minus_{part}": nose - float(np.mean(z[part])) for part in ("eyes", "mouth", "cheeks")}


def landmark_points(landmarks_3d) -> dict[str, np.ndarray]:
  """The groups of `surface_points` from (68, 3) 3D landmarks (crop pixels, z = voxel * Z_SCALE)
  instead of a volume's front surface, z in voxels (cheeks: the midpoints' z). Their `relief` is what
  the volume's should be where all the points are visible."""
  p = _landmarks(landmarks_3d, "landmark_points", dims=3)[:, :3] / [1.0, 1.0, Z_SCALE]
  return {"nose": p[[NOSE_TIP]], "eyes": p[list(EYE_CORNERS)], "mouth": p[list(MOUTH_CORNERS)],
          "cheeks": np.stack([(p[a] + p[b]) / 2 for a, b in CHEEK_PAIRS])}


# ---------------------------------------------------------------------------------------- landmarks


def interocular_distance_2d(landmarks) -> float:
  """2D outer interocular distance (landmarks 37 and 46), the normaliser of `landmark_nme`."""
  p = _landmarks(landmarks, "interocular_distance_2d")[:, :2]
  d = float(np.linalg.norm(p[OUTER_EYE_CORNERS[0]] - p[OUTER_EYE_CORNERS[1]]))
  if d <= 0:
    raise InputError("landmarks: the outer eye corners (37 and 46) coincide; cannot normalise by a zero "
                     "interocular distance.")
  return d


def landmark_nme(predicted, given) -> float:
  """Mean 2D distance of 68 predicted landmarks to the given ones / the given outer interocular
  distance (landmarks 37 and 46, the eye corners `geometry.nme` normalises the paper's NME by)."""
  pred = _landmarks(predicted, "predicted landmarks")[:, :2]
  ref = _landmarks(given, "given landmarks")[:, :2]
  return float(np.mean(np.linalg.norm(pred - ref, axis=1)) / interocular_distance_2d(ref))


# ------------------------------------------------------------------------------------------------ yaw


def frontal_landmarks(landmarks_3d, image_rotation) -> np.ndarray:
  """(68, 3) crop-frame 3D landmarks turned back to frontal by the (3, 3) image-frame rotation of their
  pose (`Pose.image_rotation`), centred and scaled to unit RMS radius."""
  p = _landmarks(landmarks_3d, "frontal_landmarks", dims=3)[:, :3]
  centred = p - p.mean(axis=0)
  frontal = centred @ np.asarray(image_rotation, np.float64)  # R^T applied to each row
  return frontal / np.sqrt(np.mean(np.sum(frontal ** 2, axis=1)))


def frontal_template(frontal: Iterable[np.ndarray]) -> np.ndarray:
  """(68, 3) mean of `frontal_landmarks` results: the template `estimate_yaw_deg` fits."""
  stack = np.stack(list(frontal))
  mean = stack.mean(axis=0)
  return mean - mean.mean(axis=0)


def estimate_pose(landmarks, template) -> np.ndarray:
  """(3, 3) image-frame rotation of a face from its 2D crop landmarks: the scaled orthographic pose that
  best maps the frontal `template`'s inner landmarks (18-68; a photo's jaw points follow the visible
  contour, not fixed points of the face) onto the given ones, started from the orthonormalised affine
  fit and refined by least squares over rotation, scale and shift."""
  idx = list(INNER_LANDMARKS)
  x = _landmarks(landmarks, "estimate_pose")[idx, :2]
  t3 = _landmarks(template, "template", dims=3)[idx, :3]
  xc, tc = x - x.mean(axis=0), t3 - t3.mean(axis=0)
  affine = np.linalg.lstsq(tc, xc, rcond=None)[0].T  # (2, 3): xc ~ tc @ affine.T
  u, sigma, vt = np.linalg.svd(affine, full_matrices=False)
  rows = u @ vt
  start = np.concatenate([Rotation.from_matrix(np.vstack([rows, np.cross(rows[0], rows[1])])).as_rotvec(),
                          [float(np.mean(sigma)), 0.0, 0.0]])

  def residual(params):
    r = Rotation.from_rotvec(params[:3]).as_matrix()
    return (params[3] * tc @ r[:2].T + params[4:6] - xc).ravel()

  return Rotation.from_rotvec(optimize.least_squares(residual, start, method="lm").x[:3]).as_matrix()


def yaw_deg_from_rotation(rotation) -> float:
  """|yaw| in degrees of an image-frame rotation: asin |R[0, 2]| (3DDFA's R = Rx(pitch) Ry(yaw) Rz(roll)
  has -sin(yaw) there, and the image frame's y flip leaves that entry alone)."""
  return float(np.rad2deg(math.asin(min(1.0, abs(float(np.asarray(rotation)[0, 2]))))))


def estimate_yaw_deg(landmarks, template) -> float:
  """|yaw| in degrees from 2D crop landmarks (`estimate_pose`)."""
  return yaw_deg_from_rotation(estimate_pose(landmarks, template))


# -------------------------------------------------------------------------------------- one volume


def score_volume(volume, landmarks, predicted_landmarks=None, template=None) -> dict:
  """Every figure of one face.

  Args:
    volume: (192, 192, 200) soft (or binary) volume (y, x, z).
    landmarks: (68, 2+) crop-frame landmarks (given, or the ground truth's).
    predicted_landmarks: (68, 2) the network's own landmarks (VRN-Multitask / VRN-Guided), or None.
    template: the (68, 3) `frontal_template` for the pose, or None.
  Returns:
    {'hull_coverage', 'inner_share', 'relief' {figure: voxels} (camera z), 'surface_points' {group: [[x, y,
    z]]} (`surface_points`), 'surface_grid'}, with `template` also 'yaw_estimate_deg', 'rotation' (3, 3) and
    'relief_face' (`relief` along the estimated pose's forward axis), with `predicted_landmarks`
    'landmark_nme'.
  """
  p = _landmarks(landmarks, "score_volume")
  sil = silhouette(volume)
  front = front_surface(volume)
  points = surface_points(front, p)
  out = {"hull_coverage": hull_coverage(sil, p), "inner_share": inner_share(sil, p),
         "relief": relief(points), "surface_points": {k: v.tolist() for k, v in points.items()},
         "surface_grid": surface_grid(front)}
  if template is not None:
    add_pose(out, p, template)
  if predicted_landmarks is not None:
    out["landmark_nme"] = landmark_nme(predicted_landmarks, p)
  return out


def add_pose(scores: dict, landmarks, template) -> dict:
  """Adds 'yaw_estimate_deg', 'rotation' and 'relief_face' to `score_volume`'s `scores` (in place)."""
  rotation = estimate_pose(landmarks, template)
  scores.update(yaw_estimate_deg=yaw_deg_from_rotation(rotation), rotation=rotation.tolist(),
                relief_face=relief(scores["surface_points"], rotation))
  return scores


# ------------------------------------------------------------------------------ ground-truth reference

RELIEF_KINDS = ("relief", "relief_face")
TEMPLATE_DECIMALS = 5  # the stored template's precision (its unit is the landmarks' RMS radius)


def _stats(values: Sequence[float]) -> dict:
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  if v.size == 0:
    return {"count": 0, "min": None, "lo": None, "median": None, "mean": None, "hi": None, "max": None}
  lo = np.percentile(v, RANGE_PERCENTILES[0], method="lower")
  hi = np.percentile(v, RANGE_PERCENTILES[1], method="higher")
  return {"count": int(v.size), "min": float(v.min()), "lo": float(lo), "median": float(np.median(v)),
          "mean": float(v.mean()), "hi": float(hi), "max": float(v.max())}


def reference_from_rows(rows: Sequence[Mapping], template=None) -> dict:
  """The ground-truth reference: per |yaw| bin (the examples' true yaw), `_stats` (count, min, lo,
  median, mean, hi, max; lo..hi is the range, see RANGE_PERCENTILES) of hull coverage, inner share and
  each figure of 'relief' and (where the rows have it) 'relief_face'.

  Args:
    rows: per ground-truth example, `score_volume`'s result (with the template) plus 'yaw_deg', its
      true yaw.
    template: the (68, 3) `frontal_template` photos' pose is estimated with, stored with the reference.
  """
  if not rows:
    raise InputError("reference_from_rows: no ground-truth examples to build a reference from.")
  labels = yaw_bins([r["yaw_deg"] for r in rows])
  kinds = [k for k in RELIEF_KINDS if all(k in r for r in rows)]
  bins = {}
  for label in YAW_BIN_LABELS:
    chosen = [r for r, l in zip(rows, labels) if l == label]
    bins[label] = {"count": len(chosen),
                   "hull_coverage": _stats([r["hull_coverage"] for r in chosen]),
                   "inner_share": _stats([r["inner_share"] for r in chosen])}
    for kind in kinds:
      bins[label][kind] = {f: _stats([r[kind][f] for r in chosen]) for f in RELIEF_FIGURES}
  out = {"count": len(rows), "range_percentiles": list(RANGE_PERCENTILES), "yaw_bins": bins}
  if all("yaw_estimate_deg" in r for r in rows):
    estimates = np.array([r["yaw_estimate_deg"] for r in rows])
    errors = np.abs(estimates - np.abs([r["yaw_deg"] for r in rows]))
    out["yaw_estimate_error_deg"] = {"median": float(np.median(errors)),
                                     "p95": float(np.percentile(errors, 95)),
                                     "same_bin_share": float(np.mean(yaw_bins(estimates) == labels))}
  if template is not None:
    out["template"] = np.round(np.asarray(template, np.float64), TEMPLATE_DECIMALS).tolist()
  return out


def ground_truth_scores(example: Mapping) -> dict:
  """`score_volume` of one dataset example's ground-truth volume and landmarks (no pose yet), with its
  true 'yaw_deg' and its 'frontal' landmarks (`frontal_landmarks`, for the template)."""
  landmarks = np.asarray(example["landmarks"], np.float64)
  scores = score_volume(examples.example_volume(example), landmarks)
  pitch, yaw, roll = (math.radians(float(example[k])) for k in ("pitch", "yaw", "roll"))
  scores.update(yaw_deg=float(example["yaw"]), landmarks=landmarks,
                frontal=frontal_landmarks(landmarks, Pose(pitch, yaw, roll, (0.0, 0.0, 0.0),
                                                          1.0).image_rotation))
  return scores


def reference_from_examples(dataset_examples: Iterable[Mapping], map_fn=map) -> dict:
  """`reference_from_rows` of ground-truth examples (decoded `vrn_faces` examples: 'volume', 'landmarks',
  'yaw', 'pitch', 'roll'): their figures, the frontal template averaged over them, and the pose each
  one's landmarks give with that template. `map_fn` maps `ground_truth_scores` over them (e.g. a thread
  pool's `map`)."""
  rows = list(map_fn(ground_truth_scores, dataset_examples))
  if not rows:
    raise InputError("reference_from_examples: no ground-truth examples to build a reference from.")
  # Rounded as the reference stores it: photos are then posed with exactly the template used here.
  template = np.round(frontal_template(r.pop("frontal") for r in rows), TEMPLATE_DECIMALS)
  for r in rows:
    add_pose(r, r.pop("landmarks"), template)
  return reference_from_rows(rows, template)


def compare_with_reference(scores: Mapping, reference: Mapping) -> dict:
  """One face's relief against the reference bin of its estimated yaw ('yaw_estimate_deg').

  Returns:
    {'yaw_bin', 'gt_hull_coverage', 'gt_inner_share' (the bin's medians), and per relief kind present
    in both ('relief', 'relief_face'): '<kind>_range' {figure: [lo, hi]}, '<kind>_inside' {figure:
    bool, or None where the figure or the bin's range is missing}}, and 'relief_ok': every figure of
    every kind inside (False if any is missing).
  """
  label = str(yaw_bins([scores["yaw_estimate_deg"]])[0])
  b = reference["yaw_bins"][label]
  out = {"yaw_bin": label, "gt_hull_coverage": b["hull_coverage"]["median"],
         "gt_inner_share": b["inner_share"]["median"]}
  verdicts = []
  for kind in RELIEF_KINDS:
    if kind not in scores or kind not in b:
      continue
    ranges, inside = {}, {}
    for f in RELIEF_FIGURES:
      s = b[kind][f]
      ranges[f] = None if s["lo"] is None else [s["lo"], s["hi"]]
      value = scores[kind].get(f)
      inside[f] = (None if ranges[f] is None or value is None or not np.isfinite(value)
                   else bool(ranges[f][0] <= value <= ranges[f][1]))
      verdicts.append(inside[f])
    out[f"{kind}_range"], out[f"{kind}_inside"] = ranges, inside
  out["relief_ok"] = bool(verdicts) and all(v is True for v in verdicts)
  return out


def goal_checks(scores: Mapping, comparison: Mapping | None) -> dict:
  """Pass/fail of one face against the issue's goals (`GOALS`; relief: inside the ground truth's range
  at its yaw); None where a figure is missing (no reference, or no predicted landmarks)."""
  nme = scores.get("landmark_nme")
  return {"hull_coverage": bool(scores["hull_coverage"] >= GOALS["hull_coverage"]),
          "inner_share": bool(scores["inner_share"] >= GOALS["inner_share"]),
          "relief": None if comparison is None else bool(comparison["relief_ok"]),
          "landmark_nme": None if nme is None else bool(nme <= GOALS["landmark_nme"])}
