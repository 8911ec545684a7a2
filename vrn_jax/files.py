"""File reading and writing shared by every stage: clear errors, no half-written outputs."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import Iterator

import h5py
import numpy as np
import scipy.io
from PIL import Image, ImageOps, UnidentifiedImageError

from vrn_jax.errors import InputError, TooLargeError


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds.

  A crash or an exception inside the block leaves no partial file at `path`.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
  os.close(fd)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; outputs get the usual permissions
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


# Pillow's own guard against decompression bombs stops at ~179 MP; photos are far smaller.
MAX_IMAGE_PIXELS = 100_000_000


def decode_image_rgb(data: bytes, what: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
  """Decodes image file bytes (`what` names them in errors) as (H, W, 3) uint8 RGB, upright.

  Grey, 16-bit, palette, RGBA and CMYK images are converted to 8-bit RGB; a JPEG's EXIF orientation (as
  phones write it) is applied, so the array is the photo as a viewer shows it. More than `max_pixels`
  pixels is an error raised before the pixels are decoded.
  """
  if not data:
    raise InputError(f"{what}: empty file; expected a JPEG or PNG photo.")
  try:
    with Image.open(io.BytesIO(data)) as im:
      w, h = im.size
      if w * h > max_pixels:
        raise TooLargeError(f"{what}: {w}x{h} = {w * h / 1e6:.1f} megapixels; at most "
                            f"{max_pixels / 1e6:.0f} megapixels are accepted (scale the photo down).")
      im.load()
      im = ImageOps.exif_transpose(im)
      if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: keep the top 8 bits, not clip
        im = Image.fromarray((np.asarray(im, np.float64) / 257.0).clip(0, 255).astype(np.uint8))
      return np.asarray(im.convert("RGB"))
  except InputError:
    raise
  except Image.DecompressionBombError as e:  # Pillow's own guard, at open (over ~179 MP), outranks ours
    raise TooLargeError(f"{what}: {e} At most {max_pixels / 1e6:.0f} "
                        f"megapixels are accepted (scale the photo down).") from None
  except UnidentifiedImageError:
    raise InputError(f"{what}: not a readable image (no image format recognised in its {len(data)} "
                     f"bytes, which start {data[:8]!r}); expected a JPEG or PNG photo.") from None
  except (OSError, SyntaxError, ValueError) as e:
    raise InputError(
        f"{what}: not a readable image ({type(e).__name__}: {e}); expected a JPEG or PNG photo."
    ) from e


def read_image_rgb(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
  """Reads an image file as (H, W, 3) uint8 RGB, upright (see `decode_image_rgb`)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such image file.")
  with open(path, "rb") as f:
    data = f.read()
  return decode_image_rgb(data, path, max_pixels)


def write_image_rgb(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes an (H, W, 3) uint8 image atomically; the format follows the extension."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"write_image_rgb expects (H, W, 3) uint8, got {image.shape} {image.dtype}.")
  fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(os.path.splitext(path)[1].lower())
  if fmt is None:
    raise InputError(f"{path}: unsupported image extension; expected .png, .jpg or .jpeg.")
  with atomic_output(path) as tmp:
    Image.fromarray(image).save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def read_landmarks_txt(path: str | os.PathLike) -> np.ndarray:
  """Reads a 68-landmark text file (68 lines `x,y`, or `x y`) as (68, 2) float64 0-based pixels.

  The files follow the release's convention (its FAN detector and MATLAB scripts, like AFLW2000-3D's
  `pt2d`): 1-based pixel coordinates. They are converted to this project's 0-based contract here, the
  one place that knows about it.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such landmark file.")
  rows = []
  # utf-8-sig: Windows editors (Notepad) start UTF-8 files with a byte-order mark.
  with open(path, encoding="utf-8-sig", errors="replace") as f:
    for line_no, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      parts = line.replace(",", " ").split()
      try:
        values = [float(p) for p in parts]
      except ValueError:
        raise InputError(
            f"{path}, line {line_no}: {line!r} is not two numbers; expected 68 lines `x,y`."
        ) from None
      rows.append(values)
  widths = {len(r) for r in rows}
  if len(rows) != 68 or widths != {2}:
    found = f"{len(rows)} rows of {sorted(widths) or [0]} values"
    raise InputError(f"{path}: found {found}; expected 68 rows of `x,y` (68x2 landmarks).")
  points = np.asarray(rows, np.float64) - 1.0
  if not np.all(np.isfinite(points)):
    raise InputError(f"{path}: landmarks contain NaN or infinity.")
  return points


def write_landmarks_txt(path: str | os.PathLike, points: np.ndarray) -> None:
  """Writes (68, 2) 0-based landmarks in the release's 1-based `x,y` text format, atomically."""
  points = np.asarray(points, np.float64)
  if points.shape != (68, 2):
    raise ValueError(f"write_landmarks_txt expects (68, 2) points, got {points.shape}.")
  with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    for x, y in points + 1.0:
      f.write(f"{x:.3f},{y:.3f}\n")


def load_mat(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict:
  """Loads a MATLAB .mat file (v5 through scipy; v7.3/HDF5 through h5py) and checks its keys."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such .mat file.")
  try:
    data = scipy.io.loadmat(path)
  except NotImplementedError:  # MATLAB v7.3 files are HDF5.
    data = _load_mat_hdf5(path)
  except Exception as e:  # scipy raises several types for corrupt files.
    raise InputError(f"{path}: not a readable .mat file ({type(e).__name__}: {e}).") from e
  data = {k: v for k, v in data.items() if not k.startswith("__")}
  missing = [k for k in required if k not in data]
  if missing:
    raise InputError(
        f"{path}: missing key(s) {missing}; found {sorted(data)}; expected {list(required)}."
    )
  return data


def _load_mat_hdf5(path: str) -> dict:
  out = {}
  with h5py.File(path, "r") as f:
    for k, v in f.items():
      if isinstance(v, h5py.Dataset):
        out[k] = np.asarray(v).T  # HDF5 stores MATLAB arrays transposed.
  return out
