"""PyTorch builds of our VRN networks, and the converter from PyTorch state dicts to Flax variables.

Imports torch: only the released-weights importer (`vrn_jax/interop/release_import.py`), tests and benchmarks
use this module; nothing in training or evaluation does.

Two networks, both computing exactly what `vrn_jax.models.VRN` computes (eval mode: identical up to float
rounding; see tests/test_import_release.py for the measured differences):

- `ReleaseVRN`: the released vrn-unguided topology as the public PyTorch port lays it out, Torch7's
  nn.Sequential / ConcatTable / CAddTable nesting kept, so its `state_dict()` has exactly the keys, order
  and shapes of `shared/reference/vrn_unguided_torch_state_dict.tsv` (at the default size).
- `VRN`: our standard (Newell) topology at any width/depth/stack count; its modules carry the names of the
  Flax modules, so a state-dict key is the Flax path joined by dots (`hourglass_0.level.inner.upper.conv1
  .weight` <-> params/hourglass_0/level/inner/upper/conv1/kernel). This is the twin the side-by-side
  training benchmark runs (`TrainStep`).

Layouts. PyTorch is NCHW: images (B, 3, H, W) RGB in [0, 1] (no mean subtraction, as the release and our
`augment_image`); volume logits (B, 200, H, W), i.e. (B, z, y, x). Ours are (B, H, W, 3) and
(B, H, W, 200) = (B, y, x, z): `to_torch_images` / `to_our_volume` convert.

Matching conventions (the reason the outputs agree): convolutions with biases and explicit symmetric
padding (7x7/2 pad 3, 3x3 pad 1), BatchNorm eps 1e-5 and running-average momentum 0.1 (flax's 0.9 is the
kept fraction), 2x2/2 max pooling, nearest x2 upsampling in the hourglass, bilinear x4 with
align_corners=True in the head (Torch7's SpatialUpSamplingBilinear). One training-mode difference remains:
PyTorch updates running_var with the unbiased batch variance, flax with the biased one (a factor
n / (n - 1), n = B*H*W >= 2304 at 48x48: below 0.05%); the normalisation itself uses the biased variance
in both.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vrn_jax.errors import InputError
from vrn_jax.models import default_model_config, get_model
from vrn_jax.models.layers import BN_EPSILON, BN_MOMENTUM
from vrn_jax.models.release import (LOWER_BLOCKS, LOWER_BLOCKS_INNERMOST, UPPER_BLOCKS, ParamTarget,
                                    release_param_paths)
# The per-leaf rules (OIHW -> HWIO kernels, BN weight -> scale, running stats -> batch_stats): one home.
from vrn_jax.models.release import bn_targets as _bn_targets
from vrn_jax.models.release import conv_targets as _conv_targets

TORCH_BN_MOMENTUM = 1.0 - BN_MOMENTUM  # PyTorch names the new batch's weight, flax the kept fraction
OUTPUT_STRIDE = 4


def _bn(channels: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=BN_EPSILON, momentum=TORCH_BN_MOMENTUM)


def _upsample_head(x: torch.Tensor) -> torch.Tensor:
  return F.interpolate(x, scale_factor=OUTPUT_STRIDE, mode="bilinear", align_corners=True)


# ------------------------------------------------------------------------- the release topology (a)


class ConcatTable(nn.Module):
  """Torch7's nn.ConcatTable: every child on the same input; returns the list of their outputs."""

  def __init__(self, *branches: nn.Module):
    super().__init__()
    for i, branch in enumerate(branches):
      self.add_module(str(i), branch)

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    return [branch(x) for branch in self.children()]


class CAddTable(nn.Module):
  """Torch7's nn.CAddTable: the sum of a list of tensors."""

  def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
    return functools.reduce(torch.add, xs)


class Upsample(nn.Module):
  """Torch7's SpatialUpSamplingNearest(2) / SpatialUpSamplingBilinear(4) (align_corners=True)."""

  def __init__(self, factor: int, mode: str):
    super().__init__()
    self.factor, self.mode = factor, mode

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.mode == "nearest":
      return F.interpolate(x, scale_factor=self.factor, mode="nearest")
    return F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=True)


def _release_residual(in_features: int, features: int) -> nn.Sequential:
  """R = Sequential(ConcatTable(main R.0.0, skip R.0.1), CAddTable R.1); see release.py."""
  half = features // 2
  main = nn.Sequential(_bn(in_features), nn.ReLU(), nn.Conv2d(in_features, half, 1),
                       _bn(half), nn.ReLU(), nn.Conv2d(half, half, 3, padding=1),
                       _bn(half), nn.ReLU(), nn.Conv2d(half, features, 1))
  skip = nn.Sequential(nn.Conv2d(in_features, features, 1)) if in_features != features else nn.Identity()
  return nn.Sequential(ConcatTable(main, skip), CAddTable())


def _release_level(depth: int, features: int) -> ConcatTable:
  """level(n) = ConcatTable(upper L.0, lower L.1); its sum is the CAddTable that follows it."""
  upper = [_release_residual(features, features) for _ in range(UPPER_BLOCKS)]
  if depth > 1:
    upper.append(nn.Sequential(_release_level(depth - 1, features), CAddTable(),
                               _release_residual(features, features)))
  blocks = LOWER_BLOCKS if depth > 1 else LOWER_BLOCKS_INNERMOST
  lower = ([nn.MaxPool2d(2, 2)] + [_release_residual(features, features) for _ in range(blocks)]
           + [Upsample(2, "nearest")])
  return ConcatTable(nn.Sequential(*upper), nn.Sequential(*lower))


def _conv_bn_relu(in_features: int, features: int) -> nn.Sequential:
  return nn.Sequential(nn.Conv2d(in_features, features, 1), _bn(features), nn.ReLU())


class ReleaseVRN(nn.Sequential):
  """The released vrn-unguided network in the PyTorch port's layout (state-dict keys of the TSV).

  (B, C, H, W) images -> (B, volume_depth, H, W) float32 volume logits; no final sigmoid (the release
  applies one; `torch.sigmoid` of the output is its volume). The defaults are the release's size.
  """

  def __init__(self, features: int = 256, num_hourglasses: int = 2, depth: int = 4,
               volume_depth: int = 200, in_channels: int = 3):
    f = features
    layers = [nn.Conv2d(in_channels, f // 4, 7, stride=2, padding=3), _bn(f // 4), nn.ReLU(),
              _release_residual(f // 4, f // 2), nn.MaxPool2d(2, 2), _release_residual(f // 2, f // 2),
              _release_residual(f // 2, f)]
    for _ in range(num_hourglasses):
      block = nn.Sequential(_release_level(depth, f), CAddTable(), _release_residual(f, f),
                            _conv_bn_relu(f, f), _conv_bn_relu(f, f))
      layers += [ConcatTable(nn.Identity(), block), CAddTable()]
    head = nn.Sequential(_conv_bn_relu(f, f), nn.Conv2d(f, volume_depth, 1))
    layers.append(nn.Sequential(head, Upsample(OUTPUT_STRIDE, "bilinear")))
    super().__init__(*layers)


# ------------------------------------------------------------------- the standard topology (b)


class Residual(nn.Module):
  """Pre-activation bottleneck, as `layers.Residual` (and named like it)."""

  def __init__(self, in_features: int, features: int):
    super().__init__()
    half = features // 2
    self.bn1, self.conv1 = _bn(in_features), nn.Conv2d(in_features, half, 1)
    self.bn2, self.conv2 = _bn(half), nn.Conv2d(half, half, 3, padding=1)
    self.bn3, self.conv3 = _bn(half), nn.Conv2d(half, features, 1)
    self.skip = nn.Conv2d(in_features, features, 1) if in_features != features else None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.conv1(F.relu(self.bn1(x)))
    h = self.conv2(F.relu(self.bn2(h)))
    h = self.conv3(F.relu(self.bn3(h)))
    return (x if self.skip is None else self.skip(x)) + h


class StandardLevel(nn.Module):
  """Newell's hourglass level(n), as `hourglass.StandardLevel`."""

  def __init__(self, depth: int, features: int):
    super().__init__()
    self.upper = Residual(features, features)
    self.lower_in = Residual(features, features)
    self.inner = StandardLevel(depth - 1, features) if depth > 1 else Residual(features, features)
    self.lower_out = Residual(features, features)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    lower = self.lower_out(self.inner(self.lower_in(F.max_pool2d(x, 2, 2))))
    return self.upper(x) + F.interpolate(lower, scale_factor=2, mode="nearest")


class HourglassBlock(nn.Module):
  """level, Res, conv1x1-BN-ReLU x2, as `hourglass.HourglassBlock` (standard topology)."""

  def __init__(self, depth: int, features: int):
    super().__init__()
    self.level = StandardLevel(depth, features)
    self.res = Residual(features, features)
    self.post_a_conv, self.post_a_bn = nn.Conv2d(features, features, 1), _bn(features)
    self.post_b_conv, self.post_b_bn = nn.Conv2d(features, features, 1), _bn(features)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.res(self.level(x))
    x = F.relu(self.post_a_bn(self.post_a_conv(x)))
    return F.relu(self.post_b_bn(self.post_b_conv(x)))


class Stem(nn.Module):
  """conv7x7/2 (f/4) BN ReLU, Res(f/2), maxpool, Res(f/2), Res(f), as `vrn.Stem`."""

  def __init__(self, in_channels: int, features: int):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, features // 4, 7, stride=2, padding=3)
    self.bn = _bn(features // 4)
    self.res_0 = Residual(features // 4, features // 2)
    self.res_1 = Residual(features // 2, features // 2)
    self.res_2 = Residual(features // 2, features)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.res_0(F.relu(self.bn(self.conv(x))))
    return self.res_2(self.res_1(F.max_pool2d(x, 2, 2)))


class UpsampledHead(nn.Module):
  """conv1x1-BN-ReLU, conv1x1, bilinear x4 (align_corners=True), as `vrn.UpsampledHead`."""

  def __init__(self, features: int, num_outputs: int):
    super().__init__()
    self.hidden_conv, self.hidden_bn = nn.Conv2d(features, features, 1), _bn(features)
    self.out = nn.Conv2d(features, num_outputs, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return _upsample_head(self.out(F.relu(self.hidden_bn(self.hidden_conv(x)))))


class VRN(nn.Module):
  """Our standard-topology VRN (`vrn_jax.models.VRN(topology='standard')`) in PyTorch.

  (B, C, H, W) float images, H and W divisible by 4 * 2**depth -> (B, volume_depth, H, W) float32 volume
  logits, i.e. (B, z, y, x). Module names equal the Flax ones (see the module docstring).
  """

  def __init__(self, features: int = 256, num_hourglasses: int = 2, depth: int = 4,
               volume_depth: int = 200, in_channels: int = 3):
    super().__init__()
    self.stem = Stem(in_channels, features)
    self.num_hourglasses = num_hourglasses
    for i in range(num_hourglasses):
      self.add_module(f"hourglass_{i}", HourglassBlock(depth, features))
    self.head = UpsampledHead(features, volume_depth)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = self.stem(images)
    for i in range(self.num_hourglasses):
      x = x + getattr(self, f"hourglass_{i}")(x)
    return self.head(x)


def build_torch_vrn(model_config: Mapping[str, Any] | Any) -> nn.Module:
  """The PyTorch twin of `get_model(model_config)` for variant 'vrn' (either topology), float32."""
  fields = _vrn_fields(model_config)
  cls = ReleaseVRN if fields["topology"] == "release" else VRN
  return cls(features=fields["features"], num_hourglasses=fields["num_hourglasses"],
             depth=fields["depth"], volume_depth=fields["volume_depth"])


def _vrn_fields(model_config) -> dict:
  fields = default_model_config().to_dict()
  given = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config or {})
  fields.update(given)
  if fields["variant"] != "vrn":
    raise ValueError(f"PyTorch twins exist for variant 'vrn' only, got {fields['variant']!r}")
  if fields["head_upsample"] != "logits" or fields["stem"] != "conv7x7" or fields["body_stride"] != 1:
    raise ValueError("PyTorch twins build the paper's stem, body and head (stem 'conv7x7', body_stride 1, "
                     f"head_upsample 'logits'), got stem {fields['stem']!r}, body_stride "
                     f"{fields['body_stride']!r}, head_upsample {fields['head_upsample']!r}")
  return fields


# ----------------------------------------------------------------------------- layouts, training


def to_torch_images(images: np.ndarray | jax.Array) -> torch.Tensor:
  """(B, H, W, C) -> (B, C, H, W) float32 torch tensor (contiguous)."""
  return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(images, np.float32), (0, 3, 1, 2))))


def to_torch_volume(volume: np.ndarray | jax.Array) -> torch.Tensor:
  """Our (B, H, W, Z) = (B, y, x, z) volume (logits or targets) -> (B, Z, H, W) float32 torch tensor."""
  return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(volume, np.float32), (0, 3, 1, 2))))


def to_our_volume(volume: torch.Tensor) -> np.ndarray:
  """PyTorch (B, Z, H, W) -> our (B, H, W, Z) float32 NumPy layout (a copy)."""
  return np.array(volume.detach().to("cpu", torch.float32).numpy().transpose(0, 2, 3, 1), order="C")


def volume_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
  """Mean per-voxel sigmoid cross-entropy, as `vrn_jax.models.volume_loss` (any matching layout)."""
  return F.binary_cross_entropy_with_logits(logits.float(), targets.to(torch.float32))


class TrainStep:
  """One optimisation step of a PyTorch VRN: forward (train-mode BN), volume loss, backward, RMSProp.

  torch.optim.RMSprop(alpha=0.99, eps=1e-8), square average starting at 0, is Torch7's optim.rmsprop and
  our `optimizers.create_optimizer` (eps outside the square root): v = a v + (1 - a) g^2; p -= lr g /
  (sqrt(v) + eps).

      step = TrainStep(VRN(features=64, depth=4), learning_rate=1e-4, compile=True)
      loss = step(images, targets)   # images (B, 3, H, W), targets (B, 200, H, W); returns a detached loss

  Attributes:
    model: the module (in train mode); optimizer: its RMSprop; forward: `model` or its torch.compile.
  """

  def __init__(self, model: nn.Module, learning_rate: float = 1e-4, alpha: float = 0.99,
               eps: float = 1e-8, compile: bool = False):  # pylint: disable=redefined-builtin
    self.model = model.train()
    self.optimizer = torch.optim.RMSprop(model.parameters(), lr=learning_rate, alpha=alpha, eps=eps)
    self.forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if compile else model

  def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    self.optimizer.zero_grad(set_to_none=True)
    loss = volume_loss(self.forward(images), targets)
    loss.backward()
    self.optimizer.step()
    return loss.detach()


# ---------------------------------------------------------------------- state dict -> Flax variables


def natural_key(key: str) -> tuple:
  """Sort key ordering '3.0.0.10' after '3.0.0.9'."""
  return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split("."))


def named_param_paths(variables: Mapping[str, Any]) -> dict[str, ParamTarget]:
  """{torch key: ParamTarget} for a PyTorch twin whose module names are the Flax paths (`VRN` above).

  Args:
    variables: Flax variables (arrays or ShapeDtypeStructs), e.g. from `jax.eval_shape(model.init, ...)`.
  Returns:
    Every params/batch_stats leaf's source key: kernel -> '<path>.weight' (OIHW -> HWIO), conv bias ->
    '<path>.bias', BN scale/bias -> '<path>.weight'/'.bias', mean/var -> '<path>.running_mean/_var'.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  modules: dict[tuple[str, ...], str] = {}
  for (collection, *path) in flat:
    kind = {"kernel": "conv", "scale": "bn"}.get(path[-1])
    if collection == "params" and kind:
      modules[tuple(path[:-1])] = kind
  out = {}
  for module, kind in modules.items():
    out |= (_conv_targets if kind == "conv" else _bn_targets)(".".join(module), module)
  return out


def _to_numpy(value: Any) -> np.ndarray:
  """A float32 copy: `Tensor.numpy()` shares memory, and the source model may train on."""
  if isinstance(value, torch.Tensor):
    value = value.detach().to("cpu", torch.float32).numpy()
  return np.array(value, np.float32, copy=True)


def _expected_torch_shape(shape: tuple[int, ...], transpose: tuple[int, ...] | None) -> tuple[int, ...]:
  if transpose is None:
    return tuple(shape)
  inverse = np.argsort(transpose)
  return tuple(int(shape[i]) for i in inverse)


def expected_state_dict_shapes(paths: Mapping[str, ParamTarget],
                               like: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """{torch key: PyTorch shape} that `state_dict_to_variables(..., paths, like)` accepts, in paths' order."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(like))
  targets = {(t.collection,) + t.path for t in paths.values()}
  uncovered = sorted("/".join(p) for p in set(flat) - targets)
  unknown = sorted("/".join(p) for p in targets - set(flat))
  if uncovered or unknown:  # a programming error (mapping and model disagree), not bad user input
    raise ValueError(f"the key mapping does not match the model: variables without a key {uncovered}, "
                     f"keys for no variable {unknown}")
  return {key: _expected_torch_shape(flat[(t.collection,) + t.path].shape, t.transpose)
          for key, t in paths.items()}


def state_dict_to_variables(state_dict: Mapping[str, Any], paths: Mapping[str, ParamTarget],
                            like: Mapping[str, Any], source: str = "state dict",
                            layout: str = "the model's") -> dict:
  """A PyTorch state dict -> Flax variables {'params': ..., 'batch_stats': ...} of float32 NumPy arrays.

  `X.num_batches_tracked` is accepted (and dropped) for every BatchNorm X; everything else must match
  `paths` exactly. BatchNorm eps is assumed to be PyTorch's default 1e-5, as in our models.

  Args:
    state_dict: {key: torch.Tensor | array}.
    paths: {key: ParamTarget}, e.g. `release_param_paths()` or `named_param_paths(like)`.
    like: the target model's variables (arrays or ShapeDtypeStructs): gives the expected shapes.
    source: what to name in errors (the file).
    layout: what the state dict was expected to be, for errors (e.g. "the released vrn-unguided").
  Raises:
    InputError: missing / unexpected keys (all listed, sorted), wrong shapes (each key with found and
      expected PyTorch shapes), non-finite values.
  """
  expected = expected_state_dict_shapes(paths, like)
  counters = {k[: -len("running_mean")] + "num_batches_tracked" for k in paths if k.endswith("running_mean")}
  missing = sorted(set(paths) - set(state_dict), key=natural_key)
  unexpected = sorted(set(state_dict) - set(paths) - counters, key=natural_key)
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"{len(missing)} missing key(s): {', '.join(missing)}")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected)}")
    raise InputError(f"{source}: {'; '.join(parts)}. Expected {layout} state dict of {len(paths)} "
                     "tensors (plus optional num_batches_tracked counters).")
  arrays, wrong, nonfinite = {}, [], []
  for key in paths:
    value = _to_numpy(state_dict[key])
    if tuple(value.shape) != expected[key]:
      wrong.append(f"{key} is {tuple(value.shape)}, expected {expected[key]}")
    elif not np.all(np.isfinite(value)):
      nonfinite.append(key)
    arrays[key] = value
  if wrong:
    raise InputError(f"{source}: {len(wrong)} tensor(s) of the wrong shape (PyTorch layout): "
                     f"{'; '.join(wrong)}. Expected {layout} state dict.")
  if nonfinite:
    raise InputError(f"{source}: NaN or infinite values in {', '.join(nonfinite)}.")
  flat = {}
  for key, t in paths.items():
    value = arrays[key] if t.transpose is None else np.transpose(arrays[key], t.transpose)
    flat[(t.collection,) + t.path] = np.ascontiguousarray(value)
  return flax.traverse_util.unflatten_dict(flat)


def variable_shapes(model_config: Mapping[str, Any] | Any) -> dict:
  """Flax variables of `get_model(model_config)` as ShapeDtypeStructs (no computation; cached)."""
  fields = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config or {})
  return _variable_shapes(json.dumps(fields, sort_keys=True))


@functools.lru_cache(maxsize=8)
def _variable_shapes(fields_json: str) -> dict:
  # Tracing the release model takes seconds; importer tests and benchmarks ask repeatedly.
  model = get_model(json.loads(fields_json))
  images = jax.ShapeDtypeStruct((1, 192, 192, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)


def param_paths_for(model_config: Mapping[str, Any] | Any, like: Mapping[str, Any]) -> dict[str, ParamTarget]:
  """The key mapping of `build_torch_vrn(model_config)`'s state dict: the release's or the named one."""
  fields = _vrn_fields(model_config)
  if fields["topology"] == "release":
    return release_param_paths(num_hourglasses=fields["num_hourglasses"], depth=fields["depth"])
  return named_param_paths(like)


def to_flax_variables(state_dict: Mapping[str, Any], model_config: Mapping[str, Any] | Any,
                      source: str = "state dict") -> dict:
  """The state dict of `build_torch_vrn(model_config)` -> variables for `get_model(model_config)`.

  E.g. `model.apply(to_flax_variables(torch_model.state_dict(), cfg), images)` reproduces
  `torch_model.eval()(to_torch_images(images))` (as `to_our_volume`).
  """
  like = variable_shapes(model_config)
  fields = _vrn_fields(model_config)
  layout = ("the released vrn-unguided (PyTorch port)" if fields["topology"] == "release"
            else f"a standard-topology VRN (features {fields['features']}, depth {fields['depth']}, "
                 f"{fields['num_hourglasses']} hourglasses)")
  return state_dict_to_variables(state_dict, param_paths_for(model_config, like), like, source, layout)
