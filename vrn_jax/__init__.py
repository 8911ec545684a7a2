"""vrn_jax: a JAX/Flax reimplementation of VRN (Jackson et al., ICCV 2017).

Coordinate contract (kept true everywhere, see README):
  * crop pixels: x right, y down, origin at the centre of the top-left pixel (0-based);
  * volumes: arrays (y, x, z) of shape (192, 192, 200), z increasing toward the camera;
  * meshes: vertices (x, y, z_voxel * 0.5) in crop pixels;
  * a stored `CropTransform` maps every one of these back to the original photo.
"""

__version__ = "0.1.0"
