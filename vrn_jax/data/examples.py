"""One training/evaluation example from a photo and its 3DMM fit: the crop, the compact target volume,
landmarks, pose and the crop transform. The single place where datasets turn geometry into examples."""

from __future__ import annotations

import numpy as np

from vrn_jax.geometry.crop import CropTransform, crop_from_landmarks, crop_image
from vrn_jax.geometry.landmarks import outline_landmark_indices
from vrn_jax.geometry.morphable_model import MorphableModel
from vrn_jax.geometry.pose import Pose
from vrn_jax.geometry.voxelise import VOLUME_SHAPE, Z_SCALE, CompactVolume, decode_volume as _decode
from vrn_jax.geometry.voxelise import encode_volume

# Depth placement: the face region's z extent is centred in the volume's depth (200 voxels = 100 crop
# pixels).
VOLUME_DEPTH_CENTRE = VOLUME_SHAPE[2] * Z_SCALE / 2
# run.m sizes the crop from the 2D landmarks' box, which narrows as the head turns: a profile comes out
# ~1.4x larger than a frontal face, and its depth (the face's width) would overflow the volume's 100 px.
# Such crops are shrunk about the crop centre until the face region fits with this margin (crop pixels).
FIT_MARGIN_PX = 2.0


def crop_vertices(model: MorphableModel, pose: Pose, shape_para, exp_para, image_hw):
  """The posed mesh in the crop frame, and the crop transform: run.m's rule on the face's 68 landmarks
  as a 2D annotator places them (`landmark_indices`) projected into the photo, fitted to the volume.

  Returns:
    (vertices (N, 3) crop frame: x, y pixels, z mesh units; transform with tz set).
  """
  photo_vertices = pose.project(model.vertices(shape_para, exp_para), image_hw[0])
  landmarks = photo_vertices[landmark_indices(model, photo_vertices), :2]
  transform = fit_to_volume(crop_from_landmarks(landmarks, image_hw), photo_vertices[model.face_mask])
  return transform.to_crop(photo_vertices), transform


def landmark_indices(model: MorphableModel, posed_vertices: np.ndarray) -> np.ndarray:
  """(68,) the vertices of a posed face's landmarks in its example: the jaw's on the visible outline,
  as photos are annotated and landmark detectors place them (`geometry.landmarks`)."""
  return outline_landmark_indices(model, posed_vertices)


def fit_to_volume(transform: CropTransform, face_points: np.ndarray) -> CropTransform:
  """Centres the face's depth in the volume and, when the face would not fit the 192x192x200 volume,
  shrinks the crop about its centre until it does (FIT_MARGIN_PX to spare)."""
  p = transform.to_crop(face_points)
  centre = (VOLUME_SHAPE[1] - 1) / 2
  depth_room = VOLUME_SHAPE[2] * Z_SCALE - 2 * FIT_MARGIN_PX
  xy_room = centre - FIT_MARGIN_PX
  z_extent = p[:, 2].max() - p[:, 2].min()
  xy_extent = np.abs(p[:, :2] - centre).max()
  factor = min(1.0, depth_room / max(z_extent, 1e-9), xy_room / max(xy_extent, 1e-9))
  if factor < 1.0:
    transform = CropTransform(scale=transform.scale * factor,
                              tx=centre + factor * (transform.tx - centre),
                              ty=centre + factor * (transform.ty - centre))
  z = face_points[:, 2] * transform.scale
  return transform.with_z_offset(VOLUME_DEPTH_CENTRE - (z.min() + z.max()) / 2)


def make_example(photo: np.ndarray, model: MorphableModel, pose_para, shape_para, exp_para,
                 name: str) -> dict:
  """A dataset example (see `vrn_jax.datasets.vrn_faces` for the features).

  Args:
    photo: (H, W, 3) uint8.
    pose_para, shape_para, exp_para: the 300W-LP fit of the photo (raw 3DMM parameters).
  """
  pose = Pose.from_pose_para(pose_para)
  vertices, transform = crop_vertices(model, pose, shape_para, exp_para, photo.shape[:2])
  compact = encode_volume(vertices, model.triangles, pose.image_rotation, model.face_mask)
  return {
      "image": crop_image(photo, transform),
      "volume": volume_features(compact),
      "landmarks": vertices[landmark_indices(model, vertices)].astype(np.float32),
      "yaw": np.float32(np.rad2deg(pose.yaw)),
      "pitch": np.float32(np.rad2deg(pose.pitch)),
      "roll": np.float32(np.rad2deg(pose.roll)),
      "crop_transform": transform.as_array(),
      "name": name,
  }


def volume_features(compact: CompactVolume) -> dict:
  return {"depth": compact.depth, "back": np.float32(compact.back), "step": np.float32(compact.step),
          "affine": compact.affine.astype(np.float32)}


def compact_from_example(example: dict) -> CompactVolume:
  volume = example["volume"]
  return CompactVolume(depth=np.asarray(volume["depth"], np.uint8), back=float(volume["back"]),
                       step=float(volume["step"]), affine=np.asarray(volume["affine"], np.float32))


def example_volume(example: dict) -> np.ndarray:
  """The example's binary target, bool (192, 192, 200) (y, x, z). On the host for inspection and tests;
  training decodes on the accelerator from the same fields."""
  return _decode(compact_from_example(example))


def crop_transform(example: dict) -> CropTransform:
  return CropTransform.from_array(example["crop_transform"])
