"""Paper voxelisation: the compact encoding decodes to exactly the authors' dense procedure, and the
volume is the right solid."""

import numpy as np
import pytest

from conftest import half_ellipsoid, image_rotation
from vrn_jax.geometry.isosurface import volume_to_mesh
from vrn_jax.geometry.voxelise import (VOLUME_SHAPE, Z_SCALE, decode_volume, encode_volume,
                                       frontal_depth_map, voxelise, voxelise_dense_reference)

CENTRE = np.array([96.0, 100.0, 50.0])  # crop pixels; z in mesh units (voxel index * 0.5)


def _posed(vertices, pitch, yaw, roll):
  r = image_rotation(pitch, yaw, roll)
  return vertices @ r.T + CENTRE, r


@pytest.mark.parametrize("yaw", [-90, -60, -30, 0, 30, 60, 90])
def test_decode_equals_the_dense_procedure_across_yaw(yaw):
  v, f = half_ellipsoid((45.0, 55.0, 30.0), subdivisions=4, nose=14.0)
  rng = np.random.default_rng(yaw + 90)
  pitch, roll = rng.uniform(-30, 30, size=2)
  verts, r = _posed(v, pitch, yaw, roll)
  compact = encode_volume(verts, f, r)
  volume = decode_volume(compact)
  assert volume.shape == VOLUME_SHAPE and volume.dtype == bool
  assert volume.sum() > 100_000
  assert_equal_but_ties(volume, compact)
  np.testing.assert_array_equal(volume, voxelise(verts, f, r))
  dense_bytes = np.prod(VOLUME_SHAPE)  # uint8
  assert compact.nbytes * 20 < dense_bytes


def assert_equal_but_ties(volume, compact):
  """`volume` equals the independent float64 implementation of the decoding rule, except for voxels
  whose centre lies within float32 rounding (1e-4 voxels) of the surface or back plane."""
  reference, margin = voxelise_dense_reference(compact)
  differ = volume != reference
  assert np.all(np.abs(margin[differ]) < 1e-4), np.abs(margin[differ]).max()
  assert differ.sum() <= 1e-3 * reference.sum()  # ties are rare: a frontal pose lines some up


def _solid_distance(points_frontal, radii):
  """Approximate distance (crop pixels) from points to the boundary of the half-ellipsoid solid."""
  q = points_frontal / radii
  f = np.sum(q**2, axis=1) - 1.0
  grad = 2 * points_frontal / radii**2
  d_surface = np.abs(f) / np.maximum(np.linalg.norm(grad, axis=1), 1e-9)
  d_plane = np.abs(points_frontal[:, 2])
  return np.minimum(d_surface, d_plane)


@pytest.mark.parametrize("pose", [(0, 0, 0), (20, 45, -10), (-15, -80, 25)])
def test_ellipsoid_voxelised_and_remeshed_comes_back_within_one_voxel(pose):
  radii = np.array([45.0, 55.0, 30.0])
  v, f = half_ellipsoid(radii, subdivisions=5)
  verts, r = _posed(v, *pose)
  volume = voxelise(verts, f, r)
  mesh = volume_to_mesh(volume.astype(np.float32))
  # Every re-meshed vertex lies within one voxel (one crop pixel) of the solid's boundary.
  frontal = (mesh.vertices - CENTRE) @ r
  dist = _solid_distance(frontal, radii)
  assert dist.max() <= 1.0, dist.max()
  # And the voxel count matches the solid's volume (2 voxels per cubic pixel) within 2%.
  expected = 2.0 / 3.0 * np.pi * np.prod(radii) / Z_SCALE
  assert abs(volume.sum() / expected - 1) < 0.02
  # The mesh is closed and its normals point outward.
  tm = mesh.to_trimesh()
  assert tm.is_watertight and tm.volume > 0
  assert abs(tm.volume / (expected * Z_SCALE) - 1) < 0.03


def test_depth_map_fills_a_hole_and_keeps_front_most_surface():
  v, f = half_ellipsoid((40.0, 40.0, 20.0), subdivisions=5)
  uvk = v.copy()
  uvk[:, :2] += 96.0
  uvk[:, 2] += 100.0
  # Cut a mouth: drop every triangle whose centre lies in a slot below the centre.
  centres = uvk[f].mean(axis=1)
  mouth = (np.abs(centres[:, 0] - 96) < 10) & (np.abs(centres[:, 1] - 110) < 3)
  depth = frontal_depth_map(uvk, f[~mouth], (192, 192))
  full = frontal_depth_map(uvk, f, (192, 192))
  covered = np.isfinite(full)
  assert np.array_equal(np.isfinite(depth), covered)  # no hole left
  hole = (np.abs(np.arange(192)[None, :] - 96) < 7) & (np.abs(np.arange(192)[:, None] - 110) < 2)
  np.testing.assert_allclose(depth[hole], full[hole], atol=0.5)  # smooth surface, linear fill
  # A second, nearer layer wins: a small plate in front of the ellipsoid.
  plate_v = np.array([[90.0, 90, 200], [102, 90, 200], [90, 102, 200], [102, 102, 200]])
  plate_f = np.array([[0, 1, 2], [1, 3, 2]]) + len(uvk)
  both = frontal_depth_map(np.concatenate([uvk, plate_v]), np.concatenate([f, plate_f]), (192, 192))
  np.testing.assert_allclose(both[90:103, 90:103], 200.0, atol=1e-9)
  np.testing.assert_array_equal(both[:, :85], full[:, :85])


def test_vertex_mask_leaves_out_ears():
  v, f = half_ellipsoid((40.0, 50.0, 25.0), subdivisions=4)
  # An "ear": a flap beside the face, outside the mask.
  ear_v = np.array([[45.0, -10, 5], [60, -10, 5], [45, 10, 5], [60, 10, 5]])
  ear_f = np.array([[0, 1, 2], [1, 3, 2]]) + len(v)
  all_v = np.concatenate([v, ear_v])
  all_f = np.concatenate([f, ear_f])
  mask = np.arange(len(all_v)) < len(v)
  verts, r = _posed(all_v, 5, 20, 0)
  with_ear = voxelise(verts, all_f, r)
  masked = voxelise(verts, all_f, r, vertex_mask=mask)
  face_only = voxelise(verts[: len(v)], f, r)
  np.testing.assert_array_equal(masked, face_only)
  assert with_ear.sum() > masked.sum()


def test_faces_partly_outside_the_volume_are_cut_not_wrapped():
  v, f = half_ellipsoid((45.0, 55.0, 30.0), subdivisions=4)
  r = image_rotation(0, 0, 0)
  shifted = v + np.array([170.0, 96.0, 80.0])  # half the face beyond x = 191, front beyond z = 100
  volume = voxelise(shifted, f, r)
  assert volume.any()
  assert volume[:, :120].sum() == 0  # nothing wraps round to the other side
  assert not volume[:, :, 199].all()
