"""Seeded bad (and odd-but-valid) inputs for every entry point that reads user files, and a soak run.

Each generator returns `Case`s: `valid=True` is an input the code must accept (a greyscale, CMYK, 16-bit,
EXIF-rotated or 1x1 photo must decode to upright (H, W, 3) uint8 RGB); `valid=False` is one it must
reject with `vrn_jax.files.InputError` naming the input. Anything else (another exception type, a wrong
result) is a bug. tests/test_fuzz.py runs a few hundred cases per kind; the soak runs many more:

  python -m benchmarks.fuzz_inputs --per_kind 2000
"""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
  """One fuzzed input: `data` is the file's bytes, `name` a file name for it (its extension included)."""
  kind: str
  name: str
  data: bytes
  valid: bool
  # What a valid input must decode to (a photo's upright RGB pixels), where the generator knows it.
  expected: np.ndarray | None = dataclasses.field(default=None, repr=False)


# ---------------------------------------------------------------------------------------------- photos


def quadrant_pattern(rng: np.random.Generator, width: int, height: int, grey: bool = False) -> np.ndarray:
  """(height, width, 3) uint8: four quadrants of clearly different colours, so that each of the eight
  flips/rotations of the picture looks different (an orientation check can tell them apart)."""
  levels = rng.permutation([20, 90, 160, 235])
  colours = []
  for level in levels:
    if grey:
      colours.append([level] * 3)
    else:  # a distinct grey level plus a random tint keeps every pair of quadrants far apart
      colours.append(np.clip(level + rng.integers(-15, 16, size=3), 0, 255))
  image = np.empty((height, width, 3), np.uint8)
  h2, w2 = max(height // 2, 1), max(width // 2, 1)
  image[:h2, :w2], image[:h2, w2:] = colours[0], colours[1]
  image[h2:, :w2], image[h2:, w2:] = colours[2], colours[3]
  return image


def _encode(image: np.ndarray, fmt: str, mode: str | None = None, **kwargs) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  im = Image.fromarray(image)
  if mode is not None:
    im = im.convert(mode)
  buf = io.BytesIO()
  im.save(buf, format=fmt, **kwargs)
  return buf.getvalue()


# EXIF orientation -> the transform a viewer applies to the stored pixels (PIL's Transpose names).
_EXIF_TRANSFORMS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: np.transpose(a, (1, 0, 2)),  # TRANSPOSE
    6: lambda a: np.rot90(a, -1),  # ROTATE_270 (i.e. 90 degrees clockwise)
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # TRANSVERSE
    8: lambda a: np.rot90(a, 1),  # ROTATE_90 (counter-clockwise)
}
# The inverse of each: what a camera stores so that the viewer's transform shows the upright picture.
_EXIF_INVERSES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


def dihedral_variants(image: np.ndarray) -> list[np.ndarray]:
  """The eight flips/rotations of an (H, W, C) image (the identity first)."""
  return [np.ascontiguousarray(_EXIF_TRANSFORMS[k](image)) for k in range(1, 9)]


def _exif_jpeg(upright: np.ndarray, orientation: int, quality: int) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  stored = np.ascontiguousarray(_EXIF_TRANSFORMS[_EXIF_INVERSES[orientation]](upright))
  exif = Image.Exif()
  exif[0x0112] = orientation
  return _encode(stored, "JPEG", quality=quality, exif=exif.tobytes())


def _png_chunk(tag: bytes, body: bytes) -> bytes:
  return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def _png_bomb(width: int, height: int, rng: np.random.Generator) -> bytes:
  """A well-formed PNG header claiming width x height RGB pixels, followed by a little real data."""
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  row = b"\x00" + bytes(3 * min(width, 64))
  idat = zlib.compress(row * int(rng.integers(1, 8)))
  return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(
      b"IEND", b"")


def _jpeg_bomb(width: int, height: int, rng: np.random.Generator) -> bytes:
  """A real small JPEG whose frame header (SOF0) is rewritten to claim width x height pixels."""
  small = _encode(quadrant_pattern(rng, 16, 16), "JPEG", quality=90)
  sof = small.index(b"\xff\xc0")
  # SOF0: marker, length (2), precision (1), height (2), width (2), ...
  return small[:sof + 5] + struct.pack(">HH", height, width) + small[sof + 9:]


def _valid_photo(rng: np.random.Generator, kind: str) -> tuple[bytes, str, np.ndarray]:
  """(file bytes, extension, upright RGB pixels it must decode to) for one valid-photo kind."""
  w, h = (int(v) for v in rng.integers(8, 80, size=2))
  if kind == "tiny_1x1":
    w, h = 1, 1
  elif kind == "thin_strip":
    w, h = (1, int(rng.integers(2, 300))) if rng.random() < 0.5 else (int(rng.integers(2, 300)), 1)
  grey = kind in ("png_grey", "png_grey_alpha", "jpeg_grey", "png_16bit")
  upright = quadrant_pattern(rng, w, h, grey=grey)
  quality = int(rng.integers(80, 100))
  if kind in ("jpeg_rgb", "tiny_1x1", "thin_strip"):
    return _encode(upright, "JPEG", quality=quality), ".jpg", upright
  if kind == "jpeg_progressive":
    return _encode(upright, "JPEG", quality=quality, progressive=True), ".jpg", upright
  if kind == "png_rgb":
    return _encode(upright, "PNG"), ".png", upright
  if kind == "png_grey":
    return _encode(upright, "PNG", mode="L"), ".png", upright
  if kind == "png_grey_alpha":
    return _encode(upright, "PNG", mode="LA"), ".png", upright
  if kind == "jpeg_grey":
    return _encode(upright, "JPEG", mode="L", quality=quality), ".jpg", upright
  if kind == "png_rgba":
    return _encode(upright, "PNG", mode="RGBA"), ".png", upright
  if kind == "png_palette":  # an adaptive palette holds the four colours exactly (the web one dithers)
    from PIL import Image  # pylint: disable=g-import-not-at-top

    buf = io.BytesIO()
    Image.fromarray(upright).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(buf, "PNG")
    return buf.getvalue(), ".png", upright
  if kind == "gif":
    return _encode(upright, "GIF"), ".gif", upright
  if kind == "jpeg_cmyk":
    return _encode(upright, "JPEG", mode="CMYK", quality=quality), ".jpg", upright
  if kind == "png_16bit":
    from PIL import Image  # pylint: disable=g-import-not-at-top

    grey16 = upright[..., 0].astype(np.uint16) * 257  # 8-bit level L as 16-bit L*257
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, format="PNG")
    return buf.getvalue(), ".png", upright
  if kind == "jpeg_exif_rotated":
    return _exif_jpeg(upright, int(rng.integers(1, 9)), quality), ".jpg", upright
  if kind == "wrong_extension":  # a PNG named .jpg, a JPEG named .png: the content decides
    if rng.random() < 0.5:
      return _encode(upright, "PNG"), ".jpg", upright
    return _encode(upright, "JPEG", quality=quality), ".png", upright
  raise ValueError(kind)


VALID_PHOTO_KINDS = ("jpeg_rgb", "jpeg_progressive", "png_rgb", "png_grey", "png_grey_alpha", "jpeg_grey",
                     "png_rgba", "png_palette", "gif", "jpeg_cmyk", "png_16bit", "jpeg_exif_rotated",
                     "wrong_extension", "tiny_1x1", "thin_strip")
INVALID_PHOTO_KINDS = ("empty", "random_bytes", "text", "truncated_jpeg", "truncated_png", "png_bomb_header",
                       "jpeg_bomb_header", "jpeg_header_only", "png_bad_crc")


def _invalid_photo(rng: np.random.Generator, kind: str) -> tuple[bytes, str]:
  if kind == "empty":
    return b"", str(rng.choice([".jpg", ".png"]))
  if kind == "random_bytes":
    return rng.bytes(int(rng.integers(1, 4096))), str(rng.choice([".jpg", ".png", ".jpeg"]))
  if kind == "text":
    texts = ["<html><body>404 Not Found</body></html>\n", "%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
             "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 12345\n",
             "1,2\n3,4\n", "\ufeffGIF? no.\n"]
    return str(rng.choice(texts)).encode("utf-8") * int(rng.integers(1, 20)), ".jpg"
  w, h = (int(v) for v in rng.integers(16, 120, size=2))
  image = quadrant_pattern(rng, w, h)
  if kind == "truncated_jpeg":
    data = _encode(image, "JPEG", quality=int(rng.integers(70, 100)))
    # Cut anywhere before the entropy-coded data ends (the last bytes are the EOI marker and padding).
    return data[:int(rng.integers(1, len(data) - 8))], ".jpg"
  if kind == "truncated_png":
    data = _encode(image, "PNG")
    # Cut before the middle of the pixel data (a cut in its last bytes, the zlib checksum and the chunk
    # CRCs, loses no pixels, and Pillow rightly decodes the image).
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    return data[:int(rng.integers(1, idat + 4 + length // 2))], ".png"
  if kind == "png_bomb_header":
    side = int(rng.integers(11_000, 40_000))
    return _png_bomb(side, int(rng.integers(10_000, 40_000)), rng), ".png"
  if kind == "jpeg_bomb_header":
    return _jpeg_bomb(int(rng.integers(20_000, 65_535)), int(rng.integers(20_000, 65_535)), rng), ".jpg"
  if kind == "jpeg_header_only":
    data = _encode(image, "JPEG", quality=90)
    sos = data.index(b"\xff\xda")  # start of scan: everything before it, no pixels
    return data[:int(rng.integers(2, sos + 1))], ".jpg"
  if kind == "png_bad_crc":
    data = bytearray(_encode(image, "PNG"))
    ihdr_crc = 8 + 8 + 13  # signature, IHDR length+tag, IHDR body: its CRC follows
    data[ihdr_crc + int(rng.integers(0, 4))] ^= int(rng.integers(1, 256))
    return bytes(data), ".png"
  raise ValueError(kind)


def photo_cases(seed: int, n: int) -> list[Case]:
  """`n` seeded photo files, cycling through the valid and invalid kinds (about half each)."""
  rng = np.random.default_rng([seed, 1])
  kinds = [(k, True) for k in VALID_PHOTO_KINDS] + [(k, False) for k in INVALID_PHOTO_KINDS]
  cases = []
  for i in range(n):
    kind, valid = kinds[i % len(kinds)]
    if valid:
      data, ext, expected = _valid_photo(rng, kind)
    else:
      (data, ext), expected = _invalid_photo(rng, kind), None
    cases.append(Case(kind, f"{i:05d}_{kind}{ext}", data, valid, expected))
  return cases


# ------------------------------------------------------------------------------------------- landmarks

# The photo the landmark cases belong to, (height, width): the crop checks need its size.
LANDMARK_PHOTO_HW = (480, 640)

VALID_LANDMARK_KINDS = ("comma", "space", "tab", "crlf", "blank_lines", "byte_order_mark", "scientific",
                        "trailing_comma", "face_at_edge")
INVALID_LANDMARK_KINDS = ("rows_67", "rows_69", "three_columns", "one_column", "words", "header_line",
                          "nan", "infinity", "empty", "binary", "flattened", "jpeg_bytes", "semicolons",
                          "off_photo", "far_outside", "collapsed")


def _face_points(rng: np.random.Generator, centre=None) -> np.ndarray:
  """(68, 2) 0-based landmark-like points: a face 60-200 px across inside the landmark photo."""
  h, w = LANDMARK_PHOTO_HW
  size = rng.uniform(60, 200)
  if centre is None:
    centre = rng.uniform([size, size], [w - size, h - size])
  unit = rng.uniform(-0.5, 0.5, size=(68, 2))
  unit[0], unit[1] = (-0.5, -0.5), (0.5, 0.5)  # the face spans the full size
  return np.asarray(centre) + size * unit


def _landmark_text(points: np.ndarray, sep: str = ",", fmt: str = "{:.3f}", newline: str = "\n") -> str:
  return "".join(f"{fmt.format(x)}{sep}{fmt.format(y)}{newline}" for x, y in points + 1.0)  # 1-based


def landmark_cases(seed: int, n: int) -> list[Case]:
  """`n` seeded 68-landmark text files (release format: 1-based `x,y` lines) for a photo of
  `LANDMARK_PHOTO_HW`; `expected` is the (68, 2) 0-based points of a valid one."""
  rng = np.random.default_rng([seed, 2])
  kinds = [(k, True) for k in VALID_LANDMARK_KINDS] + [(k, False) for k in INVALID_LANDMARK_KINDS]
  h, w = LANDMARK_PHOTO_HW
  cases = []
  for i in range(n):
    kind, valid = kinds[i % len(kinds)]
    points = _face_points(rng)
    expected = None
    if kind == "face_at_edge":  # centred inside the photo, part of the face beyond its edge
      corner = rng.integers(0, 2, size=2) * [w - 1, h - 1]
      inward = np.where(corner > 0, -1.0, 1.0)
      points = _face_points(rng, centre=corner + inward * rng.uniform(25, 45, size=2))
      points[0] = corner - 30.0 * inward  # one point surely off the photo
    lines = _landmark_text(points)
    if kind == "space":
      lines = _landmark_text(points, sep=" ")
    elif kind == "tab":
      lines = _landmark_text(points, sep="\t")
    elif kind == "crlf":
      lines = _landmark_text(points, newline="\r\n")
    elif kind == "blank_lines":
      lines = "\n" + _landmark_text(points).replace("\n", "\n\n", int(rng.integers(1, 68))) + "\n\n"
    elif kind == "byte_order_mark":
      lines = "\ufeff" + lines
    elif kind == "scientific":
      lines = _landmark_text(points, fmt="{:.6e}")
    elif kind == "trailing_comma":
      lines = lines.replace("\n", ",\n")
    elif kind == "rows_67":
      lines = _landmark_text(points[:67])
    elif kind == "rows_69":
      lines = _landmark_text(np.concatenate([points, points[:1]]))
    elif kind == "three_columns":
      lines = lines.replace("\n", ",0.0\n")
    elif kind == "one_column":
      lines = "".join(f"{x:.3f}\n" for x in points[:, 0])
    elif kind == "words":
      lines = "these are not landmarks\n" * int(rng.integers(1, 80))
    elif kind == "header_line":
      lines = "x,y\n" + lines
    elif kind in ("nan", "infinity"):
      rows = lines.splitlines(keepends=True)
      rows[int(rng.integers(0, 68))] = "nan,12.0\n" if kind == "nan" else "12.0,inf\n"
      lines = "".join(rows)
    elif kind == "empty":
      lines = str(rng.choice(["", "\n", "   \n\n"]))
    elif kind == "flattened":  # all 136 numbers on one line
      lines = ",".join(f"{v:.3f}" for v in (points + 1.0).reshape(-1)) + "\n"
    elif kind == "semicolons":
      lines = lines.replace(",", ";")
    elif kind == "off_photo":  # the face centred outside the photo (landmarks of another photo)
      shift = rng.choice([-1, 1], size=2) * (np.array([w, h]) + rng.uniform(50, 400, size=2))
      axes = rng.permutation([True, rng.random() < 0.5])  # off one side, or off a corner
      lines = _landmark_text(points + shift * axes)
    elif kind == "far_outside":  # centred inside, but one point far beyond the photo
      far = points.copy()
      far[int(rng.integers(0, 68))] = rng.choice([-1.0, 3.0]) * np.array([w, h]) * rng.uniform(1.1, 1e6)
      lines = _landmark_text(far)
    elif kind == "collapsed":  # all points on one spot or one line
      flat = points.copy()
      flat[:, int(rng.integers(0, 2))] = flat[0, 0]
      lines = _landmark_text(flat if rng.random() < 0.5 else np.repeat(points[:1], 68, axis=0))
    if valid:
      expected = points
    data = lines.encode("utf-8")
    if kind == "binary":
      data = rng.bytes(int(rng.integers(1, 2000)))
    elif kind == "jpeg_bytes":
      data = _encode(quadrant_pattern(rng, 32, 32), "JPEG", quality=90)
    cases.append(Case(kind, f"{i:05d}_{kind}.txt", data, valid, expected))
  return cases


# ------------------------------------------------------------------------------------------ .mat fits

VALID_MAT_KINDS = ("unchanged", "extra_keys", "column_vectors", "float32", "fewer_params",
                   "beyond_profile", "euler_alias", "no_landmarks", "hdf5_v73")
INVALID_MAT_KINDS = ("missing_key", "renamed_key", "pose_size", "too_many_params", "empty_param",
                     "nan_or_inf", "text_param", "cell_param", "struct_param", "complex_param",
                     "bad_scale", "degrees", "turned_away", "landmark_shape", "face_off_photo",
                     "not_a_mat", "hdf5_group")
# The kinds whose fault shows only when the example is made (the crop), not when the file is read.
EXAMPLE_STAGE_MAT_KINDS = ("face_off_photo",)
FIT_KEYS = ("Pose_Para", "Shape_Para", "Exp_Para")


def _mat_bytes(data: dict) -> bytes:
  import scipy.io  # pylint: disable=g-import-not-at-top

  buf = io.BytesIO()
  scipy.io.savemat(buf, data)
  return buf.getvalue()


def _mat_v73_bytes(data: dict, group_key: str | None = None) -> bytes:
  """A MATLAB v7.3 (HDF5) .mat file: the 512-byte MATLAB header, then the arrays, stored transposed as
  MATLAB does; `group_key` is written as an HDF5 group (a MATLAB struct) instead of an array."""
  import os  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  import h5py  # pylint: disable=g-import-not-at-top

  fd, path = tempfile.mkstemp(suffix=".mat")
  os.close(fd)
  try:
    with h5py.File(path, "w", userblock_size=512) as f:
      for k, v in data.items():
        if k == group_key:
          f.create_group(k).create_dataset("value", data=np.asarray(v, np.float64).T)
        else:
          f.create_dataset(k, data=np.asarray(v, np.float64).T)
    with open(path, "r+b") as f:
      text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: benchmarks.fuzz_inputs HDF5 schema 1.00 ."
      f.write(text.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM")
    with open(path, "rb") as f:
      return f.read()
  finally:
    os.remove(path)


def mat_cases(seed: int, n: int, template: dict) -> list[Case]:
  """`n` seeded 300W-LP-style fit files made from `template` (a valid fit's .mat contents, e.g. one
  `vrn_jax.faces.synthetic.write_300w_lp_tree` wrote): the photo beside it stays valid."""
  rng = np.random.default_rng([seed, 3])
  template = {k: np.asarray(v) for k, v in template.items() if not k.startswith("__")}
  kinds = [(k, True) for k in VALID_MAT_KINDS] + [(k, False) for k in INVALID_MAT_KINDS]
  cases = []
  for i in range(n):
    kind, valid = kinds[i % len(kinds)]
    mat = {k: v.copy() for k, v in template.items()}
    pose = mat["Pose_Para"].astype(np.float64).reshape(-1)
    key = str(rng.choice(FIT_KEYS))
    data = None
    if kind == "extra_keys":
      mat["notes"] = np.array(["fitted by hand"])
      mat["Extra_Para"] = rng.normal(size=(3, 4))
    elif kind == "column_vectors":
      mat["Pose_Para"] = pose[:, None]
      mat["Shape_Para"] = mat["Shape_Para"].reshape(1, -1)
    elif kind == "float32":
      mat[key] = mat[key].astype(np.float32)
    elif kind == "fewer_params":  # only the first K of the model's parameters
      k = str(rng.choice(["Shape_Para", "Exp_Para"]))
      mat[k] = mat[k].reshape(-1)[:int(rng.integers(1, mat[k].size))]
    elif kind == "beyond_profile":  # a little past profile, as a few AFLW2000-3D fits are
      pose[1] = np.sign(rng.normal()) * np.deg2rad(rng.uniform(91, 110))
      pose[0] = np.deg2rad(rng.uniform(-10, 10))
      mat["Pose_Para"] = pose[None]
    elif kind == "euler_alias":  # the same rotation written with |yaw| > 90
      p, y, r = pose[:3]
      wrap = lambda a: (a + np.pi) % (2 * np.pi) - np.pi
      pose[:3] = wrap(p + np.pi), wrap(np.pi - y), wrap(r + np.pi)
      mat["Pose_Para"] = pose[None]
    elif kind == "no_landmarks":
      mat.pop("pt2d", None)
    elif kind == "hdf5_v73":
      data = _mat_v73_bytes(mat)
    elif kind == "missing_key":
      del mat[key]
    elif kind == "renamed_key":
      mat[str(rng.choice([key.lower(), key.upper(), key.replace("_Para", "Para")]))] = mat.pop(key)
    elif kind == "pose_size":
      size = int(rng.choice([0, 1, 6, 8, 14]))
      mat["Pose_Para"] = np.resize(pose, size)[None] if size else np.zeros((0, 0))
    elif kind == "too_many_params":
      k = str(rng.choice(["Shape_Para", "Exp_Para"]))
      mat[k] = rng.normal(size=(mat[k].size + int(rng.integers(1, 500)), 1))
    elif kind == "empty_param":
      mat[key] = np.zeros((0, 1))
    elif kind == "nan_or_inf":
      v = mat[key].astype(np.float64).reshape(-1).copy()
      v[int(rng.integers(0, v.size))] = rng.choice([np.nan, np.inf, -np.inf])
      mat[key] = v[:, None]
    elif kind == "text_param":
      mat[key] = np.array(["0.1 0.2 0.3"])
    elif kind == "cell_param":
      cell = np.empty((1, 2), dtype=object)
      cell[0, 0], cell[0, 1] = mat[key].reshape(-1)[:3], np.array(["x"])
      mat[key] = cell
    elif kind == "struct_param":
      mat[key] = {"value": mat[key], "units": "rad"}
    elif kind == "complex_param":
      mat[key] = mat[key].astype(np.float64) + 1j * rng.uniform(0.1, 1.0)
    elif kind == "bad_scale":
      pose[6] = rng.choice([0.0, -pose[6], -1.0])
      mat["Pose_Para"] = pose[None]
    elif kind == "degrees":  # angles written in degrees
      pose[:3] = np.degrees(pose[:3]) + np.sign(pose[:3] + 1e-9) * 10.0
      mat["Pose_Para"] = pose[None]
    elif kind == "turned_away":  # the back of the head toward the camera
      pose[1] = np.sign(rng.normal()) * np.deg2rad(rng.uniform(125, 180))
      pose[0] = np.deg2rad(rng.uniform(-20, 20))
      mat["Pose_Para"] = pose[None]
    elif kind == "landmark_shape":
      k = "pt2d" if "pt2d" in mat and rng.random() < 0.5 else "pt3d_68"
      base = mat.get(k, np.zeros((3, 68)))
      mat[k] = base[:, :int(rng.choice([19, 67, 69]))] if base.shape[1] > 69 else np.zeros((3, 67))
    elif kind == "face_off_photo":  # a translation that moves the face off the photo
      pose[3:5] += rng.choice([-1, 1], size=2) * rng.uniform(900, 5000, size=2)
      mat["Pose_Para"] = pose[None]
    elif kind == "not_a_mat":
      good = _mat_bytes(mat)
      data = [b"", rng.bytes(int(rng.integers(1, 3000))), good[:int(rng.integers(1, len(good)))],
              b"MATLAB 5.0 MAT-file, but nothing else", _encode(quadrant_pattern(rng, 16, 16), "PNG")
              ][int(rng.integers(0, 5))]
    elif kind == "hdf5_group":
      data = _mat_v73_bytes(mat, group_key=key)
    if data is None:
      data = _mat_bytes(mat)
    cases.append(Case(kind, f"{i:05d}_{kind}.mat", data, valid))
  return cases


# --------------------------------------------------------------------------------------------- volumes

VOLUME_SHAPE = (192, 192, 200)  # (y, x, z), as vrn_jax.geometry.voxelise
# Arrays given to the mesher (`volume_to_mesh`) as they are: any 3-D shape.
VALID_MESHER_KINDS = ("ball", "noise", "bool_ball", "float64_ball", "one_voxel_slab")
INVALID_MESHER_KINDS = ("all_zero", "all_one", "constant", "all_nan", "some_nan", "some_inf", "wrong_ndim",
                        "zero_size", "complex", "text")
# Volume files given to `python -m vrn_jax.convert` (read, checked, meshed, written).
VALID_VOLUME_FILE_KINDS = ("npy_float32", "npy_bool", "npy_uint8", "npy_float16", "raw")
INVALID_VOLUME_FILE_KINDS = ("npy_all_zero", "npy_all_one", "npy_nan", "npy_logits", "npy_int32",
                             "npy_transposed", "npy_batched", "npy_small", "npz_named_npy", "npy_pickle",
                             "npy_truncated", "empty_file", "random_bytes", "raw_wrong_size", "raw_all_zero",
                             "unknown_extension")
VOLUME_KINDS = (tuple((k, True, "mesher") for k in VALID_MESHER_KINDS)
                + tuple((k, False, "mesher") for k in INVALID_MESHER_KINDS)
                + tuple((k, True, "file") for k in VALID_VOLUME_FILE_KINDS)
                + tuple((k, False, "file") for k in INVALID_VOLUME_FILE_KINDS))


def _npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
  buf = io.BytesIO()
  np.save(buf, array, allow_pickle=allow_pickle)
  return buf.getvalue()


def _ball(rng: np.random.Generator, shape, soft: bool = True) -> np.ndarray:
  """A float32 ball (soft edge: a prediction-like 0..1 ramp) somewhere inside a volume of `shape`."""
  shape = np.asarray(shape)
  radius = float(rng.uniform(1.5, max(2.0, min(12.0, shape.min() / 2 - 1))))
  centre = rng.uniform(radius, np.maximum(shape - radius, radius + 1e-3))
  r = np.sqrt(sum((np.arange(s)[tuple(slice(None) if a == k else None for a in range(3))] - c) ** 2
                  for k, (s, c) in enumerate(zip(shape, centre))))
  if not soft:
    return (r < radius).astype(np.float32)
  return np.clip(0.5 + (radius - r) / 2.0, 0.0, 1.0).astype(np.float32)


def _full_ball(rng: np.random.Generator) -> np.ndarray:
  """A full-size (192, 192, 200) float32 volume holding a small soft ball (cheap to mesh)."""
  volume = np.zeros(VOLUME_SHAPE, np.float32)
  size = int(rng.integers(8, 30))
  corner = [int(rng.integers(0, s - size)) for s in VOLUME_SHAPE]
  volume[tuple(slice(c, c + size) for c in corner)] = _ball(rng, (size, size, size))
  return volume


def volume_cases(seed: int, n: int):
  """Yields `n` seeded volume cases, one at a time (full-size volumes are 30 MB each). The `kind` of a
  mesher case starts 'mesher/' (its data is a .npy of an array for `volume_to_mesh`), of a file case
  'file/' (its data is a volume file named `name`, for `python -m vrn_jax.convert --volume`)."""
  rng = np.random.default_rng([seed, 4])
  for i in range(n):
    kind, valid, where = VOLUME_KINDS[i % len(VOLUME_KINDS)]
    ext = ".npy"
    shape = tuple(int(s) for s in rng.integers(2, 40, size=3))
    if kind == "ball":
      shape = tuple(max(s, 6) for s in shape)
      data = _npy_bytes(_ball(rng, shape))
    elif kind == "noise":
      v = rng.random(shape, dtype=np.float32)
      v.flat[0], v.flat[-1] = 0.0, 1.0  # surely crosses the level
      data = _npy_bytes(v)
    elif kind == "bool_ball":
      shape = tuple(max(s, 6) for s in shape)
      data = _npy_bytes(_ball(rng, shape, soft=False) > 0.5)
    elif kind == "float64_ball":
      shape = tuple(max(s, 6) for s in shape)
      data = _npy_bytes(_ball(rng, shape).astype(np.float64))
    elif kind == "one_voxel_slab":  # a single occupied voxel in a one-voxel-thick volume
      v = np.zeros((1,) + shape[1:], np.float32)
      v[0, int(rng.integers(0, shape[1])), int(rng.integers(0, shape[2]))] = 1.0
      data = _npy_bytes(v)
    elif kind in ("all_zero", "all_one", "constant"):
      value = {"all_zero": 0.0, "all_one": 1.0}.get(kind, float(rng.uniform(0, 1)))
      data = _npy_bytes(np.full(shape, value, rng.choice([np.float32, np.float64, np.uint8])))
    elif kind in ("all_nan", "some_nan", "some_inf"):
      v = _ball(rng, tuple(max(s, 6) for s in shape)) if kind != "all_nan" else np.full(shape, np.nan,
                                                                                     np.float32)
      if kind != "all_nan":
        v.flat[rng.integers(0, v.size, size=int(rng.integers(1, 5)))] = (
            np.nan if kind == "some_nan" else rng.choice([np.inf, -np.inf]))
      data = _npy_bytes(v)
    elif kind == "wrong_ndim":
      ndim = int(rng.choice([0, 1, 2, 4, 5]))
      data = _npy_bytes(rng.random(tuple(int(s) for s in rng.integers(2, 20, size=ndim))))
    elif kind == "zero_size":
      data = _npy_bytes(np.zeros(tuple(0 if k == rng.integers(0, 3) else s for k, s in enumerate(shape)),
                                 np.float32))
    elif kind == "complex":
      data = _npy_bytes(_ball(rng, tuple(max(s, 6) for s in shape)).astype(np.complex64))
    elif kind == "text":
      data = _npy_bytes(np.full(shape, "0.7"))
    elif kind == "npy_float32":
      data = _npy_bytes(_full_ball(rng))
    elif kind == "npy_bool":
      data = _npy_bytes(_full_ball(rng) > 0.5)
    elif kind == "npy_uint8":
      data = _npy_bytes(np.floor(_full_ball(rng) * 255).astype(np.uint8))
    elif kind == "npy_float16":
      data = _npy_bytes(_full_ball(rng).astype(np.float16))
    elif kind == "raw":
      ext = ".raw"
      data = np.floor(_full_ball(rng) * 255).astype(np.uint8).transpose(2, 0, 1).tobytes()
    elif kind in ("npy_all_zero", "npy_all_one"):
      data = _npy_bytes(np.full(VOLUME_SHAPE, kind == "npy_all_one", rng.choice([np.uint8, bool])))
    elif kind == "npy_nan":
      v = _full_ball(rng)
      v.flat[rng.integers(0, v.size, size=int(rng.integers(1, 100)))] = np.nan
      data = _npy_bytes(v)
    elif kind == "npy_logits":  # the network's raw output, before the sigmoid
      data = _npy_bytes((_full_ball(rng) - 0.5) * float(rng.uniform(2, 40)))
    elif kind == "npy_int32":
      data = _npy_bytes(np.floor(_full_ball(rng) * 255).astype(np.int32))
    elif kind == "npy_transposed":  # the .raw's (z, y, x) order in a .npy
      data = _npy_bytes(np.ascontiguousarray((_full_ball(rng) > 0.5).transpose(2, 0, 1)))
    elif kind == "npy_batched":  # a batch of one
      data = _npy_bytes((_full_ball(rng) > 0.5)[None])
    elif kind == "npy_small":
      data = _npy_bytes(_ball(rng, tuple(max(s, 6) for s in shape)))
    elif kind == "npz_named_npy":
      buf = io.BytesIO()
      np.savez(buf, volume=_ball(rng, (8, 8, 8)))
      data = buf.getvalue()
    elif kind == "npy_pickle":
      data = _npy_bytes(np.array([{"volume": 1}, None], dtype=object), allow_pickle=True)
    elif kind == "npy_truncated":
      full = _npy_bytes(_full_ball(rng) > 0.5)
      data = full[:int(rng.integers(1, len(full) - 1))]
    elif kind == "empty_file":
      ext, data = str(rng.choice([".npy", ".raw"])), b""
    elif kind == "random_bytes":
      ext, data = str(rng.choice([".npy", ".raw"])), rng.bytes(int(rng.integers(1, 100_000)))
    elif kind == "raw_wrong_size":
      ext = ".raw"
      size = int(np.prod(VOLUME_SHAPE)) + int(rng.choice([-1, 1])) * int(rng.integers(1, 200 * 192))
      data = bytes(size)
    elif kind == "raw_all_zero":
      ext, data = ".raw", bytes(int(np.prod(VOLUME_SHAPE)))
    elif kind == "unknown_extension":
      ext = str(rng.choice([".vol", ".nii", ".npy.gz", ".txt", ""]))
      data = _npy_bytes(_ball(rng, (8, 8, 8)))
    else:
      raise ValueError(kind)
    yield Case(f"{where}/{kind}", f"{i:05d}_{kind}{ext}", data, valid)


# ---------------------------------------------------------------------------------------------- checks


class FuzzFailure(AssertionError):
  """A case the code got wrong: an exception other than InputError, a bad input accepted, a valid one
  refused, an error that does not name the input, or a wrong result."""


def _outcome(case: Case, run, names: list[str]) -> str:
  """Runs `run()` on a case: 'ok' (accepted, result checked) or 'error' (a clear InputError); raises
  FuzzFailure for anything else."""
  from vrn_jax.errors import InputError  # pylint: disable=g-import-not-at-top

  try:
    run()
  except InputError as e:
    if not any(n in str(e) for n in names):
      raise FuzzFailure(f"{case.name} ({case.kind}): the error does not name {names[0]}: {e}") from e
    if case.valid:
      raise FuzzFailure(f"{case.name} ({case.kind}): a valid input was refused: {e}") from e
    return "error"
  except Exception as e:  # pylint: disable=broad-except  (any other type is the failure looked for)
    raise FuzzFailure(f"{case.name} ({case.kind}): {type(e).__name__}: {e}") from e
  if not case.valid:
    raise FuzzFailure(f"{case.name} ({case.kind}): a bad input was accepted.")
  return "ok"


def _write(directory: str, case: Case) -> str:
  import os  # pylint: disable=g-import-not-at-top

  path = os.path.join(directory, case.name)
  with open(path, "wb") as f:
    f.write(case.data)
  return path


def check_photo_pixels(case: Case, image: np.ndarray) -> None:
  """A decoded valid photo is (H, W, 3) uint8, upright: nearer its expected pixels than any flip or
  rotation of them."""
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise FuzzFailure(f"{case.name}: decoded as {image.shape} {image.dtype}; expected (H, W, 3) uint8.")
  if case.expected is None:
    return
  if image.shape != case.expected.shape:
    raise FuzzFailure(f"{case.name}: decoded as {image.shape}; expected {case.expected.shape}.")
  variants = dihedral_variants(case.expected)
  variants = variants[:1] + [v for v in variants[1:]
                             if v.shape == image.shape and not np.array_equal(v, case.expected)]
  diffs = [float(np.abs(image.astype(np.int16) - v).mean()) for v in variants]
  if diffs[0] > 20.0 or (len(diffs) > 1 and min(diffs[1:]) <= diffs[0]):
    raise FuzzFailure(f"{case.name}: pixels differ from the upright photo by {diffs[0]:.1f} grey levels "
                      f"(flips/rotations: {[round(d, 1) for d in diffs[1:]]}).")


def check_photo(case: Case, directory: str | None = None) -> str:
  """Decodes a photo case in memory (`decode_image_rgb`) or, with `directory`, from a file there
  (`read_image_rgb`)."""
  from vrn_jax.files import decode_image_rgb, read_image_rgb  # pylint: disable=g-import-not-at-top

  if directory is None:
    return _outcome(case, lambda: check_photo_pixels(case, decode_image_rgb(case.data, case.name)),
                    [case.name])
  path = _write(directory, case)
  return _outcome(case, lambda: check_photo_pixels(case, read_image_rgb(path)), [path])


def check_landmarks(case: Case, directory: str) -> str:
  """Reads a landmark case from a file (`read_landmarks_txt`) and crops a photo of `LANDMARK_PHOTO_HW`
  with it (`crop_from_landmarks`, `crop_image`), as `vrn_jax.crop` and `run_eval.py --images` do."""
  from vrn_jax.files import read_landmarks_txt  # pylint: disable=g-import-not-at-top
  from vrn_jax.geometry.crop import crop_from_landmarks, crop_image  # pylint: disable=g-import-not-at-top

  path = _write(directory, case)

  def run():
    points = read_landmarks_txt(path)
    if case.expected is not None:
      np.testing.assert_allclose(points, case.expected, atol=1e-3)
    photo = np.full(LANDMARK_PHOTO_HW + (3,), 200, np.uint8)
    crop = crop_image(photo, crop_from_landmarks(points, LANDMARK_PHOTO_HW, what=path))
    if crop.shape != (192, 192, 3) or not (crop == 200).any():
      raise FuzzFailure(f"{path}: crop {crop.shape} holds no photo pixels.")
    if case.kind == "face_at_edge" and not (crop == 0).any():
      raise FuzzFailure(f"{path}: a face at the photo's edge, yet its crop has no zero padding.")

  return _outcome(case, run, [path])


class MatBench:
  """A manual dir with a 3DMM and one synthetic 300W-LP face: the template fit, and its photo for every
  fuzzed .mat (written to `directory` as `<name>.mat` + `<name>.jpg`)."""

  def __init__(self, root: str, seed: int = 5):
    import os  # pylint: disable=g-import-not-at-top

    import scipy.io  # pylint: disable=g-import-not-at-top

    from vrn_jax.data import readers  # pylint: disable=g-import-not-at-top
    from vrn_jax.faces.synthetic import write_300w_lp_tree  # pylint: disable=g-import-not-at-top

    self.manual_dir = os.path.join(root, "manual")
    write_300w_lp_tree(self.manual_dir, 1, seed=seed)
    (item,) = readers.list_300w_lp(self.manual_dir)
    self.template = {k: v for k, v in scipy.io.loadmat(item.mat_path).items() if not k.startswith("__")}
    self.image_path = item.image_path
    self.model = readers.find_morphable_model(self.manual_dir)
    self.directory = os.path.join(root, "fuzzed_mats")
    os.makedirs(self.directory, exist_ok=True)


def check_mat(case: Case, bench: MatBench, build_example: bool = True) -> str:
  """Reads a fit case (`readers.read_fit`) and, with `build_example` (always for the kinds whose fault
  shows there), makes its dataset example by the builder's per-item path (`build.real_example`)."""
  import os  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top

  from vrn_jax.data import build, readers  # pylint: disable=g-import-not-at-top

  mat_path = _write(bench.directory, case)
  stem = os.path.splitext(mat_path)[0]
  shutil.copyfile(bench.image_path, stem + ".jpg")
  item = readers.Item(stem + ".jpg", mat_path, os.path.basename(stem))

  def run():
    fit = readers.read_fit(item, bench.model)
    if fit.photo.ndim != 3 or fit.pose_para.shape != (7,):
      raise FuzzFailure(f"{mat_path}: read as photo {fit.photo.shape}, Pose_Para {fit.pose_para.shape}.")
    if build_example or case.kind in EXAMPLE_STAGE_MAT_KINDS:
      _, example = build.real_example(bench.manual_dir, item)
      if example["image"].shape != (192, 192, 3) or not np.all(np.isfinite(example["landmarks"])):
        raise FuzzFailure(f"{mat_path}: example image {example['image'].shape}, landmarks not finite.")
      if not example["volume"]["depth"].any():
        raise FuzzFailure(f"{mat_path}: the example's target volume is empty.")

  return _outcome(case, run, [mat_path])


def check_volume(case: Case, directory: str) -> str:
  """A mesher case: its array to `volume_to_mesh`. A file case: `python -m vrn_jax.convert --volume
  FILE --output FILE.obj` in-process, which must write the mesh, or write nothing and raise."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  from vrn_jax import cli, convert  # pylint: disable=g-import-not-at-top
  from vrn_jax.geometry.isosurface import volume_to_mesh  # pylint: disable=g-import-not-at-top

  if case.kind.startswith("mesher/"):
    array = np.load(io.BytesIO(case.data), allow_pickle=False)

    def run():
      mesh = volume_to_mesh(array)
      v = mesh.vertices
      if not len(mesh.faces) or not np.all(np.isfinite(v)):
        raise FuzzFailure(f"{case.name}: {len(mesh.faces)} faces, finite vertices: {np.isfinite(v).all()}.")
      upper = np.array([array.shape[1], array.shape[0], array.shape[2] * 0.5])
      if v.min() < -1.0 or np.any(v.max(axis=0) > upper):
        raise FuzzFailure(f"{case.name}: vertices outside the volume's box.")

    return _outcome(case, run, ["volume"])
  path = _write(directory, case)
  out = path + ".obj"

  def run():
    with contextlib.redirect_stdout(io.StringIO()):
      cli.set_command_flags(convert.define_flags, ["--volume", path, "--output", out])
      convert.main([])
    if not os.path.isfile(out) or os.path.getsize(out) == 0:
      raise FuzzFailure(f"{path}: convert returned, but wrote no mesh.")

  try:
    return _outcome(case, run, [path])
  finally:
    if not case.valid and os.path.exists(out):
      raise FuzzFailure(f"{path}: a refused volume, yet {out} was written.")
    if os.path.exists(out):
      os.remove(out)
    os.remove(path)


def leftover_temporaries(directory: str) -> list[str]:
  """Partial files (`atomic_output`'s temporaries) left under `directory`."""
  import os  # pylint: disable=g-import-not-at-top

  return [os.path.join(d, f) for d, _, files in os.walk(directory) for f in files if f.startswith(".tmp-")]


# ------------------------------------------------------------------------------------------------ soak


def soak(per_kind: int, seed: int, root: str) -> list[tuple[str, str, dict]]:
  """Runs `per_kind` cases of each family through its checks; returns (family, kind, counts) rows, counts
  {'cases', 'ok', 'error', 'failed'}, and prints the failures."""
  import collections  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  counts: dict = collections.defaultdict(lambda: collections.Counter())
  failures = []

  def tally(family, case, check):
    counts[(family, case.kind)]["cases"] += 1
    try:
      counts[(family, case.kind)][check()] += 1
    except FuzzFailure as e:
      counts[(family, case.kind)]["failed"] += 1
      failures.append(str(e))

  dirs = {k: os.path.join(root, k) for k in ("photos", "landmarks", "volumes")}
  for d in dirs.values():
    os.makedirs(d, exist_ok=True)
  for k, case in enumerate(photo_cases(seed, per_kind)):
    tally("photo", case, lambda: check_photo(case, dirs["photos"] if k % 2 else None))
  for case in landmark_cases(seed, per_kind):
    tally("landmarks", case, lambda: check_landmarks(case, dirs["landmarks"]))
  bench = MatBench(root)
  for case in mat_cases(seed, per_kind, bench.template):
    tally(".mat fit", case, lambda: check_mat(case, bench, build_example=True))
  for case in volume_cases(seed, per_kind):
    tally("volume", case, lambda: check_volume(case, dirs["volumes"]))
  for path in leftover_temporaries(root):
    failures.append(f"{path}: a temporary file was left behind.")
    counts[("leftovers", "temporary files")]["failed"] += 1
  for message in failures[:50]:
    print("FAILED:", message)
  return [(family, kind, dict(c)) for (family, kind), c in counts.items()]


def main(argv=None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  import collections  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import warnings  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz_inputs", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--per_kind", type=int, default=2000, help="cases per input family")
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument("--by_kind", action="store_true", help="also print a row per sub-kind")
  args = parser.parse_args(argv)
  # Pillow warns (and then refuses, as checked) on the decompression-bomb headers; that is the point.
  warnings.simplefilter("ignore")
  start = time.time()
  with tempfile.TemporaryDirectory(prefix="vrn_fuzz_") as root:
    rows = soak(args.per_kind, args.seed, root)
  totals: dict = collections.defaultdict(collections.Counter)
  for family, _, c in rows:
    totals[family].update(c)
  header = f"{'kind':<36} {'cases tried':>11} {'decoded ok':>10} {'clear errors':>12} {'other failures':>14}"
  print(header)
  print("-" * len(header))
  shown = [(f, "", totals[f]) for f in totals]
  if args.by_kind:
    shown = [(f, k, c) for f in totals for (ff, k, c) in rows if ff == f] + shown
  for family, kind, c in shown:
    name = f"{family}: {kind}" if kind else f"{family} (all)"
    print(f"{name:<36} {c.get('cases', 0):>11} {c.get('ok', 0):>10} {c.get('error', 0):>12} "
          f"{c.get('failed', 0):>14}")
  failed = sum(c.get("failed", 0) for c in totals.values())
  print(f"seed {args.seed}, {sum(c.get('cases', 0) for c in totals.values())} cases in "
        f"{time.time() - start:.0f} s; other failures: {failed}")
  return 1 if failed else 0


if __name__ == "__main__":
  raise SystemExit(main())
