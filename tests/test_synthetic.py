"""Synthetic faces, their renderer and rasteriser, and the 300W-LP / AFLW2000-3D shaped trees."""

import os

import numpy as np
import pytest

from vrn_jax.faces import render
from vrn_jax.faces.face_model import build_face_model
from vrn_jax.faces.synthetic import sample_face, write_300w_lp_tree, write_aflw2000_tree
from vrn_jax.files import load_mat, read_image_rgb
from vrn_jax.geometry import raster
from vrn_jax.geometry.morphable_model import load_3ddfa
from vrn_jax.geometry.pose import Pose


@pytest.fixture(scope="module")
def model():
  return build_face_model()


@pytest.fixture(scope="module")
def faces(model):
  return [sample_face(model, np.random.default_rng([5, i])) for i in range(10)]


def test_sample_face_is_deterministic_per_seed(model):
  a = sample_face(model, np.random.default_rng(42))
  b = sample_face(model, np.random.default_rng(42))
  c = sample_face(model, np.random.default_rng(43))
  np.testing.assert_array_equal(a.image, b.image)
  for field in ("pose_para", "shape_para", "exp_para", "tex_para", "color_para", "illum_para"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert not np.array_equal(a.image, c.image)
  assert a.image.shape == (450, 450, 3) and a.image.dtype == np.uint8
  assert a.pose_para.shape == (7,) and a.exp_para.shape == (29,) and a.shape_para.shape == (40,)


def test_poses_and_landmarks_follow_the_300w_lp_contract(model, faces):
  for face in faces:
    pitch, yaw, roll = np.rad2deg(face.pose_para[:3])
    assert abs(yaw) <= 90 and abs(pitch) <= 30 and abs(roll) <= 30
    pose = Pose.from_pose_para(face.pose_para)
    projected = pose.project(model.vertices(face.shape_para, face.exp_para), 450)
    np.testing.assert_allclose(projected[model.landmark_indices], face.landmarks, atol=1e-9)
    # Inside the image, and the face region's box a sensible size.
    assert np.all(face.landmarks[:, :2] >= 0) and np.all(face.landmarks[:, :2] <= 449)
    region = projected[model.face_mask, :2]
    assert np.all(region >= 0) and np.all(region <= 449)
    assert 100 < np.ptp(region[:, 1]) < 330
  yaws = np.rad2deg([f.pose_para[1] for f in faces])
  assert yaws.min() < -20 and yaws.max() > 20  # the draw covers both sides


def test_rendered_face_covers_its_landmarks(model, faces):
  from scipy import ndimage

  for face in faces:
    x, y = np.round(face.landmarks[:, :2]).astype(int).T
    # The head is a closed surface, so every landmark projects inside its silhouette; those on it (the
    # jaw line, a profile's nose ridge or parted lips) may round to a pixel centre just outside.
    assert np.all(ndimage.binary_dilation(face.foreground, iterations=2)[y, x])
    assert np.mean(face.foreground[y, x]) > 0.8
    # Outside the rendered face the image is the background, inside it differs from any background:
    # render the same pose over two backgrounds and compare.
    pose = Pose.from_pose_para(face.pose_para)
    v = pose.project(model.vertices(face.shape_para, face.exp_para), 450)
    albedo = render.face_albedo(model, face.tex_para)
    black = render.render_face(v, model.triangles, albedo, (0, 0, 1), 0.4, np.zeros_like(face.image))
    white = render.render_face(v, model.triangles, albedo, (0, 0, 1), 0.4,
                               np.full_like(face.image, 255))
    same = np.all(black == white, axis=-1)
    np.testing.assert_array_equal(same, face.foreground)
  covered = np.mean([f.foreground.mean() for f in faces])
  assert 0.1 < covered < 0.6


def test_lighting_faces_the_light(model):
  """A frontal face lit from the camera is bright; lit from the image's left, its left half is."""
  pose = Pose(0.0, 0.0, 0.0, (225.0, 225.0, 0.0), 1.2e-3)
  v = pose.project(model.vertices(), 450)
  albedo = np.full((model.num_vertices, 3), 0.8)
  background = np.zeros((450, 450, 3), np.uint8)
  front = render.render_face(v, model.triangles, albedo, (0, 0, 1), 0.0, background)
  behind = render.render_face(v, model.triangles, albedo, (0, 0, -1), 0.0, background)
  nose = np.round(v[model.landmark_indices[30], :2]).astype(int)
  assert front[nose[1], nose[0], 0] > 190  # n.l ~ 1 at the nose tip: ~0.8 * 255
  assert behind[nose[1], nose[0]].max() == 0 and np.mean(behind > 0) < 0.01  # only a thin rim
  left = render.render_face(v, model.triangles, albedo, (-1, 0, 0.3), 0.0, background)
  cheeks = model.landmark_indices[[2, 14]]  # image-left and image-right cheek
  (xl, yl), (xr, yr) = np.round(v[cheeks, :2]).astype(int) + [[8, 0], [-8, 0]]
  assert left[yl, xl, 0] > 2 * left[yr, xr, 0] + 20


def test_backgrounds_differ(model):
  rng = np.random.default_rng(0)
  a, b = render.random_background(rng), render.random_background(rng)
  assert a.shape == (450, 450, 3) and a.dtype == np.uint8
  assert np.mean(a != b) > 0.5


def _brute_force_raster(vertices, triangles, shape):
  """Every pixel against every triangle, with the rasteriser's documented rule written out plainly."""
  h, w = shape
  depth = np.full((h, w), -np.inf)
  tri_id = np.full((h, w), -1)
  bary = np.zeros((h, w, 3))
  for t, (i0, i1, i2) in enumerate(triangles):
    (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = vertices[i0], vertices[i1], vertices[i2]
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    if abs(area) <= 1e-12:
      continue
    for pv in range(h):
      for pu in range(w):
        w0 = ((x1 - pu) * (y2 - pv) - (x2 - pu) * (y1 - pv)) / area
        w1 = ((x2 - pu) * (y0 - pv) - (x0 - pu) * (y2 - pv)) / area
        w2 = 1.0 - w0 - w1
        if min(w0, w1, w2) < -1e-9:
          continue
        z = w0 * z0 + w1 * z1 + w2 * z2
        if z > depth[pv, pu]:  # strictly nearer; ties keep the lower triangle index
          depth[pv, pu], tri_id[pv, pu], bary[pv, pu] = z, t, (w0, w1, w2)
  return depth, tri_id, bary


@pytest.mark.parametrize("max_rows", [1 << 21, 7])  # one chunk; many chunks
def test_rasteriser_matches_brute_force(monkeypatch, max_rows):
  monkeypatch.setattr(raster, "_MAX_ROWS", max_rows)
  rng = np.random.default_rng(3)
  shape = (23, 31)
  small = rng.uniform([-2, -2, 0], [33, 25, 10], (40, 3))
  big = rng.uniform([-15, -15, 0], [45, 40, 10], (9, 3))  # triangles covering hundreds of pixels
  grid = np.array([[5.0, 5, 1], [15, 5, 1], [5, 15, 1], [15, 15, 1]])  # centres exactly on edges
  vertices = np.concatenate([small, big, grid, [[np.nan, 1, 1]]])
  n_small, n_big = len(small), len(big)
  triangles = np.concatenate([
      rng.integers(0, n_small, (30, 3)),
      n_small + rng.integers(0, n_big, (6, 3)),
      n_small + n_big + np.array([[0, 1, 2], [1, 3, 2]]),
      [[0, 1, len(vertices) - 1], [0, 0, 1]],  # a NaN vertex; a degenerate triangle
  ])
  result = raster.rasterise(vertices, triangles, shape)
  depth, tri_id, bary = _brute_force_raster(vertices, triangles, shape)
  np.testing.assert_array_equal(result.depth, depth)
  np.testing.assert_array_equal(result.triangle, tri_id)
  np.testing.assert_array_equal(result.barycentric, bary)
  np.testing.assert_array_equal(raster.depth_buffer(vertices, triangles, shape), depth)
  assert (tri_id >= 0).mean() > 0.5  # the big triangles did cover the grid


def test_tree_writers_round_trip(model, tmp_path):
  written = write_300w_lp_tree(tmp_path, 5, seed=3)
  written += write_aflw2000_tree(tmp_path, 3, seed=4)
  for rel in written:
    assert os.path.isfile(tmp_path / rel), rel
  subsets = {rel.split(os.sep)[1] for rel in written if rel.endswith(".jpg") and "300W_LP" in rel}
  assert subsets == {"AFW", "HELEN", "IBUG", "LFPW"}
  loaded = load_3ddfa(tmp_path / "Model_Shape.mat", tmp_path / "Model_Exp.mat")
  mats = [rel for rel in written if rel.endswith(".mat") and "_pts" not in rel
          and not rel.startswith("Model_")]
  assert len(mats) == 8
  for rel in mats:
    mat = load_mat(tmp_path / rel, required=("Pose_Para", "Shape_Para", "Exp_Para", "Tex_Para",
                                             "Color_Para", "Illum_Para", "pt2d", "roi"))
    assert mat["Pose_Para"].shape == (1, 7) and mat["Shape_Para"].shape == (40, 1)
    assert mat["Exp_Para"].shape == (29, 1)
    pose = Pose.from_pose_para(mat["Pose_Para"])
    projected = pose.project(loaded.vertices(mat["Shape_Para"], mat["Exp_Para"]), 450)
    landmarks = projected[loaded.landmark_indices]
    image = read_image_rgb(str(tmp_path / rel)[:-4] + ".jpg")
    assert image.shape == (450, 450, 3)
    if rel.startswith("AFLW2000"):
      assert os.path.basename(rel).startswith("image0")
      np.testing.assert_allclose(mat["pt3d_68"], (landmarks + [1.0, 1.0, 0.0]).T, atol=1e-6)
      # As in the real AFLW2000-3D: pt2d holds AFLW's 21 points, 1-based; the ears (12, 16) are missing.
      assert mat["pt2d"].shape == (2, 21)
      np.testing.assert_array_equal(mat["pt2d"][:, [12, 16]], -1.0)
      for aflw, ibug in ((0, 17), (5, 26), (6, 36), (14, 30), (17, 48), (19, 54), (20, 8)):
        np.testing.assert_allclose(mat["pt2d"][:, aflw], landmarks[ibug, :2] + 1.0, atol=1e-6)
      eye = landmarks[[37, 38, 40, 41], :2].mean(axis=0)
      np.testing.assert_allclose(mat["pt2d"][:, 7], eye + 1.0, atol=1e-6)
    else:
      assert mat["pt2d"].shape == (2, 68)
      np.testing.assert_allclose(mat["pt2d"], landmarks[:, :2].T + 1.0, atol=1e-6)
      subset, name = rel.split(os.sep)[1], os.path.basename(rel)[:-4]
      assert name.startswith(subset + "_")
      pts = load_mat(tmp_path / "300W_LP" / "landmarks" / subset / f"{name}_pts.mat",
                     required=("pts_2d",))
      np.testing.assert_allclose(pts["pts_2d"], mat["pt2d"].T, atol=1e-6)
  # The trees hold the same faces sample_face draws (one generator per item, [seed, index]).
  first = sample_face(model, np.random.default_rng([3, 0]))
  jpeg = read_image_rgb(tmp_path / "300W_LP" / "AFW" / "AFW_3000000_1_0.jpg")
  assert np.mean(np.abs(jpeg.astype(float) - first.image)) < 4.0
