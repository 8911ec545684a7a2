"""A small software renderer for synthetic faces: Lambertian shading of a posed mesh over a background.

Everything is in 0-based image pixels (x right, y down, z toward the camera) as `Pose.project` gives
them, so a render is pixel-aligned with the geometry the voxeliser sees. Per-vertex albedo comes from a
small texture model driven by `Tex_Para` (skin tone, lips, brows, eyes, nostrils, blotches), placed with
the model's 68 landmarks so it works for any morphable model, the procedural one or a user's BFM.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from vrn_jax.geometry.mesh import outward_triangle_normals, outward_vertex_normals, vertex_normals
from vrn_jax.geometry.morphable_model import MorphableModel, per_model_cache
from vrn_jax.geometry.raster import depth_buffer, rasterise

# [skin lightness, redness, yellowness; lips; hair darkness; iris; blush; hair (bald below -1);
#  22 brightness blotches; 10 redness blotches]
TEX_PARA_SIZE = 40
_BLOTCH_SEED = 1905


@dataclasses.dataclass(frozen=True)
class SceneMesh:
  """A mesh drawn with the face (neck and shoulders, hair, glasses, an occluder, another head), in the
  face's frame: 0-based image pixels, x right, y down, z toward the camera (`Pose.project`).

  Attributes:
    vertices: (N, 3) float.
    triangles: (T, 3) int, wound counter-clockwise seen from outside (as the face model's).
    albedo: (N, 3) in [0, 1].
    specular: strength of a white highlight; shininess its Blinn-Phong exponent.
    two_sided: False culls the faces turned away from the camera (closed surfaces); True draws both
      sides (thin sheets: lenses, a hand seen edge-on).
    name: what it is ('face', 'body', 'hair', 'glasses', 'occluder', 'other_face').
    occlusion: optional (N,) ambient visibility in [0, 1] (`ambient_occlusion`): how much of the sky
      each vertex sees; None is 1 everywhere.
    casts_shadows: False for parts too thin to cast a shadow a photo shows (a spectacle frame's wire,
      narrower than a light's penumbra, only dims what is behind it; in a coarse shadow map it would
      leave broken dark streaks).
    skin: optional `SkinSurface`: detail finer than the vertices and gloss varying over them (a face).
  """

  vertices: np.ndarray
  triangles: np.ndarray
  albedo: np.ndarray
  specular: float = 0.0
  shininess: float = 20.0
  two_sided: bool = False
  name: str = ""
  occlusion: np.ndarray | None = None
  casts_shadows: bool = True
  skin: SkinSurface | None = None


@dataclasses.dataclass(frozen=True)
class Scalp:
  """What a face's texture shows on the scalp when a hair mesh is drawn over it: `weight` (N,) in
  [0, 1] per vertex of the model (1 under the hair), `colour` (3,) painted there (dark roots with the
  scalp seen through them). Zero weight everywhere is a bald head: skin."""

  weight: np.ndarray
  colour: np.ndarray


# ---------------------------------------------------------------------------------------------------
# Texture: per-vertex albedo placed with the landmarks of the mean face.


def _polygon_inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
  """(N,) bool: even-odd rule, points (N, 2), polygon (K, 2)."""
  x, y = points[:, 0:1], points[:, 1:2]
  p0, p1 = polygon, np.roll(polygon, -1, axis=0)
  crosses = (p0[:, 1] > y) != (p1[:, 1] > y)
  with np.errstate(divide="ignore", invalid="ignore"):
    xc = p0[:, 0] + (y - p0[:, 1]) * (p1[:, 0] - p0[:, 0]) / (p1[:, 1] - p0[:, 1])
  return np.sum(crosses & (x < xc), axis=1) % 2 == 1


def _polyline_distance(points: np.ndarray, line: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Distance (N,) from points (N, 2) to a polyline (K, 2), and the arc position (0..1) of the nearest
  point along it."""
  p0, p1 = line[:-1], line[1:]
  seg = p1 - p0
  seg_len = np.linalg.norm(seg, axis=1)
  rel = points[:, None, :] - p0[None]
  t = np.clip(np.sum(rel * seg[None], axis=2) / np.maximum(seg_len ** 2, 1e-12), 0.0, 1.0)
  d = np.linalg.norm(rel - t[..., None] * seg[None], axis=2)
  k = np.argmin(d, axis=1)
  cum = np.concatenate([[0.0], np.cumsum(seg_len)])
  arc = (cum[k] + t[np.arange(len(points)), k] * seg_len[k]) / max(cum[-1], 1e-12)
  return d[np.arange(len(points)), k], arc


def _soft(signed_distance, width):
  """0 -> 1 across an edge: signed_distance > 0 inside, `width` the blend width."""
  return np.clip(0.5 + signed_distance / width, 0.0, 1.0)


def _blotch_fields(points_iod: np.ndarray, count: int) -> np.ndarray:
  """(N, count) smooth unit-RMS fields over the face, fixed once and for all (seeded)."""
  rng = np.random.default_rng(_BLOTCH_SEED)
  out = np.zeros((len(points_iod), count))
  for k in range(count):
    for _ in range(3):
      c = rng.uniform([-1.0, -1.4], [1.0, 0.9])
      s = rng.uniform(0.12, 0.45)
      out[:, k] += rng.normal() * np.exp(-np.sum((points_iod - c) ** 2, axis=1) / (2 * s * s))
    out[:, k] /= np.sqrt(np.mean(out[:, k] ** 2)) + 1e-12
  return out


@dataclasses.dataclass(frozen=True)
class _AlbedoLayers:
  """Where each texture region is, per vertex of one model: weights in [0, 1] (N,), blotches (N, 33)."""

  blotches: np.ndarray
  blush: np.ndarray
  lips: np.ndarray
  brows: np.ndarray
  eyes: np.ndarray
  iris: np.ndarray
  pupil: np.ndarray
  lash: np.ndarray
  nostrils: np.ndarray
  interior: np.ndarray
  teeth: np.ndarray
  hair: np.ndarray
  coords_mm: np.ndarray
  tzone: np.ndarray
  freckle_zone: np.ndarray
  lid_line: np.ndarray
  socket: np.ndarray


@per_model_cache
def _albedo_layers(model: MorphableModel) -> _AlbedoLayers:
  """The regions of `model`'s mean face, computed once per model object (they cost ~20 ms)."""
  mean = model.vertices()
  lm = mean[model.landmark_indices]
  iod = float(np.linalg.norm(lm[45, :2] - lm[36, :2]))
  u = iod / 90.0  # one "millimetre" of a face with a 90 mm outer interocular distance
  xy = mean[:, :2]
  normals = outward_vertex_normals(mean, model.triangles)
  face = np.asarray(model.face_mask, bool)
  front = face & (normals[:, 2] > -0.2)

  centre = lm[[36, 45, 48, 54]].mean(axis=0)[:2]
  blotches = _blotch_fields((xy - centre) / iod, TEX_PARA_SIZE - 7)
  blush = sum(np.exp(-np.sum((xy - c) ** 2, axis=1) / (2 * (14 * u) ** 2)) for c in
              (lm[[1, 3, 31, 48]].mean(axis=0)[:2], lm[[15, 13, 35, 54]].mean(axis=0)[:2]))

  lip_poly = lm[48:60, :2]
  lip_d, _ = _polyline_distance(xy, np.concatenate([lip_poly, lip_poly[:1]]))
  inside_lips = _polygon_inside(xy, lip_poly)
  lips = _soft(np.where(inside_lips, lip_d, -lip_d), 2.0 * u) * front

  brows = np.zeros(len(xy))
  for ids in (range(17, 22), range(26, 21, -1)):  # outer -> inner: thicker toward the nose
    d, arc = _polyline_distance(xy, lm[list(ids), :2])
    brows = np.maximum(brows, _soft((1.6 + 1.6 * arc) * u - d, 1.6 * u) * front)

  eyes, iris, pupil, lash, lid_line, socket = (np.zeros(len(xy)) for _ in range(6))
  for ids in (range(36, 42), range(42, 48)):
    poly = lm[list(ids), :2]
    d, _ = _polyline_distance(xy, np.concatenate([poly, poly[:1]]))
    eyes = np.maximum(eyes, _soft(np.where(_polygon_inside(xy, poly), d, -d), 1.5 * u) * front)
    width = float(np.linalg.norm(poly[3] - poly[0]))
    r = np.linalg.norm(xy - poly.mean(axis=0), axis=1)
    iris = np.maximum(iris, _soft(0.21 * width - r, 1.5 * u))
    pupil = np.maximum(pupil, _soft(0.08 * width - r, 1.2 * u))
    lid, _ = _polyline_distance(xy, poly[[0, 1, 2, 3]])
    lash = np.maximum(lash, _soft(1.3 * u - lid, 1.2 * u) * front)
    # The upper lid's margin with its lashes (darker and wider than `lash` paints it), and the
    # socket's fold above it: shade that the mesh, without lids, cannot cast.
    above = xy[:, 1] > poly[[0, 3], 1].mean() - 1.0 * u
    lid_line = np.maximum(lid_line, _soft(2.4 * u - lid, 1.2 * u) * front * above)
    socket = np.maximum(socket, _soft(lid - 3.0 * u, 2.0 * u) * _soft(10.0 * u - lid, 3.0 * u) * front
                        * above)

  nostrils = np.zeros(len(xy))
  for a, b in ((31, 32), (35, 34)):
    c = 0.5 * (lm[a, :2] + lm[b, :2]) + np.array([0.0, 1.2 * u])
    dist = np.linalg.norm((xy - c) / np.array([2.6, 1.8]), axis=1) / u
    below = (normals[:, 1] < -0.15) & (mean[:, 2] > lm[33, 2] - 4 * u)
    nostrils = np.maximum(nostrils, _soft(1.0 - dist, 0.8) * below)

  # Mouth interior: outside the face mask, within the lips' outline, behind them (not as far as the
  # back of the head); teeth on the cavity's upper and lower walls a few millimetres in.
  lip_z = lm[[62, 66], 2].min()
  depth = lip_z - mean[:, 2]
  mouth_x = lm[[48, 54], 0].mean()
  half_width = 0.5 * abs(lm[54, 0] - lm[48, 0])
  interior = ~face & (depth > 1.5 * u) & (depth < 0.35 * iod) & (inside_lips | (lip_d < 8 * u))
  interior &= np.abs(xy[:, 0] - mouth_x) < 1.2 * half_width
  mouth_y = 0.5 * (lm[62, 1] + lm[66, 1])
  teeth = (interior & (depth > 4 * u) & (depth < 7.5 * u) & (np.abs(xy[:, 1] - mouth_y) > 0.5 * u)
           & (np.abs(xy[:, 0] - mouth_x) < 0.8 * half_width))
  # Hair: above a hairline that runs across the top of the forehead, down the temples to above the
  # ears and behind them to the nape. Its height is a function of how far forward a point is (0 at the
  # ears' depth, 1 at the nose tip), so it works for any head; a model cropped to the face, like the
  # BFM's, just gets a hairline at the top of the forehead.
  ear_y = 0.5 * (lm[0, 1] + lm[16, 1])
  ear_z = 0.5 * (lm[0, 2] + lm[16, 2])
  forward = (mean[:, 2] - ear_z) / max(lm[30, 2] - ear_z, 1e-9)
  brow_y = lm[17:27, 1].max()
  hairline = np.interp(forward, [-0.25, -0.1, 0.08, 0.3, 0.55, 0.7],
                       [ear_y - 0.55 * iod, ear_y - 0.55 * iod, ear_y + 0.42 * iod,
                        ear_y + 0.36 * iod, brow_y + 0.5 * iod, brow_y + 0.64 * iod])
  hair = _soft(xy[:, 1] - hairline, 10 * u) * ~interior
  # Where skin is oily (the T-zone: mid-forehead, nose, chin) and where freckles gather (nose, cheeks).
  def bump(c, sx, sy):
    return np.exp(-0.5 * (((xy[:, 0] - c[0]) / (sx * u)) ** 2 + ((xy[:, 1] - c[1]) / (sy * u)) ** 2))

  mid_x = lm[27, 0]
  tzone = np.maximum.reduce([bump((mid_x, brow_y + 28 * u), 22, 22), bump(lm[30, :2], 10, 26),
                             bump(lm[8, :2] + [0.0, 8 * u], 14, 10)]) * front
  freckle_zone = np.maximum.reduce([bump(lm[30, :2] + [0.0, 10 * u], 14, 14),
                                    bump(lm[[1, 3, 31]].mean(axis=0)[:2], 20, 16),
                                    bump(lm[[15, 13, 35]].mean(axis=0)[:2], 20, 16)]) * front
  return _AlbedoLayers(blotches, blush, lips, brows, eyes, iris, pupil, lash, nostrils,
                       interior, teeth, hair, (mean / u).astype(np.float32), tzone, freckle_zone,
                       lid_line, socket)


def _mix(base, colour, weight):
  w = np.asarray(weight, np.float64)[:, None]
  return base * (1 - w) + w * colour


def _tex_para(tex_para) -> np.ndarray:
  """(TEX_PARA_SIZE,) float64, zero-padded or truncated."""
  t = np.zeros(TEX_PARA_SIZE)
  p = np.asarray(tex_para, np.float64).reshape(-1)[:TEX_PARA_SIZE]
  t[: p.size] = p
  return t


def skin_and_hair_colours(tex_para: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The base skin and hair albedos (3,) of `face_albedo` for these texture parameters: what a neck or
  a volume of hair drawn with the face takes to match it."""
  t = _tex_para(tex_para)
  light = 1.0 / (1.0 + np.exp(-1.1 * t[0]))
  skin = np.array([0.36, 0.22, 0.15]) + light * np.array([0.58, 0.50, 0.45])
  skin = skin * (1 + 0.06 * t[1] * np.array([1.0, -0.5, -0.5]))
  skin = skin * (1 + 0.04 * t[2] * np.array([0.5, 0.5, -1.0]))
  hair = np.array([0.05, 0.04, 0.03]) + (1.0 / (1.0 + np.exp(-t[4]))) * np.array([0.35, 0.25, 0.15])
  return skin, hair


def face_albedo(model: MorphableModel, tex_para: np.ndarray,
                scalp: Scalp | None = None) -> np.ndarray:
  """(N, 3) float64 albedo in [0, 1] for each vertex of `model`.

  Regions are found on the mean face, in its frontal projection, from the landmarks: lips inside the
  outer-lip contour (48-59), eyes inside the lid contours (36-47) with iris and pupil, brows along
  17-26, nostrils under the nose base (31-35); vertices outside the face mask behind the lips are the
  mouth interior (teeth at the top). Lengths scale with the interocular distance, so any model works.

  Args:
    model: the morphable model.
    tex_para: (TEX_PARA_SIZE,) texture parameters, ~N(0, 1) each (shorter arrays are zero-padded):
      skin lightness, redness, yellowness; lip colour; hair and brow darkness; iris colour; blush; hair
      (bald below -1); 22 brightness and 10 redness blotches.
    scalp: where a hair mesh drawn with the face covers the head (`props.sample_scene_props`): painted
      there instead of the smooth cap of hair, which would show below the mesh's own hairline (at the
      temples and over the ears); None paints the cap (no hair mesh: the plain generator).
  """
  t = _tex_para(tex_para)
  layers = _albedo_layers(model)
  skin, hair = skin_and_hair_colours(t)
  shade = 1.0 + layers.blotches[:, :22] @ t[8:30] * 0.012
  red = layers.blotches[:, 23:] @ t[30:40] * 0.012 + (0.05 + 0.03 * t[6]) * layers.blush
  albedo = skin[None] * shade[:, None] * (1 + red[:, None] * np.array([1.0, -0.6, -0.6]))
  lip_colour = skin * np.array([0.86, 0.56, 0.56]) * (1 + 0.08 * t[3] * np.array([-1.0, -1.5, -1.2]))
  albedo = _mix(albedo, lip_colour, layers.lips)
  albedo = _mix(albedo, hair, 0.85 * layers.brows)
  if scalp is not None:
    weight = np.asarray(scalp.weight, np.float64) * ~layers.interior
    albedo = _mix(albedo, np.asarray(scalp.colour, np.float64), weight)
  elif t[7] > -1.0:  # most have hair (a smooth cap of it); the others are bald
    hair_texture = hair * (1 + 0.25 * (layers.blotches[:, :3] @ [1.0, -0.7, 0.5]))[:, None]
    albedo = _mix(albedo, hair_texture, layers.hair)
  iris_colour = np.array([0.30, 0.17, 0.08]) + (1.0 / (1.0 + np.exp(-1.5 * t[5] + 1.0))) * np.array(
      [0.05, 0.25, 0.40])
  # The white of the eye is greyer than it looks: the lids shade it (the mesh has no lid to cast that).
  eye = _mix(np.broadcast_to([0.74, 0.70, 0.66], albedo.shape), iris_colour, layers.iris)
  eye = _mix(eye, np.array([0.03, 0.03, 0.03]), layers.pupil)
  albedo = _mix(albedo, eye, layers.eyes)
  albedo = _mix(albedo, np.array([0.06, 0.04, 0.035]), 0.8 * layers.lash)
  albedo = _mix(albedo, np.array([0.12, 0.06, 0.05]), 0.85 * layers.nostrils)
  albedo[layers.interior] = np.array([0.22, 0.05, 0.05])
  albedo[layers.teeth] = np.array([0.70, 0.66, 0.57])  # in the mouth's shade
  return np.clip(albedo, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------
# Skin and eyes as a photo shows them: detail below the mesh's resolution, gloss varying over the face.


@dataclasses.dataclass(frozen=True)
class SkinSurface:  # pylint: disable=too-many-instance-attributes
  """What makes a face mesh read as skin and eyes in a photo beyond its per-vertex albedo (the vertices
  are ~2.5 px apart in a 192 crop: pores, freckles and catchlights are finer), for `render_scene`.

  Attributes:
    coords: (N, 3) float32 where each vertex sits on the skin, mm (the mean face's: the detail moves
      with the skin whatever the expression).
    detail: (N,) weight of the albedo detail: 1 on skin, 0 on the eyes and inside the mouth.
    freckles: (N,) freckle density, 0 without freckles.
    moles: (K, 4) moles: centre (coords, mm) and radius (mm).
    tint: (N, 3) albedo factors of its mottling and patches of redness (~5-7 mm: the vertices carry
      them).
    pores: amplitude of the fine (~1.5 mm) brightness variation, drawn per pixel.
    seed: of the fine noise fields.
    specular: (N,) scales the mesh's highlight strength (an oilier T-zone, drier cheeks, glossy lips);
      shininess: (N,) its exponent.
    corneas: (K, 4) spheres in the image frame (centre x, y, z, radius, px): the eyes' curvature,
      where each light leaves a small sharp highlight; cornea: (N,) where they are (open eyes).
    cornea_specular, cornea_shininess: that highlight's strength and exponent.
    subsurface: extra wrap of the diffuse term, red most: light scattered under the skin comes out
      past the terminator and the shadows' edges, reddened.
  """

  coords: np.ndarray
  detail: np.ndarray
  freckles: np.ndarray
  moles: np.ndarray
  tint: np.ndarray
  pores: float
  seed: int
  specular: np.ndarray
  shininess: np.ndarray
  corneas: np.ndarray
  cornea: np.ndarray
  cornea_specular: float
  cornea_shininess: float
  subsurface: float


_EYEBALL_IOD = 0.13  # eyeball radius / outer interocular distance (~12 mm / 90 mm)


def skin_surface(model: MorphableModel, vertices_img: np.ndarray, forward_img: np.ndarray,
                 rng: np.random.Generator, scalp: Scalp | None = None) -> SkinSurface:
  """Draws a face's skin and eye surface (`SkinSurface`), the same number of draws every time.

  Pores 3-8%, mottling 2-5%, redness 2-6%; freckles on a quarter of faces (nose and cheeks), 0-3 moles;
  the T-zone's highlights up to ~2x the cheeks', lips 1.8x and sharper, the painted scalp and brows
  matte; eyes open (lids apart by over 12% of their width) get a cornea: an eyeball of 0.13 interocular
  distances whose front bulges a quarter of its radius in front of the lids' centre.

  Args:
    model: the face's model; vertices_img: (N, 3) its posed vertices (`Pose.project`).
    forward_img: (3,) the direction the face looks, image frame (the model's +z, posed).
    rng: the texture's generator.
    scalp: the painted scalp (`face_albedo`), kept matte and without skin detail.
  """
  layers = _albedo_layers(model)
  pores, mottle, redness = rng.uniform(0.03, 0.08), rng.uniform(0.02, 0.05), rng.uniform(0.02, 0.06)
  freckled = rng.random() < 0.25
  freckle_amount = rng.uniform(0.3, 1.0)
  mole_count = int(rng.choice(4, p=[0.5, 0.25, 0.15, 0.1]))
  mole_pick, mole_radius = rng.random(3), rng.uniform(0.6, 1.6, 3)
  seed = int(rng.integers(0, 2**31))
  cornea_specular, cornea_shininess = rng.uniform(1.5, 4.0), float(np.exp(rng.uniform(np.log(150.0),
                                                                                      np.log(600.0))))
  subsurface = rng.uniform(0.08, 0.25)

  hair = np.zeros(len(layers.eyes)) if scalp is None else np.asarray(scalp.weight, np.float64)
  bare = (1.0 - layers.eyes) * (1.0 - layers.lips * 0.6) * (1.0 - hair) * ~layers.interior
  skin = np.nonzero((bare > 0.9) & (layers.freckle_zone + layers.tzone > 0.05))[0]
  moles = np.zeros((0, 4), np.float32)
  if mole_count and len(skin):
    centres = layers.coords_mm[skin[(mole_pick[:mole_count] * len(skin)).astype(int)]]
    moles = np.column_stack([centres, mole_radius[:mole_count]]).astype(np.float32)
  medium = value_noise(layers.coords_mm * np.float32(1 / 5.0), seed + 1)
  red = value_noise(layers.coords_mm * np.float32(1 / 7.0), seed + 2)
  tint = ((1.0 + mottle * 1.7 * medium)[:, None]
          * (1.0 + redness * 1.7 * red[:, None] * np.array([1.0, -0.4, -0.5], np.float32)))
  tint = 1.0 + bare[:, None] * (tint - 1.0)
  tint = tint * (1.0 - 0.5 * layers.lid_line - 0.12 * layers.socket)[:, None]
  specular = (0.55 + 0.6 * layers.tzone) * (1.0 - 0.8 * layers.brows) * (1.0 - 0.85 * hair)
  specular = (specular * (1.0 - layers.lips) + 1.8 * layers.lips) * (1.0 - layers.eyes)
  shininess = 1.0 + 0.2 * layers.tzone + 1.5 * layers.lips

  lm = np.asarray(vertices_img, np.float64)[model.landmark_indices]
  iod = float(np.linalg.norm(lm[45] - lm[36]))
  forward = np.asarray(forward_img, np.float64) / np.linalg.norm(forward_img)
  corneas = []
  for ids in (range(36, 42), range(42, 48)):
    eye = lm[list(ids)]
    opening = 0.5 * (np.linalg.norm(eye[1] - eye[5]) + np.linalg.norm(eye[2] - eye[4]))
    if opening > 0.12 * np.linalg.norm(eye[3] - eye[0]):
      radius = _EYEBALL_IOD * iod
      corneas.append([*(eye.mean(axis=0) - 0.75 * radius * forward), radius])
  return SkinSurface(
      coords=layers.coords_mm, detail=bare, freckles=layers.freckle_zone * freckle_amount * freckled,
      moles=moles, tint=tint, pores=float(pores), seed=seed,
      specular=specular, shininess=shininess, corneas=np.asarray(corneas, np.float64).reshape(-1, 4),
      cornea=layers.eyes * bool(corneas), cornea_specular=float(cornea_specular),
      cornea_shininess=cornea_shininess, subsurface=float(subsurface))


_NOISE_CELLS = 64  # the lattice repeats every 64 cells (~10 cm for pores): never within a pore's view


@functools.lru_cache(maxsize=1)
def _noise_lattice() -> np.ndarray:
  """(64^3,) float32 random values in [-1, 1] on a periodic lattice, drawn once (seeded)."""
  return np.random.default_rng(2017).uniform(-1.0, 1.0, _NOISE_CELLS ** 3).astype(np.float32)


def value_noise(points: np.ndarray, seed: int) -> np.ndarray:
  """(M,) float32 smooth noise in [-1, 1] at points (M, 3), features about one unit across: random
  values on the integer lattice (a periodic table, entered at an offset chosen by `seed`), blended with
  smoothstep weights."""
  p = np.asarray(points, np.float32)
  cell = np.floor(p)
  f = p - cell
  f = f * f * (np.float32(3.0) - np.float32(2.0) * f)
  i = cell.astype(np.int32) + np.random.default_rng(seed).integers(0, _NOISE_CELLS, 3).astype(np.int32)
  mask, n = _NOISE_CELLS - 1, _NOISE_CELLS
  ix = [((i[:, 0] + d) & mask) * (n * n) for d in (0, 1)]
  iy = [((i[:, 1] + d) & mask) * n for d in (0, 1)]
  iz = [(i[:, 2] + d) & mask for d in (0, 1)]
  gx, gy, gz = ((1 - f[:, k], f[:, k]) for k in range(3))
  lattice = _noise_lattice()
  out = np.zeros(len(p), np.float32)
  for a in (0, 1):
    for b in (0, 1):
      wab, iab = gx[a] * gy[b], ix[a] + iy[b]
      for c in (0, 1):
        out += wab * gz[c] * lattice.take(iab + iz[c])
  return out


def _skin_detail(skin: SkinSurface, coords: np.ndarray, weight: np.ndarray,
                 freckles: np.ndarray) -> np.ndarray:
  """(M, 3) float32 albedo factors at M pixels (their skin coordinates (M, 3) mm, detail weights and
  freckle densities (M,)): pores, freckles, moles."""
  fine = value_noise(coords * np.float32(1 / 1.5), skin.seed)
  factor = np.broadcast_to((1.0 + skin.pores * 1.7 * fine)[:, None], (len(fine), 3))
  brown = np.array([0.72, 0.56, 0.45], np.float32)  # melanin: a freckle or mole darkens blue most
  if freckles.max(initial=0.0) > 0:
    spots = value_noise(coords * np.float32(1 / 1.8), skin.seed + 3)
    dots = np.clip((spots - 0.2) / 0.15, 0.0, 1.0) * np.clip(freckles, 0.0, 1.0)
    factor = factor * (1.0 + dots[:, None] * (brown - 1.0))
  for x, y, z, radius in skin.moles:
    d = np.sqrt((coords[:, 0] - x) ** 2 + (coords[:, 1] - y) ** 2 + (coords[:, 2] - z) ** 2)
    spot = np.clip((radius - d) / 0.4 + 0.5, 0.0, 1.0)
    factor = factor * (1.0 + spot[:, None] * (brown * 0.55 - 1.0))
  return (1.0 + weight[:, None] * (factor - 1.0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Backgrounds.


def _smooth_noise(rng, shape, cells: int, channels: int = 3) -> np.ndarray:
  """(H, W, channels) smooth noise: a (cells x cells) random grid blurred up to the image size."""
  h, w = shape

  def interp(n_out):
    pos = (np.arange(n_out) + 0.5) / n_out * cells - 0.5
    k = np.exp(-0.5 * ((pos[:, None] - np.arange(cells)[None]) / 0.7) ** 2)
    return k / k.sum(axis=1, keepdims=True)

  grid = rng.normal(size=(cells, cells * channels))
  rows = (interp(h) @ grid).reshape(h, cells, channels)
  return np.matmul(interp(w)[None], rows)  # (H, W, channels)


def random_background(rng: np.random.Generator, shape: tuple[int, int] = (450, 450)) -> np.ndarray:
  """(H, W, 3) uint8: a random gradient with smooth noise, a few random shapes and grain.

  Every draw differs (continuous random colours and positions), so a network cannot learn a background.
  """
  h, w = shape
  side = float(max(h, w))
  yy = (np.arange(h, dtype=np.float32) / side)[:, None]
  xx = (np.arange(w, dtype=np.float32) / side)[None, :]
  angle = rng.uniform(0, 2 * np.pi)
  ramp = np.float32(np.cos(angle)) * xx + np.float32(np.sin(angle)) * yy
  ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-9)
  c0, c1 = rng.uniform(0.0, 1.0, 3), rng.uniform(0.0, 1.0, 3)
  image = (c0 + (c1 - c0) * ramp[..., None]).astype(np.float32)
  image += (rng.uniform(0.0, 0.25) * _smooth_noise(rng, shape, int(rng.integers(3, 10)))).astype(
      np.float32)
  for _ in range(int(rng.integers(0, 7))):
    colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
    cx, cy = rng.uniform(0, w / side), rng.uniform(0, h / side)
    rx, ry = rng.uniform(0.03, 0.35, 2)
    kind = rng.integers(3)
    if kind == 0:  # ellipse (soft-edged blob or hard disc)
      d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
      alpha = np.exp(-d) if rng.random() < 0.5 else (d < 1.0)
    elif kind == 1:  # rotated rectangle
      a = rng.uniform(0, np.pi)
      u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
      v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
      alpha = (np.abs(u) < rx) & (np.abs(v) < ry)
    else:  # stripes
      a = rng.uniform(0, np.pi)
      period = rng.uniform(0.02, 0.2)
      alpha = np.sin((xx * np.cos(a) + yy * np.sin(a)) * (2 * np.pi / period)) > rng.uniform(-0.5, 0.5)
    alpha = (np.asarray(alpha, np.float32) * np.float32(rng.uniform(0.4, 1.0)))[..., None]
    image += alpha * (colour - image)
  image += np.float32(rng.uniform(0.0, 0.04)) * rng.standard_normal((h, w, 3), dtype=np.float32)
  return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# Rendering.


def render_layers(vertices_img: np.ndarray, triangles: np.ndarray, vertex_albedo: np.ndarray,
                  light_dir, ambient, shape: tuple[int, int], diffuse=1.0, specular: float = 0.0,
                  shininess: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
  """The shaded face alone: (rgb (H, W, 3) float64 linear in [0, ~1], coverage (H, W) bool).

  Back-facing triangles are culled (a face-only mesh, like the BFM's, is an open shell whose inside
  must not show through the missing back of the head; the procedural head is closed and loses nothing);
  the nearest front-facing surface is shaded per pixel with the barycentric
  interpolation of the vertex normals and albedo: albedo * (ambient + diffuse * max(0, n.l)) plus a
  white Blinn-Phong highlight.
  """
  v = np.asarray(vertices_img, np.float64)
  tri = np.asarray(triangles, np.int64)
  n_tri = outward_triangle_normals(v, tri)
  facing = tri[n_tri[:, 2] > 0]  # z points to the camera
  normals = vertex_normals(v, tri, n_tri)
  raster = rasterise(v, facing, shape)
  covered = raster.triangle >= 0
  rgb = np.zeros(tuple(shape) + (3,))
  if not covered.any():
    return rgb, covered
  corners = facing[raster.triangle[covered]]  # (M, 3)
  bary = raster.barycentric[covered][..., None]  # (M, 3, 1)
  n = np.sum(normals[corners] * bary, axis=1)
  n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
  albedo = np.sum(np.asarray(vertex_albedo, np.float64)[corners] * bary, axis=1)
  l = np.asarray(light_dir, np.float64)
  l = l / np.linalg.norm(l)
  lambert = np.maximum(n @ l, 0.0)[:, None]
  colour = albedo * (np.asarray(ambient, np.float64) + np.asarray(diffuse, np.float64) * lambert)
  if specular:
    half = l + np.array([0.0, 0.0, 1.0])
    half /= np.linalg.norm(half)
    colour = colour + specular * np.maximum(n @ half, 0.0)[:, None] ** shininess * (lambert > 0)
  rgb[covered] = colour
  return rgb, covered


def apply_color_para(rgb: np.ndarray, color_para) -> np.ndarray:
  """3DDFA-style colour transform: gains (3), offsets (3), contrast (1) about the pixel's grey."""
  c = np.asarray(color_para, np.float64).reshape(-1)
  out = rgb * c[0:3] + c[3:6]
  grey = out @ np.array([0.299, 0.587, 0.114])
  return grey[..., None] + c[6] * (out - grey[..., None])


def render_face(vertices_img: np.ndarray, triangles: np.ndarray, vertex_albedo: np.ndarray,
                light_dir, ambient, background: np.ndarray, diffuse=1.0, specular: float = 0.0,
                color_para=None) -> np.ndarray:
  """Renders the mesh over `background`: (H, W, 3) uint8.

  Args:
    vertices_img: (N, 3) 0-based image pixels, x right, y down, z toward the camera (`Pose.project`).
    triangles: (T, 3) the triangles to draw (e.g. all of the model's, or a subset).
    vertex_albedo: (N, 3) in [0, 1].
    light_dir: (3,) direction toward the light in the image frame; (0, 0, 1) is the camera's side,
      (-1, 0, 0) the image's left, (0, -1, 0) above.
    ambient, diffuse: scalars or (3,) RGB intensities.
    background: (H, W, 3) uint8; its size is the image's.
    specular: strength of a white highlight.
    color_para: optional (7,) gains, offsets, contrast (`apply_color_para`).
  """
  background = np.asarray(background)
  rgb, covered = render_layers(vertices_img, triangles, vertex_albedo, light_dir, ambient,
                               background.shape[:2], diffuse, specular)
  if color_para is not None:
    rgb = apply_color_para(rgb, color_para)
  out = background.copy()
  out[covered] = (np.clip(rgb[covered], 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
  return out


# ---------------------------------------------------------------------------------------------------
# Scenes: several meshes in one z-buffer, several lights with cast shadows.


@dataclasses.dataclass(frozen=True)
class Light:
  """A directional light.

  Attributes:
    direction: (3,) toward the light in the image frame (x right, y down, z toward the camera).
    colour: (3,) linear RGB intensity.
    shadows: whether the scene's meshes cast shadows from this light (a shadow map).
    penumbra_px: the shadow edge's half-width in image pixels (an area light's soft edge).
  """

  direction: np.ndarray
  colour: np.ndarray
  shadows: bool = True
  penumbra_px: float = 1.5


@dataclasses.dataclass(frozen=True)
class Lighting:
  """Ambient light (3,) linear RGB, scaled per vertex by the meshes' `occlusion`, plus directional
  lights. `wrap` > 0 lets diffuse light reach past the terminator (n.l > -wrap), the soft falloff of
  light scattered under skin and in hair that plain Lambert shading lacks."""

  ambient: np.ndarray
  lights: tuple[Light, ...] = ()
  wrap: float = 0.0


_SHADOW_SCALE = 0.5  # shadow-map texels per image pixel: shadows are soft anyway, and this is 4x cheaper
_SHADOW_MAX_SIDE = 1024
# Poisson-disc taps (unit disc) for percentage-closer filtering: a soft shadow edge, no noise.
_PCF_TAPS = np.array([[0.0, 0.0], [0.53, 0.19], [-0.41, 0.47], [-0.27, -0.55], [0.36, -0.62],
                      [0.95, -0.12], [-0.96, 0.05], [0.13, 0.97], [-0.68, -0.71], [0.72, 0.66],
                      [0.08, -0.98], [-0.66, 0.74]])


def _light_frame(direction) -> np.ndarray:
  """(3, 3) rows u, v, w: an orthonormal frame whose w points toward the light."""
  w = np.asarray(direction, np.float64)
  w = w / np.linalg.norm(w)
  helper = np.array([0.0, 1.0, 0.0]) if abs(w[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
  u = np.cross(helper, w)
  u /= np.linalg.norm(u)
  return np.stack([u, np.cross(w, u), w])


def shadow_visibility(vertices: np.ndarray, triangles: np.ndarray, points: np.ndarray,
                      normals: np.ndarray, direction, penumbra: float = 1.5,
                      texels_per_unit: float = _SHADOW_SCALE) -> np.ndarray:
  """(M,) fraction in [0, 1] of each point that sees a directional light past the mesh (a shadow map).

  The mesh is rasterised orthographically along the light (`raster.depth_buffer`, nearest surface to the
  light) and each point compared with the depth there, offset along its normal by a texel and with a
  slope-scaled bias (no self-shadowing "acne" on the lit surface), over a disc of `penumbra` units
  (percentage-closer filtering: soft edges).

  Args:
    vertices: (N, 3) the shadow casters; triangles: (T, 3), both sides cast.
    points: (M, 3) where to test, same frame; normals: (M, 3) their unit normals.
    direction: (3,) toward the light.
    penumbra: the soft edge's half-width, in the points' units.
    texels_per_unit: the shadow map's resolution.
  """
  frame = _light_frame(direction)
  n = np.asarray(normals, np.float32)
  # The map covers only the points to test (casters elsewhere cannot shadow them, and the rasteriser
  # drops triangles outside the map cheaply): a body reaching far out of the photo costs nothing.
  receivers = np.asarray(points, np.float32) @ frame.T.astype(np.float32)
  # (Column by column: numpy reduces a short trailing axis ~20x slower.)
  lo = np.array([receivers[:, 0].min(), receivers[:, 1].min()])
  hi = np.array([receivers[:, 0].max(), receivers[:, 1].max()])
  extent = float(np.max(hi - lo))
  scale = min(texels_per_unit, (_SHADOW_MAX_SIDE - 1) / max(extent, 1e-9))
  texel = 1.0 / scale
  radius = int(np.ceil(max(penumbra, 0.0) * scale))
  pad = radius + 3  # taps and normal offsets never leave the map: no clipping per tap
  cols, rows = (np.ceil((hi - lo) * scale) + 1 + 2 * pad).astype(int)
  lv = np.asarray(vertices, np.float64) @ frame.T
  grid = np.concatenate([(lv[:, :2] - lo) * scale + pad, lv[:, 2:]], axis=1)
  depth = depth_buffer(grid, triangles, (rows, cols)).reshape(-1).astype(np.float32)
  f32 = frame.astype(np.float32)
  cos = np.clip(n @ f32[2], 0.05, 1.0)
  p = receivers + np.float32(texel) * (n @ f32.T)
  bias = np.float32(texel) * (0.5 + np.minimum(np.sqrt(1.0 - cos * cos) / cos, 4.0))
  ij = np.rint((p[:, :2] - lo.astype(np.float32)) * np.float32(scale) + pad).astype(np.int64)
  base = np.clip(ij[:, 1], 0, rows - 1) * cols + np.clip(ij[:, 0], 0, cols - 1)
  reach = p[:, 2] + bias
  taps = np.unique(np.rint(_PCF_TAPS * max(penumbra, 0.0) * scale).astype(np.int64), axis=0)
  taps = taps[np.abs(taps).max(axis=1) <= radius]
  lit = np.zeros(len(p), np.float32)
  for dx, dy in taps:
    lit += reach >= depth.take(base + (dy * cols + dx), mode="clip")
  return lit / len(taps)


_AO_DIRECTIONS = 24


@per_model_cache
def ambient_occlusion(model: MorphableModel) -> np.ndarray:
  """(N,) how much of the sky each vertex of `model`'s mean face sees, cosine-weighted, in [0, 1]:
  eye sockets, the sides of the nose, the mouth's corners and the neck under the chin get less ambient
  light than the forehead. Computed once per model object (~0.2 s) from shadow maps in directions spread
  over the sphere; it holds for every identity and expression closely enough (they move vertices by a
  few millimetres)."""
  v = np.asarray(model.vertices(), np.float64)
  tri = np.asarray(model.triangles, np.int64)
  normals = outward_vertex_normals(v, tri)
  units = 112.0 / float(np.ptp(v[:, 0]))  # a 112-texel wide map of the head
  k = np.arange(_AO_DIRECTIONS) + 0.5  # a Fibonacci sphere
  polar, azimuth = np.arccos(1 - 2 * k / _AO_DIRECTIONS), np.pi * (1 + 5 ** 0.5) * k
  directions = np.stack([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth),
                         np.cos(polar)], axis=1)
  seen, total = np.zeros(len(v)), np.zeros(len(v))
  for d in directions:
    weight = np.maximum(normals @ d, 0.0)
    front = weight > 0
    vis = shadow_visibility(v * units, tri, v[front] * units, normals[front], d, penumbra=1.0,
                            texels_per_unit=1.0)
    seen[front] += weight[front] * vis
    total += weight
  occlusion = np.clip(seen / np.maximum(total, 1e-9), 0.0, 1.0)
  # The mean face's lips are closed, so its mouth's inside sees nothing; an open mouth lets the room's
  # light in (the inside of a mouth in a photo is dark red, teeth grey, not black).
  return np.maximum(occlusion, 0.4 * _albedo_layers(model).interior)


def render_scene(meshes: list[SceneMesh], lighting: Lighting,
                 shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """Renders several meshes together: (rgb (H, W, 3) float32 linear, mesh index (H, W) int32, -1 where
  no mesh is).

  All meshes share one z-buffer (their triangles are concatenated and rasterised once), so the nearest
  surface of any mesh wins each pixel. A mesh that is not `two_sided` loses its triangles turned away
  from the camera (closed surfaces and open face shells, as `render_layers`); a two-sided one keeps
  them and is shaded on the side facing the camera. Each pixel gets albedo * (ambient * occlusion +
  sum over lights of colour * wrapped n.l * shadow) plus, per light, a Blinn-Phong highlight of the
  mesh's `specular` and `shininess` in the light's colour, also shadowed. Every mesh drawn casts shadows
  (unless it does not `casts_shadows`), both sides of every triangle. A mesh with a `skin` surface also
  gets its per-pixel albedo detail, highlights scaled over it, a red-shifted wrap of the diffuse term,
  and its corneas' catchlights.
  """
  h, w = shape
  vertices, drawn, casters, owner, attributes, skins = [], [], [], [], [], []
  caster_normals, caster_sided = [], []
  offset = 0
  for k, mesh in enumerate(meshes):
    v = np.asarray(mesh.vertices, np.float64)
    t = np.asarray(mesh.triangles, np.int64).reshape(-1, 3)
    n_tri = outward_triangle_normals(v, t) if len(t) else np.zeros((0, 3))
    keep = t if mesh.two_sided else t[n_tri[:, 2] > 0]
    vertices.append(v)
    drawn.append(keep + offset)
    cast = t if mesh.casts_shadows else t[:0]
    casters.append(cast + offset)
    caster_normals.append(n_tri[: len(cast)])
    caster_sided.append(np.full(len(cast), mesh.two_sided))
    owner.append(np.full(len(keep), k, np.int32))
    # Per-vertex attributes, interpolated together: normal, albedo, occlusion.
    occlusion = np.ones(len(v)) if mesh.occlusion is None else np.asarray(mesh.occlusion, np.float64)
    albedo = np.broadcast_to(np.asarray(mesh.albedo, np.float64), (len(v), 3))
    attributes.append(np.concatenate([vertex_normals(v, t, n_tri), albedo, occlusion[:, None]],
                                     axis=1).astype(np.float32))
    # A skin's, interpolated at its own pixels only: 0-2 skin coordinates, 3 detail, 4 freckles,
    # 5 specular, 6 shininess, 7 cornea, 8-10 tint.
    skin = mesh.skin
    skins.append(np.zeros((len(v), 11), np.float32) if skin is None else np.column_stack(
        [skin.coords, skin.detail, skin.freckles, skin.specular, skin.shininess, skin.cornea, skin.tint]
    ).astype(np.float32))
    offset += len(v)
  rgb = np.zeros((h, w, 3), np.float32)
  index = np.full((h, w), -1, np.int32)
  if not meshes:
    return rgb, index
  vertices, drawn, casters = np.concatenate(vertices), np.concatenate(drawn), np.concatenate(casters)
  caster_normals, caster_sided = np.concatenate(caster_normals), np.concatenate(caster_sided)
  owner, attributes = np.concatenate(owner), np.concatenate(attributes)
  result = rasterise(vertices, drawn, shape)
  covered = result.triangle >= 0
  if not covered.any():
    return rgb, index
  pixels = np.flatnonzero(covered)  # (take by index: several times faster than boolean masks here)
  tri = result.triangle.reshape(-1).take(pixels)
  who = owner[tri]
  index[covered] = who
  # One gather, one weighted sum.
  corners = drawn[tri]
  barycentric = np.take(result.barycentric.reshape(-1, 3), pixels, axis=0).astype(np.float32)
  values = np.einsum("mkc,mk->mc", attributes[corners], barycentric)
  length = np.sqrt(values[:, 0] ** 2 + values[:, 1] ** 2 + values[:, 2] ** 2)  # (see shadow_visibility)
  n = values[:, :3] / np.maximum(length, 1e-12)[:, None]
  two_sided = np.array([m.two_sided for m in meshes])[who]
  n[two_sided & (n[:, 2] < 0)] *= -1.0
  a, occ = values[:, 3:6], values[:, 6]
  rows, cols = np.divmod(pixels, w)
  points = np.stack([cols, rows, result.depth.reshape(-1).take(pixels)], axis=1).astype(np.float32)
  specular = np.array([m.specular for m in meshes], np.float32)[who]
  shininess = np.array([m.shininess for m in meshes], np.float32)[who]
  skins = np.concatenate(skins)
  scattering = []  # (pixels, extra wrap per channel) of each skin
  corneas = []  # (pixels, their sphere normals, weights, the skin) of each skin with open eyes
  for k, mesh in enumerate(meshes):
    if mesh.skin is None:
      continue
    ids = np.flatnonzero(who == k)
    skin_values = np.einsum("mkc,mk->mc", skins[corners[ids]], barycentric[ids])
    specular[ids] *= skin_values[:, 5]
    shininess[ids] *= skin_values[:, 6]
    scattering.append((ids, mesh.skin.subsurface * np.array([1.0, 0.4, 0.25], np.float32)))
    a[ids] *= skin_values[:, 8:11]
    detailed = np.flatnonzero(skin_values[:, 3] > 0.01)
    a[ids[detailed]] *= _skin_detail(mesh.skin, skin_values[detailed, :3], skin_values[detailed, 3],
                                     skin_values[detailed, 4])
    eyes = np.flatnonzero(skin_values[:, 7] > 0.3)
    corneas += _cornea_normals(mesh.skin, points, ids[eyes], skin_values[eyes, 7])
  shiny = np.flatnonzero(specular > 0)
  colour = a * (np.asarray(lighting.ambient, np.float32) * occ[:, None])
  wrap = np.float32(lighting.wrap)
  for light in lighting.lights:
    l = np.asarray(light.direction, np.float64)
    l = (l / np.linalg.norm(l)).astype(np.float32)
    ndl = n @ l
    if light.shadows:
      # A closed surface's first hit from the light faces the light: its far side need not be drawn
      # into the map (half the work); two-sided sheets cast from both sides.
      cast = casters[caster_sided | (caster_normals @ l > 0)]
      # Softer shadows need no finer map than a texel per penumbra (the filter's disc then spans three
      # texels): the map's cost grows with its texels, and most lights' penumbrae are several pixels.
      resolution = float(np.clip(1.0 / max(light.penumbra_px, 1e-3), 0.2, _SHADOW_SCALE))
      visible = shadow_visibility(vertices, cast, points, n, l, light.penumbra_px, resolution)
    else:
      visible = np.ones(len(n), np.float32)
    light_rgb = np.asarray(light.colour, np.float32)
    shade = np.maximum((ndl + wrap) / (1.0 + wrap), 0.0) * visible
    colour += shade[:, None] * a * light_rgb
    for ids, scatter in scattering:
      # Light scattered under the skin: wrapped further past the terminator and out of the shadows'
      # edges, red most (visibility in (0, 1) raised, 1 and 0 kept).
      seen = visible[ids, None]
      wrapped = (np.maximum((ndl[ids, None] + wrap + scatter) / (1.0 + wrap + scatter), 0.0)
                 * (seen + 2.0 * scatter * seen * (1.0 - seen)))
      colour[ids] += (wrapped - shade[ids, None]) * a[ids] * light_rgb
    half = l + np.array([0.0, 0.0, 1.0], np.float32)
    half /= np.linalg.norm(half)
    if len(shiny):  # (most pixels, hair and clothes, have no highlight)
      cos_h = np.maximum(n[shiny] @ half, np.float32(1e-6))
      highlight = (specular[shiny] * np.exp(shininess[shiny] * np.log(cos_h)) * (ndl[shiny] > 0)
                   * visible[shiny])
      colour[shiny] += highlight[:, None] * light_rgb
    for ids, normal, weight, skin in corneas:
      cos_h = np.maximum(normal @ half, np.float32(1e-6))
      glint = (skin.cornea_specular * np.exp(np.float32(skin.cornea_shininess) * np.log(cos_h))
               * (normal @ l > 0) * visible[ids] * weight)
      colour[ids] += glint[:, None] * light_rgb
  rgb[covered] = colour
  return rgb, index


def _cornea_normals(skin: SkinSurface, points: np.ndarray, ids: np.ndarray, weight: np.ndarray):
  """[(pixel ids, (M, 3) normals of the eye's sphere there, (M,) weights, skin)]: of the pixels `ids` of
  a mesh's eyes (`weight` each), those over one of its corneas, with that sphere's normal (image frame)
  under them."""
  out = []
  if not len(ids) or not len(skin.corneas):
    return out
  xy = points[ids, :2]
  # Each pixel to the nearer eye, if it lies within that sphere's disc.
  d = np.stack([np.sum((xy - c[:2].astype(np.float32)) ** 2, axis=1) for c in skin.corneas], axis=1)
  nearest = np.argmin(d, axis=1)
  for e, (cx, cy, _, radius) in enumerate(skin.corneas):
    sel = (nearest == e) & (d[:, e] < np.float32(0.98 * radius * radius))
    if not sel.any():
      continue
    rel = (xy[sel] - np.array([cx, cy], np.float32)) / np.float32(radius)
    normal = np.column_stack([rel, np.sqrt(np.maximum(1.0 - np.sum(rel * rel, axis=1), 0.0))])
    out.append((ids[sel], normal.astype(np.float32), weight[sel], skin))
  return out
