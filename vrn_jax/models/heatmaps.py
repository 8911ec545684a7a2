"""Landmark heatmaps: 68 2D Gaussians rendered on device from landmark coordinates (jit-able).

VRN-Guided stacks them with the RGB crop, VRN-Multitask and the detector regress them. The paper uses
sigma = 1 px at 192x192 (~6 px diameter), peak 1, one channel per iBUG landmark.
"""

import jax
import jax.numpy as jnp

CROP_SIZE = 192
SIGMA_PX = 1.0


def render_heatmaps(landmarks_xy: jax.Array, resolution: int = CROP_SIZE, sigma: float = SIGMA_PX,
                    source_size: int = CROP_SIZE) -> jax.Array:
  """Unnormalised Gaussians exp(-d^2 / (2 sigma^2)), one channel per landmark.

  Coordinates and sigma are given in 0-based crop pixels of a `source_size` crop (origin at the centre
  of the top-left pixel) and scaled to `resolution` with corners aligned, x_r = x (r - 1) / (s - 1): the
  convention of the networks' x4 align_corners upsample, so a heatmap rendered at 48 and upsampled by
  the network lines up with one rendered at 192.

  Args:
    landmarks_xy: (B, L, 2) (x, y) crop pixels; extra trailing coordinates (e.g. z) must be sliced off.
    resolution: output side r.
    sigma: Gaussian standard deviation in source pixels.
    source_size: side s of the crop the coordinates refer to.
  Returns:
    (B, r, r, L) float32 heatmaps in [0, 1].
  """
  landmarks_xy = jnp.asarray(landmarks_xy, jnp.float32)
  if landmarks_xy.ndim != 3 or landmarks_xy.shape[-1] != 2:
    raise ValueError(f"expected (B, L, 2) landmark (x, y) coordinates, got shape {landmarks_xy.shape}")
  scale = (resolution - 1) / (source_size - 1)
  centres = landmarks_xy * scale
  s = sigma * scale
  grid = jnp.arange(resolution, dtype=jnp.float32)
  # Separable: exp(-(dx^2 + dy^2)/2s^2) = gx * gy, (B, L, r) each; one outer product per landmark.
  gx = jnp.exp(-0.5 * ((grid[None, None, :] - centres[..., 0:1]) / s) ** 2)
  gy = jnp.exp(-0.5 * ((grid[None, None, :] - centres[..., 1:2]) / s) ** 2)
  return jnp.einsum("bly,blx->byxl", gy, gx, precision=jax.lax.Precision.HIGHEST)
