"""Synthetic faces from a morphable model, and 300W-LP / AFLW2000-3D shaped trees made of them.

A face is drawn (identity, expression, pose), posed with `Pose.project` exactly as 300W-LP's fits are
(P = f R V + t; x = P_x - 1, y = H - P_y) and rendered into a photo, so its photo, its
`Pose_Para`/`Shape_Para`/`Exp_Para` and its landmarks agree to the pixel with what the readers and the
voxeliser compute from them. The trees let every real-data code path run in tests and in the default
(download-free) dataset.

Two kinds of randomness: the geometry (identity, expression, pose, placement) is drawn first from the
given generator, always with the same number of draws, so it depends on the seed alone, never on which
parts of the scene are drawn (`SceneOptions`; only `expressions` changes the expression, from the same
numbers). Everything else comes from generators derived from it afterwards, one per part (texture,
lighting, background, other faces, props, tone, camera): turning one part off leaves the others as they
were, which is what an ablation needs.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import scipy.io
from PIL import Image
from scipy import special

from vrn_jax.faces import backgrounds, camera, lighting, props, render
from vrn_jax.faces.face_model import ProceduralFaceModel, build_face_model, save_3ddfa
from vrn_jax.faces.scene import SceneOptions
from vrn_jax.files import atomic_output, write_image_rgb
from vrn_jax.geometry.morphable_model import MorphableModel
from vrn_jax.geometry.pose import Pose

IMAGE_SIZE = 450  # 300W-LP's photos are 450x450
SUBSETS_300W_LP = ("AFW", "HELEN", "IBUG", "LFPW")
MAX_YAW_DEG, MAX_PITCH_DEG, MAX_ROLL_DEG = 90.0, 30.0, 30.0
FACE_WIDTH_PX = (150.0, 220.0)  # the frontal face region's width at yaw 0
_MARGIN_PX = 4.0
# The appearance generators, derived in this order from the geometry's generator (append, never reorder:
# each name keeps its stream).
_STREAMS = ("texture", "lighting", "background", "other_faces", "props", "tone", "camera")
OTHER_FACE_RATE = 0.3
# What another head behind the subject is drawn with: hair and a body, nothing held in front of it.
_OTHER_FACE_PROPS = dataclasses.replace(SceneOptions.plain(), hair=True, body=True)
# (dy, dx, weight): a 3x3 tent, about the footprint of a sensor pixel.
_TENT_3X3 = tuple((dy, dx, np.float32((2 - abs(dy)) * (2 - abs(dx)) / 16.0))
                  for dy in (-1, 0, 1) for dx in (-1, 0, 1))


@dataclasses.dataclass(frozen=True)
class SyntheticFace:
  """One synthetic photo and its 300W-LP-style fit.

  Attributes:
    image: (H, W, 3) uint8.
    pose_para: (7,) [pitch, yaw, roll (rad), tx, ty, tz, f], 300W-LP's `Pose_Para`.
    shape_para: (Ks,) raw identity parameters (`Shape_Para`).
    exp_para: (Ke,) raw expression parameters (`Exp_Para`).
    name: a file stem.
    tex_para: (40,) texture parameters of `render.face_albedo` (`Tex_Para`).
    color_para: (7,) colour gains, offsets, contrast (`Color_Para`; applied to the face by the plain
      generator, `SceneOptions.tone` off).
    illum_para: (10,) ambient RGB, key light RGB, its polar/azimuth angles, specular, shininess.
    landmarks: (68, 3) the landmark vertices projected: 0-based image pixels x, y (down), z.
    foreground: (H, W) bool, pixels where the face's own surface is what the camera sees (not hair,
      glasses or a hand in front of it; not the background).
    subject: (H, W) bool, pixels of the subject: the face and what is drawn with it (body, hair,
      glasses, an occluder). Everything else is background (another face there included).
  """

  image: np.ndarray
  pose_para: np.ndarray
  shape_para: np.ndarray
  exp_para: np.ndarray
  name: str
  tex_para: np.ndarray
  color_para: np.ndarray
  illum_para: np.ndarray
  landmarks: np.ndarray
  foreground: np.ndarray
  subject: np.ndarray


@dataclasses.dataclass(frozen=True)
class FaceGeometry:
  """A drawn face's geometry, all that its ground truth needs.

  Attributes:
    pose: the 300W-LP pose (`pose.to_pose_para()` is `Pose_Para`).
    shape_para: (Ks,) identity; exp_para: (Ke,) expression.
    vertices: (N, 3) the model's vertices for them, model frame.
    projected: (N, 3) posed and projected: 0-based image pixels x, y (down), z toward the camera.
    image_size: the photo's height and width.
  """

  pose: Pose
  shape_para: np.ndarray
  exp_para: np.ndarray
  vertices: np.ndarray
  projected: np.ndarray
  image_size: int

  @property
  def pose_para(self) -> np.ndarray:
    return self.pose.to_pose_para().reshape(-1)

  def landmarks(self, model: MorphableModel) -> np.ndarray:
    """(68, 3) the landmark vertices, projected."""
    return self.projected[model.landmark_indices]


def _sample_expression(rng: np.random.Generator, count: int, wide: bool = False) -> np.ndarray:
  """N(0, 0.7^2) clipped to +-2 (the bases allow N(0, 1), but several strong mouth components at once
  look odd), with the mouth shaped: about half the mouths open (component 0, the jaw; negative values
  would press the lips into each other), the lip raisers only opening (12, 13).

  `wide` (the procedural model's components): the same random numbers mapped to a wider draw, so that
  nothing drawn after the expression moves: mouths open wider (to 3.5), the top third of the smile's
  normal quantiles a clear smile (component 1, to 3.2), one in eight pairs of eyes closed (component 3,
  'eyes_close', 5-5.8: the lids meet), one in twenty a wink (component 15), one in ten a one-sided smile
  (10), one in seven raised brows (2); a wide stare (negative eyes_close) is kept mild.
  """
  z = rng.normal(size=count)
  e = np.clip(0.7 * z, -2.0, 2.0)
  if count > 0:
    opened = rng.random() < 0.5
    e[0] = rng.uniform(0.5, 3.5 if wide else 2.8) if opened else rng.uniform(0.0, 0.25)
  for k in (12, 13):
    if count > k:
      e[k] = abs(e[k])
  if wide and count > 15:
    q = special.ndtr(z)  # each component's normal quantile, uniform in (0, 1)

    def tail(k, start, lo, hi):
      """Components above their `start` quantile mapped onto lo..hi (0 at `start`, 1 at the top)."""
      return lo + (hi - lo) * (q[k] - start) / (1.0 - start) if q[k] > start else None

    closed = tail(3, 0.875, 5.0, 5.8)
    e[3] = closed if closed is not None else np.clip(e[3], -1.0, 2.0)
    wink = tail(15, 0.95, 8.5, 9.5)
    e[15] = wink if wink is not None and closed is None else np.clip(e[15], -1.0, 2.0)
    for k, start, lo, hi in ((1, 0.67, 1.0, 3.2), (2, 0.86, 1.2, 2.5), (10, 0.9, 1.5, 3.0)):
      value = tail(k, start, lo, hi)
      if value is not None:
        e[k] = value
  return e


def _place(model: MorphableModel, vertices: np.ndarray, rotation: np.ndarray, size: int,
           rng: np.random.Generator) -> tuple[float, np.ndarray]:
  """Scale f and translation (tx, ty, tz) that put the face region ~150-220 px wide (at yaw 0) near the
  image centre and inside the image."""
  face = vertices[model.face_mask]
  width_units = np.ptp(face[:, 0])  # frontal width of this face's region
  f = rng.uniform(*FACE_WIDTH_PX) * size / IMAGE_SIZE / width_units
  rotated = face @ rotation.T
  lo, hi = rotated[:, :2].min(axis=0), rotated[:, :2].max(axis=0)
  extent = f * (hi - lo)
  room = size - 1 - 2 * _MARGIN_PX
  if np.any(extent > room):  # a tall or wide pose: shrink to fit
    f *= room / extent.max()
    extent = f * (hi - lo)
  # Image centre of the face's box, jittered as far as the image allows.
  slack = np.maximum(room - extent, 0.0) / 2
  centre = (size - 1) / 2 + rng.uniform(-1, 1, 2) * np.minimum(slack, 0.12 * size)
  mid = f * (lo + hi) / 2
  tx = centre[0] + 1.0 - mid[0]  # x = P_x - 1
  ty = size - centre[1] - mid[1]  # y = H - P_y
  return f, np.array([tx, ty, 0.0])


def sample_geometry(model: MorphableModel, rng: np.random.Generator, image_size: int = IMAGE_SIZE,
                    scene: SceneOptions = SceneOptions()) -> FaceGeometry:
  """Draws one face's geometry: the first draws of `sample_face` from `rng`, and all its ground truth.

  Identity ~ N(0, 1) raw parameters; expressions ~ N(0, 0.7^2) with about half the mouths open (the
  wider draw with `scene.expressions`, for the procedural model); yaw uniform in +-90 deg, pitch and roll
  in +-30 deg; face region 150-220 px wide at yaw 0 (scaled with image_size), near the centre and inside
  the image. The same number of draws whatever `scene` is.
  """
  shape_para = rng.normal(size=model.shape_basis.shape[1])
  wide = scene.expressions and isinstance(model, ProceduralFaceModel)
  exp_para = _sample_expression(rng, model.expression_basis.shape[1], wide)
  pitch, yaw, roll = np.deg2rad(rng.uniform(-1, 1, 3) * [MAX_PITCH_DEG, MAX_YAW_DEG, MAX_ROLL_DEG])
  vertices = model.vertices(shape_para, exp_para)
  probe = Pose(float(pitch), float(yaw), float(roll), (0.0, 0.0, 0.0), 1.0)
  f, t = _place(model, vertices, probe.rotation, image_size, rng)
  pose = Pose(float(pitch), float(yaw), float(roll), tuple(float(v) for v in t), float(f))
  return FaceGeometry(pose, shape_para, exp_para, vertices, pose.project(vertices, image_size),
                      image_size)


def _appearance_streams(rng: np.random.Generator) -> dict[str, np.random.Generator]:
  """One generator per appearance part, from one draw of `rng` after the geometry's."""
  root = np.random.SeedSequence([int(v) for v in rng.integers(0, 2**63, size=2)])
  return dict(zip(_STREAMS, (np.random.default_rng(s) for s in root.spawn(len(_STREAMS)))))


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """(h, w, C) float32 -> (H, W, C), bilinear per channel."""
  size = (shape[1], shape[0])
  return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F")
                              .resize(size, Image.Resampling.BILINEAR))
                   for c in range(image.shape[2])], axis=-1)


def other_face(model: MorphableModel, subject: FaceGeometry, light: render.Lighting,
               rng: np.random.Generator,
               linear_albedo: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
  """Sometimes (`OTHER_FACE_RATE`) another person's head, partly in view at a left, right or top edge,
  smaller than the subject and out of focus: (premultiplied linear RGB (H, W, 3), alpha (H, W)), both
  float32, to composite over the background; None when there is none.

  Another identity, expression, pose and texture from the same model, with hair and a body
  (`props.sample_scene_props`, from a generator of its own: a bald, bodiless head floating behind the
  subject is no photo's), lit by the same lights (no shadows: it is blurred anyway), rendered at a
  third of the resolution and blurred (sigma 1-4 px).
  `linear_albedo`: decode the texture's display colours to linear light, as the subject's are when a tone
  curve follows.
  """
  if rng.random() >= OTHER_FACE_RATE:
    return None
  size = subject.image_size
  side = max(size // 3, 1)  # the grid it is rendered on: it is blurred anyway
  shape_para = rng.normal(size=model.shape_basis.shape[1])
  exp_para = _sample_expression(rng, model.expression_basis.shape[1])
  angles = np.deg2rad(rng.uniform(-1, 1, 3) * [20.0, 70.0, 15.0])
  f = subject.pose.scale * rng.uniform(0.5, 0.95) * side / size
  vertices = model.vertices(shape_para, exp_para)
  centre_model = vertices[model.face_mask].mean(axis=0)
  rotation = Pose(*map(float, angles), (0.0, 0.0, 0.0), 1.0).rotation
  edge = int(rng.integers(4))  # left, right, top-left, top-right
  cx = [rng.uniform(-0.05, 0.12), rng.uniform(0.88, 1.05)][edge % 2] * side
  cy = (rng.uniform(0.15, 0.75) if edge < 2 else rng.uniform(-0.05, 0.1)) * side
  c = f * rotation @ centre_model
  pose = Pose(*map(float, angles), (float(cx + 1.0 - c[0]), float(side - cy - c[1]), 0.0), float(f))
  tex_para = rng.normal(size=render.TEX_PARA_SIZE)
  projected = pose.project(vertices, side)
  drawn = props.sample_scene_props(model, projected, pose, side, *render.skin_and_hair_colours(tex_para),
                                   np.random.default_rng(rng.integers(0, 2**63)), _OTHER_FACE_PROPS)
  albedo = render.face_albedo(model, tex_para, drawn.scalp)
  meshes = [render.SceneMesh(projected, model.triangles, albedo, name="other_face",
                             occlusion=render.ambient_occlusion(model))] + drawn.meshes
  if linear_albedo:
    meshes = [dataclasses.replace(m, albedo=camera.srgb_to_linear(m.albedo)) for m in meshes]
  unshadowed = dataclasses.replace(
      light, lights=tuple(dataclasses.replace(l, shadows=False) for l in light.lights))
  rgb, index = render.render_scene(meshes, unshadowed, (side, side))
  alpha = (index >= 0).astype(np.float32)
  if not alpha.any():
    return None
  dim = np.float32(rng.uniform(0.5, 1.0))  # further back, often less lit
  layers = np.concatenate([rgb.astype(np.float32) * dim, alpha[..., None]], axis=-1)
  # Blurred where it was rendered (a ninth of the pixels), then enlarged (bilinear, smooth itself).
  layers = camera.gaussian_blur(layers, rng.uniform(1.0, 4.0) * side / size)
  layers = _resize(layers, (size, size))
  return layers[..., :3], np.clip(layers[..., 3], 0.0, 1.0)


def _antialias(linear: np.ndarray, index: np.ndarray) -> np.ndarray:
  """Softens the staircase of every silhouette (a z-buffer samples one point per pixel, a sensor pixel
  integrates its area): pixels beside a change of visible mesh take the 3x3 tent-weighted mean of their
  neighbourhood (computed there only: a few percent of the pixels)."""
  change = np.zeros(index.shape, bool)
  horizontal = index[:, 1:] != index[:, :-1]
  vertical = index[1:] != index[:-1]
  change[:, 1:] |= horizontal
  change[:, :-1] |= horizontal
  change[1:] |= vertical
  change[:-1] |= vertical
  rows, cols = np.nonzero(change)
  h, w = index.shape
  out = linear.copy()
  total = np.zeros((len(rows), linear.shape[2]), np.float32)
  for dy, dx, weight in _TENT_3X3:
    total += weight * linear[np.clip(rows + dy, 0, h - 1), np.clip(cols + dx, 0, w - 1)]
  out[rows, cols] = total
  return out


def _lit_radiance(light: render.Lighting) -> float:
  """The luminance of a grey (albedo 0.5) surface facing the camera under these lights: what the
  camera's metering will bring to its key, used to set the background's brightness against it."""
  total = float(np.asarray(light.ambient) @ [0.2126, 0.7152, 0.0722])
  for l in light.lights:
    d = np.asarray(l.direction, np.float64)
    total += max(d[2] / np.linalg.norm(d), 0.0) * float(np.asarray(l.colour) @ [0.2126, 0.7152, 0.0722])
  return 0.5 * total


def sample_face(model: MorphableModel, rng: np.random.Generator, image_size: int = IMAGE_SIZE,
                name: str = "synthetic", scene: SceneOptions = SceneOptions()) -> SyntheticFace:
  """Draws and renders one face. Deterministic for a given generator state.

  The geometry is `sample_geometry`'s. Then, each from its own generator: texture; a background
  (photographs, rooms, studio backdrops or the procedural ones); lights; sometimes another head behind
  (`other_face`); props drawn with the face (`props.sample_scene_props`: body, hair, glasses, occluders,
  and what the face's texture shows under the hair: its roots, or skin when bald); all
  meshes rendered in one z-buffer with cast shadows (`render.render_scene`); the camera's development of
  the light into a photo (`camera.develop`: optics, exposure, noise, tone curve, JPEG). `scene` turns
  parts off; `SceneOptions.plain()` is the plain generator (one light, no shadows, procedural
  backgrounds, linear light stored as is).
  """
  geometry = sample_geometry(model, rng, image_size, scene)
  streams = _appearance_streams(rng)
  shape = (image_size, image_size)
  texture = streams["texture"]
  tex_para = texture.normal(size=render.TEX_PARA_SIZE)
  color_para = np.concatenate([1 + texture.normal(0, 0.04, 3), texture.normal(0, 0.02, 3),
                               [texture.uniform(0.85, 1.15)]])
  skin_rgb, hair_rgb = render.skin_and_hair_colours(tex_para)

  background = backgrounds.sample_background(streams["background"], shape, scene.photo_backgrounds)
  # Photographs store display values; light adds up in linear units (the plain generator mixes the two).
  scene_bg = camera.srgb_to_linear(background.image) if scene.tone else background.image
  # (Channel by channel: numpy reduces over all but a short trailing axis ~5x slower.)
  background_mean = np.array([scene_bg[..., c].mean(dtype=np.float64) for c in range(3)])
  light = lighting.sample_lighting(streams["lighting"], scene.lighting, background_mean)
  if scene.tone:  # as bright, against the face's light, as the photo was +-1 stop
    level = _lit_radiance(light.lighting) / camera.METER_KEY
    stops = np.clip(streams["background"].normal(0, 0.6), -1.5, 1.5)
    scene_bg = scene_bg * np.float32(level * 2.0 ** stops)
  if scene.other_faces:
    behind = other_face(model, geometry, light.lighting, streams["other_faces"], scene.tone)
    if behind is not None:
      scene_bg = scene_bg * (1.0 - behind[1][..., None]) + behind[0]

  drawn = props.sample_scene_props(model, geometry.projected, geometry.pose, image_size, skin_rgb,
                                   hair_rgb, streams["props"], scene)
  # Under a hair mesh the scalp shows its roots, a bald head its skin; without one, a painted cap.
  albedo = render.face_albedo(model, tex_para, drawn.scalp)
  # The direction the face looks, in the image frame (y down): its corneas bulge that way.
  forward = geometry.pose.rotation[:, 2] * np.array([1.0, -1.0, 1.0])
  skin = render.skin_surface(model, geometry.projected, forward, texture, drawn.scalp)
  face_mesh = render.SceneMesh(geometry.projected, model.triangles, albedo, light.specular,
                               light.shininess, name="face",
                               occlusion=render.ambient_occlusion(model) if scene.lighting else None,
                               skin=skin if scene.lighting else None)
  meshes = [face_mesh] + drawn.meshes
  if scene.tone:  # albedos are designed as display colours (what the plain generator stores)
    meshes = [dataclasses.replace(m, albedo=camera.srgb_to_linear(m.albedo)) for m in meshes]
  rgb, index = render.render_scene(meshes, light.lighting, shape)
  subject = index >= 0
  rgb = rgb.astype(np.float32)
  if not scene.tone:
    rgb[subject] = render.apply_color_para(rgb[subject], color_para)
  linear = np.where(subject[..., None], rgb, scene_bg)
  if scene.camera:
    linear = _antialias(linear, index)
  # The camera meters mostly on the face (face detection), a little on the rest of the frame.
  meter = np.where(index == 0, 1.0, np.where(subject, 0.5, 0.2)).astype(np.float32)
  tone = camera.sample_tone(streams["tone"], scene.tone)
  lens = camera.sample_camera(streams["camera"], scene.camera)
  image = camera.develop(linear, meter, tone, lens, streams["camera"])
  return SyntheticFace(image=image, pose_para=geometry.pose_para, shape_para=geometry.shape_para,
                       exp_para=geometry.exp_para, name=name, tex_para=tex_para, color_para=color_para,
                       illum_para=light.illum_para, landmarks=geometry.landmarks(model),
                       foreground=index == 0, subject=subject)


# ---------------------------------------------------------------------------------------------------
# Trees.


def _save_mat(path: str, data: dict) -> None:
  with atomic_output(path) as tmp:
    scipy.io.savemat(tmp, data)


# AFLW's 21 points (AFLW2000-3D's `pt2d`), in AFLW's order, as iBUG-68 landmarks (0-based) to average:
# brows (outer corner, centre, inner corner) x 2, eyes (outer corner, centre, inner corner) x 2, ear,
# nose (wing, tip, wing), ear, mouth (corner, centre, corner), chin. The model has no ear points: those
# two are written as -1 (no position).
_AFLW21_FROM_68 = ((17,), (19,), (21,), (22,), (24,), (26,), (36,), (37, 38, 40, 41), (39,), (42,),
                   (43, 44, 46, 47), (45,), (), (31,), (30,), (35,), (), (48,), (62, 66), (54,), (8,))


def aflw21_points(landmarks: np.ndarray) -> np.ndarray:
  """(68, >=2) iBUG landmarks -> (21, 2) AFLW points (same units), NaN where the model has none (the
  ears)."""
  return np.array([np.mean(landmarks[list(ids), :2], axis=0) if ids else [np.nan, np.nan]
                   for ids in _AFLW21_FROM_68])


def _fit_mat(face: SyntheticFace) -> dict:
  pt = face.landmarks[:, :2] + 1.0  # 1-based, as the datasets store them
  return {
      "Pose_Para": face.pose_para[None, :],
      "Shape_Para": face.shape_para[:, None],
      "Exp_Para": face.exp_para[:, None],
      "Tex_Para": face.tex_para[:, None],
      "Color_Para": face.color_para[None, :],
      "Illum_Para": face.illum_para[None, :],
      "pt2d": pt.T,
      "roi": np.concatenate([pt.min(axis=0), pt.max(axis=0)])[None, :],
  }


def _faces(model: MorphableModel, count: int, seed: int, names):
  # One generator per item: item i is the same whatever `count` is, and items can be made in parallel.
  for i in range(count):
    yield sample_face(model, np.random.default_rng([seed, i]), name=names(i))


def _name_300w_lp(seed: int, i: int) -> str:
  # Like AFW_134212_1_0: subset, photo id, face in the photo, augmentation (subsets round robin).
  return f"{SUBSETS_300W_LP[i % len(SUBSETS_300W_LP)]}_{seed}{i:06d}_1_0"


def write_300w_lp_tree(root: str | os.PathLike, count: int, seed: int,
                       model: MorphableModel | None = None) -> list[str]:
  """Writes a 300W-LP-shaped tree of `count` synthetic faces under `root`.

  Layout: `300W_LP/<SUBSET>/<NAME>.jpg` (450x450) + `<NAME>.mat` (Pose_Para (1, 7), Shape_Para (Ks, 1),
  Exp_Para (Ke, 1), Tex_Para, Color_Para, Illum_Para, pt2d (2, 68) 1-based pixels, roi (1, 4)) for SUBSET
  in AFW, HELEN, IBUG, LFPW (round robin); `300W_LP/landmarks/<SUBSET>/<NAME>_pts.mat` (pts_2d, pts_3d
  (68, 2) 1-based); the model as `Model_Shape.mat` + `Model_Exp.mat` in `root`. Every file is written
  atomically. Returns the written paths relative to `root`.
  """
  root = os.fspath(root)
  model = build_face_model() if model is None else model
  written = [os.path.relpath(p, root) for p in save_3ddfa(model, root)]
  for face in _faces(model, count, seed, lambda i: _name_300w_lp(seed, i)):
    subset, name = face.name.split("_")[0], face.name
    base = os.path.join("300W_LP", subset, name)
    write_image_rgb(os.path.join(root, base + ".jpg"), face.image)
    _save_mat(os.path.join(root, base + ".mat"), _fit_mat(face))
    pts = os.path.join("300W_LP", "landmarks", subset, name + "_pts.mat")
    pt = face.landmarks[:, :2] + 1.0
    _save_mat(os.path.join(root, pts), {"pts_2d": pt, "pts_3d": pt})
    written += [base + ".jpg", base + ".mat", pts]
  return written


def write_aflw2000_tree(root: str | os.PathLike, count: int, seed: int,
                        model: MorphableModel | None = None) -> list[str]:
  """Writes an AFLW2000-3D-shaped tree of `count` synthetic faces under `root`.

  Layout: `AFLW2000/image0XXXX.jpg` + `.mat` with the 300W-LP keys plus pt3d_68 (3, 68): x, y 1-based
  image pixels (y down), z the projected z; as in the real files, pt2d is (2, 21): AFLW's 21 points,
  1-based (`aflw21_points`; -1 for the two ear points, which the model lacks). The model files go to
  `root` unless already there. Returns the written paths relative to `root`.
  """
  root = os.fspath(root)
  model = build_face_model() if model is None else model
  written = []
  if not all(os.path.isfile(os.path.join(root, f)) for f in ("Model_Shape.mat", "Model_Exp.mat")):
    written += [os.path.relpath(p, root) for p in save_3ddfa(model, root)]
  for face in _faces(model, count, seed, lambda i: f"image{2 + i:05d}"):
    base = os.path.join("AFLW2000", face.name)
    write_image_rgb(os.path.join(root, base + ".jpg"), face.image)
    mat = _fit_mat(face)
    # AFLW2000-3D's pt2d holds AFLW's 21 points, not the 68 (those are pt3d_68).
    pt21 = aflw21_points(face.landmarks)
    mat["pt2d"] = np.where(np.isnan(pt21), -1.0, pt21 + 1.0).T
    mat["pt3d_68"] = (face.landmarks + np.array([1.0, 1.0, 0.0])).T
    _save_mat(os.path.join(root, base + ".mat"), mat)
    written += [base + ".jpg", base + ".mat"]
  return written
