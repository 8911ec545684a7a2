"""NME protocols, ICP, closest points on meshes, CED curves and yaw bins."""

import numpy as np
import pytest
import trimesh
from scipy.spatial.distance import cdist
from scipy.spatial.transform import Rotation

from conftest import half_ellipsoid, image_rotation
from vrn_jax.errors import InputError
from vrn_jax.geometry import nme
from vrn_jax.geometry.crop import CropTransform
from vrn_jax.geometry.mesh import vertex_normals
from vrn_jax.geometry.isosurface import volume_to_mesh
from vrn_jax.geometry.voxelise import voxelise


def _compact(vertices, faces):
  """Drops the vertices no face uses (conftest's half ellipsoid keeps the sphere's back ones)."""
  used = np.unique(faces)
  remap = np.full(len(vertices), -1)
  remap[used] = np.arange(used.size)
  return vertices[used], remap[faces]


def _face_mesh(subdivisions=4):
  """A face-like surface: the front of an ellipsoid with a nose, centred near a photo's face."""
  v, f = _compact(*half_ellipsoid((50.0, 60.0, 35.0), subdivisions=subdivisions, nose=15.0))
  return v + np.array([200.0, 180.0, 40.0]), f


def _landmarks_with_eyes(vertices, eye_xy=((-30.0, -20.0), (30.0, -20.0))):
  """(68,) vertex indices: landmarks 37 and 46 (1-based) at the front-most vertices near `eye_xy`
  (relative to the mesh's x, y centre), the rest spread over the mesh."""
  centre = (vertices.max(axis=0) + vertices.min(axis=0)) / 2
  idx = np.linspace(0, len(vertices) - 1, 68).astype(np.int64)
  for k, (x, y) in zip(nme.OUTER_EYE_CORNERS, eye_xy):
    lateral = np.hypot(vertices[:, 0] - centre[0] - x, vertices[:, 1] - centre[1] - y)
    idx[k] = np.argmin(lateral - 1e-3 * vertices[:, 2])
  return idx


def _rotation(deg, axis):
  axis = np.asarray(axis, np.float64)
  return Rotation.from_rotvec(np.deg2rad(deg) * axis / np.linalg.norm(axis)).as_matrix()


# ----------------------------------------------------------------------------------------------------
# ICP


@pytest.mark.parametrize("method", nme.ICP_METHODS)
@pytest.mark.parametrize("deg, axis, shift", [(20, (1, -2, 1), (4, -3, 5)), (20, (0, 0, 1), (0, 0, 0)),
                                              (15, (0, 1, 0), (5, 5, -5))])
def test_icp_recovers_a_rigid_transform(method, deg, axis, shift):
  # Irregular samples of the surface: two copies of one *regular* lattice trap point-to-point ICP in
  # aliased fixed points (each point paired with its neighbour's copy), which says nothing about meshes.
  v, f = _face_mesh(3)
  target, _ = trimesh.sample.sample_surface(trimesh.Trimesh(v, f, process=False), 2000, seed=0)
  r = _rotation(deg, axis)
  centre = target.mean(axis=0)
  source = (target - centre) @ r.T + centre + np.asarray(shift, np.float64)
  rotation, translation, scale, info = nme.icp(source, target, max_iterations=200, method=method,
                                               target_normals=nme.point_cloud_normals(target))
  assert info.converged and scale == 1.0
  np.testing.assert_allclose(rotation, r.T, atol=1e-4)
  np.testing.assert_allclose(source @ rotation.T + translation, target, atol=1e-4)
  assert info.rmse < 1e-6


def test_icp_similarity_and_trimming():
  v, f = _face_mesh(3)
  target, _ = trimesh.sample.sample_surface(trimesh.Trimesh(v, f, process=False), 1500, seed=1)
  r, centre = _rotation(8, (1, 1, 0)), target.mean(axis=0)
  source = 1.1 * (target - centre) @ r.T + centre + np.array([2.0, -1.0, 3.0])
  rotation, translation, scale, _ = nme.icp(source, target, max_iterations=200, with_scale=True)
  assert scale == pytest.approx(1 / 1.1, rel=1e-6)
  np.testing.assert_allclose(scale * source @ rotation.T + translation, target, atol=1e-4)

  # 10% of the source far from the surface: trimmed ICP ignores them, plain ICP is pulled off.
  rng = np.random.default_rng(0)
  rigid = (target - centre) @ r.T + centre + np.array([2.0, -1.0, 3.0])
  outliers = rigid[:150] + rng.normal(size=(150, 3)) * 5 + np.array([0.0, 0.0, 25.0])
  noisy = np.concatenate([rigid, outliers])
  for trim, ok in ((0.15, True), (0.0, False)):
    rotation, translation, _, info = nme.icp(noisy, target, max_iterations=200, trim_fraction=trim,
                                             method="point_to_plane",
                                             target_normals=nme.point_cloud_normals(target))
    error = np.abs(rigid @ rotation.T + translation - target).max()
    assert (error < 1e-4) == ok, (trim, error)
    if ok:
      assert not info.inliers[len(rigid):].any()


def _brute_closest_on_triangle(p, a, b, c):
  """Independent of nme's Voronoi-region walk: project onto the plane; if the foot is inside (by
  barycentric coordinates) it is the answer, else the best of the three edge segments."""
  n = np.cross(b - a, c - a)
  foot = p - np.dot(p - a, n) / np.dot(n, n) * n
  m = np.array([b - a, c - a]).T
  beta, gamma = np.linalg.lstsq(m, foot - a, rcond=None)[0]
  if beta >= 0 and gamma >= 0 and beta + gamma <= 1:
    return foot
  best = None
  for s, e in ((a, b), (b, c), (c, a)):
    u = np.clip(np.dot(p - s, e - s) / np.dot(e - s, e - s), 0.0, 1.0)
    q = s + u * (e - s)
    if best is None or np.linalg.norm(p - q) < np.linalg.norm(p - best):
      best = q
  return best


def _brute_closest_on_mesh(points, vertices, faces):
  out = []
  for p in points:
    candidates = [_brute_closest_on_triangle(p, *vertices[t]) for t in faces]
    out.append(min(candidates, key=lambda q: np.linalg.norm(p - q)))
  return np.array(out)


def test_closest_points_on_mesh_are_exact():
  rng = np.random.default_rng(3)
  sphere = trimesh.creation.icosphere(2)
  vertices = sphere.vertices * np.array([30.0, 40.0, 20.0]) + rng.normal(size=sphere.vertices.shape)
  # One triangle far larger than the rest: tested through MeshProximity's separate path.
  vertices = np.concatenate([vertices, [[-80.0, -80.0, 60.0], [80.0, -80.0, 60.0], [0.0, 90.0, 60.0]]])
  faces = np.concatenate([sphere.faces, [[len(vertices) - 3, len(vertices) - 2, len(vertices) - 1]]])
  points = np.concatenate([rng.normal(size=(60, 3)) * 35, vertices[:40] + rng.normal(size=(40, 3)) * 0.5,
                           rng.normal(size=(20, 3)) * 5 + [0.0, 0.0, 55.0]])
  expected = _brute_closest_on_mesh(points, vertices, faces)
  proximity = nme.MeshProximity(vertices, faces)
  for k, k_more in ((8, 48), (1, 2)):  # (1, 2) sends most queries to the ball-query fallback
    closest, distance, triangle = proximity.closest_points(points, k=k, k_more=k_more)
    np.testing.assert_allclose(closest, expected, atol=1e-9)
    np.testing.assert_allclose(distance, np.linalg.norm(points - expected, axis=1), atol=1e-9)
    corners = vertices[faces[triangle]]
    on_plane = np.einsum("ij,ij->i", closest - corners[:, 0],
                         np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]))
    np.testing.assert_allclose(on_plane, 0.0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# NME protocols


@pytest.mark.parametrize("use_faces", [False, True])
def test_nme_of_a_mesh_against_itself_is_zero(use_faces):
  v, f = _face_mesh(4)
  lm = _landmarks_with_eyes(v)
  out = nme.nme_metrics(v, v, lm, pred_faces=f if use_faces else None)
  assert out == pytest.approx({"nme_paper": 0.0, "nme_aligned": 0.0, "nme_bbox": 0.0}, abs=1e-12)


@pytest.mark.parametrize("use_faces", [False, True])
def test_nme_paper_measures_a_rigid_motion_unaligned(use_faces):
  gt, f = _face_mesh(4)
  lm = _landmarks_with_eyes(gt)
  r, centre, shift = _rotation(10, (1, 2, 0)), gt.mean(axis=0), np.array([3.0, -2.0, 4.0])
  pred = (gt - centre) @ r.T + centre + shift
  d = np.linalg.norm(gt[lm[36]] - gt[lm[45]])
  expected = np.mean(np.linalg.norm(pred - gt, axis=1)) / d
  faces = f if use_faces else None
  # ICP finds the motion, so each vertex corresponds to its own moved copy; the paper's NME measures
  # the motion, the aligned one nothing.
  assert nme.nme_paper(pred, gt, lm, pred_faces=faces) == pytest.approx(expected, rel=1e-3)
  assert nme.nme_aligned(pred, gt, lm, pred_faces=faces) < 1e-6
  # A face region leaves the other vertices out of the mean.
  mask = gt[:, 2] > 60.0
  expected_masked = np.mean(np.linalg.norm(pred - gt, axis=1)[mask]) / d
  assert nme.nme_paper(pred, gt, lm, mask, faces) == pytest.approx(expected_masked, rel=1e-3)
  # The caller maps both into the photo frame: a shared similarity leaves the NME unchanged.
  crop = CropTransform(scale=0.37, tx=-20.0, ty=13.0, tz=5.0)
  assert nme.nme_paper(crop.to_photo(pred), crop.to_photo(gt), lm, pred_faces=faces) == pytest.approx(
      expected, rel=1e-3)


def test_nme_of_a_normal_offset_is_the_offset():
  # A closed, centrally symmetric ellipsoid: its offset surface needs no rigid motion, so ICP stays at
  # the identity and each vertex's error is the offset.
  sphere = trimesh.creation.icosphere(5)
  gt = sphere.vertices * np.array([50.0, 60.0, 35.0])
  lm = _landmarks_with_eyes(gt)
  d = np.linalg.norm(gt[lm[36]] - gt[lm[45]])
  delta = 1.5
  normals = vertex_normals(gt, sphere.faces)
  pred = gt + delta * normals
  for faces in (sphere.faces, None):
    out = nme.nme_metrics(pred, gt, lm, pred_faces=faces)
    assert out["nme_paper"] == pytest.approx(delta / d, rel=0.05)
    assert out["nme_aligned"] == pytest.approx(delta / d, rel=0.05)


def test_isosurface_of_the_voxelised_ground_truth_scores_near_zero():
  # The evaluation's real shapes: the prediction is a closed solid (front, sides, back plane) meshed from
  # a volume in crop coordinates, mapped back to the photo with the crop transform like the ground truth.
  # Matching each ground-truth vertex to the prediction (not the reverse) ignores the extra surface.
  v, f = _compact(*half_ellipsoid((45.0, 55.0, 30.0), subdivisions=4, nose=14.0))
  r = image_rotation(10, 30, 0)
  gt = v @ r.T + np.array([96.0, 96.0, 50.0])
  mesh = volume_to_mesh(voxelise(gt, f, r).astype(np.float32))
  lm = _landmarks_with_eyes(v)
  crop = CropTransform(scale=0.4, tx=-30.0, ty=-10.0, tz=20.0)
  pred_photo, gt_photo = mesh.to_photo(crop).vertices, crop.to_photo(gt)
  # d ~ 63 crop pixels: 0.005 is ~0.3 voxel, the staircase of a binary volume.
  assert nme.nme_paper(pred_photo, gt_photo, lm, pred_faces=mesh.faces) < 0.005
  assert nme.nme_paper(pred_photo, gt_photo, lm) < 0.01  # closest vertices: up to half a vertex spacing


def _brute_force_nme_paper(pred, faces, gt, lm, mask):
  """The protocol by brute force: point-to-point ICP of the ground-truth face vertices onto the
  prediction's vertices with dense distance matrices (cdist) and scipy's Kabsch (align_vectors), run to
  its fixed point; then each moved vertex's closest point on the predicted surface (every triangle
  tried, `_brute_closest_on_triangle`), measured against the unaligned vertex."""
  y = gt[mask]
  rotation, translation = np.eye(3), np.zeros(3)
  pairs = None
  for _ in range(1000):
    new_pairs = np.argmin(cdist(y @ rotation.T + translation, pred), axis=1)
    if pairs is not None and np.array_equal(new_pairs, pairs):
      break
    pairs = new_pairs
    target = pred[pairs]
    fit, _ = Rotation.align_vectors(target - target.mean(axis=0), y - y.mean(axis=0))
    rotation = fit.as_matrix()
    translation = target.mean(axis=0) - rotation @ y.mean(axis=0)
  else:
    raise AssertionError("brute-force ICP did not reach a fixed point")
  moved = y @ rotation.T + translation
  if faces is None:
    x = pred[np.argmin(cdist(moved, pred), axis=1)]
  else:
    x = _brute_closest_on_mesh(moved, pred, faces)
  errors = [np.sqrt(sum((a - b) ** 2 for a, b in zip(yk, xk))) for yk, xk in zip(y, x)]
  return sum(errors) / len(errors) / np.linalg.norm(gt[lm[36]] - gt[lm[45]])


@pytest.mark.parametrize("use_faces", [False, True])
def test_nme_paper_matches_a_brute_force_protocol(use_faces):
  rng = np.random.default_rng(7)
  v, f = _face_mesh(2)
  pred = v + rng.normal(size=v.shape) * 0.8  # an irregular prediction
  samples, _ = trimesh.sample.sample_surface(trimesh.Trimesh(v, f, process=False), 140, seed=2)
  gt = (samples - v.mean(axis=0)) @ _rotation(4, (1, 1, 1)).T + v.mean(axis=0) + [1.0, -2.0, 1.5]
  gt += rng.normal(size=gt.shape) * 0.5
  lm = _landmarks_with_eyes(gt)
  mask = np.ones(len(gt), bool)
  mask[::7] = False
  faces = f if use_faces else None
  got = nme.nme_paper(pred, gt, lm, mask, faces, icp_method="point_to_point", tolerance=0.0,
                      max_iterations=1000)
  expected = _brute_force_nme_paper(pred, faces, gt, lm, mask)
  assert expected > 0.01
  assert got == pytest.approx(expected, rel=0, abs=1e-9)


def test_nme_bbox_normalises_by_the_landmark_box():
  sphere = trimesh.creation.icosphere(4)
  surface = sphere.vertices * np.array([50.0, 60.0, 35.0])
  # Ground truth = the surface plus 68 landmark points outside the compared region, spanning
  # x in [10, 50], y in [-45, 45] (w 40, h 90: size 60) at arbitrary depths, eye corners 36 apart.
  rng = np.random.default_rng(0)
  landmarks = np.column_stack([rng.uniform(10, 50, 68), rng.uniform(-45, 45, 68),
                               rng.uniform(-99, 99, 68)])
  landmarks[:4, :2] = [[10, -45], [50, 45], [10, 45], [50, -45]]
  landmarks[36], landmarks[45] = [12.0, 0.0, 5.0], [48.0, 0.0, 5.0]
  gt = np.concatenate([surface, landmarks])
  lm = np.arange(len(surface), len(gt))
  mask = np.arange(len(surface))
  pred = surface + 1.2 * vertex_normals(surface, sphere.faces)
  assert nme.landmark_bbox_size(gt, lm) == pytest.approx(60.0, abs=1e-12)
  assert nme.interocular_distance(gt, lm) == pytest.approx(36.0, abs=1e-12)
  bbox = nme.nme_bbox(pred, gt, lm, mask, sphere.faces)
  aligned = nme.nme_aligned(pred, gt, lm, mask, sphere.faces)
  assert bbox == pytest.approx(aligned * 36.0 / 60.0, rel=1e-12)
  assert bbox == pytest.approx(1.2 / 60.0, rel=0.05)
  assert nme.nme_metrics(pred, gt, lm, mask, sphere.faces)["nme_bbox"] == pytest.approx(bbox, rel=1e-12)


def test_bad_inputs_name_what_is_wrong():
  v, f = _face_mesh(2)
  lm = _landmarks_with_eyes(v)
  with pytest.raises(InputError, match="68 integer vertex indices"):
    nme.nme_paper(v, v, lm[:60])
  with pytest.raises(InputError, match="one per ground-truth vertex"):
    nme.nme_paper(v, v, lm, np.ones(len(v) - 1, bool))
  with pytest.raises(InputError, match="eye corners"):
    bad = lm.copy()
    bad[45] = bad[36]
    nme.nme_paper(v, v, bad)
  with pytest.raises(InputError, match=r"pred_vertices: shape \(5, 2\)"):
    nme.nme_paper(np.zeros((5, 2)), v, lm)
  with pytest.raises(InputError, match="needs target_normals"):
    nme.icp(v, v, method="point_to_plane")


# ----------------------------------------------------------------------------------------------------
# Reporting


def test_ced_curve():
  nmes = [0.01, 0.05, 0.05, 0.2, np.nan, 0.099, 0.1]
  thresholds, fraction = nme.ced_curve(nmes, max_error=0.1, bins=1001)
  assert thresholds[0] == 0.0 and thresholds[-1] == pytest.approx(0.1)
  assert np.all(np.diff(fraction) >= 0)
  assert fraction[0] == 0.0
  assert fraction[-1] == pytest.approx(5 / 7)  # a failure (NaN) counts as above every threshold
  assert fraction[500] == pytest.approx(3 / 7)  # threshold 0.05: <= counts


def test_plot_ced_writes_a_png(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / "plots" / "ced.png"
  nme.plot_ced({"VRN": rng.gamma(6.0, 0.011, 500), "VRN - Guided": rng.gamma(6.0, 0.0105, 500)}, path)
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
  assert [p.name for p in path.parent.iterdir()] == ["ced.png"]  # no temporary left behind


def test_yaw_bins():
  yaw = [0.0, -29.99, 30.0, -45.0, 59.99, -60.0, 89.0, 90.0, -95.0]
  expected = ["0-30", "0-30", "30-60", "30-60", "30-60", "60-90", "60-90", "60-90", "60-90"]
  assert nme.yaw_bins(yaw).tolist() == expected
  with pytest.raises(InputError):
    nme.yaw_bins([np.nan])
