"""Convert a VRN volume to a mesh: marching cubes on the soft volume, z * 0.5, optional colour.

  python -m vrn_jax.convert --volume IN.raw|IN.npy [--image CROP] [--level 0.5] --output OUT.obj|OUT.ply
                            [--transform T.json]

`.raw`: the released format (200*192*192 uint8, axes z, y, x). `.npy`: ours, (192, 192, 200) (y, x, z),
float in [0, 1], bool, or uint8 0..255. With `--image` (the 192x192 crop) vertices take its colours; with
`--transform` (written by `vrn_jax.crop --transform_out`) the mesh is mapped to original-photo pixels.
"""

from __future__ import annotations

import argparse
import sys

from vrn_jax import cli
from vrn_jax.errors import InputError
from vrn_jax.files import read_image_rgb
from vrn_jax.geometry.crop import CROP_SIZE, CropTransform
from vrn_jax.geometry.isosurface import load_volume, save_mesh, volume_to_mesh


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(prog="python -m vrn_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--volume", required=True, help=".raw (release) or .npy (ours) volume")
  parser.add_argument("--image", help="the 192x192 crop, for vertex colours")
  parser.add_argument("--level", type=float, default=0.5, help="isosurface level in [0, 1]")
  parser.add_argument("--transform", help="crop transform JSON: output in photo coordinates")
  parser.add_argument("--output", required=True, help="mesh file, .obj or .ply")
  args = parser.parse_args(argv)

  if not 0.0 < args.level < 1.0:
    raise InputError(f"--level {args.level}: expected a value strictly between 0 and 1.")
  volume = load_volume(args.volume)
  image = None
  if args.image:
    image = read_image_rgb(args.image)
    if image.shape[:2] != (CROP_SIZE, CROP_SIZE):
      raise InputError(f"{args.image}: image is {image.shape[1]}x{image.shape[0]}; expected the "
                       f"{CROP_SIZE}x{CROP_SIZE} crop the volume was predicted from.")
  transform = CropTransform.load_json(args.transform) if args.transform else None
  try:
    mesh = volume_to_mesh(volume, level=args.level, image=image)
  except InputError as e:
    raise InputError(f"{args.volume}: {e}") from None
  if transform is not None:
    mesh = mesh.to_photo(transform)
  save_mesh(args.output, mesh)
  print(f"{args.output}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces")


def console() -> None:
  """The installed command's entry point."""
  sys.exit(cli.run_main(main))


if __name__ == "__main__":
  console()
