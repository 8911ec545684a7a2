"""Volumes to meshes: marching cubes on the soft volume, colour from the crop, .obj/.ply export, and the
released VRN `.raw` format."""

from __future__ import annotations

import dataclasses
import json
import os
import struct

import numpy as np
from scipy import ndimage
from skimage import measure

from vrn_jax.errors import InputError

from vrn_jax.files import atomic_output
from vrn_jax.geometry.crop import CropTransform
from vrn_jax.geometry.voxelise import VOLUME_SHAPE, Z_SCALE

ISO_LEVEL = 0.5  # the release's isosurface level on the soft (sigmoid) volume
RAW_SHAPE = (200, 192, 192)  # the release's .raw: (z, y, x) uint8 = 255 * sigmoid, truncated


@dataclasses.dataclass
class Mesh:
  """A triangle mesh. vertices (V, 3) float64 (x, y, z) in crop pixels (or photo pixels after
  `to_photo`); faces (F, 3) int64; colors (V, 3) uint8 or None."""

  vertices: np.ndarray
  faces: np.ndarray
  colors: np.ndarray | None = None

  def to_photo(self, transform: CropTransform) -> "Mesh":
    return Mesh(transform.to_photo(self.vertices), self.faces, self.colors)

  def to_trimesh(self):
    # trimesh (with networkx) takes ~1 s to import, which only PLY/GLB export needs: kept out of the
    # dataset build's workers and the tools' start-up, which import this module through vrn_jax.geometry.
    import trimesh  # pylint: disable=g-import-not-at-top

    kwargs = {}
    if self.colors is not None:
      kwargs["vertex_colors"] = self.colors
    return trimesh.Trimesh(self.vertices, self.faces, process=False, **kwargs)


def read_raw(path: str | os.PathLike) -> np.ndarray:
  """Reads a released VRN `.raw` volume as float32 (192, 192, 200) (y, x, z) in [0, 1]."""
  path = os.fspath(path)
  expected = int(np.prod(RAW_SHAPE))
  try:
    size = os.path.getsize(path)
  except OSError:
    raise InputError(f"{path}: no such .raw volume file.") from None
  if size != expected:
    raise InputError(
        f"{path}: {size} bytes; a VRN .raw volume is 200*192*192 = {expected} bytes (uint8, z, y, x).")
  raw = np.fromfile(path, dtype=np.uint8).reshape(RAW_SHAPE)
  return raw.transpose(1, 2, 0).astype(np.float32) / 255.0


def write_raw(path: str | os.PathLike, volume: np.ndarray) -> None:
  """Writes a (192, 192, 200) volume in [0, 1] as the release's `.raw` (uint8 = 255 * p, truncated)."""
  volume = _check_volume(np.asarray(volume), str(path))
  raw = np.floor(np.clip(volume, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(2, 0, 1)
  with atomic_output(path) as tmp:
    np.ascontiguousarray(raw).tofile(tmp)


def _check_volume(volume: np.ndarray, what: str) -> np.ndarray:
  if volume.shape != VOLUME_SHAPE:
    raise InputError(f"{what}: volume has shape {volume.shape}; expected {VOLUME_SHAPE} (y, x, z).")
  if volume.dtype == bool:
    return volume.astype(np.float32)
  if volume.dtype == np.uint8:
    return volume.astype(np.float32) / 255.0
  if np.issubdtype(volume.dtype, np.floating):
    if not np.all(np.isfinite(volume)):
      raise InputError(f"{what}: volume contains NaN or infinity.")
    lo, hi = float(volume.min()), float(volume.max())
    if lo < 0.0 or hi > 1.0:  # e.g. logits: meshed at 0.5 they would give the wrong surface
      raise InputError(f"{what}: volume values span {lo:.4g}..{hi:.4g}; expected probabilities in [0, 1] "
                       "(the sigmoid of the network's logits).")
    return volume.astype(np.float32)
  raise InputError(f"{what}: volume dtype {volume.dtype}; expected float in [0, 1], bool or uint8.")


def load_volume(path: str | os.PathLike) -> np.ndarray:
  """Loads a `.raw` (release) or `.npy` (ours: (192, 192, 200) float in [0, 1], bool or uint8 0..255)
  volume as float32 (192, 192, 200) in [0, 1]."""
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if ext == ".raw":
    return read_raw(path)
  if ext == ".npy":
    try:
      volume = np.load(path, allow_pickle=False)
    except FileNotFoundError:
      raise InputError(f"{path}: no such .npy volume file.") from None
    except (ValueError, OSError, EOFError) as e:  # EOFError: an empty file
      raise InputError(f"{path}: not a readable .npy array ({type(e).__name__}: {e}).") from e
    if not isinstance(volume, np.ndarray):  # np.load opens a .npz archive whatever its name
      volume.close()
      raise InputError(f"{path}: a .npz archive, not a .npy array; expected one (192, 192, 200) array.")
    return _check_volume(volume, path)
  raise InputError(f"{path}: unknown volume extension {ext!r}; expected .raw or .npy.")


def sample_colors(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
  """Bilinear (V, 3) uint8 colours of an (H, W, 3) image at (V, 2) 0-based pixel positions."""
  image = np.asarray(image)
  coords = np.stack([xy[:, 1], xy[:, 0]])
  channels = [ndimage.map_coordinates(image[..., c].astype(np.float32), coords, order=1, mode="nearest")
              for c in range(3)]
  return np.clip(np.rint(np.stack(channels, axis=1)), 0, 255).astype(np.uint8)


def volume_to_mesh(volume: np.ndarray, level: float = 0.5, image: np.ndarray | None = None) -> Mesh:
  """Isosurface of a soft (192, 192, 200) (y, x, z) volume with scikit-image's marching cubes.

  Vertices come out as (x, y, z_index * 0.5) crop pixels, faces wound so that normals point out of the
  solid; with `image` (the (192, 192, 3) crop), each vertex takes the crop's colour at its (x, y).
  """
  volume = np.asarray(volume)
  if volume.dtype != bool and not np.issubdtype(volume.dtype, np.integer) and not np.issubdtype(
      volume.dtype, np.floating):
    raise InputError(f"volume dtype {volume.dtype}; expected real numbers (float, integer or bool).")
  volume = volume.astype(np.float32, copy=False)
  if volume.ndim != 3 or volume.size == 0:
    raise InputError(f"volume has shape {volume.shape}; expected 3 non-empty axes (y, x, z).")
  if not np.all(np.isfinite(volume)):  # marching cubes would put NaN vertices in the mesh
    raise InputError("volume contains NaN or infinity.")
  # March only the box where the level is crossed (plus a one-voxel border): the face fills a fraction
  # of the volume, and this is what makes meshing fast.
  above = volume > level
  if not above.any() or above.all():
    raise InputError(f"volume has no surface at level {level} (range {volume.min():.3f}..{volume.max():.3f}).")
  lo, hi = [], []
  for axis in range(3):
    others = tuple(a for a in range(3) if a != axis)
    idx = np.nonzero(above.any(axis=others))[0]
    lo.append(max(idx[0] - 1, 0))
    hi.append(min(idx[-1] + 2, volume.shape[axis]))
  sub = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
  # Pad with "outside" so that surfaces touching the volume's walls close.
  sub = np.pad(sub, 1, mode="constant", constant_values=min(float(volume.min()), level - 1.0))
  verts, faces, _, _ = measure.marching_cubes(sub, level=level, allow_degenerate=False)
  verts += np.array(lo, np.float64) - 1.0
  vertices = np.stack([verts[:, 1], verts[:, 0], verts[:, 2] * Z_SCALE], axis=1).astype(np.float64)
  # skimage winds its faces for index order (y, x, z); swapping to (x, y, z) mirrors the mesh, which
  # turns them into outward-facing ones (a positive signed volume; checked in the tests).
  faces = faces.astype(np.int64)
  colors = None
  if image is not None:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
      raise InputError(f"colour image has shape {image.shape}; expected (192, 192, 3).")
    colors = sample_colors(image, vertices[:, :2])
  return Mesh(vertices, faces, colors)


MESH_FORMATS = ("obj", "ply", "glb")
# glTF's frame is y up (ours: y down) in metres: a GLB holds (x, -y, z) * GLB_METRES_PER_PIXEL, its
# triangles rewound so that they still face outward after the mirroring.
GLB_METRES_PER_PIXEL = 0.001
_GLB_MATERIAL = {"name": "skin", "doubleSided": False,
                 # Not metallic: glTF's default material is fully metallic, which shows vertex colours
                 # as tinted reflections.
                 "pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0,
                                          "roughnessFactor": 0.85}}


def mesh_bytes(mesh: Mesh, fmt: str) -> bytes:
  """The mesh as a file's bytes: 'obj' (text, vertex colours as extra columns), 'ply' (binary, vertex
  colours) or 'glb' (binary glTF 2.0: positions, smooth normals, COLOR_0, one non-metallic material)."""
  if fmt not in MESH_FORMATS:
    raise InputError(f"mesh format {fmt!r}; expected one of {', '.join(MESH_FORMATS)}.")
  if fmt == "obj":
    tm = mesh.to_trimesh()
    return tm.export(file_type="obj", include_color=mesh.colors is not None,
                     include_normals=False).encode("utf-8")
  if fmt == "ply":
    return mesh.to_trimesh().export(file_type="ply", encoding="binary")
  flipped = Mesh(mesh.vertices * np.array([1.0, -1.0, 1.0]) * GLB_METRES_PER_PIXEL,
                 mesh.faces[:, ::-1], mesh.colors)
  return _with_glb_material(flipped.to_trimesh().export(file_type="glb", include_normals=True))


def _with_glb_material(glb: bytes) -> bytes:
  """Adds `_GLB_MATERIAL` to every primitive of trimesh's one-buffer GLB (trimesh writes vertex-coloured
  meshes with no material) and re-packs the container."""
  magic, version, _ = struct.unpack_from("<4sII", glb, 0)
  json_len, json_type = struct.unpack_from("<I4s", glb, 12)
  if magic != b"glTF" or version != 2 or json_type != b"JSON":
    raise ValueError("trimesh wrote an unexpected GLB container.")
  doc = json.loads(glb[20:20 + json_len])
  rest = glb[20 + json_len:]  # the BIN chunk, header included
  doc["materials"] = [_GLB_MATERIAL]
  for m in doc.get("meshes", []):
    for primitive in m["primitives"]:
      primitive["material"] = 0
  text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
  text += b" " * (-len(text) % 4)  # chunks are 4-byte aligned, JSON padded with spaces
  total = 12 + 8 + len(text) + len(rest)
  return struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(text), b"JSON") + text + rest


def save_mesh(path: str | os.PathLike, mesh: Mesh) -> None:
  """Writes .obj, .ply (with per-vertex colours when present) or .glb (see `mesh_bytes`), atomically."""
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if ext[1:] not in MESH_FORMATS:
    raise InputError(f"{path}: unsupported mesh extension {ext!r}; expected .obj, .ply or .glb.")
  data = mesh_bytes(mesh, ext[1:])
  with atomic_output(path) as tmp, open(tmp, "wb") as f:
    f.write(data)
