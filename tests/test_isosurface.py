"""Volume to mesh: the release's .raw, our .npy, colours, photo coordinates, exports, bad input."""

import subprocess
import sys

import numpy as np
import pytest
import trimesh

from conftest import REPO, half_ellipsoid, image_rotation
from vrn_jax.errors import InputError
from vrn_jax.files import write_image_rgb
from vrn_jax.geometry.crop import crop_from_box
from vrn_jax.geometry.isosurface import (RAW_SHAPE, load_volume, read_raw, save_mesh,
                                         volume_to_mesh, write_raw)
from vrn_jax.geometry.voxelise import voxelise


@pytest.fixture(scope="module")
def soft_volume():
  v, f = half_ellipsoid((40.0, 50.0, 25.0), subdivisions=4)
  r = image_rotation(0, 30, 0)
  binary = voxelise(v @ r.T + np.array([96.0, 96.0, 50.0]), f, r)
  from scipy import ndimage
  return ndimage.gaussian_filter(binary.astype(np.float32), 1.0)  # a "soft" prediction


def test_raw_layout_is_z_y_x_uint8(tmp_path, soft_volume):
  path = tmp_path / "face.raw"
  write_raw(path, soft_volume)
  raw = np.fromfile(path, np.uint8)
  assert raw.size == 200 * 192 * 192
  raw = raw.reshape(RAW_SHAPE)
  np.testing.assert_array_equal(raw[17, 90, 101], np.uint8(soft_volume[90, 101, 17] * 255))
  back = read_raw(path)
  assert back.shape == (192, 192, 200)
  assert np.abs(back - soft_volume).max() <= 1 / 255 + 1e-6


def test_mesh_coordinates_follow_the_contract(soft_volume):
  mesh = volume_to_mesh(soft_volume, level=0.5)
  # Vertex (x, y, z) sits where the volume (y, x, z index = 2 z) crosses the level.
  from scipy import ndimage
  values = ndimage.map_coordinates(soft_volume, [mesh.vertices[:, 1], mesh.vertices[:, 0],
                                                 mesh.vertices[:, 2] * 2], order=1)
  np.testing.assert_allclose(values, 0.5, atol=1e-4)
  tm = mesh.to_trimesh()
  assert tm.is_watertight and tm.volume > 0


def test_raw_to_obj_with_colours_and_photo_coordinates(tmp_path, soft_volume):
  raw = tmp_path / "face.raw"
  write_raw(raw, soft_volume)
  crop = np.zeros((192, 192, 3), np.uint8)
  crop[:, :96] = (200, 30, 30)
  crop[:, 96:] = (30, 30, 200)
  write_image_rgb(tmp_path / "crop.png", crop)
  transform = crop_from_box((100, 50, 300, 260)).with_z_offset(7.0)
  transform.save_json(tmp_path / "t.json")
  for ext in ("obj", "ply"):
    out = tmp_path / f"face.{ext}"
    cmd = [sys.executable, "-m", "vrn_jax.convert", "--volume", str(raw), "--image",
           str(tmp_path / "crop.png"), "--output", str(out)]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    loaded = trimesh.load(out, process=False)
    expected = volume_to_mesh(read_raw(raw))
    np.testing.assert_allclose(loaded.vertices, expected.vertices, atol=1e-5)
    colours = np.asarray(loaded.visual.vertex_colors)[:, :3]
    left = expected.vertices[:, 0] < 94
    right = expected.vertices[:, 0] > 97
    assert np.all(colours[left] == (200, 30, 30)) and np.all(colours[right] == (30, 30, 200))
    photo_out = tmp_path / f"photo.{ext}"
    subprocess.run(cmd[:-1] + [str(photo_out), "--transform", str(tmp_path / "t.json")], check=True,
                   cwd=REPO, capture_output=True)
    in_photo = trimesh.load(photo_out, process=False).vertices
    np.testing.assert_allclose(transform.to_crop(in_photo), expected.vertices, atol=1e-4)


def test_npy_dtypes(tmp_path, soft_volume):
  for volume in (soft_volume, soft_volume > 0.5, (soft_volume * 255).astype(np.uint8)):
    np.save(tmp_path / "v.npy", volume)
    loaded = load_volume(tmp_path / "v.npy")
    assert loaded.dtype == np.float32 and loaded.max() <= 1.0
    assert len(volume_to_mesh(loaded).faces) > 1000


def test_bad_volumes_give_clear_errors_and_no_output(tmp_path):
  short = tmp_path / "short.raw"
  short.write_bytes(b"\0" * 1000)
  with pytest.raises(InputError, match=r"short\.raw: 1000 bytes; a VRN \.raw volume is 200\*192\*192"):
    read_raw(short)
  np.save(tmp_path / "wrong.npy", np.zeros((10, 10, 10), np.float32))
  with pytest.raises(InputError, match=r"wrong\.npy: volume has shape \(10, 10, 10\); expected"):
    load_volume(tmp_path / "wrong.npy")
  np.save(tmp_path / "empty.npy", np.zeros((192, 192, 200), np.float32))
  out = tmp_path / "out.obj"
  for vol, message in ((short, "short.raw: 1000 bytes"), (tmp_path / "empty.npy", "no surface at level")):
    r = subprocess.run([sys.executable, "-m", "vrn_jax.convert", "--volume", str(vol), "--output",
                        str(out)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert not out.exists()
  with pytest.raises(InputError, match="expected .obj, .ply or .glb"):
    save_mesh(tmp_path / "x.stl", volume_to_mesh(np.pad(np.ones((4, 4, 4)), 2)))
  assert not (tmp_path / "x.stl").exists()
