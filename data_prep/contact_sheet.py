"""Contact sheets of a built vrn_faces split: crops with their 68 landmarks, and depth-coded volumes.

  python -m data_prep.contact_sheet --data_dir=~/tensorflow_datasets [--config=synthetic] [--split=test]
      [--count=16] --output=docs/synthetic_examples.png [--volumes_output=docs/synthetic_volumes.png]

Example (once `python run_train.py` has built the synthetic dataset):
  python -m data_prep.contact_sheet --output=examples.png --volumes_output=volumes.png
"""

from __future__ import annotations

import matplotlib
import numpy as np
from absl import flags
from PIL import Image, ImageDraw

from vrn_jax import cli
from vrn_jax.data import examples, pipeline
from vrn_jax.files import write_image_rgb

FLAGS = flags.FLAGS


def draw_landmarks(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
  """The crop with its landmarks: jaw/brows/nose green, eyes cyan, mouth red."""
  im = Image.fromarray(image)
  draw = ImageDraw.Draw(im)
  for i, (x, y) in enumerate(landmarks[:, :2]):
    colour = (0, 255, 255) if 36 <= i < 48 else (255, 60, 60) if i >= 48 else (60, 255, 60)
    draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=colour)
  return np.asarray(im)


def depth_image(volume: np.ndarray) -> np.ndarray:
  """(192, 192, 200) bool -> (192, 192, 3) uint8: the front-most filled voxel, near = bright."""
  filled = volume.any(axis=2)
  front = np.where(filled, volume.shape[2] - 1 - np.argmax(volume[:, :, ::-1], axis=2), 0)
  lo, hi = (front[filled].min(), front[filled].max()) if filled.any() else (0, 1)
  rgb = matplotlib.colormaps["magma"]((front - lo) / max(hi - lo, 1))[..., :3]
  rgb[~filled] = 0
  return (rgb * 255).astype(np.uint8)


def grid(images: list[np.ndarray], columns: int) -> np.ndarray:
  h, w = images[0].shape[:2]
  rows = -(-len(images) // columns)
  sheet = np.zeros((rows * (h + 2), columns * (w + 2), 3), np.uint8)
  for i, im in enumerate(images):
    r, c = divmod(i, columns)
    sheet[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = im
  return sheet


def define_flags() -> None:
  flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "Where the vrn_faces dataset was built.")
  flags.DEFINE_string("config", "synthetic", "The dataset's builder config: synthetic, 300w_lp or "
                      "aflw2000_3d.")
  flags.DEFINE_string("split", "test", "The split whose first examples are drawn.")
  flags.DEFINE_integer("count", 16, "How many examples (four to a row).")
  flags.DEFINE_string("output", None, "The sheet of crops with their landmarks (.png).", required=True)
  flags.DEFINE_string("volumes_output", None, "Also the sheet of crops beside their depth-coded target "
                      "volumes (.png).")


def main(argv: list[str]) -> None:
  del argv
  source = pipeline.data_source(FLAGS.data_dir, FLAGS.config, FLAGS.split)
  picks = [source[i] for i in range(min(FLAGS.count, len(source)))]
  write_image_rgb(FLAGS.output, grid([draw_landmarks(e["image"], e["landmarks"]) for e in picks], 4))
  if FLAGS.volumes_output:
    tiles = [np.concatenate([e["image"], depth_image(examples.example_volume(e))], axis=1)
             for e in picks]
    write_image_rgb(FLAGS.volumes_output, grid(tiles, 4))


if __name__ == "__main__":
  cli.run_absl_command(main, define_flags, __name__, config_file=False, log_progress=False)
