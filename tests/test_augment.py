"""On-device augmentation: targets decoded on the device after augmentation equal voxelising the equally
transformed mesh; the JAX decoder is the host decoder's twin."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import half_ellipsoid, image_rotation
from vrn_jax.data import augment
from vrn_jax.geometry.voxelise import (Z_SCALE, decode_volume, encode_volume, voxelise,
                                       voxelise_dense_reference)

CENTRE = np.array([96.0, 100.0, 50.0])


def _face(pose=(10, 35, -5)):
  v, f = half_ellipsoid((45.0, 55.0, 30.0), subdivisions=4, nose=14.0)
  r = image_rotation(*pose)
  return v @ r.T + CENTRE, f, r


def _decode(compact, affine):
  return np.asarray(jax.jit(augment.decode_volume_jax)(jnp.asarray(compact.depth),
                                                   jnp.float32(compact.back),
                                                   jnp.float32(compact.step), affine))


def test_jax_decoder_matches_host_decoder():
  """Same rule, same float32 arithmetic; XLA may fuse multiply-adds, so voxels on a numerical tie with
  the surface (within 1e-4 voxels) may differ."""
  verts, f, r = _face()
  compact = encode_volume(verts, f, r)
  ours = _decode(compact, augment.augmented_affine(jnp.asarray(compact.affine),
                                                   augment.identity_params()))
  host = decode_volume(compact)
  _, margin = voxelise_dense_reference(compact)
  differ = ours != host
  assert differ.sum() <= 1e-3 * host.sum() and np.all(np.abs(margin[differ]) < 1e-4)


def test_jax_decoder_on_sampled_rows_and_columns():
  """loss_stride's targets: decoding rows oy + s i and columns ox + s j only gives exactly those voxels
  of the whole decoded volume."""
  verts, f, r = _face()
  compact = encode_volume(verts, f, r)
  params = augment.sample_params(jax.random.key(3), augment.AugmentConfig())
  affine = augment.augmented_affine(jnp.asarray(compact.affine), params)
  whole = _decode(compact, affine)
  assert whole.sum() > 10_000
  decode = jax.jit(augment.decode_volume_jax, static_argnames="shape")
  for stride, (oy, ox) in ((2, (1, 0)), (4, (3, 2)), (8, (5, 7))):
    rows, cols = jnp.arange(oy, 192, stride), jnp.arange(ox, 192, stride)
    part = decode(jnp.asarray(compact.depth), jnp.float32(compact.back), jnp.float32(compact.step),
                  affine, rows=rows, cols=cols)
    np.testing.assert_array_equal(np.asarray(part), whole[oy::stride, ox::stride])


def _iou(a, b):
  return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


@pytest.mark.parametrize("seed", range(4))
def test_augmented_target_equals_voxelising_the_augmented_mesh(seed):
  verts, f, r = _face()
  compact = encode_volume(verts, f, r)
  cfg = augment.AugmentConfig(flip_probability=0.5)
  params = augment.sample_params(jax.random.key(seed), cfg)
  if seed == 0:
    params["flip"] = jnp.bool_(True)
  target = _decode(compact, augment.augmented_affine(jnp.asarray(compact.affine), params))
  # The same transform applied to the mesh, then the geometry core's voxelisation.
  m = np.asarray(augment.voxel_matrix(params), np.float64)
  vox = verts / np.array([1, 1, Z_SCALE])
  moved = (vox @ m[:3, :3].T + m[:3, 3]) * np.array([1, 1, Z_SCALE])
  lin = m[:3, :3] / np.cbrt(abs(np.linalg.det(m[:3, :3])))  # the rotation (and flip) part
  expected = voxelise(moved, f, lin @ r)
  iou = _iou(np.asarray(target), expected)
  assert iou >= 0.99, (seed, iou, params)


def test_landmarks_and_image_follow_the_same_transform():
  rng = np.random.default_rng(0)
  landmarks = np.concatenate([rng.uniform(60, 130, (68, 2)), rng.uniform(20, 80, (68, 1))], 1)
  image = np.zeros((192, 192, 3), np.uint8)
  x, y = landmarks[30, :2].round().astype(int)
  image[y - 1 : y + 2, x - 1 : x + 2] = 255
  cfg = augment.AugmentConfig(colour_range=(1.0, 1.0))
  for seed in range(3):
    params = augment.sample_params(jax.random.key(seed), cfg)
    params["flip"] = jnp.bool_(seed == 1)
    out = np.asarray(augment.augment_image(jnp.asarray(image), params)).sum(-1)
    moved = np.asarray(augment.augment_landmarks(jnp.asarray(landmarks, jnp.float32), params))
    # After a flip, identity 30 (nose tip) stays 30; the bright dot is where landmark 30 went.
    yy, xx = np.mgrid[:192, :192]
    centroid = np.array([(out * xx).sum(), (out * yy).sum()]) / out.sum()
    np.testing.assert_allclose(centroid, [x, y] @ np.eye(2) * 0 + _apply(params, [x, y]), atol=0.3)
    np.testing.assert_allclose(moved[30, :2], _apply(params, landmarks[30, :2]), atol=1e-3)
    if seed == 1:  # left eye corner 36 becomes right eye corner 45
      np.testing.assert_allclose(moved[45, :2], _apply(params, landmarks[36, :2]), atol=1e-3)


def _apply(params, xy):
  m = np.asarray(augment.voxel_matrix(params), np.float64)
  return m[:2, :2] @ np.asarray(xy, np.float64) + m[:2, 3]


def test_flip_permutation_is_an_involution():
  p = augment.FLIP_PERMUTATION
  assert sorted(p) == list(range(68))
  np.testing.assert_array_equal(p[p], np.arange(68))
  assert p[30] == 30 and p[36] == 45 and p[48] == 54 and p[0] == 16


def test_photometric_augmentation_changes_the_image_only():
  """Blur against scipy's Gaussian filter (float64, same taps), the occluder where it was drawn and
  nowhere else, the paper's draws the same with or without the photometric ones, and the target
  untouched."""
  from scipy import ndimage

  rng = np.random.default_rng(0)
  img = rng.uniform(size=(192, 192, 3)).astype(np.float32)
  params = augment.identity_params()
  for sigma in (0.7, 1.9):
    blurred = augment._gaussian_blur(jnp.asarray(img), jnp.float32(sigma))
    want = np.stack([ndimage.gaussian_filter(img[..., c].astype(np.float64), sigma, mode="nearest",
                                             truncate=4 / sigma) for c in range(3)], -1)
    np.testing.assert_allclose(np.asarray(blurred), want, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(augment._gaussian_blur(jnp.asarray(img), jnp.float32(0))), img)
  occluded = dict(params, occluded=jnp.bool_(True),
                  occluder=jnp.array([10.0, 20.0, 50.0, 100.0, 0.2, 0.4, 0.6]))
  out = np.asarray(augment.photometric(jnp.asarray(img), occluded))
  inside = np.zeros((192, 192), bool)
  inside[10:51, 20:101] = True
  np.testing.assert_allclose(out[~inside], img[~inside], atol=1e-6)  # float32 rounding only
  assert np.all(np.abs(out[inside].mean(axis=0) - [0.2, 0.4, 0.6]) < 0.02)
  np.testing.assert_allclose(np.asarray(augment.photometric(jnp.asarray(img), params)), img, atol=1e-6)

  paper = augment.AugmentConfig()
  photo = augment.AugmentConfig(brightness=0.1, contrast_range=(0.7, 1.3), saturation_range=(0.5, 1.5),
                                blur_sigma_px=1.5, noise_std=0.05, occlusion_probability=1.0)
  a, b = (augment.sample_params(jax.random.key(5), c) for c in (paper, photo))
  for name in ("angle", "shift", "scale", "flip", "colour"):
    np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))
  assert float(b["blur_sigma"]) > 0 and float(b["noise_std"]) > 0 and bool(b["occluded"])

  verts, f, r = _face()
  compact = encode_volume(verts, f, r)
  example = {"image": jnp.asarray((img * 255).astype(np.uint8)), "volume_depth": jnp.asarray(compact.depth),
             "volume_back": jnp.float32(compact.back), "volume_step": jnp.float32(compact.step),
             "volume_affine": jnp.asarray(compact.affine), "landmarks": jnp.zeros((68, 3))}
  only_photo = augment.AugmentConfig(rotation_deg=0, translation_px=0, scale_range=(1, 1),
                                     flip_probability=0, colour_range=(1, 1), blur_sigma_px=1.5,
                                     noise_std=0.05, occlusion_probability=1.0)
  image, target, _ = augment.augment_example(jax.random.key(1), example, only_photo)
  _, plain_target, _ = augment.augment_example(None, example, None, train=False)
  np.testing.assert_array_equal(np.asarray(target), np.asarray(plain_target))
  assert np.abs(np.asarray(image) - img).mean() > 0.01


@pytest.mark.parametrize("cfg", [
    augment.AugmentConfig(rotation_deg=0, translation_px=0, scale_range=(1, 1), flip_probability=0,
                          colour_range=(0.8, 1.2), brightness=0.1, contrast_range=(0.7, 1.3),
                          saturation_range=(0.5, 1.5)),  # photometric only: no warp, blur, noise
    augment.AugmentConfig(rotation_deg=0, translation_px=0, scale_range=(1, 1), flip_probability=0,
                          noise_std=0.05),  # noise without the occluder
    augment.AugmentConfig(blur_sigma_px=1.5, occlusion_probability=0.5)])  # the occluder's noise
def test_skipping_identity_steps_gives_the_same_image(cfg):
  """The steps a config's ranges leave as the identity are skipped; the image is what the whole
  warp and photometric pass make of the same draws."""
  image = jnp.asarray(np.random.default_rng(4).integers(0, 256, (192, 192, 3), dtype=np.uint8))
  for seed in range(4):
    params = augment.sample_params(jax.random.key(seed), cfg)
    np.testing.assert_allclose(np.asarray(jax.jit(augment.augment_image, static_argnums=2)(
        image, params, cfg)), np.asarray(jax.jit(augment.augment_image)(image, params)), atol=1e-6)


def test_no_augmentation_is_the_identity_transform():
  """With augmentation off (or at evaluation) the example is used as stored: the same image (within
  float32 rounding), target and landmarks as the warp and photometric pass at identity parameters."""
  rng = np.random.default_rng(3)
  verts, f, r = _face()
  compact = encode_volume(verts, f, r)
  example = {"image": jnp.asarray(rng.integers(0, 256, (192, 192, 3), dtype=np.uint8)),
             "volume_depth": jnp.asarray(compact.depth), "volume_back": jnp.float32(compact.back),
             "volume_step": jnp.float32(compact.step), "volume_affine": jnp.asarray(compact.affine),
             "landmarks": jnp.asarray(rng.uniform(0, 192, (68, 3)).astype(np.float32))}
  params = augment.identity_params()
  want_image = augment.augment_image(example["image"], params)
  want_target = augment.decode_volume_jax(
      example["volume_depth"], example["volume_back"], example["volume_step"],
      augment.augmented_affine(example["volume_affine"], params))
  want_landmarks = augment.augment_landmarks(example["landmarks"], params)
  for train, cfg in ((False, augment.AugmentConfig()), (True, None)):
    image, target, landmarks = augment.augment_example(jax.random.key(0), example, cfg, train=train)
    np.testing.assert_allclose(np.asarray(image), np.asarray(want_image), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(target), np.asarray(want_target))
    np.testing.assert_allclose(np.asarray(landmarks), np.asarray(want_landmarks), atol=1e-4)
