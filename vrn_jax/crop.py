"""Crop a photo to VRN's 192x192 input, as the release's run.m does.

  python -m vrn_jax.crop --image PHOTO --landmarks PTS.txt --output CROP.png [--transform_out T.json]
  python -m vrn_jax.crop --image PHOTO --box x0,y0,x1,y1 --output CROP.png

Landmark files: 68 lines `x,y` in the release's 1-based pixel convention. Boxes: 0-based pixels. The
optional JSON holds the crop transform that maps meshes back to the photo (`vrn_jax.convert --transform`).
"""

from __future__ import annotations

import argparse
import sys

from vrn_jax import cli
from vrn_jax.files import InputError, read_image_rgb, read_landmarks_txt, write_image_rgb
from vrn_jax.geometry.crop import crop_from_box, crop_from_landmarks, crop_image


def _parse_box(text: str):
  try:
    values = [float(v) for v in text.replace(" ", "").split(",")]
  except ValueError:
    values = []
  if len(values) != 4:
    raise InputError(f"--box {text!r}: expected four numbers x0,y0,x1,y1.")
  return values


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(prog="python -m vrn_jax.crop", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--image", required=True, help="the photo (JPEG or PNG)")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--landmarks", help="68-landmark text file (68 lines x,y, 1-based)")
  source.add_argument("--box", help="face box x0,y0,x1,y1 in 0-based pixels")
  parser.add_argument("--output", required=True, help="the 192x192 crop (.png or .jpg)")
  parser.add_argument("--transform_out", help="also write the crop transform as JSON here")
  args = parser.parse_args(argv)

  photo = read_image_rgb(args.image)
  if args.landmarks:
    transform = crop_from_landmarks(read_landmarks_txt(args.landmarks), photo.shape[:2],
                                    what=args.landmarks)
  else:
    transform = crop_from_box(_parse_box(args.box))
  crop = crop_image(photo, transform)
  write_image_rgb(args.output, crop)
  if args.transform_out:
    transform.save_json(args.transform_out)


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
