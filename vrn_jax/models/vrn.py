"""The three VRN networks of the paper: VRN, VRN-Multitask and VRN-Guided.

Every network takes (B, H, W, C) float images (192x192 in the paper) and returns float32 outputs at the
input resolution whatever the compute dtype: volume logits (B, H, W, 200) with the 200 channels being the
z axis (our volume layout (y, x, z)), and 68 landmark heatmaps (B, H, W, 68).

Resolution choices. The stem quarters the resolution (192 -> 48) and the hourglasses work at 48x48 (the
paper's stem, `Stem`; or `PatchifyStem`, cheaper on a CPU, the small default config's); the
head regresses at 48x48 and upsamples x4 bilinearly with align_corners=True (the release). (The small
CPU config runs VRN's hourglasses at 24x24, `VRN.body_stride`; the head stays at 48x48.) Or, with
`head_upsample='features'` (`FeatureUpsampledHead`), the head upsamples its features instead and
regresses every pixel at full resolution: bilinear interpolation of the logits of two neighbours whose
surfaces lie at different depths keeps one neighbour's surface up to half way and then jumps to the
other's (the logits along z are near steps), so a 48x48 head draws 4-pixel terraces; a per-pixel layer
after the interpolation can move the surface smoothly between them. Linear interpolation of the
features still bends only at the 48x48 samples, so the per-pixel layer draws a faint 4-pixel grid on the
surface; `head_upsample='features_bspline'` interpolates them with the cubic B-spline
(`layers.bspline_matrix`), smooth everywhere, at the same training cost. Heatmaps take
the same route: regressed at 48x48, upsampled to 192x192. We chose full resolution for heatmaps because
the paper's guidance heatmaps are sigma = 1 px Gaussians *at 192* stacked with the RGB input: at 48x48
they would be a quarter-pixel wide, i.e. not representable, and the detector's output can be fed to the
volume network as it is.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vrn_jax.models.heatmaps import heatmap_peaks, render_heatmaps
from vrn_jax.models.hourglass import HourglassBlock
from vrn_jax.models.layers import (Dtype, ModuleDef, Residual, conv_bn_relu, conv_factory, max_pool2,
                                   norm_factory, sample_bilinear, upsample_bilinear, upsample_nearest2)

VOLUME_DEPTH = 200
NUM_LANDMARKS = 68
OUTPUT_STRIDE = 4  # stem: conv7x7/2 and a maxpool (or 4x4 patches); the head's x4 bilinear upsample
BODY_STRIDES = (1, 2)  # VRN.body_stride: hourglasses at the stem's resolution, or at half of it
# What the volume head upsamples x4, and how (see the module doc): its logits linearly, or its features
# linearly or with the cubic B-spline.
_FEATURE_INTERPOLATION = {"features": "linear", "features_bspline": "bspline"}
HEAD_UPSAMPLES = ("logits", *_FEATURE_INTERPOLATION)


class Stem(nn.Module):
  """conv7x7/2 (f/4) BN ReLU, Res(f/2), maxpool, Res(f/2), Res(f): (B, H, W, C) -> (B, H/4, W/4, f).

  At f = 256 this is the release's 3 -> 64 -> 128 -> 128 -> 256 stem.
  """
  features: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Explicit padding 3, as PyTorch's: flax's 'SAME' would pad (2, 3) at stride 2 and shift the grid.
    x = self.conv(self.features // 4, (7, 7), strides=(2, 2), padding=3, name="conv")(x)
    x = nn.relu(self.norm(name="bn")(x))
    x = Residual(self.features // 2, self.conv, self.norm, name="res_0")(x)
    x = max_pool2(x)
    x = Residual(self.features // 2, self.conv, self.norm, name="res_1")(x)
    return Residual(self.features, self.conv, self.norm, name="res_2")(x)


class PatchifyStem(nn.Module):
  """A cheaper stem for small CPU models: 4x4 space-to-depth, conv1x1 (48 -> f/2) BN ReLU, Res(f/2),
  Res(f): (B, H, W, 3) -> (B, H/4, W/4, f), the same output grid as `Stem`.

  Not the paper's: `Stem` runs a 7x7 convolution and a residual module at half resolution (96x96) on
  16-32 channels, which a CPU runs far below its matmul rate. Here every layer is at the hourglass's
  48x48 and the first is one GEMM over the 4x4 patches (a stride-4 4x4 convolution).
  """
  features: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    s = OUTPUT_STRIDE
    x = x.reshape(b, h // s, s, w // s, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // s, w // s,
                                                                                 s * s * c)
    x = self.conv(self.features // 2, (1, 1), padding=0, name="conv")(x)
    x = nn.relu(self.norm(name="bn")(x))
    x = Residual(self.features // 2, self.conv, self.norm, name="res_0")(x)
    return Residual(self.features, self.conv, self.norm, name="res_1")(x)


STEMS = {"conv7x7": Stem, "patchify": PatchifyStem}


def make_stem(kind: str, features: int, conv: ModuleDef, norm: ModuleDef) -> nn.Module:
  if kind not in STEMS:
    raise ValueError(f"unknown stem {kind!r}; expected one of {sorted(STEMS)}")
  return STEMS[kind](features, conv, norm, name="stem")


class UpsampledHead(nn.Module):
  """conv1x1-BN-ReLU, conv1x1 -> outputs, cast to float32, bilinear x4 (align_corners=True).

  (B, h, w, features) -> (B, 4h, 4w, num_outputs) float32; with upsample=False (B, h, w, num_outputs),
  the outputs before the x4 (what `models.upsampled_volume_loss` takes).
  """
  num_outputs: int
  features: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array, upsample: bool = True) -> jax.Array:
    x = conv_bn_relu(x, self.features, self.conv, self.norm, name="hidden")
    x = self.conv(self.num_outputs, (1, 1), padding=0, name="out")(x)
    # Upsample in float32: it is cheap, and logits feed a loss over 7.4 M voxels.
    x = x.astype(jnp.float32)
    return upsample_bilinear(x, OUTPUT_STRIDE) if upsample else x


class FeatureUpsampledHead(nn.Module):
  """conv1x1-BN-ReLU at the body's resolution, x4 of those features (align_corners=True; `interpolation`
  'linear' or 'bspline'), then conv1x1-BN-ReLU and conv1x1 -> outputs per pixel at the input resolution.

  (B, h, w, features) -> (B, 4h, 4w, num_outputs) float32; with `at` = (rows (B, R), cols (B, S)), the
  outputs at those rows and columns of the full-resolution grid only, (B, R, S, num_outputs): what
  training takes where its loss is sampled (the same values as the full output there).
  """
  num_outputs: int
  features: int
  conv: ModuleDef
  norm: ModuleDef
  interpolation: str = "linear"

  @nn.compact
  def __call__(self, x: jax.Array, at: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    x = conv_bn_relu(x, self.features, self.conv, self.norm, name="hidden")
    if at is None:
      x = upsample_bilinear(x, OUTPUT_STRIDE, self.interpolation)
    else:
      x = sample_bilinear(x, *at, OUTPUT_STRIDE, self.interpolation)
    x = conv_bn_relu(x, self.features, self.conv, self.norm, name="pixel")
    return self.conv(self.num_outputs, (1, 1), padding=0, name="out")(x).astype(jnp.float32)


def volume_head(kind: str, x: jax.Array, depth: int, features: int, conv: ModuleDef, norm: ModuleDef,
                name: str, upsample: bool = True,
                at: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
  """The volume head `kind` ('logits': `UpsampledHead`; 'features', 'features_bspline':
  `FeatureUpsampledHead`) on x.

  upsample=False ('logits' only): the logits before the x4; at: rows and columns of the full
  resolution (the 'features' heads only).
  """
  if kind == "logits":
    if at is not None:
      raise ValueError("volume_at is for head_upsample='features' or 'features_bspline'; the 'logits' "
                       "head's loss takes its logits before the upsample (upsample_volume=False)")
    return UpsampledHead(depth, features, conv, norm, name=name)(x, upsample)
  if kind in _FEATURE_INTERPOLATION:
    if not upsample:
      raise ValueError("upsample_volume=False is for head_upsample='logits'; the 'features' heads "
                       "evaluate chosen pixels through volume_at")
    return FeatureUpsampledHead(depth, features, conv, norm, _FEATURE_INTERPOLATION[kind],
                                name=name)(x, at)
  raise ValueError(f"head_upsample {kind!r}: expected one of {HEAD_UPSAMPLES}")


def _check_images(images: jax.Array) -> None:
  if images.ndim != 4 or images.shape[1] % OUTPUT_STRIDE or images.shape[2] % OUTPUT_STRIDE:
    raise ValueError(f"expected (B, H, W, C) images with H and W divisible by {OUTPUT_STRIDE} "
                     f"(192x192 in the paper), got shape {images.shape}")


class VRN(nn.Module):
  """VRN: a stem, `num_hourglasses` blocks `x + HourglassBlock(x)` (no intermediate supervision), a head.

  At the paper size (features 256, two hourglasses of depth 4) with topology='release' this is the
  released vrn-unguided network, 19,184,968 parameters; its weights map in with `release_param_paths()`.

  Attributes:
    features: residual-module width (256 in the paper).
    num_hourglasses: stacked hourglass blocks (2 in the paper).
    depth: hourglass recursion depth (4).
    topology: 'standard' (Newell, the paper's description) or 'release' (the released weights').
    stem: 'conv7x7' (the paper's) or 'patchify' (`PatchifyStem`).
    body_stride: 1 (the paper's) runs the hourglasses on the stem's 48x48 output; 2 (cheap, CPU) runs
      them at 24x24 (maxpool), then adds their nearest-upsampled output to the stem's and merges the sum
      with one residual module at 48x48 before the head. The hourglass depth must then be <= 3.
    volume_depth: output channels = z samples (200).
    head_upsample: 'logits' (the paper's and release's head), 'features' or 'features_bspline'
      (`FeatureUpsampledHead`).
    dtype: compute dtype (e.g. jnp.bfloat16); param_dtype: parameter dtype (float32).
    bn_axis_name: axis name for cross-replica BatchNorm statistics, or None for per-replica ones.
  """
  features: int = 256
  num_hourglasses: int = 2
  depth: int = 4
  topology: str = "standard"
  stem: str = "conv7x7"
  body_stride: int = 1
  volume_depth: int = VOLUME_DEPTH
  head_upsample: str = "logits"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False, upsample_volume: bool = True,
               volume_at: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """(B, H, W, C) float images -> (B, H, W, volume_depth) float32 volume logits (y, x, z).

    upsample_volume=False (head_upsample 'logits') returns the logits before the head's x4 upsample,
    (B, H/4, W/4, volume_depth), for `models.upsampled_volume_loss` (training never materialises the
    full-size volume). volume_at=(rows (B, R), cols (B, S)) (head_upsample 'features') returns the
    logits at those rows and columns only, (B, R, S, volume_depth).
    """
    _check_images(images)
    if self.body_stride not in BODY_STRIDES:
      raise ValueError(f"VRN body_stride {self.body_stride!r}: expected one of {BODY_STRIDES}")
    conv = conv_factory(self.dtype, self.param_dtype)
    norm = norm_factory(train, self.dtype, self.param_dtype, self.bn_axis_name)
    stem = make_stem(self.stem, self.features, conv, norm)(images.astype(self.dtype))
    x = stem if self.body_stride == 1 else max_pool2(stem)
    for i in range(self.num_hourglasses):
      x = x + HourglassBlock(self.topology, self.depth, self.features, conv, norm, name=f"hourglass_{i}")(x)
    if self.body_stride == 2:
      x = Residual(self.features, conv, norm, name="merge")(stem + upsample_nearest2(x))
    return volume_head(self.head_upsample, x, self.volume_depth, self.features, conv, norm, "head",
                       upsample_volume, volume_at)


class VRNMultitask(nn.Module):
  """VRN-Multitask: shared hourglass(es), then a fork of one hourglass per task (three in the paper).

  Attributes: as `VRN`, plus
    num_shared_hourglasses: hourglass blocks before the fork (1 in the paper).
    num_landmarks: heatmap channels (68 iBUG landmarks).
    body_stride: as `VRN`'s; with 2, each task's hourglass output rejoins the stem's features through
      its own merge module at 48x48 (`volume_merge`, `landmark_merge`).
  """
  features: int = 256
  num_shared_hourglasses: int = 1
  depth: int = 4
  topology: str = "standard"
  stem: str = "conv7x7"
  body_stride: int = 1
  volume_depth: int = VOLUME_DEPTH
  head_upsample: str = "logits"
  num_landmarks: int = NUM_LANDMARKS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False, upsample_volume: bool = True,
               volume_at: tuple[jax.Array, jax.Array] | None = None) -> dict[str, jax.Array]:
    """(B, H, W, C) -> {'volume': (B, H, W, 200) logits, 'heatmaps': (B, H, W, 68)}, both float32.

    upsample_volume=False / volume_at: the volume logits before the x4 upsample / at chosen pixels, as
    in `VRN`.
    """
    _check_images(images)
    conv = conv_factory(self.dtype, self.param_dtype)
    norm = norm_factory(train, self.dtype, self.param_dtype, self.bn_axis_name)
    block = lambda name: HourglassBlock(self.topology, self.depth, self.features, conv, norm, name=name)
    stem = make_stem(self.stem, self.features, conv, norm)(images.astype(self.dtype))
    x = stem if self.body_stride == 1 else max_pool2(stem)
    for i in range(self.num_shared_hourglasses):
      x = x + block(f"hourglass_{i}")(x)
    v = x + block("volume_hourglass")(x)
    h = x + block("landmark_hourglass")(x)
    if self.body_stride == 2:
      v = Residual(self.features, conv, norm, name="volume_merge")(stem + upsample_nearest2(v))
      h = Residual(self.features, conv, norm, name="landmark_merge")(stem + upsample_nearest2(h))
    return {"volume": volume_head(self.head_upsample, v, self.volume_depth, self.features, conv, norm,
                                  "volume_head", upsample_volume, volume_at),
            "heatmaps": UpsampledHead(self.num_landmarks, self.features, conv, norm,
                                      name="landmark_head")(h)}


class LandmarkDetector(nn.Module):
  """Newell et al.'s stacked-hourglass landmark detector, with intermediate supervision.

  After each hourglass block a conv1x1 regresses the heatmaps; except after the last, both the block's
  features and the heatmaps are mapped back by conv1x1 and added to the block's input (Newell et al.).
  Always the standard hourglass: the release quirk concerns only the volume network.

  Attributes:
    features, depth, dtype, param_dtype, bn_axis_name: as `VRN`.
    num_hourglasses: stacks (2), each supervised.
    num_landmarks: heatmap channels (68).
  """
  features: int = 256
  num_hourglasses: int = 2
  depth: int = 4
  stem: str = "conv7x7"
  num_landmarks: int = NUM_LANDMARKS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> list[jax.Array]:
    """(B, H, W, C) -> [(B, H, W, num_landmarks) float32 heatmaps] per stack, last = final prediction."""
    _check_images(images)
    conv = conv_factory(self.dtype, self.param_dtype)
    norm = norm_factory(train, self.dtype, self.param_dtype, self.bn_axis_name)
    x = make_stem(self.stem, self.features, conv, norm)(images.astype(self.dtype))
    outputs = []
    for i in range(self.num_hourglasses):
      h = HourglassBlock("standard", self.depth, self.features, conv, norm, name=f"hourglass_{i}")(x)
      heatmaps = conv(self.num_landmarks, (1, 1), padding=0, name=f"heatmap_{i}")(h)
      outputs.append(upsample_bilinear(heatmaps.astype(jnp.float32), OUTPUT_STRIDE))
      if i < self.num_hourglasses - 1:
        x = (x + conv(self.features, (1, 1), padding=0, name=f"merge_features_{i}")(h)
             + conv(self.features, (1, 1), padding=0, name=f"merge_heatmaps_{i}")(heatmaps))
    return outputs


class VRNGuided(nn.Module):
  """VRN-Guided: a landmark detector, and a VRN on RGB + 68 heatmaps (3 + 68 channels).

  Training feeds ground-truth heatmaps (the paper); at test time the peaks of the detector's last stack,
  rendered as those heatmaps are. They enter the volume network through stop_gradient: the detector
  learns from its own heatmap loss only, as it would when trained separately.

  Attributes: as `VRN` (for the volume network), plus
    num_detector_hourglasses: detector stacks (2).
    num_landmarks: heatmap channels (68).
  """
  features: int = 256
  num_hourglasses: int = 2
  depth: int = 4
  topology: str = "standard"
  stem: str = "conv7x7"
  num_detector_hourglasses: int = 2
  volume_depth: int = VOLUME_DEPTH
  head_upsample: str = "logits"
  num_landmarks: int = NUM_LANDMARKS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, images: jax.Array, heatmaps: jax.Array | None = None,
               train: bool = False, upsample_volume: bool = True,
               volume_at: tuple[jax.Array, jax.Array] | None = None) -> dict[str, Any]:
    """Volume and landmarks from images.

    Args:
      images: (B, H, W, 3) float images.
      heatmaps: (B, H, W, num_landmarks) ground-truth heatmaps (training), or None to use the detector's.
      train: batch statistics (and their update) instead of running averages.
      upsample_volume, volume_at: the volume logits before the x4 upsample / at chosen pixels, as in
        `VRN`.
    Returns:
      {'volume': (B, H, W, 200) float32 logits,
       'heatmaps': [(B, H, W, 68) float32] one per detector stack}.
    """
    common = dict(features=self.features, depth=self.depth, stem=self.stem, dtype=self.dtype,
                  param_dtype=self.param_dtype, bn_axis_name=self.bn_axis_name)
    detected = LandmarkDetector(num_hourglasses=self.num_detector_hourglasses,
                                num_landmarks=self.num_landmarks, name="detector", **common)(images, train)
    if heatmaps is None:
      # The detector's landmarks, drawn as the guidance the volume net was trained on (the paper's
      # 1 px Gaussians): its own heatmaps are wider and lower (`heatmaps.py`).
      heatmaps = render_heatmaps(heatmap_peaks(jax.lax.stop_gradient(detected[-1])),
                                 resolution=images.shape[1], source_size=images.shape[1])
    elif heatmaps.shape != detected[-1].shape:
      raise ValueError(f"guidance heatmaps must be {detected[-1].shape} (B, H, W, landmarks) like the images, "
                       f"got {heatmaps.shape}; render them with vrn_jax.models.heatmaps.render_heatmaps")
    guided = jnp.concatenate([images.astype(jnp.float32), heatmaps.astype(jnp.float32)], axis=-1)
    volume = VRN(num_hourglasses=self.num_hourglasses, topology=self.topology,
                 volume_depth=self.volume_depth, head_upsample=self.head_upsample, name="volume_net",
                 **common)(guided, train, upsample_volume, volume_at)
    return {"volume": volume, "heatmaps": detected}
