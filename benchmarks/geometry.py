"""Voxelisation and meshing at paper size on one CPU core, ours against generic tools on the same input.

A BFM-sized mesh (53,361 vertices, 105,800 triangles: a face-like height-field grid with a nose) is
voxelised at 192x192x200 by the paper's procedure (`encode_volume` + `decode_volume`) and, as the generic
baseline, by trimesh (`voxelized(pitch=1).fill()`, the mesh's z scaled by 2 so both grids match). A
volume is meshed by our `volume_to_mesh` and by scikit-image's marching cubes on the whole volume.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import Row, best_time


def bfm_sized_face(n: int = 231):
  """A (n*n, 3) vertex, 2 (n-1)^2 triangle face-like surface in the crop frame (mesh units)."""
  u = np.linspace(-1.0, 1.0, n)
  x, y = np.meshgrid(u, u)
  r2 = x**2 + (y / 1.2) ** 2
  inside = np.clip(1.0 - r2, 0.0, None)
  z = 35.0 * np.sqrt(inside) + 12.0 * np.exp(-(x**2 + (y + 0.05) ** 2) / 0.02)
  vertices = np.stack([96 + 50 * x, 100 + 60 * y, 30 + z], axis=-1).reshape(-1, 3)
  idx = np.arange(n * n).reshape(n, n)
  a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
  faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
  return vertices, faces


def run(quick: bool, device: str) -> list[Row]:
  import trimesh

  from vrn_jax.geometry.isosurface import volume_to_mesh
  from vrn_jax.geometry.pose import rotation_3ddfa
  from vrn_jax.geometry.voxelise import decode_volume, encode_volume

  flip = np.diag([1.0, -1.0, 1.0])
  rotation = flip @ rotation_3ddfa(0.2, 0.6, -0.1) @ flip
  frontal, faces = bfm_sized_face()
  centre = frontal.mean(axis=0)
  vertices = (frontal - centre) @ rotation.T + centre
  repeats = 3 if quick else 10
  rows = []
  compact = encode_volume(vertices, faces, rotation)
  t_encode = best_time(lambda: encode_volume(vertices, faces, rotation), repeats)
  t_decode = best_time(lambda: decode_volume(compact), repeats)
  t_ours = best_time(lambda: decode_volume(encode_volume(vertices, faces, rotation)), repeats)

  scaled = vertices * np.array([1.0, 1.0, 2.0])  # voxel index units, isotropic pitch 1
  mesh = trimesh.Trimesh(scaled, faces, process=False)
  t_trimesh = best_time(lambda: mesh.voxelized(pitch=1.0).fill(), 1 if quick else 2, warmup=0)
  size = f"{len(vertices)} v / {len(faces)} tri"
  rows.append(Row("voxelise, paper procedure (encode + decode)", 1.0 / t_ours, "meshes/s", 1,
                  "bool", device, "trimesh voxelized().fill()", t_trimesh / t_ours,
                  f"{t_ours * 1e3:.0f} ms/mesh ({size}; target <= 200 ms)"))
  rows.append(Row("  encode (frontal depth map)", t_encode * 1e3, "ms", 1, "uint8", device))
  rows.append(Row("  decode (192x192x200)", t_decode * 1e3, "ms", 1, "bool", device))
  rows.append(Row("voxelise, trimesh voxelized(pitch=1).fill()", 1.0 / t_trimesh, "meshes/s", 1,
                  "bool", device, note=f"{t_trimesh * 1e3:.0f} ms/mesh"))

  from scipy import ndimage
  from skimage import measure
  soft = ndimage.gaussian_filter(decode_volume(compact).astype(np.float32), 1.0)
  t_mesh = best_time(lambda: volume_to_mesh(soft), repeats)
  t_skimage = best_time(lambda: measure.marching_cubes(soft, 0.5), repeats)
  rows.append(Row("mesh one volume, volume_to_mesh", 1.0 / t_mesh, "volumes/s", 1, "float32", device,
                  "skimage marching_cubes, whole volume", t_skimage / t_mesh,
                  f"{t_mesh * 1e3:.0f} ms/volume (target <= 500 ms)"))
  return rows
