"""What a synthetic photo shows besides the face: neck, shoulders and clothes; hair and beards; glasses;
a hand or an object in front of the face.

The network must learn that the target volume is the face region alone (`model.face_mask`) whatever
surrounds it in a real photo, so these parts are drawn in the photo and never enter the target.

Every part is built in a *head frame*: millimetres, origin on the head's vertical axis at eye height,
axes the model's (x to the viewer's right in a frontal view, y up, z toward the camera), placed by the
landmarks (outer interocular distance for the scale). It is mapped to the model frame and posed with the
face's own `Pose.project`, so the parts sit exactly with the face in the photo. A radial map of the head
(its distance from the origin per direction, from the model's vertices; where the model has none, as a
face-only BFM behind the face, from the procedural head aligned by the landmarks) keeps hair, temples and
scarves outside the skull.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage
from scipy.interpolate import PchipInterpolator
from scipy.spatial.transform import Rotation
from skimage.measure import points_in_poly

from vrn_jax.faces.face_model import UNITS_PER_MM, build_face_model
from vrn_jax.faces.render import Scalp, SceneMesh
from vrn_jax.faces.scene import SceneOptions
from vrn_jax.geometry.mesh import vertex_normals
from vrn_jax.geometry.morphable_model import MorphableModel
from vrn_jax.geometry.pose import Pose, rotation_3ddfa
from vrn_jax.geometry.raster import depth_buffer

# How often each part appears when its flag is on.
BODY_RATE = 1.0  # everyone has a neck and shoulders
HAIR_RATE = 0.88  # the others are bald
BEARD_RATE = 0.15
GLASSES_RATE = 0.18
SUNGLASSES_SHARE = 0.3  # of the glasses: dark opaque lenses
OCCLUDER_RATE = 0.15

_PARTS = ("body", "hair", "glasses", "occluders")
_MAP_ROWS, _MAP_COLS = 36, 72  # the head's radial map: 5-degree bins of elevation and azimuth


# ---------------------------------------------------------------------------------------------------
# Small mesh helpers (head frame, right-handed: a closed mesh's outward winding has positive volume).


def _smoothstep(t):
  t = np.clip(t, 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def signed_volume(vertices: np.ndarray, triangles: np.ndarray) -> float:
  """Volume enclosed by a closed triangle mesh: positive when its triangles are wound counter-clockwise
  seen from outside in a right-handed frame (the model's; a y-down image frame reverses the sign)."""
  v = np.asarray(vertices, np.float64)[np.asarray(triangles)]
  return float(np.sum(v[:, 0] * np.cross(v[:, 1], v[:, 2])) / 6.0)


def _grid_triangles(rows: int, cols: int, wrap_rows: bool = False) -> np.ndarray:
  """Two triangles per quad of a (rows, cols) vertex grid, vertex r * cols + c; columns wrap around."""
  r, c = np.meshgrid(np.arange(rows if wrap_rows else rows - 1), np.arange(cols), indexing="ij")
  r1, c1 = (r + 1) % rows, (c + 1) % cols
  a, b, d, e = r * cols + c, r * cols + c1, r1 * cols + c, r1 * cols + c1
  return np.concatenate([np.stack([a, b, e], -1).reshape(-1, 3), np.stack([a, e, d], -1).reshape(-1, 3)])


def _closed_grid(grid: np.ndarray, wrap_rows: bool = False, first_cap=None, last_cap=None,
                 reverse: bool = False):
  """A closed mesh from a (R, C, 3) grid of rings (columns wrap): either rows wrap too (a torus), or the
  first and last rings are closed by fans to the points `first_cap` and `last_cap` (default: the
  ring's centroid). Returns (vertices (R * C [+ 2], 3), triangles).

  The triangles wind outward when the rows advance along an axis about which the columns turn
  counter-clockwise (seen from its tip), as (sin t, y, cos t) for rising y and t; `reverse` for the
  other handedness."""
  rows, cols = grid.shape[:2]
  vertices = grid.reshape(-1, 3)
  tri = _grid_triangles(rows, cols, wrap_rows)
  if not wrap_rows:
    first = grid[0].mean(axis=0) if first_cap is None else np.asarray(first_cap, np.float64)
    last = grid[-1].mean(axis=0) if last_cap is None else np.asarray(last_cap, np.float64)
    n = rows * cols
    c = np.arange(cols)
    tri = np.concatenate([tri, np.stack([c, np.full(cols, n), (c + 1) % cols], -1),
                          np.stack([(rows - 1) * cols + c, (rows - 1) * cols + (c + 1) % cols,
                                    np.full(cols, n + 1)], -1)])
    vertices = np.concatenate([vertices, first[None], last[None]])
  return vertices, (tri[:, ::-1] if reverse else tri)


def _signed_power(v, e):
  return np.sign(v) * np.abs(v) ** e


def _superquadric(half_axes, e_vertical: float = 1.0, e_around: float = 1.0, rows: int = 10,
                  cols: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """A closed superquadric centred at 0, half axes (x, y, z); e -> 0 is boxy, 1 an ellipsoid, y its
  pole axis. Returns (vertices, outward triangles); ring r sits at elevation index r (rows rings)."""
  phi = np.linspace(-np.pi / 2, np.pi / 2, rows + 2)[1:-1, None]
  theta = np.linspace(-np.pi, np.pi, cols, endpoint=False)[None, :]
  a = np.asarray(half_axes, np.float64)
  cp = _signed_power(np.cos(phi), e_vertical)
  grid = np.stack(np.broadcast_arrays(a[0] * cp * _signed_power(np.sin(theta), e_around),
                                      a[1] * _signed_power(np.sin(phi), e_vertical),
                                      a[2] * cp * _signed_power(np.cos(theta), e_around)), -1)
  return _closed_grid(grid, first_cap=[0.0, -a[1], 0.0], last_cap=[0.0, a[1], 0.0])


def _tube(path: np.ndarray, radius, sides: int = 8, loop: bool = False,
          up=(0.0, 1.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
  """A closed tube along a (K, 3) polyline (a ring when `loop`), radius scalar or (K,); its cross
  sections are perpendicular to the path, oriented by `up` (which must not run along the path)."""
  p = np.asarray(path, np.float64)
  tangent = (np.roll(p, -1, 0) - np.roll(p, 1, 0)) if loop else np.gradient(p, axis=0)
  tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-12)
  normal = np.cross(tangent, np.asarray(up, np.float64))
  normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
  binormal = np.cross(normal, tangent)
  a = np.linspace(0.0, 2 * np.pi, sides, endpoint=False)
  r = np.broadcast_to(np.asarray(radius, np.float64), (len(p),))[:, None, None]
  grid = p[:, None] + r * (np.cos(a)[None, :, None] * normal[:, None] + np.sin(a)[None, :, None]
                           * binormal[:, None])
  # (normal, binormal, tangent) is left-handed: the rings turn clockwise about the path.
  return _closed_grid(grid, wrap_rows=loop, first_cap=p[0], last_cap=p[-1], reverse=True)


def _polygon_distance(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
  """(K,) distance from 2-D points to a closed polygon's outline; 0 inside it."""
  a, b = polygon, np.roll(polygon, -1, axis=0)
  ab = b - a
  t = np.clip(np.einsum("kpi,pi->kp", points[:, None] - a[None], ab) / np.sum(ab * ab, axis=1), 0, 1)
  nearest = a[None] + t[..., None] * ab[None]
  distance = np.linalg.norm(points[:, None] - nearest, axis=2).min(axis=1)
  return np.where(points_in_poly(points, polygon), 0.0, distance)


def _compact(num_vertices: int, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(the vertex ids the triangles use, the triangles renumbered to index only those)."""
  used = np.zeros(num_vertices, bool)
  used[triangles.reshape(-1)] = True
  remap = np.cumsum(used) - 1
  return np.nonzero(used)[0], remap[triangles]


@dataclasses.dataclass
class _Parts:
  """Pieces of one prop in the head frame, joined into one mesh."""

  vertices: list = dataclasses.field(default_factory=list)
  triangles: list = dataclasses.field(default_factory=list)
  albedo: list = dataclasses.field(default_factory=list)

  def add(self, vertices, triangles, albedo) -> None:
    vertices = np.asarray(vertices, np.float64)
    offset = sum(len(v) for v in self.vertices)
    self.vertices.append(vertices)
    self.triangles.append(np.asarray(triangles, np.int64) + offset)
    self.albedo.append(np.broadcast_to(np.asarray(albedo, np.float64), vertices.shape))

  def joined(self):
    if not self.vertices:
      return np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3))
    return (np.concatenate(self.vertices), np.concatenate(self.triangles),
            np.clip(np.concatenate(self.albedo), 0.0, 1.0))


# ---------------------------------------------------------------------------------------------------
# The head frame and the head's shape.


@functools.lru_cache(maxsize=1)
def _reference() -> tuple[float, float]:
  """The procedural head's outer interocular distance and the depth of its eye corners in front of its
  vertical axis, mm: they place the head frame of any model from its landmarks."""
  model = build_face_model()
  lm = model.vertices()[model.landmark_indices] / UNITS_PER_MM
  return float(np.linalg.norm(lm[45] - lm[36])), float(lm[[36, 39, 42, 45], 2].mean())


def _frame_from_landmarks(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
  """(origin (3,) in model units, model units per mm) of the head frame."""
  iod_mm, eye_depth_mm = _reference()
  units = float(np.linalg.norm(landmarks[45] - landmarks[36])) / iod_mm
  eyes = landmarks[[36, 39, 42, 45]].mean(axis=0)
  return eyes - np.array([0.0, 0.0, eye_depth_mm * units]), units


def _radial_bins(points: np.ndarray) -> np.ndarray:
  """(_MAP_ROWS, _MAP_COLS) the largest distance from the origin of the points in each direction bin
  (rows: elevation -90..90 deg, columns: azimuth -180..180 deg from +z toward +x); NaN where none."""
  r = np.linalg.norm(points, axis=1)
  phi = np.arcsin(np.clip(points[:, 1] / np.maximum(r, 1e-9), -1.0, 1.0))
  theta = np.arctan2(points[:, 0], points[:, 2])
  i = np.clip(((phi / np.pi + 0.5) * _MAP_ROWS).astype(np.int64), 0, _MAP_ROWS - 1)
  j = np.clip(((theta / (2 * np.pi) + 0.5) * _MAP_COLS).astype(np.int64), 0, _MAP_COLS - 1)
  out = np.full(_MAP_ROWS * _MAP_COLS, -np.inf)
  np.maximum.at(out, i * _MAP_COLS + j, r)
  out[~np.isfinite(out)] = np.nan
  return out.reshape(_MAP_ROWS, _MAP_COLS)


def _fill_gaps(radial: np.ndarray) -> np.ndarray:
  """NaN bins filled from their neighbours (normalised Gaussian averaging, azimuth wraps)."""
  out = radial.copy()
  while np.isnan(out).any():
    known = ~np.isnan(out)
    num = ndimage.gaussian_filter(np.where(known, out, 0.0), 1.5, mode=("nearest", "wrap"))
    den = ndimage.gaussian_filter(known.astype(np.float64), 1.5, mode=("nearest", "wrap"))
    fill = ~known & (den > 1e-3)
    out[fill] = num[fill] / den[fill]
  return out


def _sample_points(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
  """Vertices and triangle centroids: denser than the vertices alone, for the radial bins."""
  a, b, c = (vertices[triangles[:, i]] for i in range(3))
  return np.concatenate([vertices, (a + b + c) / 3.0])


@functools.lru_cache(maxsize=1)
def _template_radial() -> np.ndarray:
  """The procedural mean head's radial map, mm, no gaps: the prior where a model has no vertices."""
  model = build_face_model()
  v = model.vertices()
  frame = _frame_from_landmarks(v[model.landmark_indices])
  points = (v - frame[0]) / frame[1]
  return _fill_gaps(_radial_bins(_sample_points(points, model.triangles)))


@dataclasses.dataclass(frozen=True)
class HeadGeometry:  # pylint: disable=too-many-instance-attributes
  """One posed face's head, what the props are fitted to.

  Attributes:
    origin: (3,) the head frame's origin in model units; units_per_mm: model units per millimetre.
    points: (N, 3) the model's vertices in the head frame (mm).
    face: (N,) bool, the face region.
    landmarks: (68, 3) in the head frame.
    triangles: (T, 3) the model's triangles.
    closed_head: whether the model has a head behind its face (the procedural one) or only a face.
    pose, image_size: the face's pose and photo size.
  """

  origin: np.ndarray
  units_per_mm: float
  points: np.ndarray
  face: np.ndarray
  landmarks: np.ndarray
  triangles: np.ndarray
  closed_head: bool
  pose: Pose
  image_size: int

  def to_image(self, points_mm: np.ndarray) -> np.ndarray:
    """(K, 3) head-frame mm -> (K, 3) image pixels, as the face's vertices are projected."""
    model_points = self.origin + self.units_per_mm * np.asarray(points_mm, np.float64).reshape(-1, 3)
    return self.pose.project(model_points, self.image_size)

  @functools.cached_property
  def radial(self) -> np.ndarray:
    """(_MAP_ROWS, _MAP_COLS) the head's distance from the origin per direction bin, mm (computed on
    first use: the body does not need it)."""
    data = _radial_bins(_sample_points(self.points, self.triangles))
    known = ~np.isnan(data)
    # Bins the mesh just misses (sparse rows at the crown) from their neighbours; the rest (behind a
    # face-only model's face) from the procedural head, scaled to this one.
    num = ndimage.gaussian_filter(np.where(known, data, 0.0), 1.0, mode=("nearest", "wrap"))
    den = ndimage.gaussian_filter(known.astype(np.float64), 1.0, mode=("nearest", "wrap"))
    near = ~known & (den > 0.25)
    data[near] = num[near] / den[near]
    prior = _template_radial()
    radial = np.where(np.isnan(data), prior * np.median(data[known] / prior[known]), data)
    if not self.closed_head:
      # Face data meets the aligned template at the face's edge: smooth the seam, never inward.
      radial = np.maximum(radial, ndimage.gaussian_filter(radial, 1.0, mode=("nearest", "wrap")))
    return radial

  @functools.cached_property
  def _radial_wrapped(self) -> np.ndarray:
    return np.pad(self.radial, ((0, 0), (1, 1)), mode="wrap")

  def head_radius(self, theta, phi) -> np.ndarray:
    """The head's distance from the origin toward azimuth theta, elevation phi (radians), mm; bilinear
    between the bins' centres."""
    rows = (np.asarray(phi) / np.pi + 0.5) * _MAP_ROWS - 0.5
    cols = np.mod((np.asarray(theta) / (2 * np.pi) + 0.5) * _MAP_COLS, _MAP_COLS) + 0.5
    rows, cols = np.broadcast_arrays(rows, cols)
    return ndimage.map_coordinates(self._radial_wrapped, [rows.ravel(), cols.ravel()], order=1,
                                   mode="nearest").reshape(rows.shape)


def head_geometry(model: MorphableModel, vertices_img: np.ndarray, pose: Pose,
                  image_size: int) -> HeadGeometry:
  """The head frame and shape of one posed face (its vertices as `pose.project` gave them)."""
  vertices = pose.unproject(np.asarray(vertices_img, np.float64), image_size)
  origin, units = _frame_from_landmarks(vertices[model.landmark_indices])
  points = (vertices - origin) / units
  face = np.asarray(model.face_mask, bool)
  # A model with vertices behind its face region has a head of its own (the procedural one).
  closed_head = bool(np.count_nonzero(~face) > 0.2 * face.size)
  return HeadGeometry(origin=origin, units_per_mm=units, points=points, face=face,
                      landmarks=points[model.landmark_indices],
                      triangles=np.asarray(model.triangles, np.int64), closed_head=closed_head,
                      pose=pose, image_size=image_size)


def _scene_mesh(geo: HeadGeometry, parts: _Parts, name: str, **kwargs) -> list[SceneMesh]:
  vertices, triangles, albedo = parts.joined()
  if not len(triangles):
    return []
  return [SceneMesh(vertices=geo.to_image(vertices), triangles=triangles.astype(np.int32),
                    albedo=albedo, name=name, **kwargs)]


# ---------------------------------------------------------------------------------------------------
# Body: neck, shoulders, upper torso, clothes.

# Torso sections below the neck base (mm down): half-width, front and back depth, superellipse
# exponent; the trapezius slope to the shoulders, the deltoids, the chest.
_TORSO_DOWN = [0.0, 8.0, 18.0, 32.0, 48.0, 65.0, 90.0, 140.0, 250.0, 420.0]
_TORSO_HALF_WIDTH = [1.0, 1.7, 2.9, 3.6, 3.95, 4.1, 4.05, 3.9, 3.7, 3.55]  # x the neck's half-width
_TORSO_FRONT = [1.0, 1.25, 1.55, 1.8, 2.0, 2.15, 2.3, 2.4, 2.3, 2.2]  # x the neck's front depth
_TORSO_BACK = [1.0, 1.15, 1.35, 1.5, 1.6, 1.65, 1.65, 1.6, 1.55, 1.5]  # x the neck's back depth
_TORSO_EXPONENT = [2.2, 2.4, 2.8, 3.2, 3.4, 3.4, 3.2, 3.0, 2.8, 2.6]


@dataclasses.dataclass(frozen=True)
class _Neck:
  """The neck's section, head frame mm: centre (x, z), half-width, front and back depth, and the height
  of the neck stub's end (None for a face-only model)."""

  cx: float
  cz: float
  half_width: float
  front: float
  back: float
  stub_end: float | None


@functools.lru_cache(maxsize=1)
def _torso_profiles():
  return tuple(PchipInterpolator(_TORSO_DOWN, v)
               for v in (_TORSO_HALF_WIDTH, _TORSO_FRONT, _TORSO_BACK))


def _neck(geo: HeadGeometry) -> _Neck:
  """The model's neck stub below the chin, measured; the procedural head's proportions otherwise."""
  chin_y = geo.landmarks[8, 1]
  below = ~geo.face & (geo.points[:, 1] < chin_y - 12.0)
  if geo.closed_head and np.count_nonzero(below) >= 20:
    p = geo.points[below]
    band = p[p[:, 1] < p[:, 1].min() + 12.0]
    x0, x1 = band[:, 0].min(), band[:, 0].max()
    z0, z1 = band[:, 2].min(), band[:, 2].max()
    cz = 0.5 * (z0 + z1)
    return _Neck(0.5 * (x0 + x1), cz, 0.5 * (x1 - x0), z1 - cz, cz - z0, float(p[:, 1].min()))
  # The procedural stub: 48 mm half-width, 44 mm in front of its axis and 58 behind.
  return _Neck(0.0, -7.0, 48.0, 51.0, 51.0, None)


def _body_rotation(pose: Pose, rng: np.random.Generator) -> np.ndarray:
  """Rotation of the body relative to the head, in the head frame: the body turns less than the head
  (a fraction of its yaw), and mostly shares its pitch and roll (the camera's tilt)."""
  yaw = pose.yaw * rng.uniform(0.3, 0.7) + np.deg2rad(rng.normal(0.0, 6.0))
  pitch = pose.pitch * rng.uniform(0.7, 1.0) + np.deg2rad(rng.normal(0.0, 3.0))
  roll = pose.roll * rng.uniform(0.75, 1.0) + np.deg2rad(rng.normal(0.0, 3.0))
  # Relative pitch and roll stay small: the chin never meets the chest, the jaw never a shoulder.
  pitch = pose.pitch + np.clip(pitch - pose.pitch, -np.deg2rad(12.0), np.deg2rad(12.0))
  roll = pose.roll + np.clip(roll - pose.roll, -np.deg2rad(10.0), np.deg2rad(10.0))
  return pose.rotation.T @ rotation_3ddfa(pitch, yaw, roll)


def _hsv_colour(rng: np.random.Generator) -> np.ndarray:
  """A clothing colour: any hue, muted to saturated, dark to light."""
  h, s, v = rng.uniform(0, 1), rng.uniform(0.05, 0.85), rng.uniform(0.12, 0.9)
  k = (np.array([5.0, 3.0, 1.0]) + 6 * h) % 6
  return v * (1 - s * np.clip(np.minimum(k, 4 - k), 0, 1))


def _clothing_albedo(around_mm, down_mm, rng: np.random.Generator) -> np.ndarray:
  """(..., 3) a garment's colour at a point `around_mm` along the body's circumference and `down_mm`
  below the neck base: solid, horizontal or vertical stripes, or checks, with a weave's fine noise."""
  kind = rng.integers(4)
  base, other, third = _hsv_colour(rng), _hsv_colour(rng), _hsv_colour(rng)
  period = rng.uniform(22.0, 60.0, 2)
  duty = rng.uniform(0.3, 0.7)
  phase = rng.uniform(0, 1, 2)
  weave = rng.uniform(0.0, 0.06)
  noise = rng.normal(size=np.shape(around_mm))
  stripe_h = ((down_mm / period[0] + phase[0]) % 1.0) < duty
  stripe_v = ((around_mm / period[1] + phase[1]) % 1.0) < duty
  if kind == 0:
    colour = np.broadcast_to(base, np.shape(around_mm) + (3,))
  elif kind == 1:
    colour = np.where(stripe_h[..., None], other, base)
  elif kind == 2:
    colour = np.where(stripe_v[..., None], other, base)
  else:  # checks: two crossing stripe sets, a third colour where they cross
    colour = np.where((stripe_h & stripe_v)[..., None], third,
                      np.where((stripe_h | stripe_v)[..., None], other, base))
  return colour * (1.0 + weave * noise[..., None])


def _neckline_depth(x_mm, z_front, rng: np.random.Generator, half_width: float):
  """How far below the neck base (mm) the garment starts, per point (x across, z_front > 0 in
  front): crew, V, scoop, turtleneck (negative: up the neck) or open shirt; and whether a shirt collar
  is drawn."""
  kind = rng.integers(5)
  depth_front = rng.uniform(70.0, 140.0)
  width = rng.uniform(0.5, 1.1) * half_width
  front = z_front > 0
  rel = np.clip(np.abs(x_mm) / width, 0.0, 1.0)
  if kind == 0:  # crew neck
    depth = np.where(front, 12.0 + 10.0 * (1 - rel ** 2), 6.0)
  elif kind == 1:  # V neck
    depth = np.where(front, 10.0 + depth_front * (1 - rel), 6.0)
  elif kind == 2:  # scoop
    depth = np.where(front, 10.0 + 0.7 * depth_front * np.sqrt(np.clip(1 - rel ** 2, 0, 1)), 8.0)
  elif kind == 3:  # turtleneck: cloth up the neck
    depth = np.full(np.shape(x_mm), -rng.uniform(25.0, 45.0))
  else:  # open shirt: a narrow V under a collar
    depth = np.where(front, 5.0 + 0.8 * depth_front * (1 - rel), 2.0)
  return depth, kind == 4


def _body(geo: HeadGeometry, skin_rgb: np.ndarray, rng: np.random.Generator) -> list[SceneMesh]:
  """Neck, shoulders and upper torso in clothes, as one closed mesh, plus a shirt collar sometimes.

  The neck starts inside the head's neck stub (hidden, so it never shows through the face region) and
  bends from the head's frame into the body's along its length; the torso follows the body's rotation
  about a joint at the neck base. The torso reaches ~0.4 m below the shoulders: out of the photo."""
  neck = _neck(geo)
  relative = _body_rotation(geo.pose, rng)
  scale = rng.uniform(0.9, 1.12)
  broad = rng.uniform(0.9, 1.1)  # shoulders' breadth (the neck's base keeps the neck's size)
  neck_drop = rng.uniform(45.0, 70.0)  # chin to neck base
  slim = rng.uniform(0.8, 0.88)
  chin_y = float(geo.landmarks[8, 1])
  neck_top = chin_y + 12.0
  neck_base = chin_y - neck_drop
  if neck.stub_end is not None:
    neck_base = min(neck_base, neck.stub_end - 12.0)

  neck_rows = np.linspace(neck_top, neck_base, 12)
  # Rows ~6 mm apart where a photo shows the torso (stripes need them), sparse below.
  torso_down = np.concatenate([np.linspace(0, 240, 41)[1:], [300, 360, 420]])
  ys = np.concatenate([neck_rows, neck_base - torso_down * scale])
  down = np.maximum(neck_base - ys, 0.0) / scale
  k = np.clip(down, 0, _TORSO_DOWN[-1])
  interp = _torso_profiles()
  # The neck is slimmer than the head's where it is inside it (the stub is measured at its end; the
  # jaw's underside, face region, comes close to it higher up), and just covers the stub's end.
  if neck.stub_end is None:
    fit = np.full_like(ys, slim)
  else:
    fit = slim + (1.01 - slim) * _smoothstep((neck.stub_end + 12.0 - ys) / 16.0)
  breadth = 1.0 + (broad - 1.0) * _smoothstep(k / _TORSO_DOWN[2])
  half_width = neck.half_width * interp[0](k) * breadth * np.where(down > 0, scale, fit)
  front = neck.front * interp[1](k) * np.where(down > 0, scale, fit)
  back = neck.back * interp[2](k) * np.where(down > 0, scale, fit)
  exponent = np.interp(k, _TORSO_DOWN, _TORSO_EXPONENT)
  # Chest and back sit a little forward of the neck's axis as the torso deepens.
  cz = neck.cz + 0.25 * (front - back) * (down > 0)

  # Columns ~8 mm apart at the front and sides, ~25 mm at the back.
  u = np.linspace(-1.0, 1.0, 112, endpoint=False)
  theta = np.pi * (0.55 * u + 0.45 * u ** 3)
  s, c = np.sin(theta)[None], np.cos(theta)[None]
  depth = np.where(c >= 0, front[:, None], back[:, None])
  n = exponent[:, None]
  r = ((np.abs(s) / half_width[:, None]) ** n + (np.abs(c) / depth) ** n) ** (-1.0 / n)
  grid = np.stack(np.broadcast_arrays(neck.cx + r * s, ys[:, None], cz[:, None] + r * c), -1)

  # Bend: the neck's top follows the head, everything below the neck base the body.
  joint = np.array([neck.cx, neck_base + 15.0, neck.cz])
  bend_top = neck.stub_end + 8.0 if neck.stub_end is not None else chin_y - 10.0
  weight = _smoothstep((bend_top - ys) / max(bend_top - neck_base, 1.0))
  rotations = Rotation.from_rotvec(weight[:, None] * Rotation.from_matrix(relative).as_rotvec())
  grid = np.einsum("rij,rcj->rci", rotations.as_matrix(), grid - joint) + joint
  vertices, triangles = _closed_grid(grid, reverse=True)  # rows run down

  # Clothes below the neckline, skin above; coordinates before the bend, so the pattern moves with it.
  around_mm = theta[None] * r  # arc length from the front, roughly
  down_mm = np.broadcast_to((neck_base - ys)[:, None], grid.shape[:2])
  x_rel = np.broadcast_to(r * s, grid.shape[:2])
  line, collar = _neckline_depth(x_rel, np.broadcast_to(c, grid.shape[:2]), rng, neck.half_width)
  cloth = _clothing_albedo(around_mm, down_mm, rng)
  skin = np.asarray(skin_rgb, np.float64) * (1.0 + 0.03 * rng.normal(size=(1, 1, 3)))
  covered = _smoothstep((down_mm - line + 1.5) / 3.0)[..., None]
  albedo = (covered * cloth + (1 - covered) * skin).reshape(-1, 3)
  albedo = np.concatenate([albedo, [skin[0, 0], albedo[-1]]])

  parts = _Parts()
  parts.add(vertices, triangles, albedo)
  meshes = _scene_mesh(geo, parts, "body")
  if collar:
    meshes += _collar(geo, grid, ys, neck_base, theta, cloth, rng)
  return meshes


def _collar(geo, grid, ys, neck_base, theta, cloth, rng) -> list[SceneMesh]:
  """A shirt collar: a band standing up around the neck base from the back, open at the front."""
  row = int(np.argmin(np.abs(ys - neck_base)))
  open_half = np.deg2rad(rng.uniform(18.0, 35.0))
  keep = np.abs(theta) > open_half
  ring = grid[row][keep]
  centre = ring.mean(axis=0)
  height = rng.uniform(14.0, 24.0)
  out = 1.0 + rng.uniform(0.12, 0.3)  # folded over: its edge stands off the neck
  bottom = centre + (ring - centre) * 1.03
  top = centre + (ring - centre) * out + np.array([0.0, height, 0.0])
  cols = len(ring)
  vertices = np.concatenate([bottom, top])
  c = np.arange(cols - 1)
  triangles = np.concatenate([np.stack([c, c + 1, cols + c + 1], -1),
                              np.stack([c, cols + c + 1, cols + c], -1)])
  colour = cloth[row + 2][keep] if rng.uniform() < 0.6 else np.full((cols, 3), rng.uniform(0.8, 0.97))
  parts = _Parts()
  parts.add(vertices, triangles, np.concatenate([colour, colour]))
  return _scene_mesh(geo, parts, "body", two_sided=True)

# ---------------------------------------------------------------------------------------------------
# Hair: an offset shell of the scalp above a hairline, hanging straight down behind the ears when long.

_HAIR_ROWS, _HAIR_COLS = 44, 128  # elevation rows (-86..86 deg), azimuth columns (~5 mm apart)
# Styles: share, thickness range (mm), length below the eye line when it hangs (mm; 0: follows the
# head), hairline height over the ears (mm above the eye line).
_HAIR_STYLES = {
    "crop": (0.3, (4.0, 10.0), (0.0, 0.0), (26.0, 32.0)),
    "medium": (0.22, (10.0, 22.0), (90.0, 140.0), (0.0, 18.0)),
    "long": (0.22, (8.0, 20.0), (170.0, 270.0), (-10.0, 28.0)),
    "bushy": (0.1, (25.0, 40.0), (40.0, 110.0), (-10.0, 20.0)),
    "tied": (0.16, (3.0, 7.0), (0.0, 0.0), (26.0, 32.0)),
}


def _strand_noise(rng: np.random.Generator, shape, along: float, across: float) -> np.ndarray:
  """Unit-variance noise on a (rows, cols) grid smooth over `along` rows and `across` columns (columns
  wrap): streaks along the hair's flow when along > across."""
  n = ndimage.gaussian_filter(rng.normal(size=shape), (along, across), mode=("nearest", "wrap"))
  return n / (n.std() + 1e-12)


def _hairline(abs_theta_deg, brow_y: float, front_kind: int, rng: np.random.Generator, ear_y: float,
              back_y: float, nape_y: float) -> tuple[np.ndarray, np.ndarray]:
  """Heights (mm above the eye line) around the head, by |azimuth| (deg), of the hair's edge: forehead
  (straight, receding at the temples, or a fringe down to the brows), temples, a sideburn in front of
  the ear (outside the face region), over the ear, down to the nape (`back_y`: hanging hair goes on
  below it); and of its roots, where it grows from the scalp: the same but for a fringe's, on a straight
  hairline above it, and the nape's, at `nape_y`."""
  forehead = brow_y + rng.uniform(38.0, 55.0)
  recess = rng.uniform(15.0, 30.0) if front_kind == 1 else rng.uniform(-4.0, 6.0)
  fringe = brow_y + rng.uniform(2.0, 8.0)
  sideburn = rng.uniform(-14.0, 10.0)
  if front_kind == 1:
    forehead += rng.uniform(8.0, 25.0)

  def line(front, temple, back):
    knots = [0.0, 28.0, 42.0, 58.0, 72.0, 79.0, 82.0, 87.0, 92.0, 104.0, 116.0, 180.0]
    heights = [front, front + 0.4 * (temple - front), temple, 0.5 * (temple + 24.0), 24.0, 20.0,
               sideburn, sideburn, ear_y, ear_y, back, back]
    return np.interp(abs_theta_deg, knots, heights)

  straight_temple = min(forehead - 12.0, 42.0)
  temple = forehead + recess if front_kind == 1 else straight_temple
  roots = line(forehead, temple, nape_y)
  if front_kind == 2:
    return line(fringe, max(fringe + 4.0, 30.0), back_y), roots
  return line(forehead, temple, back_y), roots


@dataclasses.dataclass(frozen=True)
class _HairStyle:  # pylint: disable=too-many-instance-attributes
  """One head of hair as drawn (mm, radians; (C,) arrays per azimuth column, (R, C) per grid node).

  Attributes:
    style: a key of _HAIR_STYLES.
    hairline: (C,) its height above the eye line; ramp: over how many mm it thickens from there.
    roots: (C,) the height above which it grows from the scalp (above a fringe: the hairline).
    thickness: at the crown; front_share: the share of it over the forehead.
    length: (C,) how far below the eye line hanging hair ends (0: it follows the head).
    hang_from: the azimuth from which hair hangs (behind the ears).
    curl: amplitude of curls (bushy hair), mm.
    part: azimuth of the parting (None: combed back), part_width: its half-width, mm.
    lean: more volume on one side (-1..1: the side away from a side parting).
    streaks, bumps: (R, C) strand and curl noise; colour (3,), streak_amp: albedo and its streaks.
    tie, tie_noise: a bun or ponytail's draws (style 'tied').
  """

  style: str
  hairline: np.ndarray
  roots: np.ndarray
  ramp: float
  thickness: float
  front_share: float
  length: np.ndarray
  hang_from: float
  curl: float
  part: float | None
  part_width: float
  lean: float
  streaks: np.ndarray
  bumps: np.ndarray
  colour: np.ndarray
  streak_amp: float
  tie: np.ndarray
  tie_noise: np.ndarray


def _hair(geo: HeadGeometry, hair_rgb: np.ndarray, skin_rgb: np.ndarray,
          rng: np.random.Generator) -> tuple[list[SceneMesh], Scalp]:
  """Hair (most people) and a beard (some), from this part's generator, and what the face's texture
  shows of the scalp (`_scalp`); every draw is made whatever is drawn, so the style never shifts
  another part's randomness."""
  beard_rng = np.random.default_rng(rng.integers(0, 2**63))
  has_hair = rng.uniform() < HAIR_RATE
  has_beard = rng.uniform() < BEARD_RATE
  names = list(_HAIR_STYLES)
  style = names[rng.choice(len(names), p=[v[0] for v in _HAIR_STYLES.values()])]
  _, thick_range, length_range, ear_range = _HAIR_STYLES[style]
  front_kind = int(rng.choice(3, p=[0.6, 0.2, 0.2]))  # straight, receding, fringe
  thickness = rng.uniform(*thick_range)
  length = rng.uniform(*length_range)
  ear_y = rng.uniform(*ear_range)
  back_y = nape_y = rng.uniform(-78.0, -55.0)
  if length > 0:
    back_y = -length - 40.0  # hanging hair: all of the back, down to its ends
    nape_y = max(nape_y, 10.0 - length)  # the roots' line: under it, never below its ends
  brow_y = float(geo.landmarks[17:27, 1].max())
  abs_theta = np.abs(np.linspace(-180.0, 180.0, _HAIR_COLS, endpoint=False))
  hairline, roots = _hairline(abs_theta, brow_y, front_kind, rng, ear_y, back_y, nape_y)
  wobble = 2.0 * _strand_noise(rng, (1, _HAIR_COLS), 0.1, 2.0)[0]
  hairline, roots = hairline + wobble, roots + wobble
  ragged = _strand_noise(rng, (1, _HAIR_COLS), 0.1, 1.0)[0]  # uneven ends: fringe, hanging tips
  if front_kind == 2:
    hairline += 2.0 * ragged * (1.0 - _smoothstep((abs_theta - 40.0) / 20.0))
  front_share = rng.uniform(0.35, 0.8)  # thickness at the forehead, relative
  if front_kind == 2:
    front_share = min(front_share, 12.0 / thickness)  # a fringe is a thin layer
  curl = rng.uniform(3.0, 8.0)
  hang_from = np.deg2rad(rng.uniform(100.0, 112.0))
  part_kind = int(rng.choice(3, p=[0.4, 0.2, 0.4]))  # combed back, middle, side parting
  part_side = rng.choice([-1.0, 1.0])
  part = [None, 0.0, part_side * np.deg2rad(rng.uniform(15.0, 35.0))][part_kind]
  streaks = _strand_noise(rng, (_HAIR_ROWS, _HAIR_COLS), 2.5, 0.6)
  bumps = _strand_noise(rng, (_HAIR_ROWS, _HAIR_COLS), 1.2, 1.5)
  tint = 1.0 + 0.08 * rng.normal(size=3)
  hair = _HairStyle(
      style=style, hairline=hairline, roots=roots,
      ramp=3.0 if front_kind == 2 else 8.0,  # a fringe ends crisply
      thickness=thickness, front_share=front_share, length=length * (1.0 + 0.07 * ragged),
      hang_from=hang_from, curl=curl if style == "bushy" else 0.0, part=part,
      part_width=rng.uniform(1.5, 3.5), lean=-part_side * rng.uniform(0.1, 0.3) * (part_kind == 2),
      streaks=streaks, bumps=bumps, colour=np.clip(np.asarray(hair_rgb, np.float64) * tint, 0, 1),
      streak_amp=rng.uniform(0.12, 0.3), tie=rng.uniform(size=6), tie_noise=rng.normal(size=(26, 12)))
  meshes = _hair_shell(geo, hair) if has_hair else []
  if has_beard:
    meshes += _beard(geo, np.asarray(hair_rgb, np.float64), skin_rgb, beard_rng)
  scalp = _scalp(geo, hair, skin_rgb) if has_hair else Scalp(np.zeros(len(geo.points)), skin_rgb)
  return meshes, scalp


def _scalp(geo: HeadGeometry, hair: _HairStyle, skin_rgb: np.ndarray) -> Scalp:
  """The face texture's scalp under this hair: the model's vertices above the roots' line (per
  azimuth, interpolated between the hair's columns) take the colour of dark roots with some scalp seen
  through them, fading in over 6 mm centred on the line: a soft hairline of fine hairs just below the
  mesh's crisp edge, and no painted cap showing where the mesh does not reach (temples, ears)."""
  p = geo.points
  theta = np.degrees(np.arctan2(p[:, 0], p[:, 2]))
  column = (theta + 180.0) / 360.0 * _HAIR_COLS
  roots = np.interp(column, np.arange(_HAIR_COLS + 1), np.append(hair.roots, hair.roots[0]))
  weight = _smoothstep((p[:, 1] - roots + 3.0) / 6.0)
  colour = 0.75 * 0.75 * hair.colour + 0.25 * 0.6 * np.asarray(skin_rgb, np.float64)
  return Scalp(weight, colour)


_HAIR_FINE_PHI = np.deg2rad(np.linspace(-86.0, 86.0, 173))  # 1-degree rows to place the mesh rows
_HAIR_BELOW = 10  # mesh rows below a column's hairline band (inside the head)


def _hair_surface(geo: HeadGeometry, theta: np.ndarray, length: np.ndarray, hang_from: float):
  """Where the hair's base surface is, on the fine elevation rows x `theta` columns: (horizontal
  distance from the head's axis, height, hanging weight), each (173, C). The head (radial map, 1.5 mm
  out) or, for hanging columns below the eye line, a straight fall from the widest section above
  (running max) to `length` below the eye line, flaring a little."""
  phi = _HAIR_FINE_PHI[:, None]
  r = geo.head_radius(theta[None, :], phi) + 1.5
  horizontal, y = r * np.cos(phi), r * np.sin(phi)
  lower = phi < 0
  hang = (_smoothstep((np.abs(theta)[None, :] - hang_from) / np.deg2rad(10.0)) * (length > 0)[None, :]
          * lower)
  equator = int(np.searchsorted(phi[:, 0], 0.0))
  widest = np.concatenate([np.maximum.accumulate(horizontal[:equator][::-1], axis=0)[::-1],
                           horizontal[equator:]])
  flare = 1.0 + 0.12 * np.clip(-np.sin(phi), 0.0, 1.0)
  horizontal = horizontal + hang * (widest * flare - horizontal)
  y = y + hang * (length * np.sin(phi) - y)
  return horizontal, y, hang


def _rows_at(field: np.ndarray, phi: np.ndarray) -> np.ndarray:
  """A (173, C) field on the fine rows, linearly interpolated at per-column elevations phi (R, C)."""
  step = _HAIR_FINE_PHI[1] - _HAIR_FINE_PHI[0]
  pos = np.clip((phi - _HAIR_FINE_PHI[0]) / step, 0.0, len(_HAIR_FINE_PHI) - 1.0)
  i = np.minimum(pos.astype(np.int64), len(_HAIR_FINE_PHI) - 2)
  w = pos - i
  cols = np.arange(field.shape[1])[None, :]
  return field[i, cols] * (1 - w) + field[i + 1, cols] * w


def _hair_shell(geo: HeadGeometry, hair: _HairStyle) -> list[SceneMesh]:
  """One hair mesh on a sphere-like grid about the head frame's origin. Above the hairline it
  is the head (radial map) pushed out by the thickness; below, it dives most of the way to the origin,
  inside the head, so the visible hairline is where it crosses the skin. A hanging style's back
  columns fall straight down from the head's widest section to its length below the eye line. Each
  column's rows are spaced to put a few of them right at its hairline: a crisp edge, not the grid's
  stairs. A parting thins it along a line from the forehead back over the crown."""
  hairline, ramp = hair.hairline, hair.ramp
  theta = np.linspace(-np.pi, np.pi, _HAIR_COLS, endpoint=False)
  horizontal_f, y_f, hang_f = _hair_surface(geo, theta, hair.length, hair.hang_from)
  y_f = np.maximum.accumulate(y_f, axis=0)  # rising with elevation, for the look-up below
  offsets = np.array([-5.0, -2.0, 0.0, 0.3 * ramp, 0.65 * ramp, ramp])
  band = np.stack([np.interp(hairline[c] + offsets, y_f[:, c], _HAIR_FINE_PHI)
                   for c in range(_HAIR_COLS)], axis=1)  # (6, C)
  lo, hi = _HAIR_FINE_PHI[0], _HAIR_FINE_PHI[-1]
  below_rows = np.linspace(0, 1, _HAIR_BELOW, endpoint=False)[:, None]
  above_rows = np.linspace(0, 1, _HAIR_ROWS - _HAIR_BELOW - len(offsets) + 1)[1:, None]
  phi = np.concatenate([lo + (band[0] - lo) * below_rows, band, band[-1] + (hi - band[-1]) * above_rows])
  horizontal, y, hang = (_rows_at(f, phi) for f in (horizontal_f, y_f, hang_f))
  theta = theta[None, :]
  above = _smoothstep((y - hairline[None]) / ramp)
  below = _smoothstep((hairline[None] - y) / 4.0)
  front = _smoothstep((np.abs(theta) - np.deg2rad(20.0)) / np.deg2rad(60.0))
  crown = 0.85 + 0.3 * np.clip(np.sin(phi), 0.0, 1.0)
  t = (hair.thickness * (hair.front_share + (1 - hair.front_share) * front) * crown
       * (1.0 + 0.08 * hair.streaks) * (1.0 + hair.lean * np.sin(theta)))
  # The parting: a line on the top of the head, in front of the crown, where the hair thins.
  parting = np.zeros_like(t)
  if hair.part is not None:
    across = np.angle(np.exp(1j * (theta - hair.part))) * horizontal  # mm across the line
    parting = np.exp(-0.5 * (across / hair.part_width) ** 2) * (np.cos(theta) > 0) * (phi < 1.2)
  # Sideburns, in front of the ears below the temples, are short hair lying flat.
  sideburn = (np.exp(-0.5 * ((np.abs(theta) - np.deg2rad(85.0)) / np.deg2rad(7.0)) ** 2)
              * _smoothstep((25.0 - y) / 10.0) * (1.0 - hang))
  t = t * (1.0 - 0.8 * parting) * (1.0 - 0.75 * sideburn)
  t = np.maximum(t + hair.curl * hair.bumps, 0.5) * above
  radial_dir = np.stack(np.broadcast_arrays(np.cos(phi) * np.sin(theta), np.sin(phi),
                                            np.cos(phi) * np.cos(theta)), -1)
  flat_dir = np.stack(np.broadcast_arrays(np.sin(theta), 0 * phi, np.cos(theta)), -1)
  direction = radial_dir + hang[..., None] * (flat_dir - radial_dir)
  direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
  surface = np.stack([horizontal * np.sin(theta), y, horizontal * np.cos(theta)], -1)
  grid = surface * (1.0 - 0.8 * below[..., None]) + t[..., None] * direction
  vertices, triangles = _closed_grid(grid)
  # Triangles entirely dived into the head are never seen (the face and scalp hide them); dropped,
  # they leave an open shell whose edge lies inside the head, and the renderer less to do.
  dived = np.concatenate([below.reshape(-1), [below[0].min(), below[-1].min()]]) > 0.999
  triangles = triangles[~np.all(dived[triangles], axis=1)]

  # Strands: streaks along the flow (rows), darker at the roots by the hairline and the parting,
  # lighter at hanging tips; curls isotropic.
  noise = hair.bumps if hair.curl else hair.streaks
  roots = (0.78 + 0.22 * _smoothstep((y - hairline[None]) / 25.0)) * (1.0 - 0.3 * parting)
  tips = 1.0 + 0.15 * hang * np.clip(-np.sin(phi), 0.0, 1.0)
  albedo = hair.colour * ((1.0 + hair.streak_amp * noise) * roots * tips)[..., None]
  albedo = albedo.reshape(-1, 3)
  albedo = np.concatenate([albedo, albedo[:_HAIR_COLS].mean(0, keepdims=True),
                           albedo[-_HAIR_COLS:].mean(0, keepdims=True)])
  used, triangles = _compact(len(vertices), triangles)
  parts = _Parts()
  parts.add(vertices[used], triangles, albedo[used])
  if hair.style == "tied":
    _tie(geo, parts, hair.thickness, hair.colour, hair.streak_amp, hair.tie, hair.tie_noise)
  return _scene_mesh(geo, parts, "hair")


def _tie(geo, parts, thickness, colour, streak_amp, tie, tie_noise) -> None:
  """Hair tied back: a bun on the back of the head, or a ponytail hanging from it."""
  back = np.pi
  if tie[0] < 0.5:  # bun
    phi = np.deg2rad(5.0 + 35.0 * tie[1])
    size = 26.0 + 12.0 * tie[2]
    d = np.array([0.0, np.sin(phi), -np.cos(phi)])
    centre = d * (float(geo.head_radius(back, phi)) + thickness + 0.55 * size)
    v, t = _superquadric([size, 0.8 * size, size], rows=12, cols=12)
    noise = ndimage.gaussian_filter(tie_noise[:12], (2.0, 0.5), mode=("nearest", "wrap"))
    albedo = colour * (1.0 + streak_amp * noise / (noise.std() + 1e-12))[..., None]
    albedo = np.concatenate([albedo.reshape(-1, 3), [colour, colour]])
    parts.add(v + centre, t, albedo)
  else:  # ponytail
    phi = np.deg2rad(-5.0 + 30.0 * tie[1])
    start = np.array([0.0, np.sin(phi), -np.cos(phi)]) * (float(geo.head_radius(back, phi)) + thickness)
    drop = 120.0 + 130.0 * tie[2]
    s = np.linspace(0.0, 1.0, 14)
    path = start + np.stack([8.0 * (tie[3] - 0.5) * s, -drop * s ** 1.3 + 10.0 * s,
                             -25.0 * np.sin(np.pi * s * 0.6)], -1)
    radius = (14.0 + 6.0 * tie[4]) * (1.0 - 0.55 * s) + 2.0
    v, t = _tube(path, radius, sides=12, up=(1.0, 0.0, 0.0))
    noise = ndimage.gaussian_filter(tie_noise[12:], (2.5, 0.5), mode=("nearest", "wrap"))
    albedo = colour * (1.0 + streak_amp * noise / (noise.std() + 1e-12))[..., None]
    albedo = np.concatenate([albedo.reshape(-1, 3), [colour, colour]])
    parts.add(v, t, albedo)


def _beard(geo: HeadGeometry, hair_rgb: np.ndarray, skin_rgb: np.ndarray,
           rng: np.random.Generator) -> list[SceneMesh]:
  """A thin shell over the upper lip, chin and jaw (moustache, goatee, full beard or stubble), the
  face's own triangles pushed out along their normals; it meets the skin at its edges and leaves the
  lips and nostrils bare. It hides the face region's skin, as a real beard does: the target keeps the
  face."""
  kind = int(rng.choice(4, p=[0.2, 0.25, 0.35, 0.2]))  # moustache, goatee, full, stubble
  thickness = [rng.uniform(2.0, 6.0), rng.uniform(3.0, 10.0), rng.uniform(4.0, 14.0),
               rng.uniform(0.6, 1.2)][kind]
  shade = rng.uniform(0.6, 1.1)
  noise = rng.normal(size=len(geo.points))
  p, lm = geo.points, geo.landmarks
  x, y = p[:, 0], p[:, 1]
  cx = 0.5 * (lm[48, 0] + lm[54, 0])
  mouth_half = 0.5 * abs(lm[54, 0] - lm[48, 0])
  lip_top, lip_bottom = lm[50:53, 1].max(), lm[56:59, 1].min()
  nose_base, chin_y = lm[31:36, 1].min(), lm[8, 1]
  ax = np.abs(x - cx)
  # Lips (their outer landmarks' outline, and 2.5 mm round it) stay bare; so does the mouth's corner,
  # where the skin folds into the mouth.
  bare_lips = _smoothstep((_polygon_distance(p[:, :2], lm[48:60, :2]) - 2.5) / 1.5)
  corners = np.minimum(np.linalg.norm(p[:, :2] - lm[48, :2], axis=1),
                       np.linalg.norm(p[:, :2] - lm[54, :2], axis=1))
  bare_lips = bare_lips * _smoothstep((corners - 4.0) / 2.0)
  moustache = (_smoothstep((mouth_half + 4.0 - ax) / 4.0) * _smoothstep((nose_base - 2.5 - y) / 3.0)
               * _smoothstep((y - lip_top + 4.0) / 3.0))
  goatee = (_smoothstep((0.9 * mouth_half - ax) / 5.0) * _smoothstep((lip_bottom - 1.0 - y) / 3.0)
            * _smoothstep((y - chin_y + 22.0) / 6.0))
  jaw_x = abs(lm[2, 0] - cx)
  cheek = np.interp(ax, [0.0, mouth_half + 6.0, jaw_x], [nose_base - 2.5, lip_top + 12.0, lm[2, 1]])
  full = (_smoothstep((cheek - y) / 4.0) * _smoothstep((y - chin_y + 35.0) / 8.0)
          * _smoothstep((jaw_x + 4.0 - ax) / 6.0))
  weight = [moustache, np.maximum(moustache, goatee), full, full][kind] * bare_lips
  # Skin only: the face region, and under the chin on a closed head (not the mouth's inside).
  neck_front = ~geo.face & (y < chin_y + 6.0) & (p[:, 2] > lm[8, 2] - 55.0)
  weight = weight * (geo.face | neck_front)
  tri = geo.triangles[np.all(weight[geo.triangles] > 0.02, axis=1)]
  if not len(tri):
    return []
  # Normals from the triangles round the beard only, turned away from the head's centre (behind it).
  near = geo.triangles[np.any(weight[geo.triangles] > 0.02, axis=1)]
  normals = vertex_normals(p, near)
  if np.sum(normals * p) < 0:
    normals = -normals
  used, tri = _compact(len(p), tri)
  normals = normals[used]
  offset = 0.6 + thickness * weight[used] * (1.0 + 0.25 * np.clip(noise[used], -2, 2))
  vertices = p[used] + offset[:, None] * normals
  colour = np.asarray(hair_rgb) * shade
  if kind == 3:  # stubble: skin darkened by the hair showing through
    colour = 0.45 * np.asarray(skin_rgb) + 0.55 * colour
  albedo = colour * (1.0 + 0.18 * np.clip(noise[used], -2.5, 2.5))[:, None]
  parts = _Parts()
  parts.add(vertices, tri, albedo)
  return _scene_mesh(geo, parts, "beard")


# ---------------------------------------------------------------------------------------------------
# Glasses: rims around the eyes from their landmarks, a bridge over the nose, temples to the ears.


def _superellipse_loop(centre, half_width: float, half_height: float, exponent: float,
                       count: int = 40) -> np.ndarray:
  """(count, 2) points around a superellipse (x, y), counter-clockwise seen from +z."""
  a = np.linspace(0.0, 2 * np.pi, count, endpoint=False)
  e = 2.0 / exponent
  return np.asarray(centre)[None] + np.stack([half_width * _signed_power(np.cos(a), e),
                                              half_height * _signed_power(np.sin(a), e)], -1)


def _inside_superellipse(points: np.ndarray, centre, half_width: float, half_height: float,
                         exponent: float) -> np.ndarray:
  """(K,) bool: which points lie inside a superellipse in (x, y)."""
  return ((np.abs(points[:, 0] - centre[0]) / half_width) ** exponent
          + (np.abs(points[:, 1] - centre[1]) / half_height) ** exponent) <= 1.0


def _head_horizontal(geo: HeadGeometry, theta: np.ndarray, y) -> np.ndarray:
  """The head's horizontal distance from its axis toward azimuth theta at height y (mm), both (K,) or
  broadcastable."""
  r = geo.head_radius(theta, np.zeros_like(theta))
  for _ in range(2):  # the elevation of that point, by fixed-point iteration (|y| << r)
    phi = np.arcsin(np.clip(y / r, -1.0, 1.0))
    r = geo.head_radius(theta, phi)
  return r * np.cos(phi)


def _frame_colour(rng: np.random.Generator):
  """(albedo (3,), specular, shininess): dark plastic, metal, a colour, or tortoiseshell brown."""
  kind = int(rng.choice(4, p=[0.45, 0.25, 0.15, 0.15]))
  grey, hue = rng.uniform(0.02, 0.12), _hsv_colour(rng)
  metal = rng.uniform(0.45, 0.8) * np.array([1.0, rng.uniform(0.8, 1.0), rng.uniform(0.55, 1.0)])
  shell = np.array([0.35, 0.18, 0.07]) * rng.uniform(0.5, 1.2)
  return [(np.full(3, grey), 0.3, 30.0), (metal, 0.7, 60.0), (0.7 * hue, 0.3, 30.0),
          (shell, 0.35, 30.0)][kind]


def _glasses(geo: HeadGeometry, rng: np.random.Generator) -> list[SceneMesh]:
  """Spectacles sometimes: rims around the eyes (their landmarks enlarged), as thin tubes or flat
  frames, in a plane just in front of everything inside them; a bridge over the nose (27-28); temples
  along the head, clear of it, back over the ears; dark opaque lenses for sunglasses."""
  present = rng.uniform() < GLASSES_RATE
  sunglasses = rng.uniform() < SUNGLASSES_SHARE
  flat = rng.uniform() < 0.4
  inner_gap, outer_margin = rng.uniform(8.0, 11.0), rng.uniform(6.0, 14.0)
  aspect = rng.uniform(0.55, 0.8)
  exponent, lift, gap = rng.uniform(2.0, 4.5), rng.uniform(0.0, 4.0), rng.uniform(3.0, 7.0)
  wrap = np.tan(np.deg2rad(rng.uniform(5.0, 15.0)))
  tube = rng.uniform(0.9, 1.8)
  band = rng.uniform(2.5, 6.0)
  colour, specular, shininess = _frame_colour(rng)
  lens = np.array([0.04, 0.04, 0.05]) * rng.uniform(0.5, 2.0) * (1 + 0.3 * rng.uniform(-1, 1, 3))
  if not present:
    return []
  lm, p = geo.landmarks, geo.points
  mid_x = float(lm[27, 0])
  tubes, sheets, lenses = _Parts(), _Parts(), _Parts()
  rims = []
  rim_width = band if flat else tube
  # The lenses stop beside the nose, which widens from the bridge (27) to the wings (31, 35): their
  # lower inner corners are cut along it, 2.5 mm off.
  nose_y = [lm[[31, 35], 1].mean(), lm[27, 1]]
  nose_half = [0.5 * abs(lm[35, 0] - lm[31, 0]), 5.0]

  def beside_nose(y, outward):
    return mid_x + outward * (np.interp(y, nose_y, nose_half) + 2.5)

  for ids in (range(36, 42), range(42, 48)):
    eye = lm[list(ids)]
    outward = np.sign(eye[:, 0].mean() - mid_x)
    # A lens reaches from beside the nose to well past the eye's outer corner (frames are wider than
    # the eyes are apart).
    inner = mid_x + outward * inner_gap
    outer = eye[0 if outward < 0 else 3, 0] + outward * outer_margin
    centre = np.array([0.5 * (inner + outer), eye[:, 1].mean() + lift])
    half_w = 0.5 * abs(outer - inner)
    half_h = half_w * aspect
    # Face form: each rim turns back on its outer side, following the face (the plane's z falls by
    # `wrap` per mm outward); it clears everything within 2 mm of the frame by `gap`.

    def plane(xy, z0):
      return z0 - wrap * np.maximum(outward * (xy[..., 0] - centre[0]), 0.0)

    reach = rim_width + 2.0  # the frame's own width, and 2 mm
    inside = (_inside_superellipse(p, centre, half_w + reach, half_h + reach, exponent)
              & (outward * (p[:, 0] - beside_nose(p[:, 1], outward)) > -reach))
    z = float(np.max(p[inside, 2] - plane(p[inside], 0.0), initial=lm[36:48, 2].max())) + gap
    loop = _superellipse_loop(centre, half_w, half_h, exponent)
    loop[:, 0] = outward * np.maximum(outward * loop[:, 0], outward * beside_nose(loop[:, 1], outward))
    rims.append((centre, half_w, half_h, z, float(plane(centre + [outward * half_w, 0.0], z))))
    ring = np.column_stack([loop, plane(loop, z)])
    if flat:
      outer = _superellipse_loop(centre, half_w + band, half_h + band, exponent)
      cut = beside_nose(outer[:, 1], outward) - outward * band
      outer[:, 0] = outward * np.maximum(outward * outer[:, 0], outward * cut)
      v = np.concatenate([ring, np.column_stack([outer, plane(outer, z) + 0.3])])
      n = len(loop)
      c = np.arange(n)
      t = np.concatenate([np.stack([c, (c + 1) % n, n + (c + 1) % n], -1),
                          np.stack([c, n + (c + 1) % n, n + c], -1)])
      sheets.add(v, t, colour)
    else:
      tubes.add(*_tube(ring, tube, sides=6, loop=True, up=(0.0, 0.0, 1.0)), colour)
    if sunglasses:
      v = np.concatenate([ring - [0.0, 0.0, 0.3], [[*centre, plane(centre, z) - 0.3]]])
      n = len(loop)
      c = np.arange(n)
      lenses.add(v, np.stack([c, (c + 1) % n, np.full(n, n)], -1), lens)
  # Bridge: inner rim edges, arched over the nose in front of it.
  (c0, w0, h0, z0, _), (c1, w1, h1, z1, _) = rims  # image left, right (lm 36-41 have x < 0)
  y_b = 0.5 * (c0[1] + c1[1]) + 0.3 * 0.5 * (h0 + h1)
  nose = p[(np.abs(p[:, 0] - mid_x) < 7.0) & (np.abs(p[:, 1] - y_b) < 6.0)]
  z_b = max(float(nose[:, 2].max()) + 2.5 if len(nose) else -np.inf, 0.5 * (z0 + z1))
  a = np.array([c0[0] + w0 + 0.5 * rim_width, y_b, z0])
  b = np.array([c1[0] - w1 - 0.5 * rim_width, y_b, z1])
  m = np.array([mid_x, y_b + 3.0, 2 * z_b - 0.5 * (z0 + z1)])  # a Bezier control: the arch's top at z_b
  s = np.linspace(0.0, 1.0, 9)[:, None]
  bridge = (1 - s) ** 2 * a + 2 * s * (1 - s) * m + s ** 2 * b
  tubes.add(*_tube(bridge, max(tube, 1.2), sides=6, up=(0.0, 0.0, 1.0)), colour)
  # Temples: from each rim's outer edge back along the head (2.5 mm clear of it) to behind the ear.
  for (centre, half_w, half_h, _, z), side in ((rims[0], -1.0), (rims[1], 1.0)):
    hinge = np.array([centre[0] + side * (half_w + 0.5 * rim_width), centre[1] + 0.3 * half_h, z])
    # A straight temple from the hinge to above the ear, pushed out wherever the head is in the way.
    ear_theta = side * np.deg2rad(100.0)
    ear_y = hinge[1] - 4.0
    ear_h = _head_horizontal(geo, np.array([ear_theta]), ear_y)[0] + 2.5
    ear = np.array([ear_h * np.sin(ear_theta), ear_y, ear_h * np.cos(ear_theta)])
    path = hinge + np.linspace(0.0, 1.0, 16)[:, None] * (ear - hinge)
    th = np.arctan2(path[:, 0], path[:, 2])
    h = np.hypot(path[:, 0], path[:, 2])
    h = np.maximum(h, _head_horizontal(geo, th, path[:, 1]) + 2.5)
    h[0] = np.hypot(hinge[0], hinge[2])
    path = np.stack([h * np.sin(th), path[:, 1], h * np.cos(th)], -1)
    hook = path[-1] + np.array([[0.0, -6.0, -8.0], [0.0, -16.0, -12.0]])
    path = np.concatenate([path, hook])
    tubes.add(*_tube(path, 1.3 if not flat else 1.8, sides=6), colour)
  # The frame's wires and thin sheets cast no shadow (`SceneMesh.casts_shadows`); dark lenses do.
  frame = {"specular": specular, "shininess": shininess, "casts_shadows": False}
  meshes = _scene_mesh(geo, tubes, "glasses", **frame)
  meshes += _scene_mesh(geo, sheets, "glasses", two_sided=True, **frame)
  meshes += _scene_mesh(geo, lenses, "glasses", specular=0.8, shininess=80.0, two_sided=True)
  return meshes


# ---------------------------------------------------------------------------------------------------
# Occluders: a hand or an object between the camera and part of the face.

_OCCLUDERS = {"hand": 0.4, "phone": 0.15, "cup": 0.15, "microphone": 0.15, "scarf": 0.15}
_COVERAGE = (0.05, 0.35)  # of the face region's pixels: what an occluder may hide
_CELL_PX = 4  # the coarse grid the coverage and the clearance are measured on


def _splat(points_img: np.ndarray, shape) -> np.ndarray:
  """(H', W') the largest z of the points in each coarse cell; -inf where none."""
  h, w = shape
  i = np.floor(points_img[:, 1] / _CELL_PX + 0.5).astype(np.int64)
  j = np.floor(points_img[:, 0] / _CELL_PX + 0.5).astype(np.int64)
  ok = (i >= 0) & (i < h) & (j >= 0) & (j < w)
  out = np.full(h * w, -np.inf)
  np.maximum.at(out, i[ok] * w + j[ok], points_img[ok, 2])
  return out.reshape(h, w)


def _coarse_depth(vertices_img: np.ndarray, triangles: np.ndarray, shape, back: bool = False):
  """A mesh's largest z per coarse cell (its front; `back`: its smallest z), -inf / inf where none."""
  sign = -1.0 if back else 1.0
  v = np.column_stack([vertices_img[:, :2] / _CELL_PX, sign * vertices_img[:, 2]])
  return sign * depth_buffer(v, triangles, shape)


def _hand(draws: np.ndarray):
  """A right hand in its own frame (mm): palm centred at 0, fingers toward +y, palm facing -z, shaped
  by five uniform draws in [0, 1) (size, finger spread, curl, finger length, thumb angle). Returns
  [(vertices, triangles)] of palm, four fingers and a thumb (closed pieces)."""
  size = 0.9 + 0.2 * draws[0]
  spread = np.deg2rad(2.0 + 8.0 * draws[1])
  curl = np.deg2rad(35.0 * draws[2])
  lengths = np.array([0.82, 0.95, 1.0, 0.92]) * (36.0 + 8.0 * draws[3])
  thumb_angle = np.deg2rad(30.0 + 40.0 * draws[4])
  parts = [_superquadric([40.0, 46.0, 12.0], 0.5, 0.5, rows=8, cols=16)]
  for k, x in enumerate([-28.5, -9.5, 9.5, 28.5]):
    v, t = _superquadric([8.5, lengths[k], 8.0], rows=6, cols=10)
    # Each finger leans out by its share of the spread and curls toward the palm side (-z).
    rot = Rotation.from_euler("zx", [-spread * (k - 1.5), -curl]).as_matrix()
    base = np.array([x, 42.0, 0.0])
    parts.append((v @ rot.T + base + rot @ np.array([0.0, lengths[k] - 4.0, 0.0]), t))
  v, t = _superquadric([10.0, 30.0, 9.5], rows=6, cols=10)
  rot = Rotation.from_euler("z", thumb_angle).as_matrix()
  parts.append((v @ rot.T + np.array([-38.0, -12.0, -4.0]) + rot @ np.array([0.0, 24.0, 0.0]), t))
  return [(v * size, t) for v, t in parts]


def _occluder(geo: HeadGeometry, skin_rgb: np.ndarray, rng: np.random.Generator) -> list[SceneMesh]:
  """A hand near the chin, mouth or cheek, a phone, a cup, a microphone or a scarf over the chin,
  sometimes; scaled (the scarf: raised) until it hides a drawn share of the face region's pixels, then
  moved toward the camera until it is in front of the head everywhere it covers it (the scarf is built
  outside the head instead)."""
  present = rng.uniform() < OCCLUDER_RATE
  names = list(_OCCLUDERS)
  kind = names[rng.choice(len(names), p=list(_OCCLUDERS.values()))]
  target = rng.uniform(0.1, 0.27)
  u = rng.uniform(size=6)
  colour, dark = _hsv_colour(rng), rng.uniform(0.02, 0.12)
  tone = rng.uniform(0.9, 1.05, 3)
  hand_draws = rng.uniform(size=5)
  if not present:
    return []
  lm = geo.landmarks
  # The cheek nearer the camera: the one that can be covered.
  near = 3 if geo.to_image(lm[3])[0, 2] > geo.to_image(lm[13])[0, 2] else 13
  side = -1.0 if near == 3 else 1.0
  cheek = lm[[near, 31 if near == 3 else 35, 48 if near == 3 else 54]].mean(axis=0)
  mouth = 0.5 * (lm[62] + lm[66])
  chin = lm[8]
  # Objects are held toward the camera: built in a frame with x to the image's right, y up in the
  # image and z toward the camera (the camera's axes in the head frame), placed by a landmark.
  view = geo.pose.rotation.T
  side_img = float(np.sign((view.T @ (cheek - mouth))[0]) or 1.0)  # the near cheek's side in the image
  parts = _Parts()
  specular = 0.1
  anchor, offset = mouth, [0.0, 0.0, 0.0]  # (the scarf is built round the head below)
  if kind == "hand":
    where = int(u[0] * 3)
    angle = [side_img * (10.0 + 30.0 * u[1]), side_img * (75.0 + 20.0 * u[1]),
             -side_img * (5.0 + 25.0 * u[1])][where]
    anchor, offset = [(chin, [0.0, -30.0, 30.0]), (mouth, [side_img * 30.0, -5.0, 30.0]),
                      (cheek, [0.0, -12.0, 25.0])][where]
    rot = view @ Rotation.from_euler("z", angle, degrees=True).as_matrix()
    mirror = np.diag([-side_img, 1.0, 1.0])  # the hand on the image's left is a right hand
    for v, t in _hand(hand_draws):
      parts.add((v @ mirror) @ rot.T, t if side_img < 0 else t[:, ::-1], skin_rgb * tone)
  elif kind == "phone":
    anchor, offset = cheek, [side_img * 15.0, 5.0, 25.0]
    v, t = _superquadric([36.0, 72.0, 4.5], 0.25, 0.25, rows=10, cols=16)
    rot = view @ Rotation.from_euler("zy", [-side_img * (10.0 + 30.0 * u[1]), side_img * 20.0],
                                     degrees=True).as_matrix()
    parts.add(v @ rot.T, t, colour if u[2] < 0.5 else np.full(3, dark))
    specular = 0.5
  elif kind == "cup":
    anchor, offset = mouth, [side_img * 10.0 * u[1], -45.0, 55.0]
    v, t = _superquadric([38.0, 50.0, 38.0], 0.2, 1.0, rows=10, cols=18)
    rot = view @ Rotation.from_euler("x", 15.0 + 10.0 * u[2], degrees=True).as_matrix()
    parts.add(v @ rot.T, t, 0.3 + 0.7 * colour)
    specular = 0.4
  elif kind == "microphone":
    anchor, offset = mouth, [side_img * 8.0 * u[1], -12.0, 45.0]
    v, t = _superquadric([23.0, 25.0, 23.0], rows=8, cols=12)
    parts.add(v @ view.T, t, np.full(3, 0.2 + 0.3 * u[2]))
    v, t = _superquadric([13.0, 85.0, 13.0], rows=8, cols=10)
    rot = view @ Rotation.from_euler("x", 25.0, degrees=True).as_matrix()
    parts.add(v @ rot.T + rot @ np.array([0.0, -100.0, 0.0]), t, np.full(3, dark))
    specular = 0.4
  centre = anchor + view @ np.asarray(offset)
  shape = (geo.image_size // _CELL_PX + 1,) * 2
  points_img = geo.to_image(geo.points)
  face = _splat(points_img[geo.face], shape)
  footprint = ndimage.binary_fill_holes(ndimage.binary_closing(np.isfinite(face), iterations=1))
  face = ndimage.grey_dilation(face, size=3)
  if kind == "scarf":
    thickness = 10.0 + 6.0 * u[1]

    def build(level):
      return _scarf(geo, chin, mouth, level, thickness, u[2], colour, u[3])
  else:
    vertices_mm, triangles, albedo = parts.joined()
    base = geo.to_image(vertices_mm + centre)
    anchor = geo.to_image(centre)[0]

    def build(level):
      return anchor + level * (base - anchor), triangles, albedo
  # Scale (or raise) toward the target share of the face region; coverage grows with the level.
  level, lo, hi = 1.0, 0.0, np.inf
  for _ in range(6):
    vertices, triangles, albedo = build(level)
    front = _coarse_depth(vertices, triangles, shape)
    share = np.count_nonzero(footprint & (front > face)) / max(np.count_nonzero(footprint), 1)
    if kind != "scarf":
      share = np.count_nonzero(footprint & np.isfinite(front)) / max(np.count_nonzero(footprint), 1)
    if share < target:
      lo = level
    else:
      hi = level
    level = 0.5 * (lo + hi) if np.isfinite(hi) else level * 1.35
    level = float(np.clip(level, 0.6, 1.6))
  vertices, triangles, albedo = build(lo if np.isfinite(hi) and lo > 0 else level)
  front = _coarse_depth(vertices, triangles, shape)
  if kind != "scarf":
    head = ndimage.grey_dilation(_splat(points_img, shape), size=3)
    back = _coarse_depth(vertices, triangles, shape, back=True)
    over = np.isfinite(back) & np.isfinite(head)
    margin = 3.0 * geo.units_per_mm * geo.pose.scale  # 3 mm in image z units
    shift = max(0.0, float(np.max(head[over] - back[over], initial=-np.inf)) + margin)
    vertices = vertices + [0.0, 0.0, shift]
    front = front + shift
  share = np.count_nonzero(footprint & (front > face)) / max(np.count_nonzero(footprint), 1)
  if not _COVERAGE[0] + 0.01 <= share <= _COVERAGE[1] - 0.02:
    return []  # rare: no size of it hides a fitting share of this face
  return [SceneMesh(vertices=vertices, triangles=triangles.astype(np.int32), albedo=albedo,
                    specular=specular, name="occluder")]


def _scarf(geo: HeadGeometry, chin, mouth, level: float, thickness: float, tilt: float,
           colour: np.ndarray, striped: float):
  """A scarf wound twice round the neck and lower face: two stacked tubes from behind one ear round
  the front to behind the other, clear of the head at every height they span; `level` (0..~2)
  raises the upper turn's front from under the chin toward the mouth. Returns (vertices_img,
  triangles, albedo)."""
  front_y = chin[1] - 0.5 * thickness + level * 0.6 * (mouth[1] - chin[1] + thickness)
  count, sides = 41, 10
  theta = np.deg2rad(np.linspace(-150.0, 150.0, count))
  parts = _Parts()
  # Knitted wool: one colour, or broad bands of it and a lighter one; a rib along the tube.
  band = (np.floor(np.linspace(0.0, 7.0, count)) % 2 * (striped < 0.4))[:, None, None]
  rib = 1.0 + 0.08 * np.cos(np.linspace(0.0, 8 * np.pi, sides, endpoint=False))[None, :, None]
  albedo = (colour * (1 - band) + (0.5 + 0.5 * colour) * band) * rib
  albedo = np.concatenate([albedo.reshape(-1, 3), albedo[[0, -1], 0]])
  for turn in range(2):
    radius = thickness * (1.0 + 0.15 * turn)
    y = front_y - 1.7 * thickness * turn - (10.0 + 15.0 * tilt) * (1.0 - np.cos(theta))
    span = np.linspace(-radius, radius, 5)[:, None]
    reach = _head_horizontal(geo, theta[None, :], y[None, :] + span).max(axis=0)
    h = reach + radius + 1.5 + 0.6 * thickness * turn
    path = np.stack([h * np.sin(theta), y, h * np.cos(theta)], -1)
    parts.add(*_tube(path, radius, sides=sides), albedo)
  v, t, a = parts.joined()
  return geo.to_image(v), t, a


# ---------------------------------------------------------------------------------------------------
# The props.


@dataclasses.dataclass(frozen=True)
class Props:
  """The props of one photo: `meshes` and `scalp`, what the face's texture shows under the hair
  (`face_albedo`'s argument; None when hair is not drawn: the face keeps its painted cap)."""

  meshes: list[SceneMesh]
  scalp: Scalp | None


def sample_props(model: MorphableModel, vertices_img: np.ndarray, pose: Pose, image_size: int,
                 skin_rgb, hair_rgb, rng: np.random.Generator,
                 scene: SceneOptions | None = None) -> list[SceneMesh]:
  """The meshes of `sample_scene_props`."""
  return sample_scene_props(model, vertices_img, pose, image_size, skin_rgb, hair_rgb, rng,
                            scene).meshes


def sample_scene_props(model: MorphableModel, vertices_img: np.ndarray, pose: Pose, image_size: int,
                       skin_rgb, hair_rgb, rng: np.random.Generator,
                       scene: SceneOptions | None = None) -> Props:
  """Draws the props of one synthetic photo: body, hair (and beard), glasses, an occluder, and the
  scalp the hair leaves for the face's texture.

  Args:
    model: the morphable model of the face.
    vertices_img: (N, 3) the face's vertices posed and projected (`pose.project(vertices, image_size)`).
    pose: that pose.
    image_size: the photo's height in pixels.
    skin_rgb, hair_rgb: (3,) albedos in [0, 1] of the face's skin and hair, for neck and hair to match.
    rng: the only source of randomness: one draw of four seeds, one generator per part, so turning a
      part off (`scene`) leaves the others exactly as they were.
    scene: which parts to draw (`body`, `hair`, `glasses`, `occluders`); default all.
  Returns:
    `Props`: `SceneMesh`es in the face's image frame, named 'body', 'hair', 'beard', 'glasses' or
    'occluder'; the scalp (`render.Scalp`) when `scene.hair`: under the hair mesh, or bare skin when
    the person is bald.
  """
  scene = SceneOptions() if scene is None else scene
  part_rng = dict(zip(_PARTS, (np.random.default_rng(s) for s in rng.integers(0, 2**63, size=4))))
  if not any(getattr(scene, p) for p in _PARTS):
    return Props([], None)
  geo = head_geometry(model, vertices_img, pose, image_size)
  skin = np.clip(np.asarray(skin_rgb, np.float64), 0.0, 1.0)
  meshes: list[SceneMesh] = []
  scalp = None
  if scene.body and part_rng["body"].uniform() < BODY_RATE:
    meshes += _body(geo, skin, part_rng["body"])
  if scene.hair:
    hair, scalp = _hair(geo, np.clip(np.asarray(hair_rgb, np.float64), 0.0, 1.0), skin,
                        part_rng["hair"])
    meshes += hair
  if scene.glasses:
    meshes += _glasses(geo, part_rng["glasses"])
  if scene.occluders:
    meshes += _occluder(geo, skin, part_rng["occluders"])
  return Props(meshes, scalp)
