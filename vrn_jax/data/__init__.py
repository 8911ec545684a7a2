"""Data: readers of 300W-LP / AFLW2000-3D, dataset examples and their parallel build, the host pipeline
and on-device augmentation and targets. (The procedural faces are `vrn_jax.faces`.)

`vrn_jax.data.example_volume(example)` turns a `vrn_faces` example into its bool (192, 192, 200) volume.
"""

from vrn_jax.data.examples import example_volume

__all__ = ["example_volume"]
