"""3DMM readers and the 300W-LP pose convention."""

import numpy as np
import pytest
import scipy.io

from vrn_jax.errors import InputError
from vrn_jax.geometry.morphable_model import load_3ddfa, load_bfm_face3d, load_morphable_model
from vrn_jax.geometry.pose import Pose, angles_from_rotation_3ddfa, rotation_3ddfa


def _random_model_arrays(rng, n=50, ks=7, ke=4, t=60):
  return dict(
      mu_shape=rng.normal(size=(3 * n, 1)) * 1e4,
      mu_exp=rng.normal(size=(3 * n, 1)) * 1e2,
      w=rng.normal(size=(3 * n, ks)) * 1e3,
      w_exp=rng.normal(size=(3 * n, ke)) * 1e2,
      tri=rng.integers(1, n + 1, size=(3, t)),
      kpt=np.sort(rng.choice(np.arange(1, n + 1), size=68, replace=True)).reshape(1, 68),
  )


def _expected_vertices(a, shape_para, exp_para):
  v = a["mu_shape"][:, 0] + a["mu_exp"][:, 0] + a["w"] @ shape_para + a["w_exp"] @ exp_para
  return v.reshape(3, -1, order="F").T  # DESIGN section 2: reshape (3, N) column-major


def test_3ddfa_and_face3d_readers_reconstruct_the_same_vertices(tmp_path):
  rng = np.random.default_rng(0)
  a = _random_model_arrays(rng)
  scipy.io.savemat(tmp_path / "Model_Shape.mat",
                   dict(mu_shape=a["mu_shape"], w=a["w"], tri=a["tri"], keypoints=a["kpt"]))
  scipy.io.savemat(tmp_path / "Model_Exp.mat", dict(mu_exp=a["mu_exp"], w_exp=a["w_exp"]))
  model = dict(shapeMU=a["mu_shape"], expMU=a["mu_exp"], shapePC=a["w"], expPC=a["w_exp"],
               tri=a["tri"], kpt_ind=a["kpt"])
  scipy.io.savemat(tmp_path / "BFM.mat", dict(model=model))
  shape_para, exp_para = rng.normal(size=7), rng.normal(size=4)
  expected = _expected_vertices(a, shape_para, exp_para)
  for m in (load_3ddfa(tmp_path / "Model_Shape.mat", tmp_path / "Model_Exp.mat"),
            load_bfm_face3d(tmp_path / "BFM.mat"), load_morphable_model(tmp_path)):
    np.testing.assert_allclose(m.vertices(shape_para[:, None], exp_para[:, None]), expected,
                               rtol=1e-12, atol=1e-6)
    np.testing.assert_array_equal(m.triangles, a["tri"].T - 1)
    np.testing.assert_array_equal(m.landmark_indices, a["kpt"][0] - 1)


def test_missing_key_names_the_file_and_key(tmp_path):
  (tmp_path / "empty").mkdir()
  scipy.io.savemat(tmp_path / "Model_Shape.mat", dict(mu_shape=np.zeros((6, 1)), w=np.zeros((6, 1))))
  scipy.io.savemat(tmp_path / "Model_Exp.mat", dict(mu_exp=np.zeros((6, 1)), w_exp=np.zeros((6, 1))))
  with pytest.raises(InputError, match=r"Model_Shape\.mat: missing key\(s\) \['tri', 'keypoints'\]"):
    load_3ddfa(tmp_path / "Model_Shape.mat", tmp_path / "Model_Exp.mat")
  with pytest.raises(InputError, match="neither Model_Shape.mat"):
    load_morphable_model(tmp_path / "empty")
  with pytest.raises(InputError, match="nowhere: no such 3DMM"):
    load_morphable_model(tmp_path / "nowhere")


def test_rotation_follows_3ddfa_convention():
  pitch, yaw, roll = 0.3, -0.7, 0.2
  r = rotation_3ddfa(pitch, yaw, roll)
  np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
  assert np.isclose(np.linalg.det(r), 1.0)
  # 3DDFA's RotationMatrix.m: each factor is the transpose of the textbook rotation; R = Rx Ry Rz.
  rx = rotation_3ddfa(pitch, 0, 0)
  ry = rotation_3ddfa(0, yaw, 0)
  rz = rotation_3ddfa(0, 0, roll)
  np.testing.assert_allclose(r, rx @ ry @ rz, atol=1e-12)
  np.testing.assert_allclose(ry, [[np.cos(yaw), 0, -np.sin(yaw)], [0, 1, 0],
                                  [np.sin(yaw), 0, np.cos(yaw)]], atol=1e-12)
  np.testing.assert_allclose(angles_from_rotation_3ddfa(r), (pitch, yaw, roll), atol=1e-12)


def test_projection_to_zero_based_pixels_and_back():
  rng = np.random.default_rng(1)
  pose = Pose.from_pose_para([0.1, 0.5, -0.2, 220.0, 240.0, 0.0, 1.3e-3])
  v = rng.normal(size=(20, 3)) * 5e4
  height = 450
  p = pose.project(v, height)
  raw = pose.scale * v @ pose.rotation.T + np.asarray(pose.translation)
  np.testing.assert_allclose(p[:, 0], raw[:, 0] - 1)  # 1-based x -> 0-based
  np.testing.assert_allclose(p[:, 1], height - raw[:, 1])  # y up (1-based) -> y down (0-based)
  np.testing.assert_allclose(p[:, 2], raw[:, 2])
  np.testing.assert_allclose(pose.unproject(p, height), v, rtol=1e-9, atol=1e-6)
  # In the image frame the same rotation is F R F acting on the y-flipped model.
  flip = np.diag([1.0, -1.0, 1.0])
  frontal = Pose.from_pose_para([0, 0, 0, *pose.translation, pose.scale]).project(v, height)
  centre = frontal.mean(axis=0)
  expected = (frontal - centre) @ pose.image_rotation.T
  np.testing.assert_allclose(p - p.mean(axis=0), expected, atol=1e-6)
  np.testing.assert_allclose(pose.image_rotation, flip @ pose.rotation @ flip)
  np.testing.assert_allclose(Pose.from_pose_para(pose.to_pose_para()).rotation, pose.rotation)
