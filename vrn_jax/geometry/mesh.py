"""Triangle-mesh normals, the one home for them (the renderer, the NME's point-to-plane ICP and the
procedural face model all use these)."""

from __future__ import annotations

import numpy as np


def triangle_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
  """(T, 3) area-weighted triangle normals (not unit: |n| is twice the area), by the winding."""
  v, t = np.asarray(vertices), np.asarray(triangles)
  a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
  return _cross(b - a, c - a)


def _cross(p: np.ndarray, q: np.ndarray) -> np.ndarray:
  """(K, 3) cross products, as `np.cross` computes them (the same products and differences, so the same
  bits) in whole columns, without its per-call reshuffling (several times faster on these shapes)."""
  p0, p1, p2 = p[:, 0], p[:, 1], p[:, 2]
  q0, q1, q2 = q[:, 0], q[:, 1], q[:, 2]
  out = np.empty(np.broadcast_shapes(p.shape, q.shape), np.result_type(p, q))
  out[:, 0] = p1 * q2 - p2 * q1
  out[:, 1] = p2 * q0 - p0 * q2
  out[:, 2] = p0 * q1 - p1 * q0
  return out


def outward_triangle_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
  """`triangle_normals`, flipped where needed to point away from the mesh's centre whatever the winding.

  Winding alone cannot say which side is out: the y-down image frame is a mirror image of the model
  frame, and other models may wind the other way. A face shell's vertex centroid lies behind it.
  """
  v, t = np.asarray(vertices), np.asarray(triangles)
  a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
  n = _cross(b - a, c - a)  # triangle_normals, from the corners gathered once
  used = np.zeros(len(v), bool)
  used[t.reshape(-1)] = True
  centre = np.array([v[used, k].mean() for k in range(v.shape[1])])  # (per column: much faster)
  outward = np.sum(n * ((a + b + c) / 3.0 - centre))
  return -n if outward < 0 else n


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray,
                   face_normals: np.ndarray | None = None) -> np.ndarray:
  """(V, 3) unit vertex normals, the area-weighted mean of the adjacent triangles' normals (zero for a
  vertex no triangle uses).

  face_normals: the (T, 3) triangle normals to average (default: `triangle_normals`, by the winding).
  """
  v, t = np.asarray(vertices), np.asarray(triangles)
  n_tri = triangle_normals(v, t) if face_normals is None else face_normals
  n = np.stack([np.bincount(t.reshape(-1), np.repeat(n_tri[:, i], 3), minlength=len(v))
                for i in range(3)], axis=-1)
  # |n| as np.linalg.norm sums it, column by column (a reduction over a short trailing axis is slow).
  length = np.sqrt(n[:, 0] * n[:, 0] + n[:, 1] * n[:, 1] + n[:, 2] * n[:, 2])
  return n / np.maximum(length, 1e-12)[:, None]


def outward_vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
  """`vertex_normals` of `outward_triangle_normals`, in float64: outward whatever the winding."""
  v, t = np.asarray(vertices, np.float64), np.asarray(triangles, np.int64)
  return vertex_normals(v, t, outward_triangle_normals(v, t))
