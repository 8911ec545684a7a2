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
  rotation_deg: float = 45.0
  translation_px: float = 15.0
  scale_range: tuple[float, float] = (0.85, 1.15)
  flip_probability: float = 0.2
  colour_range: tuple[float, float] = (0.6, 1.4)


def sample_params(rng: jax.Array, cfg: AugmentConfig) -> dict:
  """One example's augmentation parameters (scalars and a (3,) colour scale)."""
  k = jax.random.split(rng, 6)
  return {
      "angle": jnp.deg2rad(jax.random.uniform(k[0], (), minval=-cfg.rotation_deg,
                                              maxval=cfg.rotation_deg)),
      "shift": jax.random.uniform(k[1], (2,), minval=-cfg.translation_px, maxval=cfg.translation_px),
      "scale": jax.random.uniform(k[2], (), minval=cfg.scale_range[0], maxval=cfg.scale_range[1]),
      "flip": jax.random.bernoulli(k[3], cfg.flip_probability),
      "colour": jax.random.uniform(k[4], (3,), minval=cfg.colour_range[0], maxval=cfg.colour_range[1]),
  }


def identity_params() -> dict:
  return {"angle": jnp.float32(0), "shift": jnp.zeros(2), "scale": jnp.float32(1),
          "flip": jnp.bool_(False), "colour": jnp.ones(3)}


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


def augment_image(image: jax.Array, params: dict) -> jax.Array:
  """(H, W, 3) uint8 crop -> float32 in [0, 1], warped (bilinear, zero outside) and colour-scaled."""
  inv = jnp.linalg.inv(voxel_matrix(params))
  h, w = image.shape[:2]
  y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  src_x = inv[0, 0] * x + inv[0, 1] * y + inv[0, 3]
  src_y = inv[1, 0] * x + inv[1, 1] * y + inv[1, 3]
  img = image.astype(jnp.float32) / 255.0
  warped = jnp.stack([
      jax.scipy.ndimage.map_coordinates(img[..., ch], [src_y, src_x], order=1, mode="constant",
                                        cval=0.0) for ch in range(3)], axis=-1)
  return jnp.clip(warped * params["colour"], 0.0, 1.0)


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
  params = sample_params(rng, cfg) if (train and cfg is not None) else identity_params()
  image = augment_image(example["image"], params)
  affine = augmented_affine(example["volume_affine"], params)
  target = decode_volume_jax(example["volume_depth"], example["volume_back"], example["volume_step"],
                         affine, rows=rows, cols=cols)
  return image, target, augment_landmarks(example["landmarks"], params)
