"""Synthetic faces from a morphable model, and 300W-LP / AFLW2000-3D shaped trees made of them.

A face is drawn (identity, expression, pose, texture, light, background), posed with
`Pose.project` exactly as 300W-LP's fits are (P = f R V + t; x = P_x - 1, y = H - P_y) and rendered, so
its photo, its `Pose_Para`/`Shape_Para`/`Exp_Para` and its landmarks agree to the pixel with what the
readers and the voxeliser compute from them. The trees let every real-data code path run in tests and in
the default (download-free) dataset.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import scipy.io

from vrn_jax.faces import render
from vrn_jax.faces.face_model import build_face_model, save_3ddfa
from vrn_jax.files import atomic_output, write_image_rgb
from vrn_jax.geometry.morphable_model import MorphableModel
from vrn_jax.geometry.pose import Pose

IMAGE_SIZE = 450  # 300W-LP's photos are 450x450
SUBSETS_300W_LP = ("AFW", "HELEN", "IBUG", "LFPW")
MAX_YAW_DEG, MAX_PITCH_DEG, MAX_ROLL_DEG = 90.0, 30.0, 30.0
FACE_WIDTH_PX = (150.0, 220.0)  # the frontal face region's width at yaw 0
_MARGIN_PX = 4.0


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
    color_para: (7,) colour gains, offsets, contrast (`Color_Para`).
    illum_para: (10,) ambient RGB, diffuse RGB, light polar/azimuth angles, specular, shininess.
    landmarks: (68, 3) the landmark vertices projected: 0-based image pixels x, y (down), z.
    foreground: (H, W) bool, pixels covered by the rendered face (everything else is background).
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


def _sample_expression(rng: np.random.Generator, count: int) -> np.ndarray:
  """N(0, 0.7^2) clipped to +-2 (the bases allow N(0, 1), but several strong mouth components at once
  look odd), with the mouth shaped: about half the mouths open (component 0, the jaw; negative values
  would press the lips into each other), the lip raisers only opening (12, 13)."""
  e = np.clip(0.7 * rng.normal(size=count), -2.0, 2.0)
  if count > 0:
    e[0] = rng.uniform(0.5, 2.8) if rng.random() < 0.5 else rng.uniform(0.0, 0.25)
  for k in (12, 13):
    if count > k:
      e[k] = abs(e[k])
  return e


def _sample_light(rng: np.random.Generator):
  """Direction mostly from the camera's hemisphere and above; tinted ambient and diffuse."""
  polar = np.arccos(rng.uniform(np.cos(np.deg2rad(75.0)), 1.0))  # angle from the view axis
  azimuth = rng.uniform(-np.pi, np.pi)
  direction = np.array([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth),
                        np.cos(polar)])
  if direction[1] > 0 and rng.random() < 0.6:  # light from above is more common
    direction[1] = -direction[1]
  ambient = rng.uniform(0.25, 0.5) * (1 + rng.normal(0, 0.04, 3))
  diffuse = rng.uniform(0.5, 0.85) * (1 + rng.normal(0, 0.04, 3))
  specular = rng.uniform(0.0, 0.12)
  return direction, ambient, diffuse, specular, polar, float(np.arctan2(direction[1], direction[0]))


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


def sample_face(model: MorphableModel, rng: np.random.Generator, image_size: int = IMAGE_SIZE,
                name: str = "synthetic") -> SyntheticFace:
  """Draws and renders one face. Deterministic for a given generator state.

  Identity ~ N(0, 1) raw parameters; expressions ~ N(0, 0.7^2) with about half the mouths open; yaw
  uniform in +-90 deg, pitch and roll in +-30 deg; face region 150-220 px wide at yaw 0 (scaled with
  image_size), near the centre and inside the image; random texture, light, colour transform and
  background. ~50 ms at 450x450 on one core.
  """
  shape_para = rng.normal(size=model.shape_basis.shape[1])
  exp_para = _sample_expression(rng, model.expression_basis.shape[1])
  pitch, yaw, roll = np.deg2rad(rng.uniform(-1, 1, 3) * [MAX_PITCH_DEG, MAX_YAW_DEG, MAX_ROLL_DEG])
  vertices = model.vertices(shape_para, exp_para)
  probe = Pose(float(pitch), float(yaw), float(roll), (0.0, 0.0, 0.0), 1.0)
  f, t = _place(model, vertices, probe.rotation, image_size, rng)
  pose = Pose(float(pitch), float(yaw), float(roll), tuple(float(v) for v in t), float(f))
  projected = pose.project(vertices, image_size)

  tex_para = rng.normal(size=render.TEX_PARA_SIZE)
  light, ambient, diffuse, specular, polar, azimuth = _sample_light(rng)
  color_para = np.concatenate([1 + rng.normal(0, 0.04, 3), rng.normal(0, 0.02, 3),
                               [rng.uniform(0.85, 1.15)]])
  background = render.random_background(rng, (image_size, image_size))
  albedo = render.face_albedo(model, tex_para)
  rgb, covered = render.render_layers(projected, model.triangles, albedo, light, ambient,
                                      (image_size, image_size), diffuse, specular)
  image = background.copy()
  face_rgb = render.apply_color_para(rgb[covered], color_para)
  image[covered] = (np.clip(face_rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
  illum_para = np.concatenate([ambient, diffuse, [polar, azimuth, specular, 20.0]])
  return SyntheticFace(image=image, pose_para=pose.to_pose_para().reshape(-1), shape_para=shape_para,
                       exp_para=exp_para, name=name, tex_para=tex_para, color_para=color_para,
                       illum_para=illum_para, landmarks=projected[model.landmark_indices],
                       foreground=covered)


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
