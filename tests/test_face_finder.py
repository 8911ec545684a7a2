"""The face finder against the release's own landmarks, and `python -m vrn_jax.crop` without landmarks.

The five fixture photos come with the 68 landmarks the release's FAN detector wrote; the crop the
release made from them is the reference. The finder's crop must land within 8% in scale and 4 crop
pixels at the face centre of it (dlib's predictor on these photos: 5% and 1.8 px at worst).
"""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, fixtures_dir
from vrn_jax.files import read_image_rgb, read_landmarks_txt
from vrn_jax.geometry.crop import CropTransform, crop_from_landmarks

SCALE_TOLERANCE = 0.08
CENTRE_TOLERANCE_PX = 4.0


@pytest.fixture(scope="module")
def finder():
  from vrn_jax.face_finder import DlibFaceFinder

  return DlibFaceFinder()


def _fixtures():
  d = fixtures_dir()
  paths = sorted(glob.glob(os.path.join(d, "*.jpg")))
  assert len(paths) == 5
  return [(p, read_image_rgb(p), read_landmarks_txt(p[:-4] + ".txt")) for p in paths]


def _crop_error(found: CropTransform, given: CropTransform, centre_xy) -> tuple[float, float]:
  """(relative scale error, crop-pixel distance of the face centre) between two crops."""
  c = np.asarray(centre_xy, np.float64)[None]
  return found.scale / given.scale - 1, float(np.linalg.norm(found.to_crop(c) - given.to_crop(c)))


def test_found_landmarks_match_the_release_landmarks(finder):
  for path, photo, given in _fixtures():
    faces = finder.find(photo)
    assert len(faces) == 1, path
    face = faces[0]
    assert face.detector == "hog" and face.landmarks.shape == (68, 2)
    interocular = np.linalg.norm(given[36] - given[45])
    nme = np.linalg.norm(face.landmarks - given, axis=1).mean() / interocular
    assert nme < 0.06, (path, nme)  # measured 0.028-0.044
    scale, centre = _crop_error(crop_from_landmarks(face.landmarks, photo.shape[:2]),
                                crop_from_landmarks(given, photo.shape[:2]), given.mean(axis=0))
    assert abs(scale) < SCALE_TOLERANCE and centre < CENTRE_TOLERANCE_PX, (path, scale, centre)


def test_off_centre_faces_in_a_larger_picture(finder):
  """Each fixture pasted off-centre into a 1600x1200 picture: the same crop, moved with it."""
  for k, (path, photo, given) in enumerate(_fixtures()):
    h, w = photo.shape[:2]
    offset = np.array([60 + 150 * k, 1200 - h - 30 - 40 * k], np.float64)
    canvas = np.full((1200, 1600, 3), 90, np.uint8)
    canvas[int(offset[1]):int(offset[1]) + h, int(offset[0]):int(offset[0]) + w] = photo
    faces = finder.find(canvas)
    assert len(faces) == 1, path
    moved = given + offset
    scale, centre = _crop_error(crop_from_landmarks(faces[0].landmarks, canvas.shape[:2]),
                                crop_from_landmarks(moved, canvas.shape[:2]), moved.mean(axis=0))
    assert abs(scale) < SCALE_TOLERANCE and centre < CENTRE_TOLERANCE_PX, (path, scale, centre)


def test_cnn_detector_finds_a_near_profile_the_hog_one_misses(finder):
  """A procedural face turned 69 degrees: the HOG detector finds nothing, the CNN fallback finds it
  where the face is."""
  from vrn_jax.data import build

  _, example = build.synthetic_example(0, 15)
  assert abs(float(example["yaw"])) > 65
  photo = np.asarray(Image.fromarray(example["image"]).resize((480, 480), Image.Resampling.BICUBIC))
  assert finder.detect_hog(photo) == []
  faces = finder.find(photo)
  assert len(faces) == 1 and faces[0].detector == "cnn"
  x0, y0, x1, y1 = faces[0].box
  cx, cy = (example["landmarks"][:, :2].mean(axis=0) + 0.5) * 2.5 - 0.5
  assert x0 < cx < x1 and y0 < cy < y1


def test_a_weak_box_the_cnn_does_not_confirm_is_not_a_face(finder):
  """scikit-image's astronaut: the HOG detector also boxes the mission patch on her suit, weakly; the CNN
  detector finds only her face, so the finder returns that one face."""
  import skimage.data

  photo = skimage.data.astronaut()
  hog = finder.detect_hog(photo)
  assert len(hog) == 2 and min(score for _, score in hog) < finder.confirm_below
  faces = finder.find(photo)
  assert len(faces) == 1 and faces[0].detector == "hog"
  # Her face: between the eyes and the mouth (landmarks 40, 43, 49, 55) inside the box, the patch below.
  x0, y0, x1, y1 = faces[0].box
  assert y1 < max(box[1] for box, _ in hog)
  inner = faces[0].landmarks[[39, 42, 48, 54]]
  assert np.all((inner >= (x0, y0)) & (inner <= (x1, y1))), (faces[0].box, inner)


def test_weak_boxes_are_confirmed_replaced_or_kept(finder, monkeypatch):
  """The rule on given detections: a weak box stays where a CNN box overlaps it, goes where a surer
  face is there, gives way to the CNN's faces where it is the only one, and stays where nothing else
  is found."""
  from vrn_jax.face_finder import DlibFaceFinder

  strong, weak = ((0, 0, 100, 100), 1.0), ((200, 0, 300, 100), 0.1)
  over_weak, elsewhere = ((210, 5, 310, 105), 0.9), ((0, 300, 100, 400), 0.9)

  def found(hog, cnn):
    calls = []
    monkeypatch.setattr(finder, "detect_hog", lambda _: list(hog))
    monkeypatch.setattr(finder, "detect_cnn", lambda _: calls.append(1) or list(cnn))
    monkeypatch.setattr(finder, "landmarks", lambda _, box: np.zeros((68, 2)))
    faces = DlibFaceFinder.find(finder, np.zeros((400, 400, 3), np.uint8))
    return [(f.box, f.detector) for f in faces], len(calls)

  assert found([strong], []) == ([(strong[0], "hog")], 0)  # sure: the CNN is not run
  assert found([strong, weak], [over_weak]) == ([(strong[0], "hog"), (weak[0], "hog")], 1)
  assert found([strong, weak], [elsewhere]) == ([(strong[0], "hog")], 1)
  assert found([weak], [elsewhere]) == ([(elsewhere[0], "cnn")], 1)
  assert found([weak], []) == ([(weak[0], "hog")], 1)
  assert found([], [elsewhere]) == ([(elsewhere[0], "cnn")], 1)  # the fallback
  monkeypatch.setattr(finder, "cnn_fallback", False)  # confirmation still, but no CNN faces instead
  assert found([weak], [elsewhere]) == ([(weak[0], "hog")], 1)
  assert found([strong, weak], [elsewhere]) == ([(strong[0], "hog")], 1)


def test_one_finder_serves_many_threads(finder):
  """The web app calls one finder from many threads (dlib itself crashes when called that way)."""
  import concurrent.futures

  photos = [photo for _, photo, _ in _fixtures()]
  expected = [finder.find(p)[0].box for p in photos]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    found = list(pool.map(lambda i: finder.find(photos[i % 5])[0].box, range(40)))
  assert found == [expected[i % 5] for i in range(40)]


def test_no_face_and_face_order(finder):
  from vrn_jax.face_finder import Face, order_faces

  assert finder.find(np.full((300, 400, 3), 127, np.uint8)) == []
  faces = [Face((x, y, x + 10, y + 10), np.zeros((68, 2)), 1.0, "hog") for x, y in
           ((300, 0), (10, 50), (120, 5))]
  assert [f.box[0] for f in order_faces(faces)] == [10, 120, 300]  # left to right


def test_crop_cli_finds_every_face(tmp_path):
  """Two photos side by side: two crops, named _face1 (left) and _face2, each with its transform and
  found landmarks, each matching the crop from the given landmarks."""
  d = fixtures_dir()
  left, right = "AFLW_image00046", "asj"
  a, b = read_image_rgb(os.path.join(d, left + ".jpg")), read_image_rgb(os.path.join(d, right + ".jpg"))
  canvas = np.full((900, 1400, 3), 128, np.uint8)
  canvas[20:20 + a.shape[0], 30:30 + a.shape[1]] = a
  canvas[40:40 + b.shape[0], 540:540 + b.shape[1]] = b
  photo = tmp_path / "two.png"
  Image.fromarray(canvas).save(photo)
  r = subprocess.run([sys.executable, "-m", "vrn_jax.crop", "--image", str(photo), "--output",
                      str(tmp_path / "c.png"), "--transform_out", str(tmp_path / "c.json"),
                      "--landmarks_out", str(tmp_path / "c.txt")], cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert sorted(os.listdir(tmp_path)) == sorted(["two.png", "c_face1.png", "c_face2.png", "c_face1.json",
                                                 "c_face2.json", "c_face1.txt", "c_face2.txt"])
  for k, (name, offset) in enumerate(((left, (30, 20)), (right, (540, 40))), 1):
    given = read_landmarks_txt(os.path.join(d, name + ".txt")) + offset
    found = CropTransform.load_json(tmp_path / f"c_face{k}.json")
    scale, centre = _crop_error(found, crop_from_landmarks(given, canvas.shape[:2]), given.mean(axis=0))
    assert abs(scale) < SCALE_TOLERANCE and centre < CENTRE_TOLERANCE_PX, (name, scale, centre)
    # The landmarks file it wrote is the --landmarks format, and gives the same crop back.
    again = crop_from_landmarks(read_landmarks_txt(tmp_path / f"c_face{k}.txt"), canvas.shape[:2])
    assert again.scale == pytest.approx(found.scale, rel=1e-4)
    assert np.asarray(Image.open(tmp_path / f"c_face{k}.png")).shape == (192, 192, 3)

  blank = tmp_path / "blank.png"
  Image.new("RGB", (320, 240), (10, 200, 30)).save(blank)
  r = subprocess.run([sys.executable, "-m", "vrn_jax.crop", "--image", str(blank), "--output",
                      str(tmp_path / "b.png")], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and f"error: {blank}: no face found" in r.stderr
  assert not os.path.exists(tmp_path / "b.png")
