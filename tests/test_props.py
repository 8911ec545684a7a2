"""Props drawn with a synthetic face (vrn_jax.faces.props): valid meshes, placed with the face and never
through its face region, each part at its rate and off when its flag is off."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from vrn_jax.faces import props, render
from vrn_jax.faces.face_model import build_face_model
from vrn_jax.faces.scene import SceneOptions
from vrn_jax.geometry.morphable_model import MorphableModel
from vrn_jax.geometry.pose import Pose
from vrn_jax.geometry.raster import depth_buffer, rasterise

SIZE = 450
SKIN = np.array([0.75, 0.55, 0.45])
HAIR = np.array([0.25, 0.15, 0.08])


@pytest.fixture(scope="module")
def model():
  return build_face_model()


@pytest.fixture
def always(monkeypatch):
  """Every optional part drawn (rates 1): each check sees every kind of mesh."""
  for name in ("HAIR_RATE", "BEARD_RATE", "GLASSES_RATE", "OCCLUDER_RATE"):
    monkeypatch.setattr(props, name, 1.0)


def only(part):
  return dataclasses.replace(SceneOptions.plain(), **{part: True})


def posed_face(model, seed, yaw_deg=None):
  """A random face (identity, expression, pose) placed as sample_face does: ~150-210 px wide, centred."""
  rng = np.random.default_rng([seed, 99])
  vertices = model.vertices(rng.normal(size=model.shape_basis.shape[1]),
                            np.clip(0.6 * rng.normal(size=model.expression_basis.shape[1]), -2, 2))
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
  """(H, W) depth of the face region's front surface, -inf off it: the target's footprint."""
  return depth_buffer(vertices_img, model.face_triangles(), (SIZE, SIZE))


def visible_face(model, vertices_img):
  """(H, W) depth of the head's front surface where it is the face region (what a photo shows of the
  face without props), -inf elsewhere: the head's own neck or ears may hide parts of the region."""
  raster = rasterise(vertices_img, model.triangles, (SIZE, SIZE))
  in_face = np.zeros(raster.triangle.shape, bool)
  hit = raster.triangle >= 0
  in_face[hit] = np.all(model.face_mask[model.triangles[raster.triangle[hit]]], axis=1)
  return np.where(in_face, raster.depth, -np.inf)


def depth_of(meshes):
  """(H, W) front-most depth of the meshes, -inf where none."""
  out = np.full((SIZE, SIZE), -np.inf)
  for m in meshes:
    out = np.maximum(out, depth_buffer(m.vertices, m.triangles, (SIZE, SIZE)))
  return out


def mm(pose, geo):
  """Image z units per millimetre."""
  return pose.scale * geo.units_per_mm


def head_frame(geo, pose, points_img):
  return (pose.unproject(points_img, SIZE) - geo.origin) / geo.units_per_mm


def test_deterministic_and_valid(model, always):
  kinds = set()
  for seed in range(6):
    _, pose, meshes = draw(model, seed)
    _, _, again = draw(model, seed)
    assert [m.name for m in meshes] == [m.name for m in again]
    for m, n in zip(meshes, again):
      np.testing.assert_array_equal(m.vertices, n.vertices)
      np.testing.assert_array_equal(m.triangles, n.triangles)
      np.testing.assert_array_equal(m.albedo, n.albedo)
    for m in meshes:
      kinds.add(m.name)
      assert m.vertices.ndim == 2 and m.vertices.shape[1] == 3 and np.all(np.isfinite(m.vertices))
      assert m.albedo.shape == m.vertices.shape and np.all((m.albedo >= 0) & (m.albedo <= 1))
      assert len(m.triangles) and m.triangles.min() >= 0 and m.triangles.max() < len(m.vertices)
      model_frame = pose.unproject(m.vertices, SIZE)
      if m.name in ("body", "glasses", "occluder") and not m.two_sided:
        # Closed surfaces wind outward (counter-clockwise seen from outside, in the model frame).
        assert props.signed_volume(model_frame, m.triangles) > 0, m.name
      if m.name in ("hair", "beard"):  # open shells (edges inside the head): normals point outward
        normals = np.cross(model_frame[m.triangles[:, 1]] - model_frame[m.triangles[:, 0]],
                           model_frame[m.triangles[:, 2]] - model_frame[m.triangles[:, 0]])
        centres = model_frame[m.triangles].mean(axis=1) - model_frame.mean(axis=0)
        assert np.sum(normals * centres) > 0, m.name
  assert kinds == {"body", "hair", "beard", "glasses", "occluder"}


def test_turning_a_part_off_leaves_the_others(model, always):
  for seed in range(3):
    everything = draw(model, seed)[2]
    for part, names in (("body", {"body"}), ("hair", {"hair", "beard"}), ("glasses", {"glasses"}),
                        ("occluders", {"occluder"})):
      rest = draw(model, seed, SceneOptions().without(part))[2]
      assert not names & {m.name for m in rest}
      kept = [m for m in everything if m.name not in names]
      assert [m.name for m in kept] == [m.name for m in rest]
      for a, b in zip(kept, rest):
        np.testing.assert_array_equal(a.vertices, b.vertices)
    assert draw(model, seed, SceneOptions.plain())[2] == []


def test_parts_appear_at_their_rates(model):
  counts = {"body": 0, "hair": 0, "beard": 0, "glasses": 0, "occluder": 0}
  seeds = 50
  for seed in range(seeds):
    names = {m.name for m in draw(model, seed)[2]}
    for name in counts:
      counts[name] += name in names
  # Binomial(50, p) within ~3 standard deviations of its mean.
  expected = {"body": props.BODY_RATE, "hair": props.HAIR_RATE, "beard": props.BEARD_RATE,
              "glasses": props.GLASSES_RATE, "occluder": props.OCCLUDER_RATE}
  for name, p in expected.items():
    sd = np.sqrt(seeds * p * (1 - p))
    assert abs(counts[name] - seeds * p) <= 3 * sd + 1, (name, counts)


def test_body_below_chin_and_behind_face(model):
  for seed in range(6):
    vertices_img, pose, meshes = draw(model, seed, only("body"))
    body = [m for m in meshes if m.name == "body"]
    assert body and all(m.name == "body" for m in meshes)
    geo = props.head_geometry(model, vertices_img, pose, SIZE)
    chin = geo.landmarks[8]
    for m in body:
      p = head_frame(geo, pose, m.vertices)
      # Only the neck's top reaches above the chin, hidden inside the neck stub behind it.
      assert p[:, 1].max() < chin[1] + 15.0
      assert np.all(p[p[:, 1] > chin[1] - 10.0, 2] < chin[2] - 20.0)
    # It reaches down out of the photo (the torso is ~0.4 m long).
    assert max(m.vertices[:, 1].max() for m in body) > SIZE
    face = visible_face(model, vertices_img)
    body_depth = depth_of(body)
    over = np.isfinite(face) & np.isfinite(body_depth)
    assert np.all(body_depth[over] < face[over])


def test_hair_above_brows_and_behind_forehead(model, monkeypatch):
  monkeypatch.setattr(props, "HAIR_RATE", 1.0)
  monkeypatch.setattr(props, "BEARD_RATE", 0.0)
  for seed in range(8):
    vertices_img, pose, meshes = draw(model, seed, only("hair"))
    hair = [m for m in meshes if m.name == "hair"]
    assert hair
    geo = props.head_geometry(model, vertices_img, pose, SIZE)
    face = face_front_depth(model, vertices_img)
    hair_depth = depth_of(hair)
    in_front = np.isfinite(face) & (hair_depth > face)
    rows, cols = np.nonzero(in_front)
    if not len(rows):
      continue
    p = head_frame(geo, pose, np.column_stack([cols, rows, hair_depth[rows, cols]]))
    lm = geo.landmarks
    # Over the face only above the brows (a fringe reaches them), or beside the eyes (sideburns).
    brows = lm[17:27, 1].mean()
    beside = np.abs(p[:, 0] - lm[27, 0]) > np.abs(lm[[36, 45], 0] - lm[27, 0]).max() + 12.0
    assert np.all((p[:, 1] > brows - 5.0) | beside), (seed, p[:, 1].min(), brows)
    # Over the lower forehead (where only a fringe reaches) a fringe's thickness at most (12 mm,
    # curls 8 mm) off the head.
    forehead = (p[:, 1] < brows + 30.0) & ~beside
    theta, phi = np.arctan2(p[:, 0], p[:, 2]), np.arcsin(p[:, 1] / np.linalg.norm(p, axis=1))
    off_head = np.linalg.norm(p, axis=1) - geo.head_radius(theta, phi)
    assert off_head[forehead].max(initial=0.0) < 25.0, (seed, off_head[forehead].max())


def test_hair_covers_no_more_of_the_face_than_a_fringe_and_sideburns(model, monkeypatch):
  """At any yaw (profiles included, where long hair and the temples' hair are nearest the face) and
  pitch, the hair mesh hides of the face region only what a fringe (above the brows) and sideburns
  (beside the eyes, above the cheekbones) hide."""
  monkeypatch.setattr(props, "HAIR_RATE", 1.0)
  monkeypatch.setattr(props, "BEARD_RATE", 0.0)
  shares = []
  for k in range(28):
    seed, yaw = 100 + k, [-90.0, -75.0, -50.0, -20.0, 10.0, 45.0, 80.0][k % 7]
    vertices_img, pose, meshes = draw(model, seed, only("hair"), yaw_deg=yaw)
    geo = props.head_geometry(model, vertices_img, pose, SIZE)
    face = visible_face(model, vertices_img)
    covered = np.isfinite(face) & (depth_of(meshes) > face)
    rows, cols = np.nonzero(covered)
    p = head_frame(geo, pose, np.column_stack([cols, rows, face[rows, cols]]))  # the face hidden
    theta = np.degrees(np.abs(np.arctan2(p[:, 0], p[:, 2])))
    fringe = p[:, 1] > geo.landmarks[17:27, 1].max() - 5.0
    sideburns = (theta > 70.0) & (p[:, 1] > -20.0)
    region = np.count_nonzero(np.isfinite(face))
    shares.append(len(p) / region)
    assert np.count_nonzero(~(fringe | sideburns)) < 0.003 * region, (seed, yaw)
  # Hair does hide the forehead, at most its top half.
  assert 0.05 < np.mean(shares) and max(shares) < 0.5, shares


def _visible_share(model, vertices_img, meshes, weight, where):
  """The share of the head's visible pixels, `where` (N,) bool it is, whose `weight` (N,), interpolated,
  exceeds 0.5: the head drawn with the meshes in one z-buffer, as sample_face draws them."""
  albedo = np.stack([np.asarray(weight, float), np.asarray(where, float), np.zeros(len(weight))], 1)
  face = render.SceneMesh(vertices_img, model.triangles, albedo)
  rgb, index = render.render_scene([face] + meshes, render.Lighting(ambient=np.ones(3)), (SIZE, SIZE))
  shown = (index == 0) & (rgb[..., 1] > 0.5)
  return np.count_nonzero(shown & (rgb[..., 0] > 0.5)) / np.count_nonzero(shown)


def test_scalp_painted_only_under_the_hair(model, monkeypatch):
  """With a hair mesh, the face's texture paints its scalp (dark roots) only where the mesh covers it:
  the smooth painted cap it replaces shows below the mesh's hairline at the temples and ears. Bald
  heads are skin; without hair drawn, the cap is kept."""
  monkeypatch.setattr(props, "BEARD_RATE", 0.0)
  cap = render._albedo_layers(model).hair
  tex = np.zeros(render.TEX_PARA_SIZE)
  tex[7] = 1.0  # the painted cap's hair
  cap_shown = []
  for seed, yaw in enumerate([-85.0, -60.0, -20.0, 0.0, 30.0, 70.0, 88.0]):
    vertices_img, pose = posed_face(model, seed, yaw)
    # The head from the cheekbones up (face, temples, ears, crown; below, under hanging hair, the neck
    # is in the hair's shade).
    upper = props.head_geometry(model, vertices_img, pose, SIZE).points[:, 1] > -30.0
    monkeypatch.setattr(props, "HAIR_RATE", 1.0)
    drawn = props.sample_scene_props(model, vertices_img, pose, SIZE, SKIN, HAIR,
                                     np.random.default_rng(seed), only("hair"))
    (hair,) = drawn.meshes
    scalp = drawn.scalp
    assert scalp.weight.shape == (model.num_vertices,) and scalp.weight.max() == 1.0
    assert np.all(scalp.colour < np.maximum(SKIN, HAIR))  # darker than the hair and the skin
    share = _visible_share(model, vertices_img, [hair], scalp.weight, upper)
    assert share < 0.02, (seed, yaw, share)
    cap_shown.append(_visible_share(model, vertices_img, [hair], cap, upper))
    painted = render.face_albedo(model, tex, scalp)[scalp.weight > 0.99]
    np.testing.assert_allclose(np.median(painted, axis=0), scalp.colour, atol=1e-6)
    # Bald: skin where the cap would be, as a face without hair texture (tex_para[7] below -1).
    monkeypatch.setattr(props, "HAIR_RATE", 0.0)
    bald = props.sample_scene_props(model, vertices_img, pose, SIZE, SKIN, HAIR,
                                    np.random.default_rng(seed), only("hair"))
    assert bald.meshes == [] and not bald.scalp.weight.any()
    no_cap = tex.copy()
    no_cap[7] = -2.0
    np.testing.assert_array_equal(render.face_albedo(model, tex, bald.scalp),
                                  render.face_albedo(model, no_cap))
  # The cap this replaces did show, most of all at the temples of turned heads.
  assert min(cap_shown) > 0.1, cap_shown
  # Hair off: no scalp, and the face keeps its cap.
  assert props.sample_scene_props(model, vertices_img, pose, SIZE, SKIN, HAIR, np.random.default_rng(0),
                                  only("body")).scalp is None


def test_glasses_surround_the_eyes(model, monkeypatch):
  monkeypatch.setattr(props, "GLASSES_RATE", 1.0)
  for seed in range(6):
    yaw = [-15, -10, -5, 0, 10, 15][seed]  # (further round, a rim's parallax can show an eye corner)
    vertices_img, pose, meshes = draw(model, seed, only("glasses"), yaw_deg=yaw)
    glasses = [m for m in meshes if m.name == "glasses"]
    assert glasses and all(m.name == "glasses" for m in meshes)
    geo = props.head_geometry(model, vertices_img, pose, SIZE)
    drawn = ndimage.binary_dilation(np.isfinite(depth_of(glasses)))
    inside = ndimage.binary_fill_holes(drawn)
    eyes = np.rint(vertices_img[model.landmark_indices[36:48], :2]).astype(int)
    assert np.all(inside[eyes[:, 1], eyes[:, 0]]), seed
    # In front of the eyes, the rims within ~4 cm of them.
    lm = geo.landmarks
    p = np.concatenate([head_frame(geo, pose, m.vertices) for m in glasses])
    near = ((np.abs(p[:, 1] - lm[36:48, 1].mean()) < 25.0)
            & (np.abs(p[:, 0]) < np.abs(lm[[36, 45], 0]).max()))
    assert near.any() and np.all(p[near, 2] > lm[36:48, 2].max())


def test_spectacle_frames_cast_no_shadow(model, monkeypatch):
  """A frame's wire is narrower than a light's penumbra: where the face shows, it is lit as without the
  glasses (a coarse shadow map would draw the wires' shadows as broken dark streaks across the cheek)."""
  monkeypatch.setattr(props, "GLASSES_RATE", 1.0)
  monkeypatch.setattr(props, "SUNGLASSES_SHARE", 0.0)
  light = render.Lighting(np.full(3, 0.2), (render.Light(np.array([0.6, -0.3, 0.5]), np.ones(3),
                                                         penumbra_px=3.0),))
  for seed in range(3):
    vertices_img, pose, meshes = draw(model, seed, only("glasses"), yaw_deg=[-20.0, 0.0, 25.0][seed])
    face = render.SceneMesh(vertices_img, model.triangles, np.full((model.num_vertices, 3), 0.7))
    alone, alone_index = render.render_scene([face], light, (SIZE, SIZE))
    both, index = render.render_scene([face] + meshes, light, (SIZE, SIZE))
    shown = (index == 0) & (alone_index == 0)
    assert np.count_nonzero(index > 0) > 200
    # (The map's texels shift with what else is drawn: a little dither at shadow edges, no streaks.)
    darker = (alone - both)[shown][:, 1]
    assert np.count_nonzero(darker > 0.15) == 0, (seed, np.count_nonzero(darker > 0.15), darker.max())


def test_occluder_in_front_and_share(model, monkeypatch):
  monkeypatch.setattr(props, "OCCLUDER_RATE", 1.0)
  kinds = 0
  for seed in range(10):
    vertices_img, pose, meshes = draw(model, seed, only("occluders"))
    if not meshes:  # rare: nothing fits this face
      continue
    kinds += 1
    (occluder,) = meshes
    assert occluder.name == "occluder"
    face = face_front_depth(model, vertices_img)
    head_back = -depth_buffer(vertices_img * [1, 1, -1], model.triangles, (SIZE, SIZE))
    depth = depth_of([occluder])
    over = np.isfinite(face) & np.isfinite(depth)
    # Where it covers the face it is in front of it, or behind the whole head (a scarf's ends).
    assert np.all((depth[over] > face[over]) | (depth[over] < head_back[over])), seed
    share = np.count_nonzero(over & (depth > face)) / np.count_nonzero(np.isfinite(face))
    assert 0.05 <= share <= 0.35, (seed, share)
  assert kinds >= 8


def test_props_never_inside_the_face_region(model, always):
  """No prop vertex sits just behind the face region's front surface (inside the target's skin): props
  are in front of it (glasses, occluders, fringes, beards) or well behind it (neck, hair, temples)."""
  for seed in range(6):
    vertices_img, pose, meshes = draw(model, seed)
    geo = props.head_geometry(model, vertices_img, pose, SIZE)
    face = visible_face(model, vertices_img)
    # Only where the face's depth is smooth: within 1 mm over each pixel's neighbours (at a lip's or
    # the nose's edge a prop's vertex may be behind the part of the face that overhangs it).
    filled = np.where(np.isfinite(face), face, 0.0)
    spread = ndimage.grey_dilation(filled, size=3) - ndimage.grey_erosion(filled, size=3)
    ok = ndimage.binary_erosion(np.isfinite(face), iterations=2) & (spread < mm(pose, geo))
    for m in meshes:
      xy = np.rint(m.vertices[:, :2]).astype(int)
      on = np.all((xy >= 0) & (xy < SIZE), axis=1)
      xy, z = xy[on], m.vertices[on, 2]
      sel = ok[xy[:, 1], xy[:, 0]]
      gap = (face[xy[sel, 1], xy[sel, 0]] - z[sel]) / mm(pose, geo)  # mm behind the surface
      assert not np.any((gap > 1.0) & (gap < 2.5)), (seed, m.name, gap[(gap > 1.0) & (gap < 2.5)])


def face_only(model):
  """The procedural model cut to its face region, like the BFM crops 3DDFA uses: no skull, no neck."""
  keep = np.nonzero(model.face_mask)[0]
  remap = np.full(model.num_vertices, -1)
  remap[keep] = np.arange(len(keep))
  rows = np.stack([3 * keep, 3 * keep + 1, 3 * keep + 2], axis=1).reshape(-1)
  return MorphableModel(mean=model.mean[rows], shape_basis=model.shape_basis[rows],
                        expression_basis=model.expression_basis[rows],
                        triangles=remap[model.face_triangles()].astype(np.int32),
                        landmark_indices=remap[model.landmark_indices],
                        face_mask=np.ones(len(keep), bool))


def test_face_only_model(model, always):
  bfm_like = face_only(model)
  # (Seen from below and far round, a real neck hides the far side of the jaw: without a head of its
  # own, the model's far jaw would be counted as seen. Yaws within 40 deg keep the check meaningful.)
  for seed, yaw in enumerate([-40.0, -15.0, 10.0, 35.0]):
    vertices_img, pose, meshes = draw(bfm_like, seed, yaw_deg=yaw)
    names = {m.name for m in meshes}
    assert {"body", "hair"} <= names
    geo = props.head_geometry(bfm_like, vertices_img, pose, SIZE)
    assert not geo.closed_head
    # Behind the face, a head of a plausible size (the procedural one's, scaled to this face).
    assert np.all((geo.radial[12:] > 60.0) & (geo.radial[12:] < 170.0))
    face = visible_face(bfm_like, vertices_img)
    body = depth_of([m for m in meshes if m.name == "body"])
    over = np.isfinite(face) & np.isfinite(body)
    assert np.all(body[over] < face[over])
    for m in meshes:
      assert np.all(np.isfinite(m.vertices))
