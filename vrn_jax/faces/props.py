"""What a synthetic photo shows besides the face: neck, shoulders and clothes; hair and beards; glasses; a
hand or an object in front of the face.

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

from vrn_jax.faces.face_model import UNITS_PER_MM, build_face_model
from vrn_jax.faces.render import SceneMesh
from vrn_jax.faces.scene import SceneOptions
from vrn_jax.geometry.morphable_model import MorphableModel
from vrn_jax.geometry.pose import Pose, rotation_3ddfa

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


def _oriented(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
  """The triangles of a closed mesh, reversed if needed so that they wind outward."""
  return triangles if signed_volume(vertices, triangles) >= 0 else triangles[:, ::-1]


def _grid_triangles(rows: int, cols: int, wrap_rows: bool = False) -> np.ndarray:
  """Two triangles per quad of a (rows, cols) vertex grid, vertex r * cols + c; columns wrap around."""
  r, c = np.meshgrid(np.arange(rows if wrap_rows else rows - 1), np.arange(cols), indexing="ij")
  r1, c1 = (r + 1) % rows, (c + 1) % cols
  a, b, d, e = r * cols + c, r * cols + c1, r1 * cols + c, r1 * cols + c1
  return np.concatenate([np.stack([a, b, e], -1).reshape(-1, 3), np.stack([a, e, d], -1).reshape(-1, 3)])


def _closed_grid(grid: np.ndarray, wrap_rows: bool = False, first_cap=None, last_cap=None):
  """A closed mesh from a (R, C, 3) grid of rings (columns wrap): either rows wrap too (a torus), or the
  first and last rings are closed by fans to the points `first_cap` and `last_cap` (default: the
  ring's centroid). Returns (vertices (R * C [+ 2], 3), outward triangles)."""
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
  return vertices, _oriented(vertices, tri)


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
  return _closed_grid(grid, wrap_rows=loop, first_cap=p[0], last_cap=p[-1])


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
  return np.concatenate([vertices, vertices[triangles].mean(axis=1)])


@functools.lru_cache(maxsize=1)
def _template_radial() -> np.ndarray:
  """The procedural mean head's radial map, mm, no gaps: the prior where a model has no vertices."""
  model = build_face_model()
  v = model.vertices()
  frame = _frame_from_landmarks(v[model.landmark_indices])
  points = (v - frame[0]) / frame[1]
  return _fill_gaps(_radial_bins(_sample_points(points, model.triangles)))


def _frame_from_landmarks(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
  """(origin (3,) in model units, model units per mm) of the head frame."""
  iod_mm, eye_depth_mm = _reference()
  units = float(np.linalg.norm(landmarks[45] - landmarks[36])) / iod_mm
  eyes = landmarks[[36, 39, 42, 45]].mean(axis=0)
  return eyes - np.array([0.0, 0.0, eye_depth_mm * units]), units


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
    radial = np.where(np.isnan(data), _template_radial(), data)
    if not self.closed_head:
      # Face data meets the aligned template at the face's edge: smooth the seam, never inward.
      radial = np.maximum(radial, ndimage.gaussian_filter(radial, 1.0, mode=("nearest", "wrap")))
    return radial

  def head_radius(self, theta, phi) -> np.ndarray:
    """The head's distance from the origin toward azimuth theta, elevation phi (radians), mm."""
    rows = (np.asarray(phi) / np.pi + 0.5) * _MAP_ROWS - 0.5
    cols = (np.asarray(theta) / (2 * np.pi) + 0.5) * _MAP_COLS - 0.5
    padded = np.pad(self.radial, ((0, 0), (1, 1)), mode="wrap")
    rows, cols = np.broadcast_arrays(rows, np.mod(cols + 0.5, _MAP_COLS) - 0.5 + 1.0)
    return ndimage.map_coordinates(padded, [rows.ravel(), cols.ravel()], order=1,
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
  widths = np.array(_TORSO_HALF_WIDTH) * rng.uniform(0.9, 1.1)
  widths[:2] = _TORSO_HALF_WIDTH[:2]
  neck_drop = rng.uniform(45.0, 70.0)  # chin to neck base
  slim = rng.uniform(0.93, 0.98)  # the neck inside the stub, where both exist
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
  interp = [PchipInterpolator(_TORSO_DOWN, v) for v in (widths, _TORSO_FRONT, _TORSO_BACK)]
  fit = np.where(ys > (neck.stub_end if neck.stub_end is not None else -np.inf) + 6.0, slim, 1.01)
  half_width = neck.half_width * interp[0](k) * np.where(down > 0, scale, fit)
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
  vertices, triangles = _closed_grid(grid)

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
  height = rng.uniform(22.0, 35.0)
  out = 1.0 + rng.uniform(0.04, 0.1)
  bottom = centre + (ring - centre) * 1.03
  top = centre + (ring - centre) * out + np.array([0.0, height, 0.0])
  cols = len(ring)
  vertices = np.concatenate([bottom, top])
  c = np.arange(cols - 1)
  triangles = np.concatenate([np.stack([c, c + 1, cols + c + 1], -1), np.stack([c, cols + c + 1, cols + c], -1)])
  colour = cloth[row + 2][keep] if rng.uniform() < 0.6 else np.full((cols, 3), rng.uniform(0.8, 0.97))
  parts = _Parts()
  parts.add(vertices, triangles, np.concatenate([colour, colour]))
  return _scene_mesh(geo, parts, "body", two_sided=True)


# ---------------------------------------------------------------------------------------------------
# The props.


def sample_props(model: MorphableModel, vertices_img: np.ndarray, pose: Pose, image_size: int,
                 skin_rgb, hair_rgb, rng: np.random.Generator,
                 scene: SceneOptions | None = None) -> list[SceneMesh]:
  """Draws the props of one synthetic photo: body, hair (and beard), glasses, an occluder.

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
    `SceneMesh`es in the face's image frame, named 'body', 'hair', 'beard', 'glasses' or 'occluder'.
  """
  scene = SceneOptions() if scene is None else scene
  part_rng = dict(zip(_PARTS, (np.random.default_rng(s) for s in rng.integers(0, 2**63, size=4))))
  if not any(getattr(scene, p) for p in _PARTS):
    return []
  geo = head_geometry(model, vertices_img, pose, image_size)
  skin = np.clip(np.asarray(skin_rgb, np.float64), 0.0, 1.0)
  meshes: list[SceneMesh] = []
  if scene.body and part_rng["body"].uniform() < BODY_RATE:
    meshes += _body(geo, skin, part_rng["body"])
  return meshes
