"""Convert a VRN volume to a mesh: marching cubes on the soft volume, z * 0.5, optional colour (installed
as vrn-convert).

  python -m vrn_jax.convert --volume IN.raw|IN.npy [--image CROP] [--level 0.5] --output OUT.obj|OUT.ply
                            [--transform T.json]

Example: python -m vrn_jax.convert --volume face.npy --image crop.png --output face.obj

`.raw`: the released format (200*192*192 uint8, axes z, y, x). `.npy`: ours, (192, 192, 200) (y, x, z),
float in [0, 1], bool, or uint8 0..255. With `--image` (the 192x192 crop) vertices take its colours; with
`--transform` (written by `vrn_jax.crop --transform_out`) the mesh is mapped to original-photo pixels.
"""

from __future__ import annotations

from absl import flags

from vrn_jax import cli
from vrn_jax.errors import InputError
from vrn_jax.files import read_image_rgb
from vrn_jax.geometry.crop import CROP_SIZE, CropTransform
from vrn_jax.geometry.isosurface import load_volume, save_mesh, volume_to_mesh

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("volume", None, ".raw (release) or .npy (ours) volume.", required=True)
  flags.DEFINE_string("image", None, "The 192x192 crop, for vertex colours.")
  flags.DEFINE_float("level", 0.5, "Isosurface level in [0, 1].")
  flags.DEFINE_string("transform", None, "Crop transform JSON: output in photo coordinates.")
  flags.DEFINE_string("output", None, "Mesh file, .obj or .ply.", required=True)


def main(argv: list[str]) -> None:
  del argv
  if not 0.0 < FLAGS.level < 1.0:
    raise InputError(f"--level {FLAGS.level}: expected a value strictly between 0 and 1.")
  volume = load_volume(FLAGS.volume)
  image = None
  if FLAGS.image:
    image = read_image_rgb(FLAGS.image)
    if image.shape[:2] != (CROP_SIZE, CROP_SIZE):
      raise InputError(f"{FLAGS.image}: image is {image.shape[1]}x{image.shape[0]}; expected the "
                       f"{CROP_SIZE}x{CROP_SIZE} crop the volume was predicted from.")
  transform = CropTransform.load_json(FLAGS.transform) if FLAGS.transform else None
  try:
    mesh = volume_to_mesh(volume, level=FLAGS.level, image=image)
  except InputError as e:
    raise InputError(f"{FLAGS.volume}: {e}") from None
  if transform is not None:
    mesh = mesh.to_photo(transform)
  save_mesh(FLAGS.output, mesh)
  print(f"{FLAGS.output}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces")


def console() -> None:
  """The installed command's entry point."""
  cli.run_absl_command(main, define_flags, __name__, config_file=False, log_progress=False)


if __name__ == "__main__":
  console()
