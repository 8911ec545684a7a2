"""Triangle rasterisation on a pixel grid, pure NumPy: z-buffer, triangle ids, barycentric weights.

One rule everywhere (the voxeliser's frontal depth map, the synthetic-face renderer): pixel (row v,
column u) is sampled at its centre, the integer point (u, v); a triangle covers it when all three
barycentric weights of that point are >= -1e-9, so a centre on an edge shared by two triangles belongs to
both and a closed surface has no cracks; depth is interpolated linearly (orthographic projection) and the
largest depth (nearest the camera) wins.

The work is vectorised over (triangle, candidate pixel centre) pairs, the candidates of a triangle being
the pixels of each of its rows around its span on that row. A dense face mesh has most triangles covering
zero or one centre, a coarse mesh rendered large has a few hundred per triangle, and a long thin one (a
strand of hair) costs its area rather than its bounding box; all stay a handful of array passes, in chunks
that bound memory.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

_INSIDE_EPS = -1e-9  # a centre exactly on a shared edge belongs to both triangles: no cracks
_MAX_ROWS = 1 << 21  # candidate (triangle, pixel) pairs per chunk: ~2M rows, ~150 MB of temporaries


class Raster(NamedTuple):
  """What covers each pixel centre.

  Attributes:
    depth: (H, W) float64 interpolated z of the front-most triangle; -inf where nothing covers the pixel.
    triangle: (H, W) int64 index of that triangle; -1 where empty. Of several triangles at exactly the
      same depth, the lowest index.
    barycentric: (H, W, 3) float64 weights of that triangle's three vertices at the pixel centre (sum 1);
      0 where empty.
  """

  depth: np.ndarray
  triangle: np.ndarray
  barycentric: np.ndarray


class _Fragments(NamedTuple):
  """Covered (triangle, pixel) pairs of one chunk, all (M,)."""

  triangle: np.ndarray  # int64
  pixel: np.ndarray  # int64 flat index v * W + u
  w0: np.ndarray
  w1: np.ndarray
  w2: np.ndarray
  z: np.ndarray


def _fragments(vertices: np.ndarray, triangles: np.ndarray,
               shape: tuple[int, int]) -> Iterator[_Fragments]:
  """Yields, chunk by chunk, every pixel centre covered by a triangle with its weights and depth."""
  h, w = shape
  v = np.asarray(vertices, np.float64)
  t = np.asarray(triangles, np.int64).reshape(-1, 3)
  if t.size == 0:
    return
  # Per-corner coordinate columns (contiguous (T,) arrays are much faster to combine than (T, 3) rows).
  x0, x1, x2 = (v[t[:, i], 0] for i in range(3))
  y0, y1, y2 = (v[t[:, i], 1] for i in range(3))
  z0, z1, z2 = (v[t[:, i], 2] for i in range(3))
  u_lo = np.maximum(np.ceil(np.minimum(np.minimum(x0, x1), x2)), 0.0)
  u_hi = np.minimum(np.floor(np.maximum(np.maximum(x0, x1), x2)), w - 1.0)
  v_lo = np.maximum(np.ceil(np.minimum(np.minimum(y0, y1), y2)), 0.0)
  v_hi = np.minimum(np.floor(np.maximum(np.maximum(y0, y1), y2)), h - 1.0)
  # Signed area (either winding); degenerate (edge-on) triangles add nothing their neighbours do not.
  area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
  with np.errstate(invalid="ignore"):  # NaN / inf vertices fail every comparison and drop out
    keep = (u_hi >= u_lo) & (v_hi >= v_lo) & (np.abs(area) > 1e-12) & np.isfinite(area)
  ids = np.nonzero(keep)[0]
  if ids.size == 0:
    return
  u_lo, v_lo = u_lo[ids].astype(np.int64), v_lo[ids].astype(np.int64)
  u_hi = u_hi[ids].astype(np.int64)
  nv = v_hi[ids].astype(np.int64) - v_lo + 1
  # Candidates are taken row by row, within each row only the centres within half a pixel of the
  # triangle's span on it (a margin far above rounding, and above the inside test's tolerance, which
  # decides): a long thin triangle (a strand of hair, a sliver at a silhouette) costs its area, not its
  # bounding box, and a small one a centre or two per row.
  for a, b in _chunks(nv):
    c = nv[a:b]
    row_tid = np.repeat(ids[a:b], c)
    row_v = np.repeat(v_lo[a:b], c) + (np.arange(int(c.sum()), dtype=np.int64)
                                       - np.repeat(np.cumsum(c) - c, c))
    left, right = _row_spans(x0[row_tid], y0[row_tid], x1[row_tid], y1[row_tid], x2[row_tid],
                             y2[row_tid], row_v.astype(np.float64))
    lo = np.maximum(np.ceil(left - 0.5), np.repeat(u_lo[a:b], c))
    hi = np.minimum(np.floor(right + 0.5), np.repeat(u_hi[a:b], c))
    with np.errstate(invalid="ignore"):  # NaN: the row misses the triangle
      hit = hi >= lo
    row_u = np.where(hit, lo, 0.0).astype(np.int64)
    width = np.where(hit, hi - lo + 1, 0.0).astype(np.int64)
    for ra, rb in _chunks(width):
      wc = width[ra:rb]
      tid = np.repeat(row_tid[ra:rb], wc)
      pu = (np.repeat(row_u[ra:rb], wc) + np.arange(int(wc.sum()), dtype=np.int64)
            - np.repeat(np.cumsum(wc) - wc, wc)).astype(np.float64)
      pv = np.repeat(row_v[ra:rb], wc).astype(np.float64)
      ax0, ax1, ax2 = x0[tid], x1[tid], x2[tid]
      ay0, ay1, ay2 = y0[tid], y1[tid], y2[tid]
      ar = area[tid]
      # Barycentric weights of the pixel centre: edge functions relative to the centre, over the area.
      w0 = ((ax1 - pu) * (ay2 - pv) - (ax2 - pu) * (ay1 - pv)) / ar
      w1 = ((ax2 - pu) * (ay0 - pv) - (ax0 - pu) * (ay2 - pv)) / ar
      w2 = 1.0 - w0 - w1
      inside = np.flatnonzero((w0 >= _INSIDE_EPS) & (w1 >= _INSIDE_EPS) & (w2 >= _INSIDE_EPS))
      tid, w0, w1, w2 = tid.take(inside), w0.take(inside), w1.take(inside), w2.take(inside)
      z = w0 * z0[tid] + w1 * z1[tid] + w2 * z2[tid]
      pixel = pv.take(inside).astype(np.int64) * w + pu.take(inside).astype(np.int64)
      yield _Fragments(tid, pixel, w0, w1, w2, z)


def _chunks(counts: np.ndarray) -> Iterator[tuple[int, int]]:
  """[a, b) ranges of `counts` whose sums stay within _MAX_ROWS (an entry above it alone)."""
  ends = np.cumsum(counts)
  a = 0
  while a < len(counts):
    done = ends[a - 1] if a else 0
    b = max(int(np.searchsorted(ends, done + _MAX_ROWS, side="right")), a + 1)
    yield a, b
    a = b


def _row_spans(x0, y0, x1, y1, x2, y2, row):
  """(left, right) x where the horizontal line y = row crosses a triangle's edges (NaN where it misses);
  an edge lying on the line contributes both its ends."""
  left = np.full(row.shape, np.inf)
  right = np.full(row.shape, -np.inf)
  with np.errstate(divide="ignore", invalid="ignore"):
    for xa, ya, xb, yb in ((x0, y0, x1, y1), (x1, y1, x2, y2), (x2, y2, x0, y0)):
      crosses = (np.minimum(ya, yb) <= row) & (row <= np.maximum(ya, yb))
      flat = ya == yb
      x = np.where(flat, xa, xa + (row - ya) * (xb - xa) / (yb - ya))
      left = np.where(crosses, np.minimum(left, np.where(flat, np.minimum(xa, xb), x)), left)
      right = np.where(crosses, np.maximum(right, np.where(flat, np.maximum(xa, xb), x)), right)
  missed = left > right
  left[missed], right[missed] = np.nan, np.nan
  return left, right


def depth_buffer(vertices: np.ndarray, triangles: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Z-buffer only: (H, W) float64 depth of the front-most surface, -inf where empty.

  Args:
    vertices: (N, 3) x (column), y (row) in pixels with pixel centres at integers; z larger = nearer.
    triangles: (T, 3) vertex indices.
    shape: (H, W) of the grid.
  """
  h, w = shape
  depth = np.full(h * w, -np.inf)
  for f in _fragments(vertices, triangles, shape):
    np.maximum.at(depth, f.pixel, f.z)
  return depth.reshape(h, w)


def rasterise(vertices: np.ndarray, triangles: np.ndarray, shape: tuple[int, int]) -> Raster:
  """Z-buffer with the front-most triangle and its barycentric weights at every pixel centre.

  Args:
    vertices: (N, 3) x (column), y (row) in pixels with pixel centres at integers; z larger = nearer.
    triangles: (T, 3) vertex indices.
    shape: (H, W) of the grid.
  Returns:
    A `Raster` (depth (H, W), triangle (H, W), barycentric (H, W, 3)). To interpolate per-vertex
    attributes A (N, C): `(A[triangles[tri]] * bary[..., None]).sum(-2)` where tri >= 0.
  """
  h, w = shape
  frags = list(_fragments(vertices, triangles, shape))
  depth = np.full(h * w, -np.inf)
  for f in frags:
    np.maximum.at(depth, f.pixel, f.z)
  # Winners are the fragments at their pixel's depth; ties (coplanar overlaps, shared edges) go to the
  # lowest triangle index so the result does not depend on chunking or order.
  triangle = np.full(h * w, np.iinfo(np.int64).max)
  for f in frags:
    win = f.z == depth[f.pixel]
    np.minimum.at(triangle, f.pixel[win], f.triangle[win])
  barycentric = np.zeros((h * w, 3))
  for f in frags:
    # (pixel, triangle) pairs are unique, so exactly one fragment lands on each covered pixel.
    sel = f.triangle == triangle[f.pixel]
    barycentric[f.pixel[sel]] = np.stack([f.w0[sel], f.w1[sel], f.w2[sel]], axis=1)
  triangle[triangle == np.iinfo(np.int64).max] = -1
  return Raster(depth.reshape(h, w), triangle.reshape(h, w), barycentric.reshape(h, w, 3))
