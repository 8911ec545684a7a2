"""Readers for the user's own 300W-LP and AFLW2000-3D trees (and the 3DMM beside them)."""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np

from vrn_jax.errors import InputError

from vrn_jax.files import load_mat, read_image_rgb
from vrn_jax.geometry.morphable_model import MorphableModel, load_morphable_model
from vrn_jax.geometry.pose import Pose

SUBSETS_300W_LP = ("AFW", "HELEN", "IBUG", "LFPW", "AFW_Flip", "HELEN_Flip", "IBUG_Flip", "LFPW_Flip")


@dataclasses.dataclass(frozen=True)
class Item:
  """One photo and its fit: `<dir>/<name>.jpg` + `<dir>/<name>.mat`."""

  image_path: str
  mat_path: str
  name: str


def _items(directory: str, pattern: str, prefix: str = "") -> list[Item]:
  items = []
  for image_path in sorted(glob.glob(os.path.join(directory, pattern))):
    stem = os.path.splitext(os.path.basename(image_path))[0]
    items.append(Item(image_path, os.path.splitext(image_path)[0] + ".mat", prefix + stem))
  return items


def find_tree(manual_dir: str, name: str) -> str | None:
  """`manual_dir/name`, or `manual_dir` itself if it is that tree."""
  for candidate in (os.path.join(manual_dir, name), manual_dir):
    if os.path.basename(os.path.normpath(candidate)) == name and os.path.isdir(candidate):
      return candidate
  return None


def list_300w_lp(manual_dir: str) -> list[Item]:
  """Every `<SUBSET>/<NAME>.jpg` of a 300W-LP tree (`manual_dir/300W_LP/...`)."""
  root = find_tree(manual_dir, "300W_LP")
  if root is None:
    raise InputError(f"{manual_dir}: no 300W_LP folder; expected {manual_dir}/300W_LP/<SUBSET>/*.jpg.")
  items = []
  for subset in SUBSETS_300W_LP:
    items += _items(os.path.join(root, subset), "*.jpg")
  if not items:
    raise InputError(f"{root}: no images in any of {', '.join(SUBSETS_300W_LP)}.")
  return items


def list_aflw2000(manual_dir: str) -> list[Item]:
  """Every `AFLW2000/image0XXXX.jpg` of an AFLW2000-3D tree."""
  root = find_tree(manual_dir, "AFLW2000")
  if root is None:
    raise InputError(f"{manual_dir}: no AFLW2000 folder; expected {manual_dir}/AFLW2000/image0*.jpg.")
  items = _items(root, "image*.jpg")
  if not items:
    raise InputError(f"{root}: no image*.jpg files.")
  return items


def find_morphable_model(manual_dir: str) -> MorphableModel:
  """The 3DMM in `manual_dir` or `manual_dir/3DMM`: Model_Shape.mat + Model_Exp.mat, or BFM.mat."""
  for directory in (manual_dir, os.path.join(manual_dir, "3DMM")):
    for files in (("Model_Shape.mat", "Model_Exp.mat"), ("BFM.mat",)):
      if all(os.path.isfile(os.path.join(directory, f)) for f in files):
        return load_morphable_model(directory)
  raise InputError(
      f"{manual_dir}: no 3DMM; expected Model_Shape.mat + Model_Exp.mat (3DDFA) or BFM.mat (face3d) "
      f"there or in {os.path.join(manual_dir, '3DMM')}.")


@dataclasses.dataclass
class Fit:
  """A photo and its 300W-LP-style fit."""

  photo: np.ndarray
  pose_para: np.ndarray  # (7,)
  shape_para: np.ndarray  # (Ks,)
  exp_para: np.ndarray  # (Ke,)


# 300W-LP's fits reach profile (|yaw| 90 degrees) and a few of AFLW2000-3D's go past it: those are kept
# (the evaluation bins them with 60-90, as the literature's 2000-image protocol does). A fit that turns the
# face further from the camera (yaw and pitch together) shows the back of the head, where the face region
# is out of sight: its target volume would be the face's hollow back.
MAX_FACE_TURN_DEG = 120.0


def _params(mat: dict, key: str, size_min: int, size_max: int, path: str) -> np.ndarray:
  raw = np.asarray(mat[key])
  if raw.dtype != bool and not np.issubdtype(raw.dtype, np.integer) and not np.issubdtype(
      raw.dtype, np.floating):
    found = {"U": "text", "S": "text", "O": "a cell array", "V": "a struct", "c": "complex numbers"}.get(
        raw.dtype.kind, f"dtype {raw.dtype}")
    raise InputError(f"{path}: `{key}` holds {found}; expected real numbers.")
  value = raw.astype(np.float64).reshape(-1)
  if not size_min <= value.size <= size_max:
    expect = size_min if size_min == size_max else f"{size_min}..{size_max}"
    raise InputError(f"{path}: `{key}` has {value.size} values; expected {expect}.")
  if not np.all(np.isfinite(value)):
    raise InputError(f"{path}: `{key}` contains NaN or infinity.")
  return value


def _check_landmarks(mat: dict, key: str, rows: int, path: str, counts: tuple[int, ...] = (68,)) -> None:
  """If `key` is present, it must be (rows, n) or (n, rows) for an n in `counts`."""
  if key in mat:
    shape = np.shape(mat[key])
    if not any(shape in ((rows, n), (n, rows)) for n in counts):
      expect = " or ".join(f"({rows}, {n})" for n in counts)
      raise InputError(f"{path}: `{key}` has shape {shape}; expected {expect}.")


def read_fit(item: Item, model: MorphableModel) -> Fit:
  """Reads and checks one photo and its .mat; raises InputError naming the file on any problem."""
  mat = load_mat(item.mat_path, required=("Pose_Para", "Shape_Para", "Exp_Para"))
  pose_para = _params(mat, "Pose_Para", 7, 7, item.mat_path)
  if pose_para[6] <= 0:
    raise InputError(f"{item.mat_path}: `Pose_Para` scale f = {pose_para[6]}; expected > 0.")
  if np.any(np.abs(pose_para[:3]) > np.pi):
    raise InputError(f"{item.mat_path}: `Pose_Para` angles (pitch, yaw, roll) = "
                     f"{np.round(pose_para[:3], 4).tolist()}; expected radians in [-pi, pi] (degrees?).")
  turn = Pose.from_pose_para(pose_para).face_turn_deg
  if turn > MAX_FACE_TURN_DEG:
    pitch, yaw = np.degrees(pose_para[:2])
    raise InputError(f"{item.mat_path}: `Pose_Para` turns the face {turn:.0f} degrees from the camera "
                     f"(pitch {pitch:.0f}, yaw {yaw:.0f} degrees); at most {MAX_FACE_TURN_DEG:.0f} are "
                     "accepted: beyond, the photo shows the back of the head.")
  shape_para = _params(mat, "Shape_Para", 1, model.shape_basis.shape[1], item.mat_path)
  exp_para = _params(mat, "Exp_Para", 1, model.expression_basis.shape[1], item.mat_path)
  # 300W-LP's pt2d holds the 68 points; AFLW2000-3D's holds AFLW's own 21 (its 68 are in pt3d_68).
  # pt2d is not used (the crop comes from the fit), but any other shape means a wrong or damaged file.
  _check_landmarks(mat, "pt2d", 2, item.mat_path, counts=(68, 21))
  _check_landmarks(mat, "pt3d_68", 3, item.mat_path)
  photo = read_image_rgb(item.image_path)
  return Fit(photo, pose_para, shape_para, exp_para)
