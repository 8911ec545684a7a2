"""Props drawn with a synthetic face (vrn_jax.faces.props): valid meshes, placed with the face and never
through its face region, each part at its rate and off when its flag is off."""

import dataclasses

import numpy as np
import pytest

from vrn_jax.faces import props
from vrn_jax.faces.face_model import build_face_model
from vrn_jax.faces.scene import SceneOptions
from vrn_jax.geometry.pose import Pose
from vrn_jax.geometry.raster import depth_buffer

SIZE = 450
SKIN = np.array([0.75, 0.55, 0.45])
HAIR = np.array([0.25, 0.15, 0.08])


@pytest.fixture(scope="module")
def model():
  return build_face_model()


def posed_face(model, seed, yaw_deg=None):
  """A random face (identity, expression, pose) as sample_face places it: ~180 px wide, centred."""
  rng = np.random.default_rng([seed, 99])
  vertices = model.vertices(rng.normal(size=40), np.clip(0.6 * rng.normal(size=29), -2, 2))
  yaw = rng.uniform(-80, 80) if yaw_deg is None else yaw_deg
  pitch, roll = rng.uniform(-25, 25, 2)
  probe = Pose(np.deg2rad(pitch), np.deg2rad(yaw), np.deg2rad(roll), (0.0, 0.0, 0.0), 1.0)
  f = rng.uniform(150, 210) / np.ptp(vertices[model.face_mask, 0])
  mid = f * (vertices[model.face_mask] @ probe.rotation.T).mean(axis=0)
  pose = Pose(probe.pitch, probe.yaw, probe.roll, (SIZE / 2 + 1 - mid[0], SIZE / 2 - mid[1], 0.0), f)
  return pose.project(vertices, SIZE), pose


def draw(model, seed, scene=None, yaw_deg=None):
  vertices_img, pose = posed_face(model, seed, yaw_deg)
  meshes = props.sample_props(model, vertices_img, pose, SIZE, SKIN, HAIR,
                              np.random.default_rng(seed), scene)
  return vertices_img, pose, meshes


def face_front_depth(model, vertices_img):
  """(H, W) depth of the face region's front surface (-inf off it): the target's footprint."""
  return depth_buffer(vertices_img, model.face_triangles(), (SIZE, SIZE))


def prop_depth(mesh):
  return depth_buffer(mesh.vertices, mesh.triangles, (SIZE, SIZE))


def only(part):
  return dataclasses.replace(SceneOptions.plain(), **{part: True})


def test_deterministic_and_valid(model):
  for seed in range(4):
    _, pose, meshes = draw(model, seed)
    _, _, again = draw(model, seed)
    assert [m.name for m in meshes] == [m.name for m in again]
    for m, n in zip(meshes, again):
      np.testing.assert_array_equal(m.vertices, n.vertices)
      np.testing.assert_array_equal(m.triangles, n.triangles)
      np.testing.assert_array_equal(m.albedo, n.albedo)
    for m in meshes:
      assert m.vertices.ndim == 2 and m.vertices.shape[1] == 3 and np.all(np.isfinite(m.vertices))
      assert m.albedo.shape == m.vertices.shape and np.all((m.albedo >= 0) & (m.albedo <= 1))
      assert m.triangles.min() >= 0 and m.triangles.max() < len(m.vertices)
      if not m.two_sided and m.name != "beard":  # closed surfaces wind outward (model frame)
        model_frame = pose.unproject(m.vertices, SIZE)
        assert props.signed_volume(model_frame, m.triangles) > 0, m.name


def test_body_below_chin_and_behind_face(model):
  for seed in range(6):
    vertices_img, pose, meshes = draw(model, seed, only("body"))
    body = [m for m in meshes if m.name == "body"]
    assert body and all(m.name == "body" for m in meshes)
    geo = props.head_geometry(model, vertices_img, pose, SIZE)
    chin_y = geo.landmarks[8, 1]
    for m in body:
      head_frame = (pose.unproject(m.vertices, SIZE) - geo.origin) / geo.units_per_mm
      # Only the neck's top reaches above the chin, hidden inside the neck stub.
      assert head_frame[:, 1].max() < chin_y + 15.0
      above = head_frame[:, 1] > chin_y - 10.0
      assert np.all(head_frame[above, 2] < geo.landmarks[8, 2] - 20.0)
    face = face_front_depth(model, vertices_img)
    body_depth = np.max([prop_depth(m) for m in body], axis=0)
    over = np.isfinite(face) & np.isfinite(body_depth)
    assert np.all(body_depth[over] < face[over])


def test_flags_off(model):
  plain = SceneOptions.plain()
  for seed in range(3):
    assert draw(model, seed, plain)[2] == []
    names = {m.name for m in draw(model, seed, SceneOptions().without("body"))[2]}
    assert "body" not in names
