"""Landmark heatmaps: 68 2D Gaussians rendered on device from landmark coordinates (jit-able).

VRN-Guided stacks them with the RGB crop: the paper's sigma = 1 px at 192x192 (~6 px diameter), peak 1,
one channel per iBUG landmark. VRN-Multitask's landmark head and VRN-Guided's detector regress them at
their 48x48 grid, upsampled x4 (bilinear): a 1 px Gaussian at 192 is a quarter of one of their pixels, which
they cannot draw, so they are trained against wider ones (`config.heatmap_sigma_px`, 4 px at 192 = 1 px at
48 as in Newell et al.'s hourglass); `heatmap_peaks` reads either.
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


def heatmap_peaks(heatmaps: jax.Array, spacing: int = 4) -> jax.Array:
  """(B, H, W, L) heatmaps -> (B, L, 2) float32 (x, y) pixel positions (jit-able).

  Each channel's maximum, refined to sub-pixel by a parabola through the log-values of it and the pixels
  `spacing` away along x and along y: exact for sampled Gaussians of any sigma and spacing. The default
  is the heads' upsampling factor: they draw bilinearly between samples 4 px apart, and a parabola
  through adjacent pixels follows those straight pieces (up to 1.4 px off on the best drawing of a 4 px
  Gaussian; 0.2 px with samples 4 px apart; tests/test_models.py). A peak within `spacing` of the border,
  or whose neighbourhood is not concave (a flat channel), keeps its pixel.
  """
  h = jnp.asarray(heatmaps, jnp.float32)
  b, height, width, count = h.shape
  peak = jnp.argmax(h.reshape(b, height * width, count), axis=1)  # (B, L)
  py, px = peak // width, peak % width
  bi, li = jnp.arange(b)[:, None], jnp.arange(count)[None, :]

  def refine(centre, size, sample):
    lo, mid, hi = (jnp.log(jnp.maximum(sample(jnp.clip(centre + d, 0, size - 1)), 1e-30))
                   for d in (-spacing, 0, spacing))
    curvature = lo - 2 * mid + hi
    ok = (centre >= spacing) & (centre < size - spacing) & (curvature < 0)
    offset = jnp.where(ok, spacing * (lo - hi) / (2 * jnp.where(ok, curvature, -1.0)), 0.0)
    return centre + jnp.clip(offset, -spacing, spacing)

  x = refine(px, width, lambda c: h[bi, py, c, li])
  y = refine(py, height, lambda c: h[bi, c, px, li])
  return jnp.stack([x, y], axis=-1)
