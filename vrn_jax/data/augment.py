"""On-device augmentation and targets (JAX; runs inside the jitted/pmapped step).

The paper's augmentation (section 1 of DESIGN.md): in-plane rotation +-45 deg, translation +-15 px, scale
0.85-1.15, horizontal flip in 20% of cases (landmark identities flipped too), per-channel colour scale
0.6-1.4. It is one similarity transform A of the crop frame, about the crop centre (x, y) and the volume's
depth centre (z, scaled by the same factor). The image is resampled through A^-1; the target volume is
decoded from the stored compact encoding with its affine composed with A^-1 — the same as voxelising the
augmented mesh, without a dense volume ever crossing from the host.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vrn_jax.geometry import voxelise
from vrn_jax.geometry.voxelise import VOLUME_SHAPE, Z_SCALE

CROP_CENTRE = (VOLUME_SHAPE[1] - 1) / 2  # 95.5: the crop's centre in 0-based pixels
DEPTH_CENTRE_VOXELS = VOLUME_SHAPE[2] / 2  # 100: scaling about the middle of the depth range

# iBUG 68-point identities under a horizontal flip (0-based).
FLIP_PERMUTATION = np.array(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 16, -1))  # brows
    + [27, 28, 29, 30] + [35, 34, 33, 32, 31]  # nose
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65])  # inner lips


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """The paper's joint augmentation (the first five), then photometric ones that change the image only
  (not the paper's; off by default): what separates photos from rendered crops.

  Attributes:
    rotation_deg, translation_px, scale_range, flip_probability, colour_range: the paper's.
    brightness: an offset ~ U(-b, b) added to every channel.
    contrast_range: contrast about the image's mean grey, ~ U(range).
    saturation_range: saturation about each pixel's grey, ~ U(range).
    blur_sigma_px: a Gaussian blur of sigma ~ U(0, blur_sigma_px) crop pixels (at most ~3: 9 taps).
    noise_std: Gaussian noise of std ~ U(0, noise_std) (image in [0, 1]).
    occlusion_probability: how often a rectangle (10-40% of the crop's side each way) of a random,
      noisy colour covers part of the crop; the target is unchanged (the face is still there).
  """
  rotation_deg: float = 45.0
  translation_px: float = 15.0
  scale_range: tuple[float, float] = (0.85, 1.15)
  flip_probability: float = 0.2
  colour_range: tuple[float, float] = (0.6, 1.4)
  brightness: float = 0.0
  contrast_range: tuple[float, float] = (1.0, 1.0)
  saturation_range: tuple[float, float] = (1.0, 1.0)
  blur_sigma_px: float = 0.0
  noise_std: float = 0.0
  occlusion_probability: float = 0.0


_BLUR_RADIUS = 4  # taps each side: enough for sigma <= ~3 px
_GREY = jnp.array([0.299, 0.587, 0.114])


def sample_params(rng: jax.Array, cfg: AugmentConfig) -> dict:
  """One example's augmentation parameters (scalars, a (3,) colour scale, an occluder)."""
  k = jax.random.split(rng, 6)
  # The photometric draws come from a key of their own, so the paper's draws are the same with or
  # without them.
  p = jax.random.split(jax.random.fold_in(rng, 1), 9)
  occluder_size = jax.random.uniform(p[6], (2,), minval=0.1, maxval=0.4) * VOLUME_SHAPE[0]
  occluder_centre = jax.random.uniform(p[7], (2,), minval=0.0, maxval=VOLUME_SHAPE[0] - 1.0)
  return {
      "brightness": jax.random.uniform(p[0], (), minval=-cfg.brightness, maxval=cfg.brightness),
      "contrast": jax.random.uniform(p[1], (), minval=cfg.contrast_range[0], maxval=cfg.contrast_range[1]),
      "saturation": jax.random.uniform(p[2], (), minval=cfg.saturation_range[0],
                                       maxval=cfg.saturation_range[1]),
      "blur_sigma": jax.random.uniform(p[3], (), maxval=cfg.blur_sigma_px),
      "noise_std": jax.random.uniform(p[4], (), maxval=cfg.noise_std),
      "noise_key": jax.random.key_data(p[5]),
      "occluder": jnp.concatenate([occluder_centre - occluder_size / 2, occluder_centre + occluder_size / 2,
                                   jax.random.uniform(p[8], (3,))]),  # y0, x0, y1, x1, colour
      "occluded": jax.random.bernoulli(jax.random.fold_in(p[8], 1), float(cfg.occlusion_probability)),
      "angle": jnp.deg2rad(jax.random.uniform(k[0], (), minval=-cfg.rotation_deg,
                                              maxval=cfg.rotation_deg)),
      "shift": jax.random.uniform(k[1], (2,), minval=-cfg.translation_px, maxval=cfg.translation_px),
      "scale": jax.random.uniform(k[2], (), minval=cfg.scale_range[0], maxval=cfg.scale_range[1]),
      "flip": jax.random.bernoulli(k[3], float(cfg.flip_probability)),
      "colour": jax.random.uniform(k[4], (3,), minval=cfg.colour_range[0], maxval=cfg.colour_range[1]),
  }


def identity_params() -> dict:
  return {"angle": jnp.float32(0), "shift": jnp.zeros(2), "scale": jnp.float32(1),
          "flip": jnp.bool_(False), "colour": jnp.ones(3), "brightness": jnp.float32(0),
          "contrast": jnp.float32(1), "saturation": jnp.float32(1), "blur_sigma": jnp.float32(0),
          "noise_std": jnp.float32(0), "noise_key": jax.random.key_data(jax.random.key(0)),
          "occluder": jnp.zeros(7), "occluded": jnp.bool_(False)}


def voxel_matrix(params: dict) -> jax.Array:
  """(4, 4) homogeneous map of crop-volume voxel coordinates (x, y, k): original -> augmented."""
  c, s = jnp.cos(params["angle"]), jnp.sin(params["angle"])
  sign = jnp.where(params["flip"], -1.0, 1.0)
  scale = params["scale"]
  # x, y: scale * Rot(angle) * Flip_x about the crop centre, then shift; k: scale about the depth centre.
  lin = scale * jnp.array([[c * sign, -s, 0.0], [s * sign, c, 0.0], [0.0, 0.0, 1.0]])
  centre = jnp.array([CROP_CENTRE, CROP_CENTRE, DEPTH_CENTRE_VOXELS])
  offset = centre - lin @ centre + jnp.concatenate([params["shift"], jnp.zeros(1)])
  return jnp.eye(4).at[:3, :3].set(lin).at[:3, 3].set(offset)


def augment_landmarks(landmarks: jax.Array, params: dict) -> jax.Array:
  """(68, 3) crop-frame landmarks (x, y, z mesh units) -> augmented, identities flipped with the image."""
  m = voxel_matrix(params)
  vox = landmarks * jnp.array([1.0, 1.0, 1.0 / Z_SCALE])
  out = vox @ m[:3, :3].T + m[:3, 3]
  out = out * jnp.array([1.0, 1.0, Z_SCALE])
  return jnp.where(params["flip"], out[FLIP_PERMUTATION], out)


def _gaussian_blur(img: jax.Array, sigma: jax.Array) -> jax.Array:
  """(H, W, 3) blurred separably by a Gaussian of `sigma` pixels (edges repeated); sigma 0: unchanged."""
  taps = jnp.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=jnp.float32)
  w = jnp.where(sigma > 1e-3, jnp.exp(-0.5 * (taps / jnp.maximum(sigma, 1e-3)) ** 2), taps == 0)
  w = w / jnp.sum(w)
  r = _BLUR_RADIUS
  for axis in (0, 1):
    padded = jnp.pad(img, [(r, r) if a == axis else (0, 0) for a in range(3)], mode="edge")
    size = img.shape[axis]
    img = sum(w[i] * jax.lax.slice_in_dim(padded, i, i + size, axis=axis) for i in range(2 * r + 1))
  return img


def _skipped(cfg: AugmentConfig | None) -> frozenset[str]:
  """The steps ('warp', 'blur', 'noise', 'occluder') that `cfg`'s ranges leave as the identity for
  every draw (none without a cfg). Skipping them gives the same image: the identity warp samples each
  pixel at its centre, a blur of sigma 0 has one tap of weight 1, noise of std 0 adds zeros (within
  float32 rounding: XLA fuses the rest differently), and a photometric-only augmentation does not pay
  for them (docs/experiments.md has its step time)."""
  if cfg is None:
    return frozenset()
  steps = set()
  if (cfg.rotation_deg == 0 and cfg.translation_px == 0 and tuple(cfg.scale_range) == (1.0, 1.0)
      and cfg.flip_probability == 0):
    steps.add("warp")
  if cfg.blur_sigma_px == 0:
    steps.add("blur")
  if cfg.occlusion_probability == 0:
    steps.add("occluder")
    if cfg.noise_std == 0:
      steps.add("noise")  # the occluder's texture draws on the noise too
  return frozenset(steps)


def photometric(img: jax.Array, params: dict, cfg: AugmentConfig | None = None) -> jax.Array:
  """(H, W, 3) float32 in [0, 1] -> the same with saturation, contrast, brightness, blur, noise and
  the occluder of `params` (image only); with the `cfg` they were drawn from, the steps its ranges
  leave as the identity are skipped (`_skipped`)."""
  skipped = _skipped(cfg)
  grey = img @ _GREY
  img = grey[..., None] + params["saturation"] * (img - grey[..., None])
  img = jnp.mean(grey) + params["contrast"] * (img - jnp.mean(grey)) + params["brightness"]
  if "blur" not in skipped:
    img = _gaussian_blur(img, params["blur_sigma"])
  if "noise" in skipped:
    return img
  key = jax.random.wrap_key_data(params["noise_key"])
  noise = jax.random.normal(key, img.shape)
  img = img + params["noise_std"] * noise
  if "occluder" in skipped:
    return img
  h, w = img.shape[:2]
  y = jnp.arange(h, dtype=jnp.float32)[:, None]
  x = jnp.arange(w, dtype=jnp.float32)[None, :]
  o = params["occluder"]
  inside = (y >= o[0]) & (y <= o[2]) & (x >= o[1]) & (x <= o[3]) & params["occluded"]
  texture = o[4:7] * (1.0 + 0.15 * jnp.roll(noise, 7, axis=(0, 1)))
  return jnp.where(inside[..., None], texture, img)


def augment_image(image: jax.Array, params: dict, cfg: AugmentConfig | None = None) -> jax.Array:
  """(H, W, 3) uint8 crop -> float32 in [0, 1], warped (bilinear, zero outside), colour-scaled, then
  `photometric`; with the `cfg` the params were drawn from, its identity steps are skipped."""
  img = image.astype(jnp.float32) / 255.0
  if "warp" in _skipped(cfg):
    return jnp.clip(photometric(img * params["colour"], params, cfg), 0.0, 1.0)
  inv = jnp.linalg.inv(voxel_matrix(params))
  h, w = image.shape[:2]
  y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  src_x = inv[0, 0] * x + inv[0, 1] * y + inv[0, 3]
  src_y = inv[1, 0] * x + inv[1, 1] * y + inv[1, 3]
  warped = jnp.stack([
      jax.scipy.ndimage.map_coordinates(img[..., ch], [src_y, src_x], order=1, mode="constant",
                                        cval=0.0) for ch in range(3)], axis=-1)
  return jnp.clip(photometric(warped * params["colour"], params, cfg), 0.0, 1.0)


def decode_volume_jax(depth: jax.Array, back: jax.Array, step: jax.Array, affine: jax.Array,
                  shape: tuple[int, int, int] = VOLUME_SHAPE, rows: jax.Array | None = None,
                  cols: jax.Array | None = None) -> jax.Array:
  """JAX twin of `vrn_jax.geometry.voxelise.decode_volume`: bool (192, 192, 200) (y, x, z).

  The same rule (`voxelise.occupancy`) in the same float32 arithmetic, evaluated densely (cheap on an
  accelerator); the two agree except where a voxel centre sits within float32 rounding of the surface.
  `rows` (n,) / `cols` (m,) int: decode only those rows / columns of the volume, (n, m, 200).
  """
  h, w, d = shape
  a = affine.astype(jnp.float32)
  y = (jnp.arange(h) if rows is None else rows).astype(jnp.float32)[:, None, None]
  x = (jnp.arange(w) if cols is None else cols).astype(jnp.float32)[None, :, None]
  k = jnp.arange(d, dtype=jnp.float32)[None, None, :]
  u, v, kf = ((row[0] * x + row[2] * k) + (row[1] * y + row[3]) for row in a)
  levels = jnp.pad(depth.astype(jnp.float32), 1)
  return voxelise.occupancy(levels, back.astype(jnp.float32), step.astype(jnp.float32), u, v, kf,
                             xp=jnp)


def augmented_affine(affine: jax.Array, params: dict) -> jax.Array:
  """The stored (3, 4) crop-voxel -> frontal affine, composed with the inverse augmentation."""
  full = jnp.concatenate([affine.astype(jnp.float32), jnp.array([[0.0, 0.0, 0.0, 1.0]])])
  return (full @ jnp.linalg.inv(voxel_matrix(params)))[:3]


def augment_example(rng: jax.Array, example: dict, cfg: AugmentConfig | None, train: bool = True,
                    rows: jax.Array | None = None, cols: jax.Array | None = None):
  """One example (fields of `vrn_jax.data.pipeline.DEVICE_FIELDS`) -> (image float32 (192, 192, 3),
  target bool (192, 192, 200), landmarks (68, 3)). With cfg None or train False: no augmentation.
  rows (n,) / cols (m,): the target at those rows and columns only, (n, m, 200)."""
  if not (train and cfg is not None):
    # Nothing to augment: the crop as it is, the stored affine and landmarks. The identity warp and
    # photometric pass would give the same image within float32 rounding, for ~5% of the CPU training
    # step (resampling, noise drawn and scaled by zero, a blur of one tap).
    image = example["image"].astype(jnp.float32) / 255.0
    affine, landmarks = example["volume_affine"].astype(jnp.float32), example["landmarks"]
  else:
    params = sample_params(rng, cfg)
    image = augment_image(example["image"], params, cfg)
    affine = augmented_affine(example["volume_affine"], params)
    landmarks = augment_landmarks(example["landmarks"], params)
  target = decode_volume_jax(example["volume_depth"], example["volume_back"], example["volume_step"],
                             affine, rows=rows, cols=cols)
  return image, target, landmarks
