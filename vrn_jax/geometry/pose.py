"""300W-LP / 3DDFA pose: rotation convention and projection to 0-based image pixels.

`Pose_Para` = [pitch, yaw, roll (radians), tx, ty, tz, scale f]. 3DDFA projects P = f R V + t in a frame
with y up; image pixels are then x = P_x - 1 and y = H - P_y (0-based, y down), z unchanged (+z toward
the camera). In the image frame, with y flipped, the same rotation reads F R F with F = diag(1, -1, 1).
"""

from __future__ import annotations

import dataclasses

import numpy as np

_FLIP_Y = np.diag([1.0, -1.0, 1.0])


def rotation_3ddfa(pitch: float, yaw: float, roll: float) -> np.ndarray:
  """R = Rx(pitch) Ry(yaw) Rz(roll) in 3DDFA's sign convention (its RotationMatrix.m), (3, 3)."""
  cx, sx = np.cos(pitch), np.sin(pitch)
  cy, sy = np.cos(yaw), np.sin(yaw)
  cz, sz = np.cos(roll), np.sin(roll)
  rx = np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]])
  ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
  rz = np.array([[cz, sz, 0], [-sz, cz, 0], [0, 0, 1]])
  return rx @ ry @ rz


def angles_from_rotation_3ddfa(rotation: np.ndarray) -> tuple[float, float, float]:
  """Inverse of `rotation_3ddfa` for |yaw| < 90 deg: (pitch, yaw, roll) in radians."""
  r = np.asarray(rotation, np.float64)
  yaw = np.arcsin(np.clip(-r[0, 2], -1.0, 1.0))
  pitch = np.arctan2(r[1, 2], r[2, 2])
  roll = np.arctan2(r[0, 1], r[0, 0])
  return float(pitch), float(yaw), float(roll)


@dataclasses.dataclass(frozen=True)
class Pose:
  """A 300W-LP pose. Angles in radians, as stored in `Pose_Para`."""

  pitch: float
  yaw: float
  roll: float
  translation: tuple[float, float, float]
  scale: float

  @classmethod
  def from_pose_para(cls, pose_para) -> "Pose":
    p = np.asarray(pose_para, np.float64).reshape(-1)
    if p.size != 7:
      raise ValueError(f"Pose_Para has {p.size} values; expected 7 [pitch yaw roll tx ty tz f].")
    return cls(float(p[0]), float(p[1]), float(p[2]), (float(p[3]), float(p[4]), float(p[5])),
               float(p[6]))

  def to_pose_para(self) -> np.ndarray:
    return np.array([[self.pitch, self.yaw, self.roll, *self.translation, self.scale]])

  @property
  def rotation(self) -> np.ndarray:
    """(3, 3) 3DDFA rotation in the model's y-up frame."""
    return rotation_3ddfa(self.pitch, self.yaw, self.roll)

  @property
  def face_turn_deg(self) -> float:
    """Degrees between the face's forward axis (the model's +z) and the direction to the camera: 0 for a
    frontal face, 90 for a profile, 180 for the back of the head. Unlike `yaw`, the same for every
    (pitch, yaw, roll) that gives one rotation."""
    return float(np.degrees(np.arccos(np.clip(self.rotation[2, 2], -1.0, 1.0))))

  @property
  def image_rotation(self) -> np.ndarray:
    """(3, 3) the same rotation acting on y-down image coordinates: F R F."""
    return _FLIP_Y @ self.rotation @ _FLIP_Y

  def project(self, vertices: np.ndarray, image_height: int) -> np.ndarray:
    """(N, 3) model vertices -> (N, 3) 0-based image pixels (x right, y down, z toward the camera)."""
    v = np.asarray(vertices, np.float64)
    p = self.scale * v @ self.rotation.T + np.asarray(self.translation)
    return np.stack([p[:, 0] - 1.0, image_height - p[:, 1], p[:, 2]], axis=1)

  def unproject(self, points: np.ndarray, image_height: int) -> np.ndarray:
    """Inverse of `project`: (N, 3) image pixels -> (N, 3) model vertices."""
    q = np.asarray(points, np.float64)
    p = np.stack([q[:, 0] + 1.0, image_height - q[:, 1], q[:, 2]], axis=1)
    return (p - np.asarray(self.translation)) @ self.rotation / self.scale
