"""Fuzzed bad inputs: every reader of a user's file accepts it with a sane result or raises InputError
naming it; batch jobs name each bad file, go on with the others, exit non-zero and leave no partial file.

The cases come from `benchmarks.fuzz_inputs` (seeded); `python -m benchmarks.fuzz_inputs --per_kind 2000`
runs many more through the same checks.
"""

import collections
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.io
from PIL import Image

from benchmarks import fuzz_inputs as fuzz
from conftest import REPO, fixtures_dir, save_slab_checkpoint
from vrn_jax.errors import InputError, TooLargeError

SEED = 22
CASES = 300  # per input family


def _run_cases(cases, check):
  """(counts of 'ok'/'error' per kind, failure messages) of `check` over the cases."""
  counts, failures = collections.defaultdict(collections.Counter), []
  for case in cases:
    try:
      counts[case.kind][check(case)] += 1
    except fuzz.FuzzFailure as e:
      failures.append(str(e))
  return counts, failures


def _assert_all_kinds_seen(counts, valid_kinds, invalid_kinds, prefix=""):
  """Not vacuous: every kind was tried, valid ones all accepted, invalid ones all refused."""
  for kind in valid_kinds:
    c = counts[prefix + kind]
    assert c["ok"] >= 1 and not c["error"], (kind, c)
  for kind in invalid_kinds:
    c = counts[prefix + kind]
    assert c["error"] >= 1 and not c["ok"], (kind, c)


# -------------------------------------------------------------------------------------------- photos


def test_fuzzed_photos_decode_upright_or_are_refused_by_name(tmp_path):
  cases = fuzz.photo_cases(SEED, CASES)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the bomb headers, refused below
    in_memory = _run_cases(cases, fuzz.check_photo)
    from_files = _run_cases(cases, lambda c: fuzz.check_photo(c, str(tmp_path)))
  for counts, failures in (in_memory, from_files):
    assert not failures, failures[:10]
    _assert_all_kinds_seen(counts, fuzz.VALID_PHOTO_KINDS, fuzz.INVALID_PHOTO_KINDS)
  # A photo claiming 30000x30000 pixels is "too large" (the web app's 413), before any pixel is decoded.
  from vrn_jax.files import decode_image_rgb

  for case in cases:
    if case.kind.endswith("bomb_header"):
      with pytest.raises(TooLargeError, match=r"megapixels are accepted"):
        decode_image_rgb(case.data, case.name)


def test_exif_orientation_is_applied_and_the_check_sees_it():
  """Every EXIF orientation decodes to the upright picture; decoding without applying it (the stored
  pixels) is caught by the orientation check for all but orientation 1."""
  from vrn_jax.files import decode_image_rgb

  rng = np.random.default_rng(0)
  for orientation in range(1, 9):
    upright = fuzz.quadrant_pattern(rng, 40, 24)
    case = fuzz.Case("exif", f"o{orientation}.jpg", fuzz._exif_jpeg(upright, orientation, 95), True,
                     upright)
    fuzz.check_photo_pixels(case, decode_image_rgb(case.data, case.name))
    stored = np.asarray(Image.open(io.BytesIO(case.data)).convert("RGB"))
    if orientation == 1:
      fuzz.check_photo_pixels(case, stored)
    else:
      with pytest.raises(fuzz.FuzzFailure):
        fuzz.check_photo_pixels(case, stored)


# ----------------------------------------------------------------------------------------- landmarks


def test_fuzzed_landmark_files_read_and_crop_or_are_refused_by_name(tmp_path):
  counts, failures = _run_cases(fuzz.landmark_cases(SEED, CASES),
                                lambda c: fuzz.check_landmarks(c, str(tmp_path)))
  assert not failures, failures[:10]
  _assert_all_kinds_seen(counts, fuzz.VALID_LANDMARK_KINDS, fuzz.INVALID_LANDMARK_KINDS)


def test_landmarks_outside_the_photo():
  """A face at the photo's edge is cropped, zero padded beyond it; landmarks centred off the photo (or
  reaching far beyond it) are an error naming the file and the photo's size."""
  from vrn_jax.geometry.crop import crop_from_landmarks, crop_image

  photo = np.full((300, 400, 3), 255, np.uint8)
  rng = np.random.default_rng(1)
  face = rng.uniform(-50, 50, size=(68, 2))
  at_edge = face + [10.0, 150.0]  # centred 10 px inside the left edge: ~40% of the face is off the photo
  crop = crop_image(photo, crop_from_landmarks(at_edge, photo.shape[:2], what="edge.txt"))
  t = crop_from_landmarks(at_edge, photo.shape[:2])
  left_edge_x = t.to_crop(np.array([[-0.5, 150.0]]))[0, 0]
  assert 20 < left_edge_x < 172
  assert np.all(crop[:, : int(left_edge_x) - 2] == 0) and np.all(crop[:, int(left_edge_x) + 3:] == 255)
  for points in (face + [-60.0, 150.0], face + [200.0, 420.0], np.vstack([face[:67] + 200, [[5e6, 10]]])):
    with pytest.raises(InputError, match=r"off\.txt: landmarks span .* off the 400x300 photo"):
      crop_from_landmarks(points, photo.shape[:2], what="off.txt")


# ------------------------------------------------------------------------------------------ .mat fits


@pytest.fixture(scope="module")
def mat_bench(tmp_path_factory):
  return fuzz.MatBench(str(tmp_path_factory.mktemp("mats")))


def test_fuzzed_fits_read_or_are_refused_by_name(mat_bench):
  """All cases through `read_fit`; the dataset example (the builder's per-item path) for the first case
  of each valid kind and for every kind whose fault only the crop sees."""
  built = set()

  def check(case):
    build = case.valid and case.kind not in built
    built.add(case.kind)
    return fuzz.check_mat(case, mat_bench, build_example=build)

  counts, failures = _run_cases(fuzz.mat_cases(SEED, CASES, mat_bench.template), check)
  assert not failures, failures[:10]
  _assert_all_kinds_seen(counts, fuzz.VALID_MAT_KINDS, fuzz.INVALID_MAT_KINDS)
  assert built >= set(fuzz.VALID_MAT_KINDS)


def _example(bench, name, mat):
  from vrn_jax.data import build, readers

  stem = os.path.join(bench.directory, name)
  scipy.io.savemat(stem + ".mat", mat)
  shutil.copyfile(bench.image_path, stem + ".jpg")
  return build.real_example(bench.manual_dir, readers.Item(stem + ".jpg", stem + ".mat", name))[1]


def test_yaw_past_profile_is_kept_and_a_face_turned_away_is_refused(mat_bench):
  """|yaw| a little over 90 degrees (a few AFLW2000-3D fits) makes an example, binned with 60-90; the
  same rotation written with other Euler angles gives the same example; a fit that shows the back of
  the head, or angles in degrees, is an error naming the file."""
  from vrn_jax.geometry.nme import yaw_bins

  pose = mat_bench.template["Pose_Para"].astype(np.float64).reshape(-1)
  past = pose.copy()
  past[:3] = np.deg2rad([5.0, -100.0, 3.0])
  example = _example(mat_bench, "past_profile", dict(mat_bench.template, Pose_Para=past[None]))
  assert example["yaw"] == pytest.approx(-100.0) and yaw_bins([example["yaw"]])[0] == "60-90"
  assert example["volume"]["depth"].any()

  wrap = lambda a: (a + np.pi) % (2 * np.pi) - np.pi
  alias = pose.copy()
  alias[:3] = wrap(pose[0] + np.pi), wrap(np.pi - pose[1]), wrap(pose[2] + np.pi)
  assert abs(alias[1]) > np.pi / 2
  original = _example(mat_bench, "original", mat_bench.template)
  aliased = _example(mat_bench, "alias", dict(mat_bench.template, Pose_Para=alias[None]))
  np.testing.assert_array_equal(aliased["image"], original["image"])
  np.testing.assert_array_equal(aliased["volume"]["depth"], original["volume"]["depth"])

  from vrn_jax.data import readers

  for name, angles, message in (("away", [0.0, 150.0, 0.0], r"turns the face 150 degrees from the camera"),
                                ("upside", [140.0, 0.0, 0.0], r"turns the face 140 degrees"),
                                ("degrees", [10.0, 45.0, 5.0], r"expected radians in \[-pi, pi\]")):
    bad = pose.copy()
    bad[:3] = np.deg2rad(angles) if name != "degrees" else angles
    stem = os.path.join(mat_bench.directory, name)
    scipy.io.savemat(stem + ".mat", dict(mat_bench.template, Pose_Para=bad[None]))
    shutil.copyfile(mat_bench.image_path, stem + ".jpg")
    with pytest.raises(InputError, match=rf"{name}\.mat: `Pose_Para` .*{message}"):
      readers.read_fit(readers.Item(stem + ".jpg", stem + ".mat", name), mat_bench.model)


# ------------------------------------------------------------------------------------------- volumes


def test_fuzzed_volumes_mesh_or_are_refused_by_name(tmp_path):
  counts, failures = _run_cases(fuzz.volume_cases(SEED, CASES), lambda c: fuzz.check_volume(c, str(tmp_path)))
  assert not failures, failures[:10]
  _assert_all_kinds_seen(counts, fuzz.VALID_MESHER_KINDS, fuzz.INVALID_MESHER_KINDS, "mesher/")
  _assert_all_kinds_seen(counts, fuzz.VALID_VOLUME_FILE_KINDS, fuzz.INVALID_VOLUME_FILE_KINDS, "file/")
  assert os.listdir(tmp_path) == []  # every refused volume left no mesh, no temporary file


# ------------------------------------------------------------------------------- the batch commands


def _bad_photo_cases():
  """One case of each invalid photo kind."""
  seen = {}
  for case in fuzz.photo_cases(SEED, 2 * len(fuzz.VALID_PHOTO_KINDS + fuzz.INVALID_PHOTO_KINDS)):
    if not case.valid:
      seen.setdefault(case.kind, case)
  return list(seen.values())


def test_run_eval_images_batch_of_good_odd_and_bad_photos(tmp_path):
  """`run_eval.py --images=DIR` over the fixture photo, three odd but valid versions of it (CMYK,
  16-bit grey, EXIF-rotated: each meshed), and bad photos of every fuzzed kind plus bad landmark files
  and a 1x1 photo (each named on stderr); exit 1, and only the good ones' outputs in the output dir."""
  from vrn_jax.configs import default

  src = fixtures_dir()
  workdir = str(tmp_path / "work")
  save_slab_checkpoint(default.get_config("test"), workdir, 100)
  photos = tmp_path / "photos"
  photos.mkdir()
  upright = np.asarray(Image.open(os.path.join(src, "asj.jpg")).convert("RGB"))
  landmarks = open(os.path.join(src, "asj.txt")).read()
  good = {"asj": open(os.path.join(src, "asj.jpg"), "rb").read(),
          "asj_cmyk": fuzz._encode(upright, "JPEG", mode="CMYK", quality=95),
          "asj_exif": fuzz._exif_jpeg(upright, 6, 95)}
  buf = io.BytesIO()
  Image.fromarray(upright.mean(axis=2).astype(np.uint16) * 257).save(buf, format="PNG")
  good["asj_grey16"] = buf.getvalue()
  for stem, data in good.items():
    ext = ".png" if stem == "asj_grey16" else ".jpg"
    (photos / (stem + ext)).write_bytes(data)
    (photos / (stem + ".txt")).write_text(landmarks)
  bad = {}
  for case in _bad_photo_cases():
    stem = f"bad_{case.kind}"
    bad[stem] = stem + os.path.splitext(case.name)[1]
    (photos / bad[stem]).write_bytes(case.data)
    (photos / (stem + ".txt")).write_text(landmarks)
  (photos / "short.jpg").write_bytes(good["asj"])
  (photos / "short.txt").write_text("\n".join(landmarks.splitlines()[:67]) + "\n")
  bad["short"] = "short.txt"
  (photos / "elsewhere.jpg").write_bytes(good["asj"])
  (photos / "elsewhere.txt").write_text("".join(f"{x + 5000:.1f},{y:.1f}\n" for x, y in (
      np.loadtxt(os.path.join(src, "asj.txt"), delimiter=","))))
  bad["elsewhere"] = "elsewhere.txt"
  Image.new("RGB", (1, 1), (128, 128, 128)).save(photos / "dot.png")  # no landmarks: the face finder
  bad["dot"] = "dot.png"

  out = tmp_path / "out"
  env = dict(os.environ, VRN_FACES_NUM_WORKERS="1")
  r = subprocess.run([sys.executable, "run_eval.py", f"--workdir={workdir}", f"--images={photos}",
                      f"--output_dir={out}"], cwd=REPO, env=env, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 1, r.stdout + r.stderr[-3000:]
  errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == len(bad), "\n".join(errors)
  for stem, named in bad.items():
    assert sum(named in e for e in errors) == 1, (named, errors)
  assert any("no face found" in e for e in errors if "dot.png" in e)
  assert any("off the" in e for e in errors if "elsewhere.txt" in e)
  n = len(good) + len(bad)
  assert f"reconstructed {len(good)} face(s) from {len(good)} of {n} photo(s)" in r.stdout, r.stdout
  per_face = ("_crop.png", "_crop.json", ".npy", ".obj", "_photo.obj", ".glb", "_photo.glb",
              "_preview.png", "_overlay.png")
  assert sorted(os.listdir(out)) == sorted(stem + s for stem in good for s in per_face)
  # The odd photos decode to the same upright pixels: their crops match the original's (its grey
  # version for the grey photo); a crop of the EXIF photo's stored, unrotated pixels would not.
  reference = np.asarray(Image.open(out / "asj_crop.png")).astype(float)
  for stem in good:
    crop = np.asarray(Image.open(out / f"{stem}_crop.png")).astype(float)
    expected = reference.mean(axis=2, keepdims=True) if stem == "asj_grey16" else reference
    assert np.abs(crop - expected).mean() < 6.0, stem


def test_convert_refuses_bad_volumes_and_writes_nothing(tmp_path):
  """`python -m vrn_jax.convert` on a .npz named .npy (a crash before) and a volume with NaNs: exit 1,
  one error line naming the file, no mesh and no temporary file."""
  volume = np.zeros((192, 192, 200), np.float32)
  volume[80:110, 80:110, 50:90] = 1.0
  np.savez(tmp_path / "archive.npz", volume=volume)
  os.rename(tmp_path / "archive.npz", tmp_path / "archive.npy")
  volume[90, 90, 60] = np.nan
  np.save(tmp_path / "holes.npy", volume)
  for name, message in (("archive.npy", "a .npz archive, not a .npy array"),
                        ("holes.npy", "volume contains NaN or infinity")):
    out = tmp_path / "mesh.obj"
    r = subprocess.run([sys.executable, "-m", "vrn_jax.convert", "--volume", str(tmp_path / name),
                        "--output", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / name}: {message}."] or (
        r.stderr.startswith(f"error: {tmp_path / name}: ") and message in r.stderr), r.stderr
    assert sorted(os.listdir(tmp_path)) == ["archive.npy", "holes.npy"]


def test_dataset_build_skips_and_counts_fuzzed_fits(tmp_path):
  """`tfds build` of a 300W-LP tree where five fits are broken in fuzzed ways (text where numbers
  belong, which crashed the build before; the face turned away; the face off the photo; not a .mat
  file; a v7.3 file with a struct for a key): each skipped by name, counted, the rest built."""
  from vrn_jax.data import readers
  from vrn_jax.faces.synthetic import write_300w_lp_tree

  manual = tmp_path / "manual"
  write_300w_lp_tree(str(manual), 7, seed=23)
  items = readers.list_300w_lp(str(manual))
  template = {k: v for k, v in scipy.io.loadmat(items[0].mat_path).items() if not k.startswith("__")}
  broken = {}
  for case in fuzz.mat_cases(SEED, 4 * len(fuzz.VALID_MAT_KINDS + fuzz.INVALID_MAT_KINDS), template):
    if case.kind in ("text_param", "turned_away", "face_off_photo", "not_a_mat", "hdf5_group"):
      broken.setdefault(case.kind, case)
  assert len(broken) == 5
  for item, case in zip(items, broken.values()):
    with open(item.mat_path, "wb") as f:
      f.write(case.data)
  env = dict(os.environ, VRN_FACES_NUM_WORKERS="1")
  r = subprocess.run(["tfds", "build", os.path.join(REPO, "vrn_jax", "datasets", "vrn_faces"),
                      "--config=300w_lp", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'data'}"],
                     capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
                     executable=os.path.join(os.path.dirname(sys.executable), "tfds"))
  log = r.stdout + r.stderr
  assert r.returncode == 0, log[-3000:]
  assert "2 examples written, 5 source files skipped" in log, log[-3000:]
  for item in items[:5]:
    assert sum(f"skipped: {item.mat_path}" in line for line in log.splitlines()) == 1, item.mat_path
  (info,) = glob.glob(str(tmp_path / "data" / "vrn_faces" / "300w_lp" / "*" / "dataset_info.json"))
  (split,) = json.load(open(info))["splits"]
  assert split["name"] == "train" and sum(int(n) for n in split["shardLengths"]) == 2
