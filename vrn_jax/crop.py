"""Crop a photo to VRN's 192x192 input, as the release's run.m does.

  python -m vrn_jax.crop --image PHOTO --output CROP.png [--transform_out T.json]      # finds the faces
  python -m vrn_jax.crop --image PHOTO --landmarks PTS.txt --output CROP.png
  python -m vrn_jax.crop --image PHOTO --box x0,y0,x1,y1 --output CROP.png

With neither landmarks nor a box, the face finder (dlib's detector and 68-point predictor) finds every
face and each is cropped by run.m's rule from its 68 landmarks; with several faces, the outputs are named
CROP_face1.png, CROP_face2.png, ... left to right (the same for --transform_out and --landmarks_out).
Landmark files: 68 lines `x,y` in the release's 1-based pixel convention. Boxes: 0-based pixels. The
optional JSON holds the crop transform that maps meshes back to the photo (`vrn_jax.convert --transform`).
"""

from __future__ import annotations

import argparse
import os
import sys

from vrn_jax import cli
from vrn_jax.errors import InputError
from vrn_jax.files import read_image_rgb, read_landmarks_txt, write_image_rgb, write_landmarks_txt
from vrn_jax.geometry.crop import crop_from_box, crop_from_landmarks, crop_image


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


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(prog="python -m vrn_jax.crop", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--image", required=True, help="the photo (JPEG or PNG)")
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--landmarks", help="68-landmark text file (68 lines x,y, 1-based); default: find "
                      "the faces")
  source.add_argument("--box", help="face box x0,y0,x1,y1 in 0-based pixels")
  parser.add_argument("--output", required=True, help="the 192x192 crop (.png or .jpg)")
  parser.add_argument("--transform_out", help="also write the crop transform as JSON here")
  parser.add_argument("--landmarks_out", help="also write the found 68 landmarks here (x,y lines, "
                      "1-based, the --landmarks format)")
  args = parser.parse_args(argv)

  photo = read_image_rgb(args.image)
  landmarks = []
  if args.landmarks:
    transforms = [crop_from_landmarks(read_landmarks_txt(args.landmarks), photo.shape[:2],
                                      what=args.landmarks)]
  elif args.box:
    transforms = [crop_from_box(_parse_box(args.box))]
  else:
    from vrn_jax import face_finder, reconstruct  # pylint: disable=g-import-not-at-top  (dlib: only here)

    crops = reconstruct.found_face_crops(photo, face_finder.DlibFaceFinder(), args.image)
    transforms = [c.transform for c in crops]
    landmarks = [c.face.landmarks for c in crops]
  if args.landmarks_out and not landmarks:
    raise InputError("--landmarks_out writes found landmarks: use it without --landmarks and --box.")
  for i, transform in enumerate(transforms):
    n = len(transforms)
    write_image_rgb(numbered(args.output, i, n), crop_image(photo, transform))
    if args.transform_out:
      transform.save_json(numbered(args.transform_out, i, n))
    if args.landmarks_out:
      write_landmarks_txt(numbered(args.landmarks_out, i, n), landmarks[i])
    print(f"{numbered(args.output, i, n)}: face {i + 1} of {n}, scale {transform.scale:.4f}")


def console() -> None:
  """The installed command's entry point."""
  sys.exit(cli.run_main(main))


if __name__ == "__main__":
  console()
