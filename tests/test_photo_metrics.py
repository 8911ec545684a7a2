"""Real-photo measurements without 3D ground truth (vrn_jax/photo_metrics.py, vrn_jax/photo_report.py):
the figures on constructed volumes whose answers are known, their agreement with the synthetic ground
truth's own landmarks, the yaw-binned reference, and one run of `run_eval.py --photo_metrics` on the
fixture photos with the slab checkpoint of tests/test_evaluate.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.path import Path
from PIL import Image
from scipy.spatial import ConvexHull
from scipy.spatial.transform import Rotation

from conftest import REPO, fixtures_dir, save_slab_checkpoint

SLAB_DEPTH = 100  # the command test's checkpoint: a volume occupied for voxel z < SLAB_DEPTH everywhere
# Ground-truth examples drawn with these |yaw| (degrees): three in the 0-30 bin, two in 60-90.
FRONTAL_YAWS = (5.0, 15.0, 25.0)
PROFILE_YAWS = (70.0, 80.0)


@pytest.fixture(scope="module")
def gt_examples():
  """Synthetic dataset examples (as the vrn_faces builder makes them), one identity each, at the yaws
  above, and their decoded ground-truth volumes."""
  from vrn_jax.data import examples
  from vrn_jax.faces import synthetic
  from vrn_jax.faces.face_model import build_face_model

  from vrn_jax.faces.scene import SceneOptions

  model = build_face_model()
  out = []
  # The plain expression draw: set to 80 degrees, a strong one-sided smile can take a mouth corner
  # off the silhouette, which is the expression's doing, not the metric's.
  scene = SceneOptions().without("expressions")
  for i, yaw in enumerate(FRONTAL_YAWS + PROFILE_YAWS):
    face = synthetic.sample_face(model, np.random.default_rng([11, i]), scene=scene)
    pose = face.pose_para.copy()
    pose[1] = np.deg2rad(yaw) * (-1 if i % 2 else 1)  # both signs: the bins take |yaw|
    example = examples.make_example(face.image, model, pose, face.shape_para, face.exp_para, face.name)
    out.append((example, examples.example_volume(example)))
  return out


@pytest.fixture(scope="module")
def reference(gt_examples, tmp_path_factory):
  from vrn_jax import photo_metrics, photo_report

  ref = photo_metrics.reference_from_examples([e for e, _ in gt_examples])
  path = str(tmp_path_factory.mktemp("reference") / "reference.json")
  photo_report.write_json(path, ref)
  return ref, path


def _independent_hull_mask(points, shape=(192, 192)):
  """Pixel centres inside the convex hull of `points`, through matplotlib's polygon test."""
  hull = Path(points[ConvexHull(points).vertices])
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  return hull.contains_points(np.stack([xx.ravel(), yy.ravel()], axis=1)).reshape(shape)


# ---------------------------------------------------------------------- constructed volumes, known answers


def test_hull_coverage_and_inner_share_of_constructed_volumes(gt_examples):
  from vrn_jax import photo_metrics as pm

  landmarks = np.asarray(gt_examples[0][0]["landmarks"], np.float64)
  hull = pm.face_hull_mask(landmarks)
  independent = _independent_hull_mask(landmarks[:27, :2])
  assert hull.sum() > 3000  # a face's hull: run.m sizes the landmarks' box to ~90 px
  assert np.count_nonzero(hull != independent) <= 0.01 * hull.sum()  # boundary pixels only

  # The hull extruded along z: covered exactly, every inner landmark on it.
  extruded = np.zeros((192, 192, 200), np.float32)
  extruded[hull, 40:160] = 0.9
  sil = pm.silhouette(extruded)
  assert pm.hull_coverage(sil, landmarks) == 1.0
  assert pm.inner_share(sil, landmarks) == 1.0

  # Everything left of the column that halves the hull's area: half of it covered, and exactly the
  # inner landmarks within ON_SILHOUETTE_PX of those columns on the silhouette.
  split = int(np.searchsorted(np.cumsum(hull.sum(axis=0)), hull.sum() / 2))
  half = np.zeros((192, 192, 200), np.float32)
  half[:, : split + 1, 90:110] = 1.0
  sil = pm.silhouette(half)
  expected = independent[:, : split + 1].sum() / independent.sum()
  assert pm.hull_coverage(sil, landmarks) == pytest.approx(expected, abs=0.01)
  assert abs(pm.hull_coverage(sil, landmarks) - 0.5) < 0.02
  inner_x = landmarks[17:, 0]
  assert 0.2 < np.mean(inner_x <= split) < 0.8  # the split runs through the inner landmarks
  assert pm.inner_share(sil, landmarks) == pytest.approx(np.mean(inner_x - split <= pm.ON_SILHOUETTE_PX))

  # Below the 0.5 level nothing is silhouette.
  sil = pm.silhouette(np.full((192, 192, 200), 0.4, np.float32))
  assert pm.hull_coverage(sil, landmarks) == 0.0 and pm.inner_share(sil, landmarks) == 0.0


def test_front_surface_and_relief_of_a_known_surface(gt_examples):
  from vrn_jax import photo_metrics as pm

  # A soft volume whose 0.5 level is the paraboloid f(x, y): the front surface is f, the relief f's
  # differences at the landmarks' pixels.
  yy, xx = np.mgrid[:192, :192].astype(np.float64)
  f = 150.0 - ((xx - 96) ** 2 + (yy - 100) ** 2) / 60.0
  k = np.arange(200, dtype=np.float64)
  volume = (1 / (1 + np.exp((k[None, None] - f[..., None]) / 0.6))).astype(np.float32)
  front = pm.front_surface(volume)
  inside = f > 1
  assert np.nanmax(np.abs(front[inside] - f[inside])) < 0.06
  landmarks = np.asarray(gt_examples[0][0]["landmarks"], np.float64)
  points = pm.relief_points(landmarks)
  at = {g: f[np.round(p[:, 1]).astype(int), np.round(p[:, 0]).astype(int)] for g, p in points.items()}
  got = pm.relief(pm.surface_points(front, landmarks))
  for part in ("eyes", "mouth", "cheeks"):
    assert got[f"nose_minus_{part}"] == pytest.approx(at["nose"][0] - at[part].mean(), abs=0.06)
  assert got["nose_minus_eyes"] > 5  # the paraboloid's apex is near the nose

  # Along the face's axis: points turned by a pose give, with that pose, the frontal points' relief.
  frontal = pm.landmark_points(landmarks)
  rotation = Rotation.from_euler("yx", [40, 10], degrees=True).as_matrix()
  yawed = Rotation.from_euler("y", 40, degrees=True).as_matrix()
  turned = {}
  for g, p in frontal.items():
    xyz = np.concatenate([p[:, :2], p[:, 2:] * 0.5], axis=1) @ rotation.T
    turned[g] = np.concatenate([xyz[:, :2], xyz[:, 2:] / 0.5], axis=1)
  for name, value in pm.relief(turned, rotation).items():
    assert value == pytest.approx(pm.relief(frontal)[name], abs=1e-9)
  # In camera z a turned head's nose stands out less (the face's depth shrinks by cos(yaw)).
  turned = {}
  for g, p in frontal.items():
    xyz = np.concatenate([p[:, :2], p[:, 2:] * 0.5], axis=1) @ yawed.T
    turned[g] = np.concatenate([xyz[:, :2], xyz[:, 2:] / 0.5], axis=1)
  assert pm.relief(turned)["nose_minus_eyes"] < pm.relief(frontal)["nose_minus_eyes"] - 5.0

  # An empty column at a landmark: that figure is NaN, not a number from elsewhere.
  volume[:, :, :] = 0
  assert all(np.isnan(v) for v in pm.relief(pm.surface_points(pm.front_surface(volume),
                                                              landmarks)).values())


def test_surface_grid_finds_a_linearly_interpolated_head_and_not_the_b_spline():
  """`surface_grid` of a paraboloid front surface: drawn exactly, 1; through the heads' 48x48 samples
  and the x4 linear upsample (models.layers' matrix), far above 1 (it bends only at the samples); through
  the cubic B-spline at the same samples, 1 again (it keeps a paraboloid's constant curvature)."""
  from vrn_jax import photo_metrics as pm
  from vrn_jax.models.layers import interpolation_matrix

  def paraboloid(y, x):
    return 150.0 - ((x - 96) ** 2 + (y - 100) ** 2) / 60.0

  yy, xx = np.mgrid[:192, :192].astype(np.float64)
  outside = (xx - 96) ** 2 + (yy - 100) ** 2 > 70 ** 2  # a face-sized disc; NaN beyond it
  exact = np.where(outside, np.nan, paraboloid(yy, xx))
  samples = paraboloid(*np.meshgrid(pm.HEAD_SAMPLES, pm.HEAD_SAMPLES, indexing="ij"))
  drawn = {}
  for kind in ("linear", "bspline"):
    m = interpolation_matrix(48, 192, kind)
    drawn[kind] = np.where(outside, np.nan, m @ samples @ m.T)
  assert pm.surface_grid(exact) == pytest.approx(1.0, abs=1e-6)
  assert pm.surface_grid(drawn["linear"]) > 5.0
  assert pm.surface_grid(drawn["bspline"]) == pytest.approx(1.0, abs=0.02)
  assert np.isnan(pm.surface_grid(np.full((192, 192), np.nan)))
  with pytest.raises(Exception, match="expected"):
    pm.surface_grid(np.zeros((48, 48)))


def test_landmark_nme_is_the_shift_over_the_outer_interocular_distance(gt_examples):
  from vrn_jax import photo_metrics as pm
  from vrn_jax.errors import InputError

  given = np.asarray(gt_examples[0][0]["landmarks"], np.float64)[:, :2]
  d = np.linalg.norm(given[36] - given[45])
  assert pm.landmark_nme(given + [0.03 * d, 0.04 * d], given) == pytest.approx(0.05)
  assert pm.landmark_nme(given, given) == 0.0
  with pytest.raises(InputError, match=r"predicted landmarks: landmarks of shape \(67, 2\)"):
    pm.landmark_nme(given[:67], given)


# -------------------------------------------------------------------------- the synthetic ground truth


def test_ground_truth_volume_agrees_with_its_landmarks(gt_examples):
  from vrn_jax import photo_metrics as pm

  for example, volume in gt_examples:
    landmarks = np.asarray(example["landmarks"], np.float64)
    scores = pm.score_volume(volume, landmarks)
    # Nearly all the hull covered, its inner landmarks all on it. (The issue measured >= 98.5% with the
    # jaw landmarks on fixed vertices inside the outline; on the outline, the hull's edge runs along the
    # silhouette's and the pixels there fall either side: 0.984 for the face at 70 degrees here.)
    assert scores["hull_coverage"] >= 0.98, example["yaw"]
    assert scores["inner_share"] == 1.0, example["yaw"]
    if abs(float(example["yaw"])) <= 15:
      # Where they are visible, the front surface passes through the 3D landmarks (z = voxel * 0.5).
      # (Near-frontal only: at 25 degrees the column of an outer eye corner already meets the surface
      # 3.8 voxels in front of it.)
      # The surface is read at the nearest pixel centre; carried to the landmark's own (x, y) along the
      # surface's slope there (central differences), it must meet the landmark to 1.5 voxels.
      front = pm.front_surface(volume)
      slope_y, slope_x = np.gradient(front)
      want = pm.landmark_points(landmarks)
      for group in ("nose", "eyes", "mouth"):
        read = np.asarray(scores["surface_points"][group])
        x, y = want[group][:, 0], want[group][:, 1]
        cx, cy = np.rint(x).astype(int), np.rint(y).astype(int)
        carried = read[:, 2] + slope_x[cy, cx] * (x - cx) + slope_y[cy, cx] * (y - cy)
        np.testing.assert_allclose(carried, want[group][:, 2], atol=1.5, err_msg=group)
      assert scores["relief"]["nose_minus_eyes"] == pytest.approx(
          pm.relief(want)["nose_minus_eyes"], abs=1.5)
      assert scores["relief"]["nose_minus_eyes"] > 15  # the nose stands out of the face


def test_reference_bins_yaw_estimate_and_a_blob(gt_examples, reference):
  from vrn_jax import photo_metrics as pm
  from vrn_jax import photo_report

  ref, path = reference
  assert [ref["yaw_bins"][b]["count"] for b in ("0-30", "30-60", "60-90")] == [3, 0, 2]
  assert ref["yaw_bins"]["30-60"]["relief"]["nose_minus_eyes"]["lo"] is None
  assert photo_report.load_reference(path) == json.loads(json.dumps(ref))
  template = ref["template"]
  for example, volume in gt_examples:
    landmarks = np.asarray(example["landmarks"], np.float64)
    scores = pm.score_volume(volume, landmarks, template=template)
    assert abs(scores["yaw_estimate_deg"] - abs(float(example["yaw"]))) < 10.0
    comparison = pm.compare_with_reference(scores, ref)
    own = str(pm.yaw_bins([example["yaw"]])[0])
    assert comparison["yaw_bin"] == own
    # Inside its own bin's range, and outside the other bin's for some camera-z figure: the bins
    # tell a frontal face's relief from a profile's.
    assert comparison["relief_ok"], comparison
    other = ref["yaw_bins"]["60-90" if own == "0-30" else "0-30"]["relief"]
    assert any(not other[f]["lo"] <= scores["relief"][f] <= other[f]["hi"] for f in pm.RELIEF_FIGURES)
    assert pm.goal_checks(scores, comparison) == {"hull_coverage": True, "inner_share": True,
                                                  "relief": True, "landmark_nme": None}

  # The failure: a smooth blob where the face is covers the hull but has no nose.
  example, _ = gt_examples[0]
  landmarks = np.asarray(example["landmarks"], np.float64)
  cx, cy = landmarks[:27, :2].mean(axis=0)
  yy, xx, kk = np.meshgrid(np.arange(192), np.arange(192), np.arange(200), indexing="ij")
  r2 = ((xx - cx) / 75) ** 2 + ((yy - cy) / 85) ** 2 + ((kk - 60) / 80) ** 2
  blob = (r2 < 1).astype(np.float32)
  scores = pm.score_volume(blob, landmarks, template=template)
  assert scores["hull_coverage"] == 1.0
  comparison = pm.compare_with_reference(scores, ref)
  assert not comparison["relief_ok"]
  assert comparison["relief_inside"]["nose_minus_eyes"] is False


# ----------------------------------------------------------------------------------------- the command


def test_photo_metrics_command_on_the_fixtures(reference, tmp_path):
  from vrn_jax import photo_metrics as pm
  from vrn_jax.configs import default

  photos = fixtures_dir()
  workdir = str(tmp_path / "work")
  save_slab_checkpoint(default.get_config("test"), workdir, SLAB_DEPTH)
  out = tmp_path / "out"
  r = subprocess.run([sys.executable, "run_eval.py", f"--workdir={workdir}", f"--images={photos}",
                      f"--output_dir={out}", "--photo_metrics", f"--photo_reference={reference[1]}",
                      "--progress=false", "--mesh_formats=ply"],
                     cwd=REPO, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "reconstructed 5 face(s) from 5 of 5 photo(s)" in r.stdout
  assert "hull (GT)" in r.stdout and "goals met:" in r.stdout
  report = json.loads((out / "photo_metrics.json").read_text())
  for key in ("model", "goals", "definitions", "reference", "summary", "faces"):
    assert key in report, key
  assert set(report["definitions"]) >= {"hull_coverage", "relief", "landmark_nme", "surface_grid"}
  assert report["model"]["step"] == 3 and report["goals"]["hull_coverage"] == 0.97
  names = sorted(f["name"] for f in report["faces"])
  assert names == sorted(os.path.splitext(p)[0] for p in os.listdir(photos) if p.endswith(".jpg"))
  for face in report["faces"]:
    assert face["error"] is None and face["landmarks_source"].startswith("file ")
    # The slab covers every column and its front is flat at z = SLAB_DEPTH - 0.5: full coverage, no
    # relief in camera z, so outside the ground truth's range.
    assert face["hull_coverage"] == 1.0 and face["inner_share"] == 1.0
    for f in pm.RELIEF_FIGURES:
      assert face["relief"][f] == pytest.approx(0.0, abs=1e-6)
    assert face["yaw_bin"] in ("0-30", "30-60", "60-90") and face["relief_ok"] is False
    assert face["passes"] == {"hull_coverage": True, "inner_share": True, "relief": False,
                              "landmark_nme": None}
    assert np.asarray(face["landmarks"]).shape == (68, 2)
  assert report["summary"]["goals_met"] == {"hull_coverage": True, "inner_share": True, "relief": False,
                                            "landmark_nme": None}
  assert report["summary"]["all_goals_met"] is False
  sheet = np.asarray(Image.open(out / "contact_sheet.png"))
  assert sheet.shape[1] == 4 * 256 and sheet.shape[0] > 5 * 256
  assert sheet.std() > 20  # photos and renders, not a blank page


class _LandmarkPredictor:
  """A ball for every crop, and the same 68 landmarks (a multitask network's, stood in for) every time."""

  batch_size = 2
  has_detector = False
  predicts_landmarks = True

  def __init__(self, landmarks):
    self.landmarks = landmarks

  def volumes(self, crops):
    y, x, z = np.meshgrid(np.arange(192), np.arange(192), np.arange(200), indexing="ij")
    ball = np.sqrt((y - 96) ** 2 + (x - 96) ** 2 + ((z - 100) / 2) ** 2)
    return np.repeat(np.clip(0.5 + (70 - ball) / 4, 0, 1).astype(np.float32)[None], len(crops), axis=0)

  def predict_landmarks(self, crops):
    return np.repeat(self.landmarks[None], len(crops), axis=0)


def test_predicted_landmarks_are_scored_against_the_given_ones(reference, tmp_path):
  from vrn_jax import photo_metrics as pm
  from vrn_jax import photo_report, reconstruct
  from vrn_jax.files import read_landmarks_txt
  from vrn_jax.geometry.crop import CropTransform

  photo = os.path.join(fixtures_dir(), "asj.jpg")
  out = str(tmp_path)
  predicted = np.stack([np.linspace(60, 130, 68), np.linspace(70, 140, 68)], axis=1)
  predictor = _LandmarkPredictor(predicted)
  results = reconstruct.reconstruct_photos(predictor, [photo], out, mesh_formats=("ply",), progress=False)
  rows, sheet = photo_report.score_reconstructions(predictor, results, out, reference[0], progress=False)
  (row,) = rows
  given = CropTransform.load_json(os.path.join(out, "asj_crop.json")).to_crop(
      read_landmarks_txt(photo[:-4] + ".txt"))
  d = np.linalg.norm(given[36] - given[45])
  assert row["landmark_nme"] == pytest.approx(np.mean(np.linalg.norm(predicted - given, axis=1)) / d)
  assert row["passes"]["landmark_nme"] is (row["landmark_nme"] <= pm.GOALS["landmark_nme"])
  # A ball drawn analytically at every pixel has no grid.
  assert row["surface_grid"] == pytest.approx(1.0, abs=0.1)
  assert sheet.shape[1] == 4 * 256
