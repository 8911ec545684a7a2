"""The crop: parity with the release's own crops, invertibility, CLI and bad input."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, fixtures_dir
from vrn_jax.errors import InputError
from vrn_jax.files import read_image_rgb, read_landmarks_txt, write_image_rgb
from vrn_jax.geometry.crop import CropTransform, crop_from_box, crop_from_landmarks, crop_image


def _names():
  return sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(fixtures_dir(), "*.txt")))


def test_reproduces_the_release_crops():
  """run.m's crops of the five example photos: mean absolute difference under 8 grey levels (their
  JPEG noise alone is 3-6); a one-pixel shift of our transform would fail this for most photos."""
  d = fixtures_dir()
  names = _names()
  assert len(names) == 5
  for name in names:
    photo = read_image_rgb(os.path.join(d, name + ".jpg"))
    landmarks = read_landmarks_txt(os.path.join(d, name + ".txt"))
    reference = read_image_rgb(os.path.join(d, "scaled", name + ".jpg")).astype(np.float64)
    transform = crop_from_landmarks(landmarks, photo.shape[:2])
    mad = np.abs(crop_image(photo, transform) - reference).mean()
    assert mad < 8.0, (name, mad)


def test_transform_is_invertible_for_2d_and_3d_points():
  rng = np.random.default_rng(0)
  points = rng.uniform(0, 400, size=(68, 2))
  t = crop_from_landmarks(points, (450, 430)).with_z_offset(12.5)
  p3 = np.concatenate([points, rng.normal(size=(68, 1)) * 50], axis=1)
  np.testing.assert_allclose(t.to_photo(t.to_crop(p3)), p3, atol=1e-9)
  np.testing.assert_allclose(t.to_crop(p3)[:, 2], t.scale * p3[:, 2] + 12.5)  # z scales like x, y
  # The landmarks' box gets a geometric-mean side of 90 crop pixels, its centroid near the centre.
  c = t.to_crop(points)
  assert np.isclose(np.sqrt(np.prod(c.max(0) - c.min(0))), 90.0)
  assert np.all(np.abs(c.mean(0) - 95.5) < 1.0)
  np.testing.assert_allclose(CropTransform.from_array(t.as_array()).as_array(), t.as_array())


def test_crop_image_puts_photo_points_where_the_transform_says():
  photo = np.zeros((300, 500, 3), np.uint8)
  dots = np.array([[120.0, 80.0], [300.0, 210.0], [410.0, 150.0]])
  for x, y in dots.astype(int):
    photo[y - 2 : y + 3, x - 2 : x + 3] = 255
  t = crop_from_box((100, 60, 430, 240))
  crop = crop_image(photo, t).astype(float).sum(axis=2)
  for cx, cy in t.to_crop(dots):
    r = 4
    x0, y0 = int(round(cx)) - r, int(round(cy)) - r
    patch = crop[y0 : y0 + 2 * r + 1, x0 : x0 + 2 * r + 1]
    yy, xx = np.mgrid[y0 : y0 + 2 * r + 1, x0 : x0 + 2 * r + 1]
    centroid = np.array([(patch * xx).sum(), (patch * yy).sum()]) / patch.sum()
    np.testing.assert_allclose(centroid, [cx, cy], atol=0.15)
  # Outside the photo the crop is zero padded.
  far = crop_from_box((-1000, -1000, -900, -900))
  assert crop_image(photo, far).max() == 0


def test_cli_writes_crop_and_transform(tmp_path):
  d = fixtures_dir()
  out, tjson = tmp_path / "asj.png", tmp_path / "asj.json"
  subprocess.run([sys.executable, "-m", "vrn_jax.crop", "--image", os.path.join(d, "asj.jpg"),
                  "--landmarks", os.path.join(d, "asj.txt"), "--output", str(out),
                  "--transform_out", str(tjson)], check=True, cwd=REPO)
  crop = read_image_rgb(out)
  assert crop.shape == (192, 192, 3)
  photo = read_image_rgb(os.path.join(d, "asj.jpg"))
  expected = crop_image(photo, crop_from_landmarks(read_landmarks_txt(os.path.join(d, "asj.txt")),
                                                   photo.shape[:2]))
  np.testing.assert_array_equal(crop, expected)  # PNG is lossless
  assert CropTransform.load_json(tjson).scale > 0


def test_bad_inputs_name_the_file_and_write_nothing(tmp_path):
  bad_pts = tmp_path / "67.txt"
  bad_pts.write_text("\n".join("1,2" for _ in range(67)))
  with pytest.raises(InputError, match=r"67\.txt: found 67 rows.*expected 68 rows"):
    read_landmarks_txt(bad_pts)
  not_image = tmp_path / "photo.jpg"
  not_image.write_bytes(b"this is not a jpeg")
  good = tmp_path / "ok.png"
  write_image_rgb(good, np.zeros((10, 10, 3), np.uint8))
  for args, message in (
      (["--image", str(not_image), "--box", "0,0,5,5"], "photo.jpg: not a readable image"),
      (["--image", str(good), "--landmarks", str(bad_pts)], "67.txt: found 67 rows"),
      (["--image", str(good), "--box", "1,2,3"], "expected four numbers"),
  ):
    out = tmp_path / "crop.png"
    r = subprocess.run([sys.executable, "-m", "vrn_jax.crop", *args, "--output", str(out)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1
    assert message in r.stderr, r.stderr
    assert not out.exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["67.txt", "ok.png", "photo.jpg"]
