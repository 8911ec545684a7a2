"""The procedural face model: file round trips, anatomy of its landmarks, the mouth, the face mask."""

import glob
import os

import numpy as np
import pytest

from conftest import fixtures_dir
from vrn_jax.faces.face_model import (NUM_EXPRESSION, NUM_SHAPE, UNITS_PER_MM, build_face_model,
                                     mirror_vertex_indices, mouth_interior_mask, save_3ddfa,
                                     save_bfm_face3d)
from vrn_jax.files import read_landmarks_txt
from vrn_jax.geometry.morphable_model import load_3ddfa, load_bfm_face3d, load_morphable_model
from vrn_jax.photo_metrics import interocular_distance_2d

MM = UNITS_PER_MM


@pytest.fixture(scope="module")
def model():
  return build_face_model()


def _params(seed, model):
  rng = np.random.default_rng(seed)
  return rng.normal(size=model.shape_basis.shape[1]), rng.normal(size=model.expression_basis.shape[1])


def test_files_round_trip_exactly(model, tmp_path):
  shape_path, exp_path = save_3ddfa(model, tmp_path)
  save_bfm_face3d(model, tmp_path / "face3d" / "BFM.mat")
  loaded = {
      "3ddfa": load_3ddfa(shape_path, exp_path),
      "face3d": load_bfm_face3d(tmp_path / "face3d" / "BFM.mat"),
      "by_directory": load_morphable_model(tmp_path),
  }
  for name, other in loaded.items():
    np.testing.assert_array_equal(other.triangles, model.triangles, err_msg=name)
    np.testing.assert_array_equal(other.landmark_indices, model.landmark_indices, err_msg=name)
    np.testing.assert_array_equal(other.face_mask, model.face_mask, err_msg=name)
    # The stored numbers are exactly the model's (single precision values, written as single)...
    np.testing.assert_array_equal(other.mean, model.mean, err_msg=name)
    np.testing.assert_array_equal(other.shape_basis, model.shape_basis, err_msg=name)
    np.testing.assert_array_equal(other.expression_basis, model.expression_basis, err_msg=name)
    # ...so vertices agree up to BLAS summation order (the loaded bases are column-major).
    for seed in range(3):
      s, e = _params(seed, model)
      np.testing.assert_allclose(other.vertices(s, e), model.vertices(s, e), rtol=1e-12, atol=1e-6,
                                 err_msg=name)
  # The files keep the identity/expression split of the mean, as 3DDFA's do.
  import scipy.io
  mu_exp = scipy.io.loadmat(exp_path)["mu_exp"].reshape(-1)
  np.testing.assert_array_equal(mu_exp, model.mean_expression)
  assert np.abs(mu_exp).max() > 0.1 * MM
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]  # atomic writes leave nothing


def test_size_units_and_bases(model):
  n = model.num_vertices
  assert 3000 <= n <= 8000
  assert model.mean.shape == (3 * n,)
  assert model.shape_basis.shape == (3 * n, NUM_SHAPE)
  assert model.expression_basis.shape == (3 * n, NUM_EXPRESSION)
  assert model.triangles.min() == 0 and model.triangles.max() == n - 1
  face = model.vertices()[model.face_mask]
  width_mm = np.ptp(face[:, 0]) / MM
  assert 130 <= width_mm <= 160, width_mm  # BFM-like: a 300W-LP f ~ 1.2e-3 gives ~170 px
  # Raw N(0, 1) parameters move the face by millimetres, not centimetres.
  rng = np.random.default_rng(0)
  mean = model.vertices()
  for basis_size, which in ((NUM_SHAPE, "shape"), (NUM_EXPRESSION, "exp")):
    for _ in range(5):
      p = rng.normal(size=basis_size)
      v = model.vertices(p, None) if which == "shape" else model.vertices(None, p)
      rms = np.sqrt(np.mean(np.sum((v - mean)[model.face_mask] ** 2, axis=1))) / MM
      assert 1.0 < rms < 15.0, (which, rms)


def test_model_is_cached_read_only_and_symmetric(model):
  assert build_face_model() is model
  for a in (model.mean, model.shape_basis, model.expression_basis, model.triangles):
    assert not a.flags.writeable
  mirror = mirror_vertex_indices()
  v = model.vertices()
  np.testing.assert_allclose(v[mirror], v * [-1, 1, 1], atol=1e-6 * MM)
  np.testing.assert_array_equal(model.face_mask[mirror], model.face_mask)


def test_landmarks_sit_where_they_should(model):
  lm = model.vertices()[model.landmark_indices] / MM  # frontal: x right, y up, z to the camera
  assert np.argmax(lm[:, 2]) == 30  # the nose tip leads
  # Eye corners and brow ends mirror each other across x = 0.
  for a, b in ((36, 45), (39, 42), (17, 26), (21, 22), (48, 54), (31, 35), (0, 16), (4, 12)):
    np.testing.assert_allclose(lm[a] * [-1, 1, 1], lm[b], atol=1e-6)
    assert lm[a, 0] < 0  # the subject's right side is on the image left
  # The jaw runs left to right, the chin lowest; then brows above eyes above nose above mouth.
  assert np.all(np.diff(lm[0:17, 0]) > 0)
  assert np.argmin(lm[:, 1]) == 8
  assert lm[17:27, 1].min() > lm[36:48, 1].max()
  assert lm[36:48, 1].min() > lm[31:36, 1].max()
  assert lm[31:36, 1].min() > lm[48:68, 1].max()
  # Outer lip contour around the inner one; the eyes' lids above and below their corners.
  assert lm[51, 1] > lm[62, 1] >= lm[66, 1] > lm[57, 1]
  assert lm[37, 1] > lm[36, 1] > lm[41, 1] and lm[44, 1] > lm[45, 1] > lm[46, 1]
  interocular = np.linalg.norm(lm[45] - lm[36])
  assert 80 < interocular < 100  # mm, the NME normaliser
  assert np.all(model.face_mask[model.landmark_indices])


def _lower_face(landmarks_2d: np.ndarray) -> dict[str, float]:
  """Vertical distances of the lower face (image y, down) and the mouth's width, over the outer
  interocular distance (the NME's normaliser), from 68 landmarks of a near-frontal face."""
  lm = np.asarray(landmarks_2d, np.float64)[:, :2]
  iod = interocular_distance_2d(lm)
  return {"nose base to upper lip": (lm[51, 1] - lm[33, 1]) / iod,
          "lips (closed)": (lm[57, 1] - lm[51, 1]) / iod,
          "lower lip to chin": (lm[8, 1] - lm[57, 1]) / iod,
          "mouth width": (lm[54, 0] - lm[48, 0]) / iod,
          "lip gap": (lm[66, 1] - lm[62, 1]) / iod}


def test_mean_face_has_the_lower_face_proportions_of_annotated_photos(model):
  """The mean face's landmarks against the 300W-style annotations of the fixture photos with closed
  mouths (all near-frontal): each proportion of the lower face within the photos' range. A network
  trained on faces whose upper lip sat too close to the nose (0.10 interocular against the photos'
  0.11-0.23) put every photo's upper lip too high."""
  photos = [_lower_face(read_landmarks_txt(p))
            for p in sorted(glob.glob(os.path.join(fixtures_dir(), "*.txt")))]
  closed = [p for p in photos if p["lip gap"] < 0.05]
  assert len(closed) >= 3, photos
  mean = _lower_face(model.vertices()[model.landmark_indices][:, :2] * [1.0, -1.0])
  assert mean["lip gap"] == 0.0
  for key in ("nose base to upper lip", "lips (closed)", "lower lip to chin", "mouth width"):
    values = [p[key] for p in closed]
    assert min(values) <= mean[key] <= max(values), (key, mean[key], values)


def test_mouth_opens_with_the_jaw_and_only_with_it(model):
  def gap_mm(e):
    v = model.vertices(None, e)[model.landmark_indices] / MM
    return v[62, 1] - v[66, 1]

  opening = []
  for value in (0.0, 0.5, 1.0, 2.0, 2.8):
    e = np.zeros(NUM_EXPRESSION)
    e[0] = value
    opening.append(gap_mm(e))
  assert abs(opening[0]) < 1e-6
  assert np.all(np.diff(opening) > 0) and opening[-1] > 15, opening
  # Other expressions (lip raisers and the jaw aside) keep the lips together.
  rng = np.random.default_rng(1)
  for _ in range(5):
    e = rng.normal(size=NUM_EXPRESSION)
    e[[0, 12, 13]] = 0.0
    assert abs(gap_mm(e)) < 1e-6
  # The lips are separate surfaces: no triangle joins an upper-lip vertex to a lower-lip one.
  tri = model.triangles
  upper, lower = model.landmark_indices[[61, 62, 63]], model.landmark_indices[[65, 66, 67]]
  has_upper = np.isin(tri, upper).any(axis=1)
  has_lower = np.isin(tri, lower).any(axis=1)
  assert not np.any(has_upper & has_lower)


def test_face_mask_leaves_out_neck_ears_skull_and_mouth_interior(model):
  v = model.vertices() / MM
  lm = v[model.landmark_indices]
  face = model.face_mask
  assert (~face).sum() > 1000  # there is a head around the face, to exercise the mask
  assert not np.any(face & mouth_interior_mask())
  assert v[face, 1].min() >= lm[8, 1] - 12  # nothing far below the chin (neck)
  # The ears are the widest part of the head at eye level, and outside the face.
  level = np.abs(v[:, 1] - lm[36, 1]) < 15
  widest = np.argsort(-np.abs(v[:, 0]) * level)[:20]
  assert not np.any(face[widest])
  # Nothing as far back as the ears, nothing on the skull above the forehead.
  assert v[face, 2].min() > v[widest, 2].max() + 5
  assert v[face, 1].max() < lm[19, 1] + 80
  # The face region is one connected piece of surface.
  tri = model.face_triangles()
  parent = np.arange(model.num_vertices)

  def find(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  for a, b, c in tri:
    for x, y in ((a, b), (b, c)):
      rx, ry = find(x), find(y)
      if rx != ry:
        parent[rx] = ry
  roots = {find(i) for i in np.unique(tri)}
  assert len(roots) == 1


def test_random_faces_do_not_fold(model):
  """N(0, 1) identities and expressions (mouth opening only >= 0: negative values press the lips into
  each other) keep almost every face triangle facing the way it did."""
  tri = model.face_triangles()

  def normals(v):
    a, b, c = (v[tri[:, i]] for i in range(3))
    return np.cross(b - a, c - a)

  n0 = normals(model.vertices())
  rng = np.random.default_rng(2)
  flipped = []
  for _ in range(30):
    s, e = _params(rng.integers(1 << 30), model)
    e = np.clip(e, -2.5, 2.5)
    e[0] = abs(e[0])
    flipped.append(np.mean(np.sum(normals(model.vertices(s, e)) * n0, axis=1) < 0))
  assert np.max(flipped) < 0.005 and np.mean(flipped) < 0.001, flipped


def test_head_is_a_closed_consistently_wound_surface(model):
  """Skull cap, neck base and the mouth bag close the head: every edge is shared by exactly two
  triangles that traverse it in opposite directions, so no view (say, through an open mouth at yaw 80)
  sees into the head, and outward normals are well defined for shading."""
  tri = model.triangles.astype(np.int64)
  directed = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
  n = model.num_vertices
  keys = directed[:, 0] * n + directed[:, 1]
  reverse = directed[:, 1] * n + directed[:, 0]
  assert np.unique(keys).size == keys.size  # no directed edge twice: consistent winding
  assert np.all(np.isin(reverse, keys))  # every edge has its twin: closed
  # Outward: the enclosed volume is positive.
  v = model.vertices()
  a, b, c = (v[tri[:, i]] for i in range(3))
  volume = np.sum(np.einsum("ij,ij->i", a, np.cross(b, c))) / 6
  assert volume > 0
