"""The 192x192 face crop: the release's `run.m` rule, a bounding-box rule, and the invertible transform.

A `CropTransform` is the one map between an original photo and its crop, for 2D and 3D points:
  crop_xy = scale * photo_xy + (tx, ty),   crop_z = scale * photo_z + tz
in 0-based pixel coordinates (x right, y down, origin at the top-left pixel centre).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
from PIL import Image

from vrn_jax.errors import InputError

from vrn_jax.files import atomic_output

CROP_SIZE = 192
# run.m: s = 90 / sqrt(prod(max(P) - min(P))): the landmarks' bounding box gets a geometric-mean side of
# 90 crop pixels.
LANDMARK_EXTENT_PX = 90.0


@dataclasses.dataclass(frozen=True)
class CropTransform:
  """crop = scale * photo + (tx, ty[, tz]); all coordinates 0-based pixels (z: same units as x)."""

  scale: float
  tx: float
  ty: float
  tz: float = 0.0
  size: int = CROP_SIZE

  def to_crop(self, points) -> np.ndarray:
    """(N, 2) or (N, 3) photo points -> crop points."""
    p = np.asarray(points, np.float64)
    offset = np.array([self.tx, self.ty, self.tz][: p.shape[-1]])
    return p * self.scale + offset

  def to_photo(self, points) -> np.ndarray:
    """(N, 2) or (N, 3) crop points -> photo points (the inverse of `to_crop`)."""
    p = np.asarray(points, np.float64)
    offset = np.array([self.tx, self.ty, self.tz][: p.shape[-1]])
    return (p - offset) / self.scale

  def with_z_offset(self, tz: float) -> "CropTransform":
    return dataclasses.replace(self, tz=float(tz))

  def as_array(self) -> np.ndarray:
    """(4,) float64 [scale, tx, ty, tz], the form stored in datasets."""
    return np.array([self.scale, self.tx, self.ty, self.tz])

  @classmethod
  def from_array(cls, values) -> "CropTransform":
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size != 4 or not np.all(np.isfinite(v)) or v[0] <= 0:
      raise InputError(f"crop transform {v.tolist()}: expected 4 finite values [scale>0, tx, ty, tz].")
    return cls(*(float(x) for x in v))

  def save_json(self, path: str | os.PathLike) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
      json.dump(dataclasses.asdict(self), f, indent=1)

  @classmethod
  def load_json(cls, path: str | os.PathLike) -> "CropTransform":
    path = os.fspath(path)
    try:
      with open(path, encoding="utf-8") as f:
        d = json.load(f)
      return cls(float(d["scale"]), float(d["tx"]), float(d["ty"]), float(d.get("tz", 0.0)),
                 int(d.get("size", CROP_SIZE)))
    except FileNotFoundError:
      raise InputError(f"{path}: no such crop transform file.") from None
    except (ValueError, KeyError, TypeError) as e:
      raise InputError(
          f"{path}: not a crop transform ({type(e).__name__}: {e}); expected JSON with keys "
          "scale, tx, ty[, tz], as written by `python -m vrn_jax.crop --transform_out`."
      ) from e


def _check_points(points, what: str) -> np.ndarray:
  p = np.asarray(points, np.float64)
  if p.ndim != 2 or p.shape[1] < 2 or p.shape[0] < 2:
    raise InputError(f"{what}: landmarks have shape {p.shape}; expected (68, 2).")
  if not np.all(np.isfinite(p[:, :2])):
    raise InputError(f"{what}: landmarks contain NaN or infinity.")
  return p[:, :2]


def crop_from_landmarks(points, image_hw: tuple[int, int], what: str = "landmarks") -> CropTransform:
  """The release's `run.m` crop from 68 landmarks, reproduced exactly (including its rounding).

  run.m (MATLAB, 1-based): s = 90 / sqrt(prod(max(P) - min(P))); translate the photo so that mean(P) sits
  at size/2; imresize by s (output ceil(s * size)); pad 32; take 192 pixels around floor(size / 2).
  Composed and written in 0-based pixels, x_crop = s (x - m) + s (W - 1) / 2 + 95.5 - floor(ceil(s W) / 2),
  with m the landmark centroid (same for y with H).

  Args:
    points: (68, 2) 0-based photo pixels.
    image_hw: (height, width) of the photo: run.m's rounding depends on it.
  """
  p = _check_points(points, what)
  lo, hi = p.min(axis=0), p.max(axis=0)
  extent = hi - lo
  if np.any(extent < 1.0):
    raise InputError(f"{what}: landmarks span {extent.tolist()} pixels; expected a face at least a pixel "
                     "across each way.")
  s = LANDMARK_EXTENT_PX / math.sqrt(float(np.prod(extent)))
  m = p.mean(axis=0)
  h, w = image_hw
  # A face partly outside the photo (at its edge) is cropped with zero padding, as run.m pads. Landmarks
  # centred off the photo, or reaching more than the photo's size beyond it, are another photo's (or
  # another scale's): an error rather than a black crop (or, for a huge span, a huge resampling window).
  centred = -0.5 <= m[0] <= w - 0.5 and -0.5 <= m[1] <= h - 0.5
  if not centred or np.any(lo < (-w, -h)) or np.any(hi > (2 * w, 2 * h)):
    raise InputError(f"{what}: landmarks span x {lo[0]:.1f}..{hi[0]:.1f}, y {lo[1]:.1f}..{hi[1]:.1f} "
                     f"(0-based pixels) around ({m[0]:.1f}, {m[1]:.1f}), off the {w}x{h} photo; expected "
                     "a face centred in this photo.")
  offsets = []
  for centre, size in ((m[0], w), (m[1], h)):
    offsets.append(-s * centre + s * (size - 1) / 2 + 95.5 - math.floor(math.ceil(s * size) / 2))
  return CropTransform(scale=s, tx=offsets[0], ty=offsets[1])


def crop_from_box(box_xyxy, box_extent_px: float = LANDMARK_EXTENT_PX) -> CropTransform:
  """A crop from a face box (x0, y0, x1, y1), 0-based pixels: its centre to the crop centre, and its
  geometric-mean side to `box_extent_px` crop pixels (90, as run.m does for the landmarks' box)."""
  x0, y0, x1, y1 = (float(v) for v in np.asarray(box_xyxy, np.float64).reshape(4))
  if not (x1 > x0 and y1 > y0) or not all(map(math.isfinite, (x0, y0, x1, y1))):
    raise InputError(f"box {[x0, y0, x1, y1]}: expected finite x0 < x1 and y0 < y1.")
  s = box_extent_px / math.sqrt((x1 - x0) * (y1 - y0))
  centre = (CROP_SIZE - 1) / 2
  return CropTransform(scale=s, tx=centre - s * (x0 + x1) / 2, ty=centre - s * (y0 + y1) / 2)


def crop_centre(image_hw: tuple[int, int]) -> CropTransform:
  """A crop of the photo's centred square, scaled to 192 pixels (when nothing better is known)."""
  h, w = image_hw
  side = min(h, w)
  x0, y0 = (w - side) / 2, (h - side) / 2
  return crop_from_box((x0 - 0.5, y0 - 0.5, x0 + side - 0.5, y0 + side - 0.5), box_extent_px=CROP_SIZE)


def crop_image(photo: np.ndarray, transform: CropTransform) -> np.ndarray:
  """Resamples the (H, W, 3) uint8 photo into the (192, 192, 3) crop, zero outside the photo.

  Uses Pillow's `resize` with a source box: separable bicubic (a = -0.5) with its support widened by 1/s
  when shrinking, the same antialiasing filter as MATLAB's imresize that run.m used.
  """
  photo = np.asarray(photo)
  if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
    raise ValueError(f"crop_image expects an (H, W, 3) uint8 photo, got {photo.shape} {photo.dtype}.")
  s, n = transform.scale, transform.size
  # Crop pixel i (centre i) samples photo (i - t) / s; Pillow's box is in edge coordinates.
  bx0 = 0.5 - (0.5 + transform.tx) / s
  by0 = 0.5 - (0.5 + transform.ty) / s
  bx1, by1 = bx0 + n / s, by0 + n / s
  # Cut the needed window (plus the filter's support) out of a zero-padded photo, so that the box lies
  # inside the image Pillow sees.
  margin = int(math.ceil(2.0 / min(s, 1.0))) + 2
  wx0, wy0 = int(math.floor(bx0)) - margin, int(math.floor(by0)) - margin
  wx1, wy1 = int(math.ceil(bx1)) + margin, int(math.ceil(by1)) + margin
  window = np.zeros((wy1 - wy0, wx1 - wx0, 3), np.uint8)
  h, w = photo.shape[:2]
  sx0, sy0, sx1, sy1 = max(wx0, 0), max(wy0, 0), min(wx1, w), min(wy1, h)
  if sx1 > sx0 and sy1 > sy0:
    window[sy0 - wy0 : sy1 - wy0, sx0 - wx0 : sx1 - wx0] = photo[sy0:sy1, sx0:sx1]
  box = (bx0 - wx0, by0 - wy0, bx1 - wx0, by1 - wy0)
  out = Image.fromarray(window).resize((n, n), resample=Image.Resampling.BICUBIC, box=box)
  return np.asarray(out)
