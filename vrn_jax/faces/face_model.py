"""A procedural linear 3D morphable face model, shipped as code (no download, no licence).

It follows the BFM's conventions so that every real-data code path can run on it: model frame with y up,
+z toward the camera (the nose points to +z), x to the viewer's right in a frontal view; units of
micrometres (the face region is ~140,000 units wide), so a 300W-LP-like scale f ~ 1.2e-3 makes a face
~170 px wide in a 450x450 photo. Parameters are applied raw (v = mean + W s + W_exp e), so the bases
carry their own scale: s, e ~ N(0, 1) give plausible faces.

Construction (all in millimetres, then scaled): a closed head. A grid of columns (azimuth theta about
the vertical head axis, all the way round, dense at the front) and rows (height y, dense from the mouth
to the eyes); each row is a horizontal superellipse section of the head whose size follows anatomical
profiles, smoothly maxed with a neck below the jaw line; brow ridge, eye sockets, nose, lips, chin,
cheeks and ears are radial bumps; a skull cap and a neck base close it. Past +-80 deg (ears), below the
jaw line (neck) and above the forehead the surface is outside `face_mask`, as the BFM crops 3DDFA uses
leave them out, so the mask matters. Along the lips' meeting line the lower lip has its own copies of
the vertices: the jaw-opening expression separates the lips and leaves a hole in the face region (the
voxeliser fills it); behind it a mouth bag (outside the mask) keeps the head closed, so a render shows
a mouth, not the inside of the head.

Identity and expression bases are displacement fields written directly (jaw rotation about the
temporomandibular joint, lid closing, brow raising, nose size, jaw width, ...), plus a tail of smooth
random fields from a fixed seed: the model is the same on every machine.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import scipy.io
from scipy.interpolate import PchipInterpolator

from vrn_jax.files import atomic_output
from vrn_jax.geometry.mesh import vertex_normals
from vrn_jax.geometry.morphable_model import MorphableModel

UNITS_PER_MM = 1000.0  # BFM-like micrometres
NUM_SHAPE = 40
NUM_EXPRESSION = 29
_SEED = 20170921  # the smooth random tail of both bases

# Mean-face anatomy, mm, origin on the head's vertical axis at eye height.
_TOP_Y = 86.0  # top of the face region (forehead); a skull cap continues above
_CAP_HEIGHT = 36.0
_MASK_THETA = np.deg2rad(80.0)  # the face region stops in front of the ears
# The mouth line and the slit's half-width. With the lip landmarks below they give the mean face the
# lower face of 300W-style annotations of photos. Over the outer interocular distance, the mean face
# against the fixture photos with closed mouths: nose base to upper lip 0.15 (photos 0.11-0.23), closed
# lips 0.18 (0.14-0.20), lower lip to chin 0.40 (0.30-0.49), mouth width 0.57 (0.53-0.67). A mouth
# 1.5 mm higher with lips 4.5 mm taller and 12 mm wider (0.10 / 0.23 / 0.37 / 0.71) taught the network
# to put a photo's upper lip 0.07 interocular too high (docs/experiments.md, "The lower face's
# proportions"; tests/test_face_model.py checks the ranges).
_MOUTH_Y = -69.5
_MOUTH_HALF_WIDTH = 21.0
_EYE_X, _EYE_Y = 31.0, 0.5
_TMJ_Y, _TMJ_Z = -8.0, 8.0  # jaw hinge (temporomandibular joint), in front of the ear
_NECK_SOFTNESS = 0.35  # 1/mm: sharpness of the smooth max between head and neck sections

# Head sections: half-width a, front depth c_front, back depth c_back, superellipse exponent n.
_PROFILE_Y = [-170, -135, -122, -116, -110, -100, -90, -80, -70, -60, -45, -30, -15, 0, 15, 30, 50,
              70, 95]
_HALF_WIDTH = [20, 20, 22, 26, 32, 41, 48, 53.5, 57.5, 61, 64.5, 67, 69, 70, 70, 69.5, 67, 63, 55]
_FRONT_DEPTH = [20, 22, 40, 66, 80, 87, 88.5, 90.5, 92.5, 94, 94.5, 93.5, 92, 91.5, 93.5, 94, 91,
                85, 72]
_BACK_DEPTH = [20, 20, 25, 35, 45, 55, 62, 68, 74, 80, 86, 90, 93, 95, 96, 96, 94, 89, 80]
_EXPONENT = [2.0, 2.0, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.55, 2.6, 2.6, 2.5, 2.45, 2.4, 2.35, 2.3, 2.25,
             2.2, 2.1]


@dataclasses.dataclass(frozen=True)
class ProceduralFaceModel(MorphableModel):
  """A `MorphableModel` that also knows the expression part of its mean (3DDFA's `mu_exp`), (3N,)."""

  mean_expression: np.ndarray


# ---------------------------------------------------------------------------------------------------
# Small smooth building blocks.


def _gauss(x, y, cx, cy, sx, sy):
  return np.exp(-0.5 * ((x - cx) / sx) ** 2 - 0.5 * ((y - cy) / sy) ** 2)


def _smoothstep(t):
  """0 for t <= 0, 1 for t >= 1, C1 in between."""
  t = np.clip(t, 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def _ramp(v, v0, v1):
  """Smooth 0 -> 1 as v goes from v0 to v1 (either order)."""
  return _smoothstep((np.asarray(v, np.float64) - v0) / (v1 - v0))


@functools.lru_cache(maxsize=None)
def _profiles():
  return tuple(PchipInterpolator(_PROFILE_Y, values)
               for values in (_HALF_WIDTH, _FRONT_DEPTH, _BACK_DEPTH, _EXPONENT))


def _superellipse_radius(theta, a, c_front, c_back, n):
  """Distance from the vertical axis to the section a|sin|^n + ... = 1 along azimuth theta."""
  s, c = np.abs(np.sin(theta)), np.cos(theta)
  depth = np.where(c >= 0, c_front, c_back)
  return ((s / a) ** n + (np.abs(c) / depth) ** n) ** (-1.0 / n)


def _head_radius(theta, y):
  a, cf, cb, n = (p(np.clip(y, _PROFILE_Y[0], _PROFILE_Y[-1])) for p in _profiles())
  return _superellipse_radius(theta, a, cf, cb, n)


def _neck_radius(theta):
  return _superellipse_radius(theta, 48.0, 44.0, 58.0, 2.2)


def _front_window(theta):
  """1 on the face, 0 from the ears back: keeps |x|-based features from reappearing behind."""
  return _ramp(np.abs(theta), np.deg2rad(98.0), np.deg2rad(72.0))


# ---------------------------------------------------------------------------------------------------
# Mean-face features: radial displacements (mm) as functions of the frontal position (x, y).


def _nose(x, y):
  """The nose's height above the face, bridge to tip to columella."""
  height = PchipInterpolator([-56, -52, -49, -46, -42, -38, -35, -30, -22, -12, -2, 6, 14],
                             [0, 0.5, 5, 15, 23.5, 25.5, 24.5, 21.5, 16.5, 10.5, 5.5, 2.0, 0])
  width = PchipInterpolator([-56, -50, -42, -34, -20, 0, 14], [9.0, 9.0, 9.5, 8.5, 6.0, 5.0, 5.5])
  yc = np.clip(y, -56, 14)
  return np.where((y > -56) & (y < 14), height(yc), 0.0) * np.exp(-0.5 * (x / width(yc)) ** 2)


def _alae(x, y):
  """Nostril wings beside the nose base."""
  return _gauss(np.abs(x), y, 12.5, -44.5, 5.5, 5.0)


def _eye_sockets(x, y):
  return _gauss(np.abs(x), y, _EYE_X, _EYE_Y + 1.0, 15.0, 10.5)


def _eyeballs(x, y):
  """The lids over the eyeball, in the socket."""
  return _gauss(np.abs(x), y, _EYE_X, _EYE_Y - 0.5, 10.5, 6.5)


def _brow_ridge(x, y):
  return _gauss(np.abs(x), y, 30.0, 15.5, 20.0, 5.5) + 0.6 * _gauss(x, y, 0, 11.0, 10.0, 7.0)


def _lips(x, y):
  upper = _gauss(x, y, 0, _MOUTH_Y + 4.0, 13.5, 2.9) - 0.3 * _gauss(x, y, 0, _MOUTH_Y + 9.5, 3.0, 4.0)
  lower = _gauss(x, y, 0, _MOUTH_Y - 4.5, 12.5, 3.7)
  return upper, lower


def _mean_features(x, y):
  upper_lip, lower_lip = _lips(x, y)
  return (_nose(x, y) + 9.0 * _alae(x, y)
          - 12.0 * _eye_sockets(x, y) + 7.5 * _eyeballs(x, y)
          + 3.5 * _brow_ridge(x, y)
          + 4.5 * _gauss(np.abs(x), y, 50.0, -12.0, 13.0, 11.0)  # cheekbones
          + 3.5 * _gauss(np.abs(x), y, 38.0, -45.0, 15.0, 15.0)  # cheeks
          - 1.5 * _gauss(np.abs(x), y, 22.0, -59.0, 4.0, 9.0)  # nasolabial folds
          + 6.0 * _gauss(x, y, 0, _MOUTH_Y + 4.0, 22.0, 17.0)  # the dental arch under the lips
          + 4.0 * upper_lip + 4.5 * lower_lip
          - 3.0 * _gauss(x, y, 0, -88.0, 13.0, 3.5)  # labiomental fold
          + 6.0 * _gauss(x, y, 0, -101.0, 15.0, 8.5)  # chin
          - 4.0 * _gauss(np.abs(x), y, 61.0, 20.0, 9.0, 14.0)  # temples
          + 2.0 * _gauss(np.abs(x), y, 24.0, 45.0, 18.0, 16.0))  # frontal bossing


def _ears(theta, y, a):
  arc = (np.abs(theta) - np.deg2rad(95.0)) * a
  return 11.0 * _gauss(arc, y, 0.0, 4.0, 8.0, 19.0)


# ---------------------------------------------------------------------------------------------------
# The mesh.


@dataclasses.dataclass(frozen=True)
class _Template:
  """The mean face in mm and what the bases need to know about each vertex, all (N,) or (N, 3)."""

  points: np.ndarray  # (N, 3) mean shape, neutral expression, mm
  theta: np.ndarray  # azimuth of the vertex's column
  x: np.ndarray  # frontal x of the underlying head section (before features), mm
  y: np.ndarray  # height, mm
  radial: np.ndarray  # (N, 3) unit horizontal direction away from the head axis
  lower_lip: np.ndarray  # bool: the lower lip's copies of the mouth-line vertices
  interior: np.ndarray  # bool: the mouth bag
  face_mask: np.ndarray  # bool
  triangles: np.ndarray  # (T, 3)
  mirror: np.ndarray  # (N,) index of each vertex's mirror image across x = 0
  grid_shape: tuple[int, int]  # (rows, columns) of the head grid (vertex r * columns + c)
  mouth_row: int
  slit_columns: np.ndarray  # head-grid columns whose mouth-row vertex has a lower-lip copy
  bag_source: np.ndarray  # (N,) the loop vertex a mouth-bag vertex moves with; -1 elsewhere
  bag_loop: np.ndarray  # the slit's loop; the bag's back centre moves with its mean


def _spaced(start, stop, spacing) -> list[float]:
  """Values from start toward stop with a position-dependent step spacing(v) (mm)."""
  out, v, sign = [start], start, np.sign(stop - start)
  while (stop - v) * sign > 0.5 * spacing(v):
    v = v + sign * spacing(v)
    out.append(v)
  return out


def _rows() -> tuple[np.ndarray, np.ndarray, int]:
  """Row heights (mm), the scale of each row's section (the skull cap shrinks to the crown), and the
  index of the mouth row."""
  def spacing(v):
    return float(np.interp(v, [-150, -128, -118, -86, 14, 30, 95],
                           [7.5, 7.5, 3.2, 2.25, 2.25, 3.4, 3.8]))

  down = _spaced(_MOUTH_Y, -150.0, spacing)
  up = _spaced(_MOUTH_Y, _TOP_Y, spacing)
  up[-1] = _TOP_Y
  # The skull cap: an elliptical dome over the top row, up to 80 deg (a pole vertex closes it).
  phi = np.deg2rad(np.linspace(0.0, 80.0, 8)[1:])
  rows = np.concatenate([down[::-1], up[1:], _TOP_Y + _CAP_HEIGHT * np.sin(phi)])
  scale = np.concatenate([np.ones(len(down) + len(up) - 1), np.cos(phi)])
  return rows, scale, len(down) - 1


def _columns(half: int = 42) -> np.ndarray:
  """Azimuths all around the head, [-pi, pi): theta = pi (alpha s + (1 - alpha) s^3), ~2 mm apart at
  the front, ~8 mm at the ears, ~15 mm at the back."""
  s = np.arange(1, half + 1) / half
  alpha = 0.31
  right = np.pi * (alpha * s + (1 - alpha) * s ** 3)
  return np.concatenate([-right[::-1], [0.0], right[:-1]])  # +pi is -pi


def _grid_triangles(ids: np.ndarray, wrap: bool = False) -> np.ndarray:
  """Two triangles per quad of an (R, C) id grid (rows bottom to top, columns left to right),
  counter-clockwise seen from outside; diagonals mirror across the middle column. `wrap` joins the
  last column to the first."""
  if wrap:
    ids = np.concatenate([ids, ids[:, :1]], axis=1)
  rows, cols = ids.shape
  r, c = np.meshgrid(np.arange(rows - 1), np.arange(cols - 1), indexing="ij")
  a, b = ids[r, c], ids[r, c + 1]  # lower edge (y smaller), left to right
  d, e = ids[r + 1, c], ids[r + 1, c + 1]  # upper edge
  left = (c < (cols - 1) // 2)[..., None]
  t1 = np.where(left, np.stack([a, b, e], -1), np.stack([a, b, d], -1))
  t2 = np.where(left, np.stack([a, e, d], -1), np.stack([b, e, d], -1))
  return np.concatenate([t1.reshape(-1, 3), t2.reshape(-1, 3)])


@functools.lru_cache(maxsize=1)
def _template() -> _Template:
  ys, section_scale, mouth_row = _rows()
  thetas = _columns()
  nr, nc = len(ys), len(thetas)
  th, yy = np.meshgrid(thetas, ys)  # (rows, cols)
  y_eval = np.minimum(yy, _TOP_Y)
  base = _head_radius(th, y_eval)
  a = _profiles()[0](np.clip(y_eval, _PROFILE_Y[0], _PROFILE_Y[-1]))
  # Frontal x of the section, "unrolled" behind the ears (it keeps growing to 2a at the back), so that
  # features placed by |x| fade out behind the ears instead of reappearing at the back of the head.
  side = np.abs(th) > np.pi / 2
  x_base = np.sign(th) * np.where(side, 2 * a - base * np.abs(np.sin(th)), base * np.abs(np.sin(th)))
  face_r = base + _front_window(th) * _mean_features(x_base, y_eval) + _ears(th, y_eval, a)
  neck_r = _neck_radius(th)
  # Smooth max of head and neck sections: the head surface turns under the jaw into the neck.
  k = _NECK_SOFTNESS
  radius = (neck_r + np.logaddexp(0.0, k * (face_r - neck_r)) / k) * section_scale[:, None]
  head_weight = 1.0 / (1.0 + np.exp(-k * (face_r - neck_r)))
  points = np.stack([radius * np.sin(th), yy, radius * np.cos(th)], -1).reshape(-1, 3)
  radial = np.stack([np.sin(th), 0 * th, np.cos(th)], -1).reshape(-1, 3)
  ids = np.arange(nr * nc).reshape(nr, nc)
  mask = ((np.abs(th) <= _MASK_THETA) & (head_weight > 0.5) & (yy <= _TOP_Y)).reshape(-1)
  mirror = ids[:, (nc - np.arange(nc)) % nc].reshape(-1)
  n_grid = nr * nc

  # The mouth slit: lower-lip copies of the mouth row between the corners; the quads below the mouth
  # row see the copies on their upper edge.
  slit = np.nonzero(np.abs(x_base[mouth_row]) < _MOUTH_HALF_WIDTH)[0]
  lower_ids = ids.copy()
  lower_ids[mouth_row, slit] = n_grid + np.arange(slit.size)
  tri = [_grid_triangles(lower_ids[: mouth_row + 1], wrap=True),
         _grid_triangles(ids[mouth_row:], wrap=True)]
  copies = ids[mouth_row, slit]
  # A pole closes the skull cap.
  pole_id = n_grid + slit.size
  ring = ids[-1]
  tri.append(np.stack([ring, np.roll(ring, -1), np.full(nc, pole_id)], -1))
  pole = np.array([[0.0, _TOP_Y + _CAP_HEIGHT, points[ring, 2].mean()]])
  # And a flat base closes the neck, so no view looks into the head.
  base_id = pole_id + 1
  ring = ids[0]
  tri.append(np.stack([np.roll(ring, -1), ring, np.full(nc, base_id)], -1))
  base = np.array([[0.0, ys[0], points[ring, 2].mean()]])

  n_head = n_grid + slit.size + 2
  points = np.concatenate([points, points[copies], pole, base])
  flat = lambda a: a.reshape(-1)  # pylint: disable=unnecessary-lambda-assignment
  theta = np.concatenate([flat(th), flat(th)[copies], [np.pi, np.pi]])
  # (Pole and base sit at x = 2 * 70 mm: "behind the ears" for every frontal feature.)
  x = np.concatenate([flat(x_base), flat(x_base)[copies], [140.0, 140.0]])
  y = np.concatenate([flat(yy), flat(yy)[copies], [pole[0, 1], base[0, 1]]])
  radial = np.concatenate([radial, radial[copies], [[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]])
  slit_index = {c: i for i, c in enumerate(slit)}
  mirror = np.concatenate([
      mirror,
      n_grid + np.array([slit_index[(nc - c) % nc] for c in slit], np.int64),
      [pole_id, base_id],
  ])

  # The mouth: a closed bag behind the lips, extruded from the slit's loop (left corner, upper lip
  # edge, right corner, lower lip edge) into a cavity that opens up behind the lips, capped at the
  # back. Its vertices copy their loop vertex's motion (`_attach_bag`), so it opens with the lips and
  # the head stays a closed surface: no view through an open mouth sees into the head.
  left, right = ids[mouth_row, slit.min() - 1], ids[mouth_row, slit.max() + 1]
  upper = ids[mouth_row, slit]
  lower_copy = n_grid + np.arange(slit.size)
  loop = np.concatenate([[left], upper, [right], lower_copy[::-1]])
  side = np.concatenate([[0.0], np.ones(slit.size), [0.0], -np.ones(slit.size)])
  corner_x = abs(points[right, 0])
  # Cross-section (depth behind the lip edge, half-height of the cavity), mm: the inner lips, then a
  # step facing the opening (the teeth's front faces), then the cavity.
  depths = np.array([2.0, 5.0, 5.6, 12.0, 24.0])
  half_heights = np.array([0.8, 1.2, 7.0, 9.0, 9.0])
  rings = [loop]
  bag_points = []
  for d, h in zip(depths, half_heights):
    lp = points[loop]
    opening = h * np.clip(1 - (lp[:, 0] / corner_x) ** 4, 0, 1)
    ring_points = np.stack([lp[:, 0] * (1 - 0.2 * d / depths[-1]), lp[:, 1] + side * opening,
                            lp[:, 2] - d], -1)
    rings.append(n_head + len(bag_points) * len(loop) + np.arange(len(loop)))
    bag_points.append(ring_points)
  centre_id = n_head + len(depths) * len(loop)
  bag_points.append(np.mean(bag_points[-1], axis=0, keepdims=True))
  bag_tri = [_grid_triangles(np.stack([rings[k], rings[k + 1]]), wrap=True)
             for k in range(len(depths))]
  last = rings[-1]
  bag_tri.append(np.stack([last, np.roll(last, -1), np.full(len(last), centre_id)], -1))
  bag_tri = np.concatenate(bag_tri)
  all_points = np.concatenate([points] + bag_points)
  # Orient the bag to face into the cavity (out of the head, like the rest of the skin).
  a, b, c = (all_points[bag_tri[:, i]] for i in range(3))
  normal = np.cross(b - a, c - a)
  centroid = (a + b + c) / 3
  inward = np.stack([-centroid[:, 0], _MOUTH_Y - centroid[:, 1], 0 * centroid[:, 0]], -1)
  inward[bag_tri[:, 2] == centre_id] = [0.0, 0.0, 1.0]
  if np.mean(np.sum(normal * inward, axis=1) < 0) > 0.5:  # one winding for the whole bag (majority)
    bag_tri = bag_tri[:, ::-1]
  tri.append(bag_tri)

  n_bag = len(all_points) - n_head
  bag_source = np.full(len(all_points), -1)
  bag_source[n_head:centre_id] = np.tile(loop, len(depths))
  loop_position = {v: j for j, v in enumerate(loop)}
  mirror_loop = np.array([loop_position[mirror[v]] for v in loop])
  bag_mirror = np.concatenate([rings[k + 1][mirror_loop] for k in range(len(depths))] + [[centre_id]])
  points = all_points
  n = len(points)
  src = np.concatenate([bag_source[n_head:centre_id], [loop[0]]])
  theta = np.concatenate([theta, theta[src]])
  x = np.concatenate([x, x[src]])
  y = np.concatenate([y, y[src]])
  radial = np.concatenate([radial, radial[src]])
  mirror_all = np.concatenate([mirror, bag_mirror])
  lower = np.zeros(n, bool)
  lower[n_grid: n_grid + slit.size] = True
  interior = np.zeros(n, bool)
  interior[n_head:] = True
  face_mask = np.concatenate([mask, mask[copies], [False, False], np.zeros(n_bag, bool)])
  return _Template(points=points, theta=theta, x=x, y=y, radial=radial, lower_lip=lower,
                   interior=interior, face_mask=face_mask,
                   triangles=np.concatenate(tri).astype(np.int32), mirror=mirror_all,
                   grid_shape=(nr, nc), mouth_row=mouth_row, slit_columns=slit,
                   bag_source=bag_source, bag_loop=loop)


# ---------------------------------------------------------------------------------------------------
# Bases: displacement fields in mm per unit parameter.


def _jaw_weight(t: _Template) -> np.ndarray:
  """How much of the jaw's motion each vertex follows: 1 below the lips, 0 above, split exactly at the
  slit (upper copies 0, lower copies 1) and blending over a band that widens past the mouth corners."""
  band = 1e-3 + np.minimum(1.6 * np.maximum(0.0, np.abs(t.x) - _MOUTH_HALF_WIDTH), 25.0)
  w = _smoothstep(0.5 + 0.5 * np.clip((_MOUTH_Y - t.y) / band, -1, 1))
  on_slit = np.zeros_like(w, bool)
  on_slit[t.mouth_row * t.grid_shape[1] + t.slit_columns] = True
  w = np.where(on_slit, 0.0, w)
  w = np.where(t.lower_lip, 1.0, w)
  # The under-chin and the whole neck ring follow the jaw, fading down the neck; behind the ears the
  # weight fades with height, over the nape. Every fade runs along a surface, never across one (which
  # would fold it).
  behind = _ramp(np.abs(t.theta), np.pi / 2, np.deg2rad(140.0))
  w = w * ((1 - behind) + behind * _ramp(t.y, -88.0, -118.0))
  return w * _ramp(t.y, -165.0, -126.0)


def _attach_bag(t: _Template, field: np.ndarray) -> np.ndarray:
  """The mouth bag moves rigidly with the lips' loop: each bag vertex copies its loop vertex, the back
  centre (the model's last vertex) the loop's mean."""
  field = field.copy()
  bag = t.bag_source >= 0
  field[bag] = field[t.bag_source[bag]]
  field[-1] = field[t.bag_loop].mean(axis=0)
  return field


def _along(direction, weight) -> np.ndarray:
  return np.asarray(weight, np.float64)[:, None] * np.asarray(direction, np.float64)


def _radial(t: _Template, weight) -> np.ndarray:
  return np.asarray(weight, np.float64)[:, None] * t.radial


def _one_side(x, width):
  """(N, 1) 0 on the subject's right (x < 0), 1 on the left: one-sided versions of symmetric motions."""
  return (0.5 + 0.5 * np.tanh(x / width))[:, None]


def _lid_profile(y):
  """1 at the upper lid line, falling to 0 at the lower lid and toward the brow: closing moves the
  upper lid down over the eye and stretches the lid above it."""
  upper, lower, brow = _EYE_Y + 4.0, _EYE_Y - 4.0, _EYE_Y + 14.0
  return np.clip(np.minimum((y - lower) / (upper - lower), (brow - y) / (brow - upper)), 0.0, 1.0)


def _random_fields(t: _Template, count: int, amplitude: float, rng) -> list[np.ndarray]:
  """Smooth random displacements over the face (sums of broad bumps), each scaled to `amplitude` mm RMS
  over the face region. Continuous everywhere, so they never open or close the mouth."""
  envelope = _front_window(t.theta) * _ramp(t.y, -135.0, -110.0)
  fields = []
  for _ in range(count):
    d = np.zeros((t.x.size, 3))
    for _ in range(4):
      cx, cy = rng.uniform(-55, 55), rng.uniform(-110, 60)
      sx, sy = rng.uniform(12, 35), rng.uniform(12, 35)
      bump = _gauss(t.x, t.y, cx, cy, sx, sy) * envelope
      d += _radial(t, rng.normal() * bump) + _along(rng.normal(size=3) * [0.35, 0.35, 0.0], bump)
    rms = np.sqrt(np.mean(np.sum(d[t.face_mask] ** 2, axis=1)))
    fields.append(d * amplitude / rms)
  return fields


def _identity_fields(t: _Template) -> list[np.ndarray]:
  x, y, ax = t.x, t.y, np.abs(t.x)
  sx = np.sign(t.x)
  p = t.points
  ones = np.ones_like(x)
  front = _front_window(t.theta)
  upper_lip, lower_lip = _lips(x, y)
  jaw_region = _ramp(y, -20.0, -95.0)
  fields = [
      _along([1, 0, 0], 0.045 * p[:, 0]),  # head width
      _along([0, 1, 0], 0.045 * p[:, 1]),  # face height
      _along([0, 0, 1], 0.035 * p[:, 2]),  # head depth
      _along([1, 0, 0], 0.07 * p[:, 0] * jaw_region),  # jaw width
      _along([0, 1, 0], 3.5 * _ramp(y, 15.0, 85.0) * ones),  # forehead height
      _along([0, 1, 0], -3.5 * _ramp(y, -74.0, -112.0)),  # chin length
      _radial(t, 3.0 * _gauss(x, y, 0, -101.0, 16.0, 11.0)),  # chin protrusion
      _radial(t, 0.15 * _nose(x, y) * front),  # nose protrusion
      _along([1, 0, 0], 0.14 * x * _gauss(x, y, 0, -38.0, 16.0, 14.0)),  # nose width
      _along([0, 1, 0], -2.5 * _gauss(x, y, 0, -40.0, 16.0, 12.0)),  # nose length (tip height)
      _radial(t, 2.2 * _gauss(x, y, 0, -4.0, 7.0, 11.0)),  # nasal bridge
      _radial(t, 1.8 * _gauss(x, y, 0, -37.0, 7.0, 5.5) + 1.5 * _alae(x, y)),  # nose tip and wings
      _radial(t, -2.2 * _eye_sockets(x, y)),  # eye depth
      _along([1, 0, 0], 2.0 * sx * _gauss(ax, y, _EYE_X, _EYE_Y, 15.0, 12.0)),  # eye spacing
      _along([0, 1, 0], 1.8 * _gauss(ax, y, _EYE_X, _EYE_Y, 22.0, 14.0)),  # eye height
      _radial(t, 1.5 * _brow_ridge(x, y)),  # brow ridge
      _radial(t, 2.5 * _gauss(ax, y, 52.0, -12.0, 13.0, 11.0) * front),  # cheekbones
      _radial(t, 2.8 * _gauss(ax, y, 42.0, -50.0, 17.0, 17.0) * front),  # cheek fullness
      _along([1, 0, 0], 0.07 * x * _gauss(x, y, 0, _MOUTH_Y, 30.0, 12.0)),  # mouth width
      _along([0, 1, 0], 2.2 * _gauss(x, y, 0, _MOUTH_Y, 32.0, 16.0)),  # mouth height
      _radial(t, 1.2 * upper_lip),  # upper lip fullness
      _radial(t, 1.4 * lower_lip),  # lower lip fullness
      _radial(t, 2.5 * _gauss(x, y, 0, -65.0, 26.0, 19.0)),  # mouth protrusion
      _along([0, 0, 1], -4.0 * _ramp(y, 18.0, 86.0)),  # forehead slope
      _radial(t, -2.0 * _gauss(ax, y, 61.0, 20.0, 10.0, 14.0) * front),  # temples
      _along([0, 1, 0], 1.2 * np.clip(x / 60.0, -1, 1) * front),  # facial asymmetry
      _radial(t, 2.5 * _gauss(ax, y, 50.0, -82.0, 12.0, 12.0) * front),  # jaw angles
      _radial(t, 3.0 * _ears(t.theta, y, 70.0 * ones) / 11.0),  # ears (outside the face)
      _along([1, 0, 0], 0.06 * p[:, 0] * _ramp(y, -115.0, -140.0)),  # neck width
      _along([0, 1, 0], 0.08 * (y - _EYE_Y) * _gauss(ax, y, _EYE_X, _EYE_Y, 13.0, 8.0)),  # eye size
  ]
  rng = np.random.default_rng(_SEED)
  fields += _random_fields(t, NUM_SHAPE - len(fields), 1.2, rng)
  return fields


def _expression_fields(t: _Template) -> list[np.ndarray]:
  x, y, ax = t.x, t.y, np.abs(t.x)
  sx = np.sign(t.x)
  p = t.points
  jaw = _jaw_weight(t)
  upper_side = (1.0 - jaw) * (jaw < 0.5)
  corners = _gauss(ax, y, _MOUTH_HALF_WIDTH, _MOUTH_Y, 11.0, 10.0)  # broad: no folds when combined
  lips_region = _gauss(x, y, 0, _MOUTH_Y, 19.0, 10.0)
  eyes = _gauss(ax, 0 * y, _EYE_X, 0, 10.0, 1.0) * _lid_profile(y)
  # Brows: full motion at the brow, fading to nothing at the upper lid and over the forehead.
  brows = _gauss(ax, 0 * y, 30.0, 0.0, 28.0, 1.0) * np.clip(
      np.minimum((y - 5.0) / 13.0, (62.0 - y) / 44.0), 0.0, 1.0)
  # Jaw opening: the lower face turns about the jaw hinge (linearised); the lower lip also rolls
  # forward a little, so the lips part mostly downward.
  alpha = 0.08  # rad per unit: ~7 mm between the lips
  # The neck does not turn with the jaw: nothing behind the hinge rises, and below the jaw line the
  # backward swing fades along the under-chin (by depth z, along that surface) so the skin there
  # stretches instead of folding into the neck.
  below = _ramp(y, -92.0, -112.0)
  backward = 1.0 - below * (1.0 - _ramp(p[:, 2], 20.0, 85.0))
  hinge = np.stack([0 * y, -(np.maximum(p[:, 2], _TMJ_Z) - _TMJ_Z), (p[:, 1] - _TMJ_Y) * backward], -1)
  roll = _gauss(x, y, 0, _MOUTH_Y - 5.0, 20.0, 9.0)
  jaw_open = alpha * (jaw[:, None] * hinge + _along([0, 0, 45.0], jaw * roll))
  smile = (corners[:, None] * np.stack([2.5 * sx, 3.5 + 0 * y, -2.0 + 0 * y], -1)
           + _along([0, 2.5, 0], _gauss(ax, y, 38.0, -42.0, 14.0, 14.0))
           + _radial(t, 2.0 * _gauss(ax, y, 38.0, -42.0, 14.0, 14.0)))
  brows_up = _along([0, 3.0, 0], brows)
  eyes_close = _along([0, -1.6, 0], eyes) + _radial(t, 0.5 * eyes)
  fields = [
      jaw_open,
      smile,
      brows_up,
      eyes_close,
      _radial(t, 5.0 * _gauss(ax, y, 38.0, -62.0, 14.0, 14.0)),  # cheek puff
      _along([2.0, 0, 0], jaw),  # jaw shift
      _radial(t, 3.0 * lips_region) + _along([-2.0, 0, 0], sx * corners),  # lip pucker
      _along([0, -2.2, 0], _gauss(ax, y, 20.0, 16.0, 11.0, 8.0))
      + _along([-2.0, 0, 0], sx * _gauss(ax, y, 20.0, 16.0, 11.0, 8.0)),  # frown
      corners[:, None] * np.stack([3.0 * sx, -1.5 + 0 * y, -1.0 + 0 * y], -1),  # mouth stretch
      _along([0, 2.5, 1.0], _gauss(ax, y, 12.0, -50.0, 12.0, 10.0)),  # sneer
      0.6 * smile * _one_side(x, 8.0),  # one-sided smile (the subject's left)
      _radial(t, -2.0 * lips_region),  # lips pressed in
      _along([0, 2.5, 0], _gauss(x, y, 0, _MOUTH_Y + 5.0, 20.0, 8.0) * upper_side),  # upper lip raise
      _along([0, -3.0, 0], _gauss(x, y, 0, _MOUTH_Y - 6.0, 18.0, 8.0) * jaw),  # lower lip down
      _along([0, -2.5, 0], corners),  # mouth corners down
      0.6 * eyes_close * _one_side(x, 10.0),  # wink
      0.6 * brows_up * _one_side(x, 10.0),  # one brow up
      _along([1.5, 0, 0], _gauss(x, y, 0, _MOUTH_Y, 26.0, 14.0)),  # mouth sideways
      _along([0, 2.5, 2.0], _gauss(x, y, 0, -95.0, 18.0, 12.0)),  # chin raise
      _along([0, 0, 2.0], jaw),  # jaw forward
  ]
  rng = np.random.default_rng(_SEED + 1)
  fields += _random_fields(t, NUM_EXPRESSION - len(fields), 0.8, rng)
  return fields


def _mean_expression_weights() -> np.ndarray:
  w = np.zeros(NUM_EXPRESSION)
  w[1] = 0.25  # a hint of a smile, as the BFM's mean expression has
  w[2] = 0.1
  return w


# ---------------------------------------------------------------------------------------------------
# Landmarks.

# Frontal targets (x, y) in mm for the left half (image left, x < 0) and the midline; the right half is
# mirrored. iBUG 68, 0-based.
_LEFT_TARGETS = {
    17: (-55.0, 13.0), 18: (-46.5, 18.0), 19: (-37.0, 20.0), 20: (-27.5, 19.5), 21: (-18.0, 16.5),
    31: (-12.0, -45.5), 32: (-6.0, -48.0),
    36: (-45.0, _EYE_Y + 0.5), 37: (-37.0, _EYE_Y + 4.3), 38: (-25.5, _EYE_Y + 4.3),
    39: (-17.5, _EYE_Y), 40: (-25.5, _EYE_Y - 3.6), 41: (-37.0, _EYE_Y - 3.6),
    49: (-13.0, _MOUTH_Y + 4.5), 50: (-6.0, _MOUTH_Y + 7.0), 59: (-13.0, _MOUTH_Y - 5.5),
    58: (-6.5, _MOUTH_Y - 8.5),
}
_MIRRORED = {26: 17, 25: 18, 24: 19, 23: 20, 22: 21, 35: 31, 34: 32, 45: 36, 44: 37, 43: 38, 42: 39,
             47: 40, 46: 41, 53: 49, 52: 50, 55: 59, 56: 58}
_MIDLINE_Y = {27: 3.0, 28: -9.0, 29: -21.0, 33: -49.0, 51: _MOUTH_Y + 6.5, 57: _MOUTH_Y - 9.0}
_JAW_Y = [-3.0, -21.0, -39.0, -56.0, -72.0, -87.0, -99.0, -108.0]  # landmarks 0..7, left side


def _landmarks(t: _Template, points: np.ndarray) -> np.ndarray:
  """68 iBUG vertex indices on the mean face (0-based), mirror-symmetric."""
  nr, nc = t.grid_shape
  ids = np.arange(nr * nc).reshape(nr, nc)
  centre = nc // 2
  grid = np.zeros(t.x.size, bool)
  grid[: nr * nc] = True
  front = grid & t.face_mask & (np.abs(t.theta) < np.deg2rad(60))
  # Landmarks sit where the surface faces the camera in a frontal view (n_z >= 0.3): right on a
  # silhouette (the jaw line, the nose's underside) a landmark's depth would change by many voxels
  # within a pixel. So the nose base lies just on its front, the jaw line just inside the outline.
  facing = vertex_normals(points, t.triangles)[:, 2] >= 0.3
  out = np.full(68, -1, np.int64)

  def nearest(candidates, target):
    idx = np.nonzero(candidates)[0]
    d = np.sum((points[idx, :2] - np.asarray(target)) ** 2, axis=1)
    return idx[np.argmin(d)]

  for k, target in _LEFT_TARGETS.items():
    out[k] = nearest(front & (t.x < 0) & (facing if k in (31, 32) else True), target)
  for k, src in _MIRRORED.items():
    out[k] = t.mirror[out[src]]
  midline = np.zeros_like(grid)
  midline[ids[:, centre]] = True
  for k, yy in _MIDLINE_Y.items():
    out[k] = nearest(midline & (facing if k == 33 else True), (0.0, yy))
  # Nose tip: the most protruding midline vertex.
  col = ids[:, centre]
  tip_rows = np.nonzero((t.y[col] < -25) & (t.y[col] > -48))[0]
  out[30] = col[tip_rows[np.argmax(points[col[tip_rows], 2])]]
  # Mouth: corners on the mouth row; the inner lip on the slit's two sides.
  row = ids[t.mouth_row]
  slit = t.slit_columns
  left_corner = slit.min() - 1
  out[60] = row[left_corner]
  out[64] = t.mirror[out[60]]
  out[48] = row[left_corner - 1]
  out[54] = t.mirror[out[48]]
  n_grid = nr * nc
  lower_of = {c: n_grid + i for i, c in enumerate(slit)}
  inner = slit[np.argmin(np.abs(t.x[row[slit]] + 9.0))]  # ~9 mm left of the midline
  out[61], out[62], out[63] = row[inner], row[centre], t.mirror[row[inner]]
  out[65], out[66], out[67] = t.mirror[lower_of[inner]], lower_of[centre], lower_of[inner]
  # Jaw: the outline of the face region at each height (its outermost vertex still facing the camera),
  # left to right; the chin's lowest camera-facing point at the bottom. Only vertices with the face
  # region all around them (their 8 grid neighbours in the mask): on the region's own boundary a landmark
  # would sit on the edge of the target volume, whose column there may hold the face or nothing. (Under
  # the jaw the boundary vertex also counts as facing only through the neck's triangles.)
  region = np.pad(t.face_mask[:nr * nc].reshape(nr, nc), ((1, 1), (0, 0)))
  interior = np.ones((nr, nc), bool)
  for dr in (-1, 0, 1):
    for dc in (-1, 0, 1):
      interior &= np.roll(region, dc, axis=1)[1 + dr: 1 + dr + nr]
  jaw_ok = np.zeros_like(grid)
  jaw_ok[: nr * nc] = interior.reshape(-1)
  jaw_ok &= facing
  for k, yy in enumerate(_JAW_Y):
    r = int(np.argmin(np.abs(t.y[ids[:, 0]] - yy)))
    cand = ids[r][jaw_ok[ids[r]] & (t.x[ids[r]] < 0)]
    out[k] = cand[np.argmin(points[cand, 0])]
    out[16 - k] = t.mirror[out[k]]
  chin = col[jaw_ok[col] & (t.y[col] < -90)]
  out[8] = chin[np.argmin(points[chin, 1])]
  assert np.all(out >= 0)
  return out


# ---------------------------------------------------------------------------------------------------
# The model.


def _as_float32_values(a: np.ndarray) -> np.ndarray:
  """float64 holding float32-representable values: files written as single stay exact."""
  return np.asarray(a, np.float32).astype(np.float64)


@functools.lru_cache(maxsize=1)
def build_face_model() -> ProceduralFaceModel:
  """The procedural face model (built once per process, ~0.05 s; its arrays are read-only).

  Returns:
    A `ProceduralFaceModel` (a `MorphableModel`): 7,888 vertices, mean (3N,), shape_basis (3N, 40),
    expression_basis (3N, 29), triangles (T, 3), 68 landmark vertices, face_mask (N,), and
    mean_expression (3N,), all in micrometres.
  """
  t = _template()
  ident = np.stack([_attach_bag(t, f).reshape(-1) for f in _identity_fields(t)], axis=1)
  expr = np.stack([_attach_bag(t, f).reshape(-1) for f in _expression_fields(t)], axis=1)
  mean_expression = _as_float32_values(expr @ _mean_expression_weights() * UNITS_PER_MM)
  mean_shape = _as_float32_values(t.points.reshape(-1) * UNITS_PER_MM)
  # Both parts are float32 values and their float64 sum is exact, so the files' single-precision
  # mu_shape + mu_exp give back exactly this mean.
  mean = mean_shape + mean_expression
  model = ProceduralFaceModel(
      mean=mean,
      shape_basis=_as_float32_values(ident * UNITS_PER_MM),
      expression_basis=_as_float32_values(expr * UNITS_PER_MM),
      triangles=t.triangles,
      landmark_indices=_landmarks(t, mean.reshape(-1, 3) / UNITS_PER_MM),
      face_mask=t.face_mask.copy(),
      mean_expression=mean_expression,
  )
  for a in (model.mean, model.shape_basis, model.expression_basis, model.triangles,
            model.landmark_indices, model.face_mask, model.mean_expression):
    a.flags.writeable = False  # cached and shared: nobody may change it in place
  return model


def mirror_vertex_indices() -> np.ndarray:
  """(N,) for each vertex of `build_face_model()`, the index of its mirror image across x = 0."""
  return _template().mirror.copy()


def mouth_interior_mask() -> np.ndarray:
  """(N,) bool: the vertices of `build_face_model()`'s mouth bag (seen when the mouth opens)."""
  return _template().interior.copy()


# ---------------------------------------------------------------------------------------------------
# Files.


def _mean_expression_of(model: MorphableModel) -> np.ndarray:
  return np.asarray(getattr(model, "mean_expression", np.zeros_like(model.mean)), np.float64)


def save_3ddfa(model: MorphableModel, directory: str | os.PathLike) -> tuple[str, str]:
  """Writes 3DDFA's `Model_Shape.mat` and `Model_Exp.mat` into `directory`, atomically.

  Model_Shape.mat: mu_shape (3N, 1) = mean - mean expression, w (3N, Ks), tri (3, T) 1-based,
  keypoints (1, 68) 1-based vertex indices, face_mask (N, 1) uint8 (our extension; 3DDFA's own files
  are already cropped to the face). Model_Exp.mat: mu_exp (3N, 1), w_exp (3N, Ke). Returns both paths.
  """
  directory = os.fspath(directory)
  mu_exp = _mean_expression_of(model)
  shape = {
      "mu_shape": (model.mean - mu_exp).astype(np.float32)[:, None],
      "w": model.shape_basis.astype(np.float32),
      "tri": (np.asarray(model.triangles, np.float64) + 1).T,
      "keypoints": (np.asarray(model.landmark_indices, np.float64) + 1)[None, :],
      "face_mask": np.asarray(model.face_mask, np.uint8)[:, None],
  }
  exp = {"mu_exp": mu_exp.astype(np.float32)[:, None],
         "w_exp": model.expression_basis.astype(np.float32)}
  paths = (os.path.join(directory, "Model_Shape.mat"), os.path.join(directory, "Model_Exp.mat"))
  for path, data in zip(paths, (shape, exp)):
    with atomic_output(path) as tmp:
      scipy.io.savemat(tmp, data, do_compression=True)
  return paths


def save_bfm_face3d(model: MorphableModel, path: str | os.PathLike) -> str:
  """Writes face3d's `BFM.mat` (a `model` struct: shapeMU, shapePC, expMU, expPC, tri (3, T) 1-based,
  kpt_ind (1, 68) 1-based vertex indices, face_mask (N, 1) uint8), atomically. Returns the path."""
  path = os.fspath(path)
  mu_exp = _mean_expression_of(model)
  struct = {
      "shapeMU": (model.mean - mu_exp).astype(np.float32)[:, None],
      "shapePC": model.shape_basis.astype(np.float32),
      "expMU": mu_exp.astype(np.float32)[:, None],
      "expPC": model.expression_basis.astype(np.float32),
      "tri": (np.asarray(model.triangles, np.float64) + 1).T,
      "kpt_ind": (np.asarray(model.landmark_indices, np.float64) + 1)[None, :],
      "face_mask": np.asarray(model.face_mask, np.uint8)[:, None],
  }
  with atomic_output(path) as tmp:
    scipy.io.savemat(tmp, {"model": struct}, do_compression=True)
  return path
