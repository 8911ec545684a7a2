"""Reconstruction error: the paper's NME, its rigidly aligned variant, PRNet's bbox NME (kept apart), ICP,
closest points on a mesh, CED curves and yaw bins. Pure NumPy/SciPy.

The paper's protocol (DESIGN section 1), as implemented by `nme_paper`:
  NME = 1/K sum_k ||y_k - x_k|| / d
over the K ground-truth face-region vertices y_k; x_k is the point of the *unaligned* prediction that
corresponds to y_k; d is the 3D outer interocular distance of the ground truth (its vertices at iBUG
landmarks 37 and 46, 1-based). Both meshes must already be in one frame: the caller maps the prediction
back through the inverse crop (`Mesh.to_photo(crop_transform)`), so both are in the original photo's
pixels. ICP serves only to find x_k:

  1. ICP (`icp`) moves the ground-truth face vertices onto the prediction's vertices, from the identity
     (the two already share a frame): a rigid G(y) = R y + t with G(y_k) ~ prediction. Each ground-truth
     vertex is matched to its nearest predicted vertex, not the other way round: the isosurface is a
     closed solid whose sides and back plane have no ground-truth counterpart. The default update is
     point-to-plane (on the predicted surface's normals), not the classic point-to-point one: on a
     marching-cubes face against a differently sampled ground truth, point-to-point was still sliding
     after 300 iterations (3 px short of its limit after 50; NME 0.059 after 50 against 0.065 once
     converged), so the unaligned NME would depend on an iteration cap; point-to-plane settles in 4-8.
     Both aim at the same optimum: the least-squares distance of the ground-truth face vertices to the
     predicted surface.
  2. x_k = the closest point on the prediction to G(y_k): on its *surface* when its faces are given (exact
     point-to-triangle distances, `MeshProximity`), otherwise its closest vertex.
  3. The error is ||y_k - x_k||: x_k is measured where it lies in the unaligned prediction.

G is the inverse of "ICP aligning the prediction onto the ground truth" (A = G^-1): for a similarity, the
closest point of y_k on the aligned prediction A(P) is exactly A(x_k), so this is the same as aligning the
prediction, taking correspondences there and discarding the aligned mesh, as the paper describes; moving
the ~20k ground-truth points instead of the ~50k predicted ones is just cheaper.

`nme_aligned` keeps the alignment: ||y_k - A(x_k)|| / d, the paper's "with rigid ICP alignment" numbers.
`nme_bbox` is PRNet's protocol (aligned errors / sqrt(w h) of the ground truth's 68-landmark x, y box);
its numbers are not comparable with the paper's and are reported under their own name.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from vrn_jax.errors import InputError

from vrn_jax.files import atomic_output
from vrn_jax.geometry.mesh import vertex_normals

# iBUG 68 landmarks 37 and 46 (1-based): the outer eye corners, whose 3D distance normalises the NME.
OUTER_EYE_CORNERS = (36, 45)
YAW_BIN_EDGES_DEG = (30.0, 60.0)
YAW_BIN_LABELS = ("0-30", "30-60", "60-90")
CED_XLABEL = "NME (normalised by outer interocular distance)"
CED_YLABEL = "fraction of images"


# ----------------------------------------------------------------------------------------------------
# Rigid / similarity fitting and ICP.

ICP_METHODS = ("point_to_point", "point_to_plane")


def fit_similarity(source: np.ndarray, target: np.ndarray,
                   with_scale: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
  """Least-squares (R, t, s) minimising sum ||s R source_i + t - target_i||^2 (Umeyama 1991; Kabsch when
  `with_scale` is False, then s = 1). R is a proper rotation (det +1).

  Args:
    source, target: (N, 3) paired points, N >= 3.
  Returns:
    R (3, 3), t (3,), s float.
  """
  src_mean, tgt_mean = source.mean(axis=0), target.mean(axis=0)
  src, tgt = source - src_mean, target - tgt_mean
  u, sigma, vt = np.linalg.svd(tgt.T @ src)
  # Flip the least significant axis when the best orthogonal map is a reflection.
  signs = np.array([1.0, 1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
  rotation = (u * signs) @ vt
  scale = 1.0
  if with_scale:
    variance = float(np.sum(src * src))
    scale = float(np.sum(sigma * signs) / variance) if variance > 0 else 1.0
  translation = tgt_mean - scale * rotation @ src_mean
  return rotation, translation, scale


def _point_to_plane_step(moved: np.ndarray, target: np.ndarray, normals: np.ndarray,
                         with_scale: bool) -> tuple[np.ndarray, np.ndarray, float]:
  """One Gauss-Newton step of sum (n_i . (m_i' - q_i))^2 over m' = (1 + sigma) Rot(w) (m - c) + c + tau
  (c the centroid of m, for conditioning), linearised in (w, tau, sigma) and applied exactly.

  Returns the update as (R, t, s) acting on `moved`: m' = s R m + t.
  """
  centre = moved.mean(axis=0)
  arm = moved - centre
  columns = [np.cross(arm, normals), normals]
  if with_scale:
    columns.append(_row_dot(normals, arm)[:, None])
  residual = _row_dot(normals, moved - target)
  # lstsq: directions the target does not constrain (a plane's sliding) get no motion.
  step = np.linalg.lstsq(np.hstack(columns), -residual, rcond=None)[0]
  rotation = Rotation.from_rotvec(step[:3]).as_matrix()
  scale = 1.0 + float(step[6]) if with_scale else 1.0
  return rotation, scale * (centre @ -rotation.T) + centre + step[3:6], scale


def point_cloud_normals(points: np.ndarray, neighbours: int = 10,
                        tree: cKDTree | None = None) -> np.ndarray:
  """(N, 3) unit normals (unsigned) of a point cloud: the least-variance axis of each point's
  `neighbours` nearest points."""
  tree = tree if tree is not None else cKDTree(points)
  k = min(neighbours, points.shape[0])
  _, nearest = tree.query(points, k=k)
  local = points[nearest.reshape(points.shape[0], k)]
  local = local - local.mean(axis=1, keepdims=True)
  _, vectors = np.linalg.eigh(np.einsum("nki,nkj->nij", local, local))
  return vectors[:, :, 0]


@dataclasses.dataclass(frozen=True)
class IcpInfo:
  """What `icp` ended with; pairs and distances belong to the returned transform.

  Attributes:
    iterations: transform updates made (including a rejected last one).
    converged: True if it stopped on `tolerance` or at a fixed point, False at `max_iterations`.
    rmse: root mean square distance of the pairs kept by trimming (target units).
    target_indices: (N,) int64 nearest target point of each moved source point.
    distances: (N,) float64 their distances.
    inliers: (N,) bool the pairs kept by trimming (all True without trimming).
  """

  iterations: int
  converged: bool
  rmse: float
  target_indices: np.ndarray
  distances: np.ndarray
  inliers: np.ndarray


def _trim(distances: np.ndarray, trim_fraction: float) -> np.ndarray:
  """(N,) bool: the ceil((1 - trim_fraction) N) pairs with the smallest distances."""
  n = distances.shape[0]
  keep_count = max(3, int(math.ceil((1.0 - trim_fraction) * n)))
  if keep_count >= n:
    return np.ones(n, bool)
  keep = np.zeros(n, bool)
  keep[np.argpartition(distances, keep_count - 1)[:keep_count]] = True
  return keep


def icp(source_points, target_points, max_iterations: int = 50, tolerance: float = 1e-6,
        with_scale: bool = False, trim_fraction: float = 0.0, method: str = "point_to_point",
        target_normals=None,
        target_tree: cKDTree | None = None) -> tuple[np.ndarray, np.ndarray, float, IcpInfo]:
  """ICP: finds (R, t, s) with s R source + t ~ target, starting from the identity.

  Each iteration pairs every moved source point with its nearest target point (scipy cKDTree), drops the
  worst `trim_fraction` of the pairs (trimmed ICP, for partial overlap), and updates the transform:
    point_to_point: refit the whole transform in closed form to the pairs (`fit_similarity`, SVD): the
      classic ICP (Besl & McKay), a fixed-point iteration that slides slowly along smooth surfaces.
    point_to_plane: one linearised least-squares step on the distances to the target's tangent planes
      (Chen & Medioni), given `target_normals`; typically converged in a handful of iterations.
  It stops when the mean squared pair distance improves by at most `tolerance` (relative) or gets worse
  (returning the better, earlier transform), when the pairs no longer change (point_to_point: a fixed
  point, refitting would give the same transform), or after `max_iterations` updates.

  Args:
    source_points: (N, 3) points to move, N >= 3.
    target_points: (M, 3) fixed points.
    max_iterations: most transform updates.
    tolerance: relative improvement of the mean squared pair distance at or below which it stops; 0 runs
      point_to_point to a fixed point (or `max_iterations`).
    with_scale: fit a similarity (uniform scale) instead of a rigid transform.
    trim_fraction: fraction in [0, 1) of the farthest pairs left out of each update.
    method: "point_to_point" or "point_to_plane".
    target_normals: (M, 3) unit normals of the target points (sign irrelevant), for point_to_plane.
    target_tree: a cKDTree of `target_points` already built (saves rebuilding it).
  Returns:
    R (3, 3), t (3,), s (1.0 unless `with_scale`), IcpInfo.
  """
  source = _points(source_points, "icp source_points")
  target = _points(target_points, "icp target_points")
  if source.shape[0] < 3 or target.shape[0] < 1:
    raise InputError(f"icp: {source.shape[0]} source and {target.shape[0]} target points; expected at "
                     "least 3 source points and 1 target point.")
  if not 0.0 <= trim_fraction < 1.0:
    raise InputError(f"icp: trim_fraction {trim_fraction}; expected a fraction in [0, 1).")
  if method not in ICP_METHODS:
    raise InputError(f"icp: method {method!r}; expected one of {ICP_METHODS}.")
  if method == "point_to_plane":
    if target_normals is None:
      raise InputError("icp: method 'point_to_plane' needs target_normals (M, 3).")
    normals = np.asarray(target_normals, np.float64)
    if normals.shape != target.shape:
      raise InputError(f"icp: target_normals {normals.shape}; expected {target.shape}, one per target.")
  tree = target_tree if target_tree is not None else cKDTree(target)

  def evaluate(rotation, translation, scale):
    distances, indices = tree.query(scale * source @ rotation.T + translation)
    keep = _trim(distances, trim_fraction)
    return dict(rotation=rotation, translation=translation, scale=scale, distances=distances,
                indices=indices, keep=keep, mse=float(np.mean(distances[keep] ** 2)))

  best = evaluate(np.eye(3), np.zeros(3), 1.0)
  converged = False
  iterations = 0
  while iterations < max_iterations:
    keep, matched = best["keep"], target[best["indices"]]
    if method == "point_to_point":
      transform = fit_similarity(source[keep], matched[keep], with_scale)
    else:
      moved = best["scale"] * source @ best["rotation"].T + best["translation"]
      r, t, s = _point_to_plane_step(moved[keep], matched[keep], normals[best["indices"][keep]],
                                     with_scale)
      transform = (r @ best["rotation"], s * r @ best["translation"] + t, s * best["scale"])
    iterations += 1
    current = evaluate(*transform)
    if method == "point_to_point" and np.array_equal(current["indices"], best["indices"]) \
        and np.array_equal(current["keep"], best["keep"]):
      best, converged = current, True
      break
    improved = current["mse"] <= best["mse"]
    stop = best["mse"] - current["mse"] <= tolerance * best["mse"]
    if improved:
      best = current
    if stop:
      converged = True
      break
  info = IcpInfo(iterations=iterations, converged=converged, rmse=math.sqrt(best["mse"]),
                 target_indices=best["indices"].astype(np.int64), distances=best["distances"],
                 inliers=best["keep"])
  return best["rotation"], best["translation"], best["scale"], info


# ----------------------------------------------------------------------------------------------------
# Closest points on a triangle mesh.


def closest_points_on_triangles(points: np.ndarray, a: np.ndarray, b: np.ndarray,
                                c: np.ndarray) -> np.ndarray:
  """(n, 3) closest point of triangle (a_i, b_i, c_i) to points_i, all (n, 3), vectorised.

  The Voronoi-region walk of Ericson, Real-Time Collision Detection 5.1.5: a vertex, an edge or the
  interior, decided from dot products. A degenerate (zero-area) triangle falls back to its nearest vertex
  when no vertex or edge region claims the point.
  """
  ab, ac, ap = b - a, c - a, points - a
  bp, cp = points - b, points - c
  d1, d2 = _row_dot(ab, ap), _row_dot(ac, ap)
  d3, d4 = _row_dot(ab, bp), _row_dot(ac, bp)
  d5, d6 = _row_dot(ab, cp), _row_dot(ac, cp)
  va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
  with np.errstate(divide="ignore", invalid="ignore"):
    denominator = va + vb + vc
    v_in, w_in = vb / denominator, vc / denominator
    t_ab = d1 / (d1 - d3)
    t_ac = d2 / (d2 - d6)
    t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
  interior = a + ab * v_in[:, None] + ac * w_in[:, None]
  degenerate = ~(denominator > 0)
  if degenerate.any():
    corners = np.stack([a[degenerate], b[degenerate], c[degenerate]], axis=1)
    nearest = np.argmin(np.sum((corners - points[degenerate, None]) ** 2, axis=2), axis=1)
    interior[degenerate] = corners[np.arange(corners.shape[0]), nearest]
  # Regions in Ericson's order of precedence; the first that claims a point wins.
  regions = [
      (d1 <= 0) & (d2 <= 0),
      (d3 >= 0) & (d4 <= d3),
      (vc <= 0) & (d1 >= 0) & (d3 <= 0),
      (d6 >= 0) & (d5 <= d6),
      (vb <= 0) & (d2 >= 0) & (d6 <= 0),
      (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0),
  ]
  candidates = [a, b, a + ab * t_ab[:, None], c, a + ac * t_ac[:, None], b + (c - b) * t_bc[:, None]]
  out = interior
  for region, candidate in zip(reversed(regions), reversed(candidates)):
    out = np.where(region[:, None], candidate, out)
  return out


class MeshProximity:
  """Exact closest points on a triangle mesh for many query points, with scipy cKDTrees.

  Why exact and cheap: a triangle whose centroid lies farther from a query than the best distance found so
  far plus the triangle's radius (its farthest corner from the centroid) cannot hold a closer point. The
  best distance starts at the nearest used vertex's and tightens as triangles are tested in order of
  centroid distance: the nearest `k` first, then more for the queries whose k-th centroid is still within
  reach (bound + largest radius), then a ball query for the rare rest. The few unusually large triangles
  (which would widen that reach for everyone) are tested separately, against the queries they can reach.
  """

  _MAX_LARGE_TRIANGLES = 64
  _CHUNK = 16384  # pairs per vectorised step: small temporaries stay in cache (~8x faster than one pass)

  def __init__(self, vertices, faces):
    """vertices (V, 3); faces (F, 3) int vertex indices."""
    self.vertices = _points(vertices, "mesh vertices")
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
      raise InputError(f"mesh faces have shape {faces.shape}; expected (F, 3) vertex indices, F >= 1.")
    if not np.issubdtype(faces.dtype, np.integer):
      raise InputError(f"mesh faces have dtype {faces.dtype}; expected integer vertex indices.")
    faces = faces.astype(np.int64)
    if faces.min() < 0 or faces.max() >= self.vertices.shape[0]:
      raise InputError(f"mesh faces index vertices {faces.min()}..{faces.max()}; the mesh has "
                       f"{self.vertices.shape[0]} vertices (0-based).")
    self.faces = faces
    self.used_vertices = np.unique(faces)
    self.vertex_tree = cKDTree(self.vertices[self.used_vertices])
    self._corners = self.vertices[faces]  # (F, 3 corners, 3)
    centroids = self._corners.mean(axis=1)
    radii = np.sqrt(np.max(np.sum((self._corners - centroids[:, None]) ** 2, axis=2), axis=1))
    cut = 4.0 * float(np.median(radii))
    if np.count_nonzero(radii > cut) > self._MAX_LARGE_TRIANGLES:
      cut = float(np.partition(radii, -self._MAX_LARGE_TRIANGLES - 1)[-self._MAX_LARGE_TRIANGLES - 1])
    large = radii > cut
    self._small = np.nonzero(~large)[0]
    self._large = np.nonzero(large)[0]
    self._centroids, self._radii = centroids, radii
    self._small_tree = cKDTree(centroids[self._small])
    self._small_reach = float(radii[self._small].max())

  def _evaluate(self, query_index, triangle, points, best_sq, best_point, best_triangle):
    """Tests pairs (query_index[i], triangle[i]), keeping each query's closest point so far."""
    for start in range(0, query_index.size, self._CHUNK):
      q, t = query_index[start:start + self._CHUNK], triangle[start:start + self._CHUNK]
      corners = self._corners[t]
      closest = closest_points_on_triangles(points[q], corners[:, 0], corners[:, 1], corners[:, 2])
      sq = np.sum((closest - points[q]) ** 2, axis=1)
      # Best pair per query within the chunk: sort by (query, distance), take each query's first pair.
      order = np.lexsort((sq, q))
      first = np.ones(order.size, bool)
      first[1:] = q[order[1:]] != q[order[:-1]]
      pick = order[first]
      pick = pick[sq[pick] < best_sq[q[pick]]]
      best_sq[q[pick]], best_point[q[pick]], best_triangle[q[pick]] = sq[pick], closest[pick], t[pick]

  def _evaluate_reachable(self, query_index, small_triangle, distance, points, best_sq, best_point,
                          best_triangle):
    """Tests only the pairs whose triangle can still beat the query's best distance."""
    triangle = self._small[small_triangle]
    bound = np.sqrt(best_sq[query_index])
    reachable = distance - self._radii[triangle] <= bound
    self._evaluate(query_index[reachable], triangle[reachable], points, best_sq, best_point,
                   best_triangle)

  def closest_points(self, points, k: int = 8,
                     k_more: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest surface points.

    Args:
      points: (Q, 3) query points.
      k, k_more: triangles tried first, and next where needed (speed knobs: the result is exact for any).
    Returns:
      closest (Q, 3) points on the surface, distances (Q,), triangles (Q,) int64 (faces holding them).
    """
    points = _points(points, "query points")
    n = points.shape[0]
    best_point = np.zeros((n, 3))
    best_triangle = np.full(n, -1, np.int64)
    # The nearest used vertex bounds the distance from above (a hair of slack for rounding).
    best_sq = (self.vertex_tree.query(points)[0] * (1.0 + 1e-9) + 1e-12) ** 2 if n else np.zeros(0)
    pending = np.arange(n)
    tried = 0
    for count in (k, k_more):
      count = min(count, self._small.size)
      if pending.size == 0 or count <= tried:
        continue
      distance, nearest = self._small_tree.query(points[pending], k=count)
      distance, nearest = distance.reshape(-1, count), nearest.reshape(-1, count)
      self._evaluate_reachable(np.repeat(pending, count - tried), nearest[:, tried:].ravel(),
                               distance[:, tried:].ravel(), points, best_sq, best_point, best_triangle)
      tried = count
      if count == self._small.size:
        pending = pending[:0]
      else:
        # Triangles beyond the count-th centroid are out of reach once it lies beyond bound + reach.
        pending = pending[distance[:, -1] - self._small_reach <= np.sqrt(best_sq[pending])]
    if pending.size:
      balls = self._small_tree.query_ball_point(points[pending],
                                                np.sqrt(best_sq[pending]) + self._small_reach)
      counts = np.fromiter((len(b) for b in balls), np.int64, pending.size)
      flat = np.fromiter((i for b in balls for i in b), np.int64, int(counts.sum()))
      query_index = np.repeat(pending, counts)
      distance = np.linalg.norm(points[query_index] - self._centroids[self._small[flat]], axis=1)
      self._evaluate_reachable(query_index, flat, distance, points, best_sq, best_point, best_triangle)
    for t in self._large:
      reach = np.linalg.norm(points - self._centroids[t], axis=1) - self._radii[t]
      q = np.nonzero(reach <= np.sqrt(best_sq))[0]
      self._evaluate(q, np.full(q.size, t), points, best_sq, best_point, best_triangle)
    return best_point, np.sqrt(best_sq), best_triangle


# ----------------------------------------------------------------------------------------------------
# Correspondence and the three NMEs.


@dataclasses.dataclass(frozen=True)
class Correspondence:
  """Each ground-truth face vertex and its corresponding point on the prediction (see the module doc).

  Attributes:
    gt_indices: (K,) int64 the ground-truth vertices compared (the face region).
    gt_points: (K, 3) those vertices.
    pred_points: (K, 3) their corresponding points x_k, in the prediction's own, unaligned frame.
    pred_triangles: (K,) int64 the predicted faces holding x_k, or None when matched to vertices.
    pred_vertex_indices: (K,) int64 the predicted vertex x_k is, or None when matched to the surface.
    rotation, translation, scale: the alignment A of the prediction onto the ground truth,
      A(p) = scale * rotation @ p + translation (the inverse of the ICP transform G).
    icp: what ICP ended with (its pairs: ground-truth face vertex k -> predicted vertex index).
  """

  gt_indices: np.ndarray
  gt_points: np.ndarray
  pred_points: np.ndarray
  pred_triangles: np.ndarray | None
  pred_vertex_indices: np.ndarray | None
  rotation: np.ndarray
  translation: np.ndarray
  scale: float
  icp: IcpInfo

  def aligned_pred_points(self) -> np.ndarray:
    """(K, 3) A(x_k): the corresponding points on the aligned prediction."""
    return self.scale * self.pred_points @ self.rotation.T + self.translation

  def align(self, points) -> np.ndarray:
    """(N, 3) any prediction points (e.g. its whole mesh) moved by A onto the ground truth."""
    return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.translation

  def distances(self, aligned: bool = False) -> np.ndarray:
    """(K,) ||y_k - x_k|| (the paper's protocol), or ||y_k - A(x_k)|| with `aligned`; frame units."""
    pred = self.aligned_pred_points() if aligned else self.pred_points
    return np.linalg.norm(self.gt_points - pred, axis=1)


def correspondence(pred_vertices, gt_vertices, gt_face_mask=None, pred_faces=None, *,
                   icp_method: str = "point_to_plane", with_scale: bool = False,
                   trim_fraction: float = 0.0, max_iterations: int = 50,
                   tolerance: float = 1e-6) -> Correspondence:
  """ICP correspondence between the ground-truth face vertices and the prediction (module doc, steps 1-2).

  Args:
    pred_vertices: (P, 3) predicted mesh vertices, in the ground truth's frame (photo pixels).
    gt_vertices: (G, 3) ground-truth mesh vertices.
    gt_face_mask: (G,) bool, or integer vertex indices: the face region compared (default: all vertices).
    pred_faces: (F, 3) the predicted mesh's triangles: correspondences then lie on its surface (exact
      point-to-triangle), ICP uses only the vertices the triangles use, and point-to-plane ICP their
      area-weighted normals. Without them: closest vertices, and normals from 10 nearest neighbours.
    icp_method: "point_to_plane" (default: converges in a few iterations) or "point_to_point" (the
      closed-form classic; on smooth faces it can still be sliding after hundreds of iterations, which
      makes the unaligned NME depend on `max_iterations`). See `icp`.
    with_scale: let ICP fit a uniform scale too (the paper speaks of rigid ICP: default False).
    trim_fraction: fraction of the worst ICP pairs left out of each ICP update (not of the error mean).
    max_iterations, tolerance: ICP stopping rules (see `icp`).
  """
  pred = _points(pred_vertices, "pred_vertices")
  gt = _points(gt_vertices, "gt_vertices")
  gt_indices = _face_indices(gt_face_mask, gt.shape[0])
  gt_face = gt[gt_indices]
  normals = None
  if pred_faces is not None:
    proximity = MeshProximity(pred, pred_faces)
    icp_vertices, icp_tree = pred[proximity.used_vertices], proximity.vertex_tree
    if icp_method == "point_to_plane":
      normals = vertex_normals(pred, proximity.faces)[proximity.used_vertices]
  else:
    proximity = None
    icp_vertices = pred
    icp_tree = cKDTree(pred)
    if icp_method == "point_to_plane":
      normals = point_cloud_normals(pred, tree=icp_tree)
  rotation, translation, scale, info = icp(
      gt_face, icp_vertices, max_iterations=max_iterations, tolerance=tolerance, with_scale=with_scale,
      trim_fraction=trim_fraction, method=icp_method, target_normals=normals, target_tree=icp_tree)
  moved_gt = scale * gt_face @ rotation.T + translation
  if proximity is not None:
    # ICP saw only the vertices the faces use: give its pairs as indices into all predicted vertices.
    info = dataclasses.replace(info, target_indices=proximity.used_vertices[info.target_indices])
    pred_points, _, triangles = proximity.closest_points(moved_gt)
    vertex_indices = None
  else:
    # ICP's final pairs are exactly the closest vertices of G(y_k).
    vertex_indices = info.target_indices
    pred_points, triangles = pred[vertex_indices], None
  # A = G^-1: p -> R^T (p - t) / s.
  return Correspondence(
      gt_indices=gt_indices, gt_points=gt_face, pred_points=pred_points, pred_triangles=triangles,
      pred_vertex_indices=vertex_indices, rotation=rotation.T,
      translation=-rotation.T @ translation / scale, scale=1.0 / scale, icp=info)


def interocular_distance(gt_vertices, gt_landmark_idx) -> float:
  """3D outer interocular distance: between the vertices at iBUG landmarks 37 and 46 (1-based).

  Args:
    gt_vertices: (G, 3) ground-truth vertices.
    gt_landmark_idx: (68,) int 0-based vertex indices of the iBUG 68 landmarks.
  """
  gt = _points(gt_vertices, "gt_vertices")
  landmarks = gt[_landmark_indices(gt_landmark_idx, gt.shape[0])]
  d = float(np.linalg.norm(landmarks[OUTER_EYE_CORNERS[0]] - landmarks[OUTER_EYE_CORNERS[1]]))
  if not d > 0:
    raise InputError("ground truth: its outer eye corners (landmarks 37 and 46) coincide; cannot "
                     "normalise by a zero interocular distance.")
  return d


def landmark_bbox_size(gt_vertices, gt_landmark_idx) -> float:
  """sqrt(w h) of the x, y bounding box of the ground truth's 68 landmark vertices (PRNet's normaliser)."""
  gt = _points(gt_vertices, "gt_vertices")
  landmarks = gt[_landmark_indices(gt_landmark_idx, gt.shape[0])]
  w, h = np.ptp(landmarks[:, :2], axis=0)
  size = math.sqrt(float(w * h))
  if not size > 0:
    raise InputError(f"ground truth: its 68 landmarks span {w} x {h} pixels; expected a box with area.")
  return size


def nme_paper(pred_vertices, gt_vertices, gt_landmark_idx, gt_face_mask=None, pred_faces=None,
              **icp_options) -> float:
  """The paper's NME: mean_k ||y_k - x_k|| / d, x_k found by ICP, measured on the unaligned prediction.

  Both meshes must be in one frame (map the prediction back through the inverse crop first). The mean runs
  over all ground-truth face vertices (trimming, if asked for, only affects the ICP fits).

  Args:
    pred_vertices: (P, 3) prediction in the ground truth's frame.
    gt_vertices: (G, 3) ground-truth mesh.
    gt_landmark_idx: (68,) 0-based ground-truth vertices of the iBUG landmarks (d uses 37 and 46, 1-based).
    gt_face_mask: (G,) bool or vertex indices, the face region (default all vertices).
    pred_faces: optional (F, 3) prediction triangles: closest points on the surface instead of vertices.
    **icp_options: icp_method, with_scale, trim_fraction, max_iterations, tolerance (see
      `correspondence`).
  Returns:
    NME, a fraction of the interocular distance.
  """
  d = interocular_distance(gt_vertices, gt_landmark_idx)
  match = correspondence(pred_vertices, gt_vertices, gt_face_mask, pred_faces, **icp_options)
  return float(np.mean(match.distances())) / d


def nme_aligned(pred_vertices, gt_vertices, gt_landmark_idx, gt_face_mask=None, pred_faces=None,
                **icp_options) -> float:
  """As `nme_paper`, but measured on the ICP-aligned prediction: mean_k ||y_k - A(x_k)|| / d (the
  paper's "with rigid ICP alignment" numbers). Same arguments."""
  d = interocular_distance(gt_vertices, gt_landmark_idx)
  match = correspondence(pred_vertices, gt_vertices, gt_face_mask, pred_faces, **icp_options)
  return float(np.mean(match.distances(aligned=True))) / d


def nme_bbox(pred_vertices, gt_vertices, gt_landmark_idx, gt_face_mask=None, pred_faces=None,
             **icp_options) -> float:
  """PRNet-style NME, a different protocol: mean_k ||y_k - A(x_k)|| / sqrt(w h).

  Errors are those of `nme_aligned` (ICP-aligned prediction, closest points); the normaliser is the
  bounding-box size of the ground truth's 68 landmark vertices in x, y: w = max x - min x,
  h = max y - min y, size sqrt(w h) (as PRNet and 3DDFA normalise by the box "size"). Not comparable with
  the interocular NMEs: report it under its own name. Same arguments as `nme_paper`.
  """
  size = landmark_bbox_size(gt_vertices, gt_landmark_idx)
  match = correspondence(pred_vertices, gt_vertices, gt_face_mask, pred_faces, **icp_options)
  return float(np.mean(match.distances(aligned=True))) / size


def nme_metrics(pred_vertices, gt_vertices, gt_landmark_idx, gt_face_mask=None, pred_faces=None,
                **icp_options) -> dict[str, float]:
  """All three NMEs from one ICP run (what an evaluation loop wants): keys 'nme_paper', 'nme_aligned'
  (both / interocular distance) and 'nme_bbox' (/ landmark box size). Same arguments as `nme_paper`."""
  d = interocular_distance(gt_vertices, gt_landmark_idx)
  size = landmark_bbox_size(gt_vertices, gt_landmark_idx)
  match = correspondence(pred_vertices, gt_vertices, gt_face_mask, pred_faces, **icp_options)
  unaligned, aligned = float(np.mean(match.distances())), float(np.mean(match.distances(aligned=True)))
  return {"nme_paper": unaligned / d, "nme_aligned": aligned / d, "nme_bbox": aligned / size}


# ----------------------------------------------------------------------------------------------------
# Reporting: CED curves and yaw bins.


def ced_curve(nmes, max_error: float = 0.1, bins: int = 1000) -> tuple[np.ndarray, np.ndarray]:
  """Cumulative error distribution: the fraction of images with NME <= each threshold.

  Args:
    nmes: (N,) per-image NMEs; NaN (a failed reconstruction) counts as above every threshold.
    max_error: last threshold.
    bins: number of thresholds, evenly spaced over [0, max_error].
  Returns:
    thresholds (bins,), fraction (bins,) in [0, 1], non-decreasing.
  """
  values = np.asarray(nmes, np.float64).reshape(-1)
  if values.size == 0:
    raise InputError("ced_curve: no NME values.")
  thresholds = np.linspace(0.0, max_error, bins)
  finite = np.sort(values[~np.isnan(values)])
  fraction = np.searchsorted(finite, thresholds, side="right") / values.size
  return thresholds, fraction


def plot_ced(curves: Mapping[str, Sequence[float]], path: str | os.PathLike, max_error: float = 0.1,
             title: str | None = None) -> None:
  """Writes a PNG of CED curves (one per method, legend with its mean NME), x from 0 to `max_error` as
  in the paper's figures; atomically.

  Args:
    curves: method name -> (N,) per-image NMEs (interocular-normalised: the axis says so).
    path: the .png to write.
  """
  if not curves:
    raise InputError("plot_ced: no curves to plot.")
  # A bare Figure with an Agg canvas: no pyplot global state, no display needed.
  figure = Figure(figsize=(6.0, 4.5), dpi=120)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  for name, nmes in curves.items():
    values = np.asarray(nmes, np.float64)
    thresholds, fraction = ced_curve(values, max_error=max_error)
    failed = int(np.count_nonzero(np.isnan(values)))
    label = f"{name}: mean {np.nanmean(values):.4f}" if failed < values.size else f"{name}: all failed"
    if 0 < failed < values.size:
      label += f" ({failed} failed, not in the mean)"
    axes.plot(thresholds, fraction, linewidth=1.8, label=label)
  axes.set_xlim(0.0, max_error)
  axes.set_ylim(0.0, 1.0)
  axes.set_xlabel(CED_XLABEL)
  axes.set_ylabel(CED_YLABEL)
  if title:
    axes.set_title(title)
  axes.grid(True, alpha=0.3)
  axes.legend(loc="lower right")
  figure.tight_layout()
  with atomic_output(path) as tmp:
    figure.savefig(tmp, format="png")


def yaw_bins(yaw_deg) -> np.ndarray:
  """(N,) yaw angles in degrees -> (N,) labels '0-30', '30-60', '60-90' for |yaw| in [0, 30), [30, 60),
  [60, 90]. |yaw| above 90 (a few fitted AFLW2000-3D poses) goes to '60-90', the widest-pose bin."""
  yaw = np.abs(np.asarray(yaw_deg, np.float64))
  if not np.all(np.isfinite(yaw)):
    raise InputError("yaw_bins: yaw angles contain NaN or infinity.")
  return np.asarray(YAW_BIN_LABELS)[np.digitize(yaw, YAW_BIN_EDGES_DEG)]


# ----------------------------------------------------------------------------------------------------
# Input checks.


def _row_dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """(n,) dot products of the rows of two (n, 3) arrays."""
  return np.einsum("ij,ij->i", u, v)


def _points(points, what: str) -> np.ndarray:
  p = np.asarray(points, np.float64)
  if p.ndim != 2 or p.shape[1] != 3:
    raise InputError(f"{what}: shape {p.shape}; expected (N, 3) points.")
  if not np.all(np.isfinite(p)):
    raise InputError(f"{what}: contains NaN or infinity.")
  return p


def _landmark_indices(gt_landmark_idx, num_vertices: int) -> np.ndarray:
  idx = np.asarray(gt_landmark_idx).reshape(-1)
  if idx.size != 68 or not np.issubdtype(idx.dtype, np.integer):
    raise InputError(f"gt_landmark_idx: {idx.size} entries of {idx.dtype}; expected 68 integer vertex "
                     "indices (0-based) of the iBUG landmarks.")
  if idx.min() < 0 or idx.max() >= num_vertices:
    raise InputError(f"gt_landmark_idx: indices {idx.min()}..{idx.max()}; the ground truth has "
                     f"{num_vertices} vertices (0-based).")
  return idx.astype(np.int64)


def _face_indices(gt_face_mask, num_vertices: int) -> np.ndarray:
  if gt_face_mask is None:
    return np.arange(num_vertices)
  mask = np.asarray(gt_face_mask).reshape(-1)
  if mask.dtype == bool:
    if mask.size != num_vertices:
      raise InputError(f"gt_face_mask: {mask.size} entries; expected one per ground-truth vertex "
                       f"({num_vertices}).")
    indices = np.nonzero(mask)[0]
  elif np.issubdtype(mask.dtype, np.integer):
    indices = mask.astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= num_vertices):
      raise InputError(f"gt_face_mask: indices {indices.min()}..{indices.max()}; the ground truth has "
                       f"{num_vertices} vertices (0-based).")
  else:
    raise InputError(f"gt_face_mask: dtype {mask.dtype}; expected (G,) bool or integer vertex indices.")
  if indices.size < 3:
    raise InputError(f"gt_face_mask: selects {indices.size} vertices; expected at least 3.")
  return indices
