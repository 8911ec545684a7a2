"""Landmark marching (`geometry.landmarks`): a posed face's jaw landmarks on its visible outline."""

import numpy as np
import pytest
from scipy import ndimage

from vrn_jax.faces.face_model import build_face_model, mirror_vertex_indices
from vrn_jax.geometry.landmarks import JAW_LEFT, JAW_RIGHT, outline_landmark_indices
from vrn_jax.geometry.pose import Pose
from vrn_jax.geometry.raster import depth_buffer

SIZE = 450


def _posed(model, yaw_deg: float, roll_deg: float = 0.0) -> np.ndarray:
  pose = Pose(0.0, np.deg2rad(yaw_deg), np.deg2rad(roll_deg), (225.0, 225.0, 0.0), 1.2e-3)
  return pose.project(model.vertices(), SIZE)


def _depth_inside(model, posed, indices) -> np.ndarray:
  """Pixels from each vertex's pixel to the outside of the face region's silhouette (1 = on its edge)."""
  mask = np.isfinite(depth_buffer(posed, model.face_triangles(), (SIZE, SIZE)))
  inside = ndimage.distance_transform_edt(mask)
  x, y = np.round(posed[indices, :2]).astype(int).T
  return inside[y, x]


@pytest.mark.parametrize("roll", [0.0, 20.0])
def test_jaw_landmarks_reach_the_outline_where_the_fixed_vertices_do_not(roll):
  model = build_face_model()
  fixed = np.asarray(model.landmark_indices)
  # Frontal: both sides within 2.5 px of the outline (one column of the model's grid at the cheek's edge,
  # ~2 px, and the rounding to a pixel), mirror images of each other; the fixed vertices 5-10 px inside.
  v = _posed(model, 0.0, roll)
  marched = outline_landmark_indices(model, v)
  jaw = list(JAW_LEFT + JAW_RIGHT)
  assert np.all(_depth_inside(model, v, marched[jaw]) <= 2.5)
  assert np.all(_depth_inside(model, v, fixed[jaw]) >= 5.0)
  if roll == 0.0:
    np.testing.assert_array_equal(marched[list(JAW_RIGHT)][::-1],
                                  mirror_vertex_indices()[marched[list(JAW_LEFT)]])
  # Every other landmark is the model's vertex.
  others = [k for k in range(68) if k not in jaw]
  np.testing.assert_array_equal(marched[others], fixed[others])
  # Turned: the far side's landmarks on its occluding contour, to 3.5 px (a parallel's outermost
  # vertex; with the head rolled, the neighbouring rows may draw the outline there); the fixed vertices
  # come to lie there too at these yaws. The near side's within one column of the grid (~8 mm at the
  # ears) of the face region's edge, where the fixed vertices stay on the cheek, 10-50 px inside.
  for yaw in (30.0, -30.0, 50.0, -50.0):
    v = _posed(model, yaw, roll)
    marched = outline_landmark_indices(model, v)
    far, near = (list(JAW_LEFT), list(JAW_RIGHT)) if yaw > 0 else (list(JAW_RIGHT), list(JAW_LEFT))
    assert np.all(_depth_inside(model, v, marched[far]) <= 3.5), yaw
    assert np.all(_depth_inside(model, v, marched[near]) <= 8.0), yaw
    assert np.max(_depth_inside(model, v, fixed[near])) >= 30.0, yaw


def test_the_choice_does_not_depend_on_the_image_frame():
  """Photo or crop frame: a similarity of the image plane (and any z offset) picks the same vertices."""
  model = build_face_model()
  v = _posed(model, 35.0, 10.0)
  moved = v * np.array([0.43, 0.43, 0.43]) + np.array([-71.0, 12.5, 300.0])
  np.testing.assert_array_equal(outline_landmark_indices(model, v),
                                outline_landmark_indices(model, moved))


def test_wrong_vertex_count_is_refused():
  model = build_face_model()
  with pytest.raises(ValueError, match=rf"expected \({model.num_vertices}, 3\)"):
    outline_landmark_indices(model, np.zeros((10, 3)))
