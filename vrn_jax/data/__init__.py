"""Data: the procedural face model, synthetic faces and 300W-LP-shaped trees, dataset examples, the host
pipeline and on-device augmentation.

`vrn_jax.data.decode_volume(example)` turns a `vrn_faces` example into its bool (192, 192, 200) volume.
"""

from vrn_jax.data.examples import decode_volume

__all__ = ["decode_volume"]
