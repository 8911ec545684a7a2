"""3D morphable models in the 3DDFA and face3d (BFM.mat) file formats.

Both formats hold a mean shape, identity and expression bases (3N rows, vertices interleaved x, y, z)
and 1-based triangles and keypoints. `MorphableModel` is the one in-memory form; everything is 0-based.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import weakref
from typing import Callable, TypeVar

import numpy as np

from vrn_jax.errors import InputError

from vrn_jax.files import load_mat


@dataclasses.dataclass(frozen=True)
class MorphableModel:
  """A linear face model.

  Attributes:
    mean: (3N,) mean shape plus mean expression, interleaved x, y, z (model units).
    shape_basis: (3N, Ks) identity basis, applied to raw `Shape_Para` (not scaled by eigenvalues).
    expression_basis: (3N, Ke) expression basis, applied to raw `Exp_Para`.
    triangles: (T, 3) int32 0-based vertex indices.
    landmark_indices: (68,) int64 0-based vertices of the iBUG 68 landmarks.
    face_mask: (N,) bool, the face region used for voxelisation and NME (no ears, no neck).
  """

  mean: np.ndarray
  shape_basis: np.ndarray
  expression_basis: np.ndarray
  triangles: np.ndarray
  landmark_indices: np.ndarray
  face_mask: np.ndarray

  @property
  def num_vertices(self) -> int:
    return self.mean.shape[0] // 3

  def vertices(self, shape_params=None, expression_params=None) -> np.ndarray:
    """(N, 3) float64 model-space vertices: mean + w @ Shape_Para + w_exp @ Exp_Para."""
    v = self.mean.astype(np.float64)
    if shape_params is not None:
      p = np.asarray(shape_params, np.float64).reshape(-1)
      v = v + self.shape_basis[:, : p.size] @ p
    if expression_params is not None:
      p = np.asarray(expression_params, np.float64).reshape(-1)
      v = v + self.expression_basis[:, : p.size] @ p
    # The 3N vector is (3, N) in MATLAB's column-major order, i.e. x, y, z of each vertex in turn.
    return v.reshape(-1, 3)

  def face_triangles(self) -> np.ndarray:
    """(T', 3) triangles whose three vertices all lie in the face region."""
    return self.triangles[np.all(self.face_mask[self.triangles], axis=1)]


_T = TypeVar("_T")
# Models held by a per-model cache at once; more are computed again (a process rarely has two).
_MODELS_PER_CACHE = 8


def per_model_cache(compute: Callable[[MorphableModel], _T]) -> Callable[[MorphableModel], _T]:
  """`compute(model)`, once per model object: for what derives from a model alone and costs
  milliseconds, asked for with every face drawn or example made. A model (a dataclass of arrays) is not
  hashable, so entries are keyed by its id and held by a weak reference (a new model at a freed id is
  not taken for the old one); at most _MODELS_PER_CACHE of them."""
  cache: dict[int, tuple[weakref.ref, _T]] = {}

  @functools.wraps(compute)
  def cached(model: MorphableModel) -> _T:
    hit = cache.get(id(model))
    if hit is not None and hit[0]() is model:
      return hit[1]
    value = compute(model)
    if len(cache) >= _MODELS_PER_CACHE:
      cache.clear()
    cache[id(model)] = (weakref.ref(model), value)
    return value

  return cached


def _column(data: dict, key: str, path: str) -> np.ndarray:
  return np.asarray(data[key], np.float64).reshape(-1)


def _triangles(tri: np.ndarray, num_vertices: int, path: str) -> np.ndarray:
  tri = np.asarray(tri)
  if tri.ndim != 2 or 3 not in tri.shape:
    raise InputError(f"{path}: `tri` has shape {tri.shape}; expected (3, T) or (T, 3).")
  tri = tri if tri.shape[1] == 3 and tri.shape[0] != 3 else tri.T
  tri = tri.astype(np.int64) - 1
  if tri.min() < 0 or tri.max() >= num_vertices:
    raise InputError(
        f"{path}: `tri` indexes vertices {tri.min() + 1}..{tri.max() + 1} (1-based); the model has "
        f"{num_vertices} vertices."
    )
  return tri.astype(np.int32)


def _landmarks(kpt: np.ndarray, num_vertices: int, path: str, key: str) -> np.ndarray:
  kpt = np.asarray(kpt).reshape(-1).astype(np.int64)
  if kpt.size != 68:
    raise InputError(f"{path}: `{key}` has {kpt.size} entries; expected the 68 iBUG landmarks.")
  # 3DDFA stores `keypoints` as 1-based indices into the 3N vector (x entries); face3d's `kpt_ind`
  # are 1-based vertex indices. Both become 0-based vertex indices.
  if kpt.max() > num_vertices:
    kpt = (kpt - 1) // 3 + 1
  return kpt - 1


def _face_mask(data: dict, num_vertices: int, path: str) -> np.ndarray:
  for key in ("face_mask", "face_ind"):
    if key in data:
      values = np.asarray(data[key]).reshape(-1)
      if key == "face_mask":
        if values.size != num_vertices:
          raise InputError(f"{path}: `face_mask` has {values.size} entries; expected {num_vertices}.")
        return values.astype(bool)
      mask = np.zeros(num_vertices, bool)
      mask[values.astype(np.int64) - 1] = True
      return mask
  # 3DDFA's and face3d's BFM crops already drop the ears and neck of the full BFM.
  return np.ones(num_vertices, bool)


def load_3ddfa(shape_path: str | os.PathLike, exp_path: str | os.PathLike) -> MorphableModel:
  """Loads 3DDFA's `Model_Shape.mat` (mu_shape, w, tri, keypoints) + `Model_Exp.mat` (mu_exp, w_exp).

  An optional `face_mask` (N,) or 1-based `face_ind` in Model_Shape.mat selects the face region.
  """
  shape_path, exp_path = os.fspath(shape_path), os.fspath(exp_path)
  s = load_mat(shape_path, required=("mu_shape", "w", "tri", "keypoints"))
  e = load_mat(exp_path, required=("mu_exp", "w_exp"))
  mu_shape, mu_exp = _column(s, "mu_shape", shape_path), _column(e, "mu_exp", exp_path)
  if mu_shape.size % 3 or mu_exp.size != mu_shape.size:
    raise InputError(
        f"{exp_path}: `mu_exp` has {mu_exp.size} entries; {shape_path} `mu_shape` has {mu_shape.size};"
        " expected equal sizes, a multiple of 3."
    )
  n = mu_shape.size // 3
  w, w_exp = np.asarray(s["w"], np.float64), np.asarray(e["w_exp"], np.float64)
  for path, key, basis in ((shape_path, "w", w), (exp_path, "w_exp", w_exp)):
    if basis.ndim != 2 or basis.shape[0] != 3 * n:
      raise InputError(f"{path}: `{key}` has shape {basis.shape}; expected ({3 * n}, K).")
  return MorphableModel(
      mean=mu_shape + mu_exp,
      shape_basis=w,
      expression_basis=w_exp,
      triangles=_triangles(s["tri"], n, shape_path),
      landmark_indices=_landmarks(s["keypoints"], n, shape_path, "keypoints"),
      face_mask=_face_mask(s, n, shape_path),
  )


def load_bfm_face3d(path: str | os.PathLike) -> MorphableModel:
  """Loads face3d's `BFM.mat` (a `model` struct, or top-level keys) with shapeMU, shapePC, expMU, expPC,
  tri, kpt_ind."""
  path = os.fspath(path)
  data = load_mat(path)
  if "model" in data:
    struct = data["model"]
    try:
      struct = struct[0, 0]
      data = {name: struct[name] for name in struct.dtype.names}
    except (IndexError, TypeError, KeyError) as exc:
      raise InputError(f"{path}: `model` is not a MATLAB struct of BFM fields.") from exc
  required = ("shapeMU", "shapePC", "expPC", "tri", "kpt_ind")
  missing = [k for k in required if k not in data]
  if missing:
    raise InputError(f"{path}: missing key(s) {missing}; found {sorted(data)}; expected {list(required)}.")
  mean = _column(data, "shapeMU", path)
  if "expMU" in data:
    mean = mean + _column(data, "expMU", path)
  n = mean.size // 3
  return MorphableModel(
      mean=mean,
      shape_basis=np.asarray(data["shapePC"], np.float64),
      expression_basis=np.asarray(data["expPC"], np.float64),
      triangles=_triangles(data["tri"], n, path),
      landmark_indices=_landmarks(data["kpt_ind"], n, path, "kpt_ind"),
      face_mask=_face_mask(data, n, path),
  )


def load_morphable_model(directory_or_file: str | os.PathLike) -> MorphableModel:
  """Loads a 3DMM from a directory holding Model_Shape.mat + Model_Exp.mat, or from a BFM.mat file."""
  p = os.fspath(directory_or_file)
  if not os.path.exists(p):
    raise InputError(f"{p}: no such 3DMM; expected a directory holding Model_Shape.mat + "
                     "Model_Exp.mat (3DDFA) or BFM.mat (face3d), or the path of a BFM.mat.")
  if os.path.isdir(p):
    shape, exp = os.path.join(p, "Model_Shape.mat"), os.path.join(p, "Model_Exp.mat")
    if os.path.isfile(shape) and os.path.isfile(exp):
      return load_3ddfa(shape, exp)
    bfm = os.path.join(p, "BFM.mat")
    if os.path.isfile(bfm):
      return load_bfm_face3d(bfm)
    raise InputError(
        f"{p}: found neither Model_Shape.mat + Model_Exp.mat (3DDFA) nor BFM.mat (face3d)."
    )
  return load_bfm_face3d(p)
