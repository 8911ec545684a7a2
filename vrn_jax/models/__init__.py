"""VRN networks (Flax linen), their losses and landmark heatmaps.

    model = get_model(variant="vrn", topology="standard", features=256)
    variables = model.init(rng, images)                       # {'params', 'batch_stats'}
    # cheaper at paper size on a CPU: initialisers only, no forward pass
    variables = model.lazy_init(rng, jax.ShapeDtypeStruct((1, 192, 192, 3), jnp.float32))
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    logits = model.apply(variables, images)                   # eval: running statistics

`get_model` takes a `ml_collections.ConfigDict` (or dict) with the fields of `default_model_config()`,
keyword overrides, or both.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from vrn_jax.models.heatmaps import SIGMA_PX, heatmap_peaks, render_heatmaps
from vrn_jax.models.hourglass import TOPOLOGIES, HourglassBlock, StandardLevel
from vrn_jax.models.layers import Residual, count_parameters, upsample_bilinear
from vrn_jax.models.losses import (heatmap_loss, relief_voxels, soft_iou_loss, upsampled_volume_loss,
                                   volume_iou, volume_loss, weighted_volume_loss)
from vrn_jax.models.release import ParamTarget, ReleaseLevel, release_param_paths
from vrn_jax.models.vrn import (BODY_STRIDES, HEAD_UPSAMPLES, OUTPUT_STRIDE, STEMS, VRN, LandmarkDetector,
                               VRNGuided, VRNMultitask)

VARIANTS = ("vrn", "vrn_multitask", "vrn_guided")

__all__ = [
    "VARIANTS", "TOPOLOGIES", "VRN", "VRNMultitask", "VRNGuided", "LandmarkDetector", "HourglassBlock",
    "StandardLevel", "ReleaseLevel", "Residual", "ParamTarget", "release_param_paths", "get_model",
    "default_model_config", "count_parameters", "upsample_bilinear", "render_heatmaps",
    "heatmap_peaks", "SIGMA_PX", "volume_loss", "weighted_volume_loss", "relief_voxels",
    "volume_iou", "soft_iou_loss", "heatmap_loss", "upsampled_volume_loss", "OUTPUT_STRIDE",
]


def default_model_config() -> ml_collections.ConfigDict:
  """Model fields at the paper's size (VRN, standard hourglass, float32)."""
  return ml_collections.ConfigDict(dict(
      variant="vrn",                 # 'vrn' | 'vrn_multitask' | 'vrn_guided'
      topology="standard",           # 'standard' (Newell, the paper) | 'release' (the released weights)
      stem="conv7x7",                # 'conv7x7' (the paper's and release's) | 'patchify' (cheap, CPU)
      body_stride=1,                 # VRN, VRN-Multitask: 1 (paper) hourglasses at the stem's 48x48; 2 at 24x24
      features=256,                  # residual-module width
      num_hourglasses=2,             # VRN stack; VRN-Guided's volume network
      depth=4,                       # hourglass recursion depth
      num_shared_hourglasses=1,      # VRN-Multitask: blocks before the fork (then one per task)
      num_detector_hourglasses=2,    # VRN-Guided: landmark detector stacks
      num_landmarks=68,
      volume_depth=200,
      # what the volume head upsamples x4 to the input resolution: 'logits' (the paper's and release's
      # head) | 'features' (a per-pixel layer at full resolution after the upsample: no 4-px terraces)
      # | 'features_bspline' (the same, the features upsampled with the cubic B-spline: no 4-px grid)
      head_upsample="logits",
      dtype="float32",               # compute dtype: 'float32' | 'bfloat16'; parameters stay float32
      # e.g. 'batch' for synchronised (cross-replica) BatchNorm statistics; None: per-replica
      bn_axis_name=config_dict.placeholder(str),
  ))


def _dtype(value: Any) -> Any:
  try:
    return jnp.dtype(value)
  except TypeError as e:
    raise ValueError(f"model dtype {value!r} is not a dtype; use 'float32' or 'bfloat16'") from e


def get_model(config: Mapping[str, Any] | ml_collections.ConfigDict | None = None,
              **overrides: Any) -> nn.Module:
  """Build a VRN variant from config fields (see `default_model_config`); unknown fields are an error.

  Args:
    config: a ConfigDict / dict with any subset of the fields, e.g. a training config's `config.model`.
    **overrides: fields that take precedence over `config`.
  Returns:
    An unbound `VRN`, `VRNMultitask` or `VRNGuided` with float32 parameters.
  """
  fields = default_model_config().to_dict()
  given = dict(config.to_dict() if isinstance(config, ml_collections.ConfigDict) else (config or {}))
  given.update(overrides)
  unknown = sorted(set(given) - set(fields))
  if unknown:
    raise ValueError(f"unknown model config fields {unknown}; known: {sorted(fields)}")
  fields.update(given)
  if fields["topology"] not in TOPOLOGIES:
    raise ValueError(f"model topology {fields['topology']!r}: expected one of {TOPOLOGIES}")
  if fields["stem"] not in STEMS:
    raise ValueError(f"model stem {fields['stem']!r}: expected one of {sorted(STEMS)}")
  if fields["body_stride"] not in BODY_STRIDES:
    raise ValueError(f"model body_stride {fields['body_stride']!r}: expected 1 (hourglasses at the stem's "
                     "resolution) or 2 (at half of it)")
  if fields["body_stride"] != 1 and fields["variant"] == "vrn_guided":
    raise ValueError(f"model body_stride {fields['body_stride']} is for the variants 'vrn' and "
                     f"'vrn_multitask' (got {fields['variant']!r}); use body_stride 1")
  if fields["head_upsample"] not in HEAD_UPSAMPLES:
    raise ValueError(f"model head_upsample {fields['head_upsample']!r}: expected one of {HEAD_UPSAMPLES}")
  if fields["features"] % 4:
    raise ValueError(f"model features must be divisible by 4 (the stem uses f/4 and f/2), "
                     f"got {fields['features']}")
  common = dict(features=fields["features"], depth=fields["depth"], topology=fields["topology"],
                stem=fields["stem"],
                volume_depth=fields["volume_depth"], head_upsample=fields["head_upsample"],
                dtype=_dtype(fields["dtype"]),
                param_dtype=jnp.float32, bn_axis_name=fields["bn_axis_name"])
  variant = fields["variant"]
  if variant == "vrn":
    return VRN(num_hourglasses=fields["num_hourglasses"], body_stride=fields["body_stride"], **common)
  if variant == "vrn_multitask":
    return VRNMultitask(num_shared_hourglasses=fields["num_shared_hourglasses"],
                        body_stride=fields["body_stride"],
                        num_landmarks=fields["num_landmarks"], **common)
  if variant == "vrn_guided":
    return VRNGuided(num_hourglasses=fields["num_hourglasses"],
                     num_detector_hourglasses=fields["num_detector_hourglasses"],
                     num_landmarks=fields["num_landmarks"], **common)
  raise ValueError(f"unknown model variant {variant!r}; expected one of {VARIANTS}")
