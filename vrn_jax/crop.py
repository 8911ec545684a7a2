"""Crop a photo to VRN's 192x192 input, as the release's run.m does (installed as vrn-crop).

  python -m vrn_jax.crop --image PHOTO --output CROP.png [--transform_out T.json]      # finds the faces
  python -m vrn_jax.crop --image PHOTO --landmarks PTS.txt --output CROP.png
  python -m vrn_jax.crop --image PHOTO --box x0,y0,x1,y1 --output CROP.png

Example: python -m vrn_jax.crop --image photo.jpg --output crop.png --transform_out crop.json

With neither landmarks nor a box, the face finder (dlib's detector and 68-point predictor) finds every
face and each is cropped by run.m's rule from its 68 landmarks; with several faces, the outputs are named
CROP_face1.png, CROP_face2.png, ... left to right (the same for --transform_out and --landmarks_out).
Landmark files: 68 lines `x,y` in the release's 1-based pixel convention. Boxes: 0-based pixels. The
optional JSON holds the crop transform that maps meshes back to the photo (`vrn_jax.convert --transform`).
"""

from __future__ import annotations

import os

from absl import flags

from vrn_jax import cli, face_finder, reconstruct
from vrn_jax.errors import InputError
from vrn_jax.files import read_image_rgb, read_landmarks_txt, write_image_rgb, write_landmarks_txt
from vrn_jax.geometry.crop import crop_from_box, crop_from_landmarks, crop_image

FLAGS = flags.FLAGS


def _parse_box(text: str):
  try:
    values = [float(v) for v in text.replace(" ", "").split(",")]
  except ValueError:
    values = []
  if len(values) != 4:
    raise InputError(f"--box {text!r}: expected four numbers x0,y0,x1,y1.")
  return values


def numbered(path: str | None, index: int, count: int) -> str | None:
  """`path` for a photo's only face; `<stem>_face<index + 1><ext>` when it has `count` > 1."""
  if path is None or count == 1:
    return path
  stem, ext = os.path.splitext(path)
  return f"{stem}_face{index + 1}{ext}"


def define_flags() -> None:
  flags.DEFINE_string("image", None, "The photo (JPEG or PNG).", required=True)
  flags.DEFINE_string("landmarks", None, "68-landmark text file (68 lines x,y, 1-based); default: find the "
                      "faces.")
  flags.DEFINE_string("box", None, "Face box x0,y0,x1,y1 in 0-based pixels.")
  flags.mark_flags_as_mutual_exclusive(["landmarks", "box"])
  flags.DEFINE_string("output", None, "The 192x192 crop (.png or .jpg).", required=True)
  flags.DEFINE_string("transform_out", None, "Also write the crop transform as JSON here.")
  flags.DEFINE_string("landmarks_out", None, "Also write the found 68 landmarks here (x,y lines, 1-based, "
                      "the --landmarks format).")


def main(argv: list[str]) -> None:
  del argv
  photo = read_image_rgb(FLAGS.image)
  landmarks = []
  if FLAGS.landmarks:
    transforms = [crop_from_landmarks(read_landmarks_txt(FLAGS.landmarks), photo.shape[:2],
                                      what=FLAGS.landmarks)]
  elif FLAGS.box:
    transforms = [crop_from_box(_parse_box(FLAGS.box))]
  else:
    crops = reconstruct.found_face_crops(photo, face_finder.DlibFaceFinder(), FLAGS.image)
    transforms = [c.transform for c in crops]
    landmarks = [c.face.landmarks for c in crops]
  if FLAGS.landmarks_out and not landmarks:
    raise InputError("--landmarks_out writes found landmarks: use it without --landmarks and --box.")
  for i, transform in enumerate(transforms):
    n = len(transforms)
    write_image_rgb(numbered(FLAGS.output, i, n), crop_image(photo, transform))
    if FLAGS.transform_out:
      transform.save_json(numbered(FLAGS.transform_out, i, n))
    if FLAGS.landmarks_out:
      write_landmarks_txt(numbered(FLAGS.landmarks_out, i, n), landmarks[i])
    print(f"{numbered(FLAGS.output, i, n)}: face {i + 1} of {n}, scale {transform.scale:.4f}")


def console() -> None:
  """The installed command's entry point."""
  cli.run_absl_command(main, define_flags, __name__, config_file=False, log_progress=False)


if __name__ == "__main__":
  console()
