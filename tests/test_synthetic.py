"""Synthetic faces, their renderer and rasteriser, and the 300W-LP / AFLW2000-3D shaped trees; the parts
of a synthetic scene (expressions, photo backgrounds, other faces, lights and shadows, tone, camera), each
measured doing its thing."""

import dataclasses
import glob
import os

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import polygon

from conftest import fixtures_dir
from vrn_jax.faces import backgrounds, camera, render, synthetic
from vrn_jax.faces.face_model import build_face_model
from vrn_jax.faces.scene import SceneOptions
from vrn_jax.faces.synthetic import sample_face, sample_geometry, write_300w_lp_tree, write_aflw2000_tree
from vrn_jax.files import load_mat, read_image_rgb, read_landmarks_txt
from vrn_jax.geometry import raster
from vrn_jax.geometry.mesh import outward_triangle_normals
from vrn_jax.geometry.morphable_model import load_3ddfa
from vrn_jax.geometry.pose import Pose

PLAIN = SceneOptions.plain()


@pytest.fixture(scope="module")
def model():
  return build_face_model()


@pytest.fixture(scope="module")
def faces(model):
  return [sample_face(model, np.random.default_rng([5, i])) for i in range(10)]


@pytest.fixture(scope="module")
def plain_faces(model):
  """The plain generator's faces: one light, no props in front of the face, no camera effects, so the
  face's pixels are exactly its render's."""
  return [sample_face(model, np.random.default_rng([5, i]), scene=PLAIN) for i in range(10)]


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


def test_rendered_face_covers_its_landmarks(model, plain_faces):
  for face in plain_faces:
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
  covered = np.mean([f.foreground.mean() for f in plain_faces])
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


# ---------------------------------------------------------------------------------------------------
# The parts of a scene.


def test_geometry_depends_on_the_seed_alone(model):
  """Pose, identity, expression and landmarks are drawn first, with the same draws whatever parts of
  the scene are on: the same for every appearance option; the wider expression draw changes only the
  expression (and the placement's fit to it), from the same numbers. The plain draw is the generator's
  geometry before appearance had streams of its own (pinned)."""
  full = SceneOptions()
  scenes = [full, full.without("lighting", "tone"), full.without("photo_backgrounds", "other_faces",
                                                                  "camera", "body", "hair")]
  for i in range(3):
    drawn = [sample_face(model, np.random.default_rng([5, i]), scene=s) for s in scenes]
    geometry = sample_geometry(model, np.random.default_rng([5, i]))
    for face in drawn:
      for field in ("pose_para", "shape_para", "exp_para", "landmarks"):
        np.testing.assert_array_equal(getattr(face, field), getattr(drawn[0], field))
    np.testing.assert_array_equal(geometry.pose_para, drawn[0].pose_para)
    np.testing.assert_array_equal(geometry.landmarks(model), drawn[0].landmarks)
    plain = sample_geometry(model, np.random.default_rng([5, i]), scene=PLAIN)
    np.testing.assert_array_equal(plain.shape_para, geometry.shape_para)
    np.testing.assert_array_equal(plain.pose_para[:3], geometry.pose_para[:3])
    # Both draws leave the generator in the same state.
    a, b = np.random.default_rng([5, i]), np.random.default_rng([5, i])
    sample_geometry(model, a, scene=PLAIN), sample_geometry(model, b)
    assert a.random() == b.random()
  # Pinned: the angles are the stream's draws; the translation and scale fit the drawn face into the
  # image, so they follow the face model's geometry too (they move when its mean face does).
  np.testing.assert_allclose(
      sample_geometry(model, np.random.default_rng([5, 0]), scene=PLAIN).pose_para,
      [0.31199563593928642, -0.37549769750997752, 0.22332311308454306, 257.67330316499863,
       166.15096075982999, 0.0, 1.4142339092170226e-03], rtol=1e-12)


def test_wider_expressions_close_eyes_and_do_not_fold(model):
  """The wide draw closes about one pair of eyes in eight (the lids meet: the gap between the upper and
  lower lid landmarks nearly vanishes), winks, smiles and opens mouths wider, and no face folds over."""
  tri = model.face_triangles()

  def normals(v):
    a, b, c = (v[tri[:, i]] for i in range(3))
    return np.cross(b - a, c - a)

  n0 = normals(model.vertices())
  area0 = np.linalg.norm(n0, axis=1).sum()
  lids = ([37, 38, 43, 44], [41, 40, 47, 46])  # upper and lower lid landmarks, 0-based
  open_gap = np.mean(model.vertices()[model.landmark_indices[lids[0]], 1]
                     - model.vertices()[model.landmark_indices[lids[1]], 1])
  draws = [sample_geometry(model, np.random.default_rng([17, i])) for i in range(160)]
  closed = [g for g in draws if g.exp_para[3] >= 5.0]
  assert 8 <= len(closed) <= 35, len(closed)
  assert any(g.exp_para[15] >= 8.5 for g in draws)  # winks
  assert max(g.exp_para[0] for g in draws) > 2.8 and max(g.exp_para[1] for g in draws) > 2.5
  for g in closed[:6]:
    lm = g.vertices[model.landmark_indices]
    gap = lm[lids[0], 1] - lm[lids[1], 1]  # model frame: y up
    assert np.all(gap < 0.35 * open_gap) and np.mean(gap) < 0.15 * open_gap, gap / open_gap
  strongest = sorted(draws, key=lambda g: -np.abs(g.exp_para[[0, 1, 3, 15]]).max())[:12]
  for g in strongest:
    n = normals(g.vertices)
    flipped = np.sum(n * n0, axis=1) < 0
    # Closing lids squeeze the eye's skin into a line (a few of its triangles turn over there, with no
    # area to speak of); nothing else folds.
    assert np.linalg.norm(n[flipped], axis=1).sum() < 0.004 * area0


def test_render_scene_z_buffer_across_meshes(model):
  """One z-buffer over several meshes gives what rendering each alone and keeping, per pixel, the
  nearer one gives (no shadows: each mesh's shading is then its own)."""
  pose = Pose(0.2, 0.5, 0.1, (225.0, 225.0, 0.0), 1.3e-3)
  face = render.SceneMesh(pose.project(model.vertices(), 450), model.triangles,
                          render.face_albedo(model, np.zeros(render.TEX_PARA_SIZE)), specular=0.2,
                          shininess=15.0, name="face")
  # A tilted two-sided sheet cutting through the head: in front of it on the left, behind on the right.
  u, v = np.meshgrid(np.linspace(60, 400, 9), np.linspace(80, 380, 9))
  sheet_v = np.stack([u.ravel(), v.ravel(), 0.6 * (225.0 - u.ravel()) + 20.0], axis=1)
  quads = np.arange(81).reshape(9, 9)[:-1, :-1].ravel()
  sheet_t = np.concatenate([np.stack([quads, quads + 1, quads + 9], 1),
                            np.stack([quads + 1, quads + 10, quads + 9], 1)])
  sheet = render.SceneMesh(sheet_v, sheet_t, np.tile([0.2, 0.5, 0.9], (81, 1)), two_sided=True,
                           name="occluder")
  light = render.Lighting(np.array([0.2, 0.2, 0.25]),
                          (render.Light(np.array([-0.4, -0.5, 0.8]), np.ones(3), shadows=False),))
  both, index = render.render_scene([face, sheet], light, (450, 450))
  alone = [render.render_scene([m], light, (450, 450)) for m in (face, sheet)]
  face_tri = face.triangles[outward_triangle_normals(face.vertices, face.triangles)[:, 2] > 0]
  depth = [raster.depth_buffer(face.vertices, face_tri, (450, 450)),
           raster.depth_buffer(sheet.vertices, sheet.triangles, (450, 450))]
  nearer = np.where(depth[1] > depth[0], 1, 0)
  nearer[~np.isfinite(np.maximum(depth[0], depth[1]))] = -1
  with np.errstate(invalid="ignore"):  # -inf - -inf where neither covers
    clear = np.abs(depth[1] - depth[0]) > 1e-6
  np.testing.assert_array_equal(index[clear], nearer[clear])
  for k in (0, 1):
    sel = clear & (nearer == k)
    np.testing.assert_allclose(both[sel], alone[k][0][sel], atol=1e-12)
  assert np.sum(index == 0) > 5000 and np.sum(index == 1) > 5000
  assert np.sum(clear & (index == 1) & (alone[0][1] == 0)) > 1000  # the sheet hides part of the face


def test_shadows_fall_from_the_nose_and_nowhere_lit(model):
  """Lit from the upper left, the nose shadows the upper lip to its lower right: darker there with
  shadows on than off under the same light; nothing is brighter with shadows, and the lit forehead is
  untouched (no self-shadowing acne)."""
  pose = Pose(0.0, 0.0, 0.0, (225.0, 225.0, 0.0), 1.6e-3)
  v = pose.project(model.vertices(), 450)
  lm = v[model.landmark_indices]
  mesh = render.SceneMesh(v, model.triangles, np.full((model.num_vertices, 3), 0.8), name="face")
  d = np.array([-0.7, -0.5, 0.6])
  on, _ = render.render_scene([mesh], render.Lighting(np.zeros(3), (render.Light(d, np.ones(3)),)),
                              (450, 450))
  off, _ = render.render_scene(
      [mesh], render.Lighting(np.zeros(3), (render.Light(d, np.ones(3), shadows=False),)), (450, 450))
  shadowed = (off - on)[..., 0] > 0.1
  assert not np.any(on > off + 1e-9)
  iod = lm[45, 0] - lm[36, 0]
  below_right = shadowed[int(lm[30, 1]):int(lm[51, 1]), int(lm[30, 0]):int(lm[30, 0] + 0.3 * iod)]
  assert below_right.mean() > 0.15, below_right.mean()
  forehead = (lm[[19, 24], :2].mean(axis=0) + [0, -0.3 * iod]).astype(int)
  window = np.s_[forehead[1] - 10:forehead[1] + 10, forehead[0] - 20:forehead[0] + 20]
  np.testing.assert_array_equal(on[window], off[window])
  assert off[window].min() > 0.2


def test_skin_detail_gloss_and_catchlights(model):
  """A face's `SkinSurface`: a small sharp highlight of the light in each open eye (none without it, and
  no cornea when the eyes are closed), fine albedo detail on the skin, and highlights stronger on the
  T-zone than on the cheeks (relative to the same face without it)."""
  pose = Pose(0.0, 0.0, 0.0, (225.0, 225.0, 0.0), 1.6e-3)
  v = pose.project(model.vertices(), 450)
  lm = v[model.landmark_indices]
  forward = pose.rotation[:, 2] * np.array([1.0, -1.0, 1.0])
  skin = render.skin_surface(model, v, forward, np.random.default_rng(3))
  assert len(skin.corneas) == 2
  mesh = render.SceneMesh(v, model.triangles, render.face_albedo(model, np.zeros(render.TEX_PARA_SIZE)),
                          specular=0.15, shininess=20.0, name="face")
  light = render.Lighting(np.full(3, 0.3), (render.Light(np.array([-0.3, -0.4, 0.85]), np.ones(3)),),
                          wrap=0.2)
  plain, index = render.render_scene([mesh], light, (450, 450))
  detailed, same_index = render.render_scene([dataclasses.replace(mesh, skin=skin)], light, (450, 450))
  np.testing.assert_array_equal(index, same_index)
  for ids in (range(36, 42), range(42, 48)):
    eye = np.zeros((450, 450), bool)
    eye[polygon(lm[list(ids), 1], lm[list(ids), 0], eye.shape)] = True
    for rgb, glint in ((detailed, True), (plain, False)):
      lum = rgb[eye].mean(axis=1)
      spot = lum > np.median(lum) + 0.5
      assert (0 < spot.sum() < 0.15 * eye.sum()) if glint else not spot.any(), (glint, lum.max())
  # Closed eyes (the expression's eyes_close component): no cornea to catch the light.
  closed = np.zeros(model.expression_basis.shape[1])
  closed[3] = 5.6
  shut = render.skin_surface(model, pose.project(model.vertices(None, closed), 450), forward,
                             np.random.default_rng(3))
  assert len(shut.corneas) == 0 and not shut.cornea.any()
  # Detail: the cheek's pixel-scale variation (what a 2-px blur removes) several times the plain one's.
  iod = lm[45, 0] - lm[36, 0]
  cheek = np.s_[int(lm[29, 1]):int(lm[29, 1] + 0.25 * iod), int(lm[41, 0] - 0.2 * iod):int(lm[41, 0])]

  def fine(rgb):
    grey = rgb[..., 1]
    return np.std((grey - ndimage.gaussian_filter(grey, 2.0))[cheek])

  assert fine(detailed) > 3 * fine(plain), (fine(detailed), fine(plain))
  # Gloss: the highlight alone (black albedo, no ambient) mid-forehead against the cheek.
  dark = dataclasses.replace(mesh, albedo=np.zeros((model.num_vertices, 3)))
  frontal = render.Lighting(np.zeros(3), (render.Light(np.array([0.0, 0.0, 1.0]), np.ones(3)),))
  gloss = [render.render_scene([m], frontal, (450, 450))[0][..., 1]
           for m in (dark, dataclasses.replace(dark, skin=skin))]
  forehead = (lm[[19, 24], :2].mean(axis=0) + [0, -0.3 * iod]).astype(int)
  forehead = np.s_[forehead[1] - 5:forehead[1] + 5, forehead[0] - 10:forehead[0] + 10]
  ratios = [g[forehead].mean() / g[cheek].mean() for g in gloss]
  assert ratios[1] > 1.5 * ratios[0], ratios


def test_lighting_parts_are_switchable(model):
  """The full draw uses 1-3 lights, the key always casting shadows; the plain one, one light without."""
  counts = set()
  for i in range(30):
    full = synthetic.lighting.sample_lighting(np.random.default_rng(i), True, np.ones(3))
    plain = synthetic.lighting.sample_lighting(np.random.default_rng(i), False)
    assert full.lighting.lights[0].shadows and full.lighting.wrap > 0
    assert len(plain.lighting.lights) == 1 and not plain.lighting.lights[0].shadows
    counts.add(len(full.lighting.lights))
    assert full.illum_para.shape == plain.illum_para.shape == (10,)
  assert counts == {1, 2, 3}


def _radial_power_slope(image: np.ndarray) -> float:
  """Slope of log power against log frequency (0.02-0.25 cycles/px), the luminance's radially averaged
  power spectrum: about -2 for photographs of natural scenes."""
  grey = image @ np.array([0.2126, 0.7152, 0.0722])
  grey = (grey - grey.mean()) * np.outer(np.hanning(grey.shape[0]), np.hanning(grey.shape[1]))
  power = np.abs(np.fft.fftshift(np.fft.fft2(grey))) ** 2
  h, w = grey.shape
  fy, fx = np.meshgrid(np.fft.fftshift(np.fft.fftfreq(h)), np.fft.fftshift(np.fft.fftfreq(w)),
                       indexing="ij")
  radius = np.hypot(fy, fx)
  bins = np.geomspace(0.02, 0.25, 12)
  mean = [power[(radius >= a) & (radius < b)].mean() for a, b in zip(bins[:-1], bins[1:])]
  centres = np.sqrt(bins[:-1] * bins[1:])
  return float(np.polyfit(np.log(centres), np.log(mean), 1)[0])


def test_photo_backgrounds_have_the_statistics_of_photos():
  """Crops of the photographs have photographs' ~1/f^2 power spectra (structure at every scale), unlike
  a flat colour or a gradient, and differ from draw to draw; the photo mixture loads the images once."""
  rng = np.random.default_rng(4)
  slopes = [_radial_power_slope(backgrounds.photo_crop(rng, (256, 256), name))
            for name in ("motorcycle_left.png", "coffee.png", "chelsea.png", "rocket.jpg", "grass.png")]
  assert all(-3.8 < s < -1.0 for s in slopes), slopes
  # A studio backdrop is a smooth gradient: almost no power at fine scales.
  assert all(_radial_power_slope(backgrounds.studio(rng, (256, 256))) < -4.0 for _ in range(3))
  a, b = (backgrounds.photo_crop(rng, (256, 256)) for _ in range(2))
  assert a.std() > 0.03 and np.mean(np.abs(a - b)) > 0.05
  assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
  kinds = {backgrounds.sample_background(np.random.default_rng(i), (96, 96), True).kind
           for i in range(40)}
  assert kinds == {"photo", "indoor", "studio", "procedural"}
  assert backgrounds.sample_background(rng, (96, 96), False).kind == "procedural"
  assert backgrounds._photographs() is backgrounds._photographs()  # decoded once per process


def test_photo_backgrounds_hold_no_real_faces():
  """The astronaut photo is a held-out real-photo evaluation image and the camera photo shows a person:
  neither may reach a training background, not even by name."""
  photos = backgrounds._photographs()
  assert not set(photos) & {"astronaut.png", "camera.png"}
  assert set(photos) == set(backgrounds._PHOTOS)
  with pytest.raises(KeyError):
    backgrounds.photo_crop(np.random.default_rng(0), (32, 32), "astronaut.png")


def test_other_faces_stay_behind_the_subject(model):
  """Another head, when there is one, changes only the background: the subject's pixels are the same
  with and without it (tone and camera off: nothing else mixes them), and it is in view somewhere."""
  base = SceneOptions(tone=False, camera=False)
  seen = 0
  for i in range(12):
    rng = np.random.default_rng([8, i])
    geometry = sample_geometry(model, rng)
    streams = synthetic._appearance_streams(rng)
    light = synthetic.lighting.sample_lighting(streams["lighting"], True, np.ones(3))
    if synthetic.other_face(model, geometry, light.lighting, streams["other_faces"]) is None:
      continue
    seen += 1
    with_other = sample_face(model, np.random.default_rng([8, i]), scene=base)
    without = sample_face(model, np.random.default_rng([8, i]), scene=base.without("other_faces"))
    np.testing.assert_array_equal(with_other.subject, without.subject)
    np.testing.assert_array_equal(with_other.image[with_other.subject], without.image[without.subject])
    changed = np.any(with_other.image != without.image, axis=-1)
    assert changed.sum() > 500 and not np.any(changed & with_other.subject)
    if seen == 2:
      break
  assert seen == 2


def test_other_faces_have_hair_and_bodies(model, monkeypatch):
  """Heads behind the subject are people: hair (most) and a body, never glasses or a hand; drawn from
  their own generator, so the same head comes back for the same generator."""
  monkeypatch.setattr(synthetic, "OTHER_FACE_RATE", 1.0)
  drawn = []
  render_scene = render.render_scene

  def spy(meshes, lighting, shape):
    drawn.append([m.name for m in meshes])
    return render_scene(meshes, lighting, shape)

  monkeypatch.setattr(render, "render_scene", spy)
  geometry = sample_geometry(model, np.random.default_rng(0))
  light = render.Lighting(ambient=np.full(3, 0.5))
  coverage = []
  for i in range(6):
    rgb, alpha = synthetic.other_face(model, geometry, light, np.random.default_rng([3, i]))
    again = synthetic.other_face(model, geometry, light, np.random.default_rng([3, i]))
    np.testing.assert_array_equal(alpha, again[1])
    coverage.append(alpha.mean())
  heads = drawn[::2]
  assert all(names[0] == "other_face" and "body" in names for names in heads), heads
  assert sum("hair" in names for names in heads) >= 4, heads
  assert not {"glasses", "occluder"} & {n for names in heads for n in names}
  assert min(coverage) > 0.0


def test_tone_curve_brightens_mid_tones():
  """Linear light stored as is makes faces dark: the sRGB curve puts 18% grey near the middle of the
  range, the filmic one too, and both keep black black and order."""
  x = np.linspace(0.0, 1.0, 101, dtype=np.float32)
  for curve in ("srgb", "filmic"):
    y = camera.tone_curve(x, curve)
    assert np.all(np.diff(y) >= 0) and y[0] < 0.01
    assert 0.4 < camera.tone_curve(np.float32(0.18), curve) < 0.6
  np.testing.assert_array_equal(camera.tone_curve(x, "linear"), x)
  grey = np.full((8, 8, 3), 0.18, np.float32)
  developed = camera.develop(grey, None, camera.Tone(curve="srgb"), camera.Camera(), np.random.default_rng(0))
  assert np.all(developed == 118)  # sRGB(0.18) = 0.461
  np.testing.assert_allclose(camera.srgb_to_linear(camera.linear_to_srgb(x)), x, atol=1e-6)


def test_jpeg_leaves_8x8_block_artefacts():
  """The JPEG step's error is blocky: on a smooth (defocused) photo, its jumps across the 8x8 block
  boundaries, along both axes, are twice those inside the blocks."""
  rng = np.random.default_rng(2)
  smooth = camera.gaussian_blur(backgrounds.photo_crop(rng, (256, 256), "coffee.png"), 1.5)
  image = (smooth * 255).astype(np.uint8)
  error = camera.jpeg(image, 30).astype(np.float32) - image
  for axis in (0, 1):
    step = np.abs(np.diff(error, axis=axis)).mean(axis=(1 - axis, 2))  # between rows/columns c, c + 1
    boundary, inside = step[7::8].mean(), np.delete(step, np.s_[7::8]).mean()
    assert boundary > 2.0 * inside, (axis, boundary, inside)
  assert np.abs(error).mean() > 1.0


def test_camera_effects_move_nothing():
  """Blur, motion blur, vignetting, noise, resampling and JPEG change values, not positions: a bright
  spot's centroid stays where it was (the ground truth holds for the developed photo)."""
  linear = np.full((120, 140, 3), 0.05, np.float32)
  linear[50:60, 61:75] = 1.0
  lens = camera.Camera(defocus_sigma=1.7, motion_px=7.0, motion_deg=30.0, vignetting=0.4,
                       shot_noise=1e-3, read_noise=0.003, chroma_noise=0.5, downscale=0.5,
                       jpeg_quality=60)
  out = camera.develop(linear, None, camera.Tone(curve="srgb"), lens, np.random.default_rng(1))
  weight = np.clip(out.astype(np.float32).mean(axis=-1) - 100, 0, None)
  centroid = np.array(ndimage.center_of_mass(weight))
  np.testing.assert_allclose(centroid, [54.5, 67.5], atol=0.25)
  plain = camera.develop(linear, None, camera.Tone(curve="srgb"), camera.Camera(),
                         np.random.default_rng(1))
  assert np.abs(out.astype(float) - plain).mean() > 2.0


def _skin_luma(image: np.ndarray, landmarks: np.ndarray) -> float:
  """Median luma (sRGB values, 0-255) of the skin between jaw line and brows, eyes/brows/mouth cut out."""
  region = np.concatenate([landmarks[1:16], landmarks[26:16:-1]])
  mask = np.zeros(image.shape[:2], bool)
  mask[polygon(region[:, 1], region[:, 0], mask.shape)] = True
  for ids in (range(36, 42), range(42, 48), range(48, 60), range(17, 27)):
    p = landmarks[list(ids)]
    p = p.mean(axis=0) + 1.6 * (p - p.mean(axis=0))
    mask[polygon(p[:, 1], p[:, 0], mask.shape)] = False
  return float(np.median(image[mask].astype(np.float32) @ [0.2126, 0.7152, 0.0722]))


def test_faces_are_as_bright_as_real_ones(faces):
  """Lit skin comes out about as bright as in the release's real photos (the plain generator's linear
  light stored without a tone curve made it systematically darker)."""
  folder = fixtures_dir()
  real = [_skin_luma(read_image_rgb(p), read_landmarks_txt(p[:-4] + ".txt") - 1.0)
          for p in sorted(glob.glob(os.path.join(folder, "*.jpg")))]
  frontal = [f for f in faces if abs(np.rad2deg(f.pose_para[1])) < 50]
  synthetic_luma = [_skin_luma(f.image, f.landmarks[:, :2]) for f in frontal]
  assert len(synthetic_luma) >= 4
  assert abs(np.mean(synthetic_luma) - np.mean(real)) < 35, (synthetic_luma, real)
  assert np.median(synthetic_luma) > np.percentile(real, 25)


def test_full_scene_photos_differ_from_plain_ones(model, faces, plain_faces):
  """Every part is on by default and changes the photo; the plain generator is still available."""
  for full, plain in zip(faces[:3], plain_faces[:3]):
    np.testing.assert_array_equal(full.shape_para, plain.shape_para)
    assert np.mean(np.abs(full.image.astype(float) - plain.image)) > 10
  assert dataclasses.asdict(SceneOptions()) == {f: True for f in dataclasses.asdict(SceneOptions())}
