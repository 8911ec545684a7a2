"""Building blocks shared by every VRN variant: the pre-activation bottleneck and resampling ops.

All arrays are NHWC. Convolutions and BatchNorm follow PyTorch's conventions (explicit symmetric padding,
eps 1e-5, running-average momentum 0.1), so that the released model's weights drop in unchanged
(see `release.py`).
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ModuleDef = Callable[..., nn.Module]
Dtype = Any

# PyTorch's BatchNorm defaults: running = 0.9 running + 0.1 batch (flax names the kept fraction), eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv_factory(dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> ModuleDef:
  """`nn.Conv` with a bias and the given compute / parameter dtypes (every release conv has a bias).

  The parameters are `nn.Conv`'s (kernel (kh, kw, I, O), bias (O,)) whatever computes them; see
  `_conv_general_dilated` for the 1x1 convolutions.
  """
  return functools.partial(nn.Conv, use_bias=True, dtype=dtype, param_dtype=param_dtype,
                           conv_general_dilated=_conv_general_dilated)


def _conv_general_dilated(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                          dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated`, except that on a CPU a plain 1x1 convolution is a matmul over channels.

  XLA's CPU backend runs the weight gradient of a 1x1 convolution as a generic convolution; as a
  dot_general it is a GEMM: the default config's forward-backward-loss went from 0.41 s to 0.33 s
  (batch 8, 64 features, 2-core CPU). Same values to float32 rounding (gradients within 2e-5 of 4e-3).
  Accelerators keep the convolution (not measured there: no GPU was lent when this was written).
  """
  one_by_one = (rhs.shape[:2] == (1, 1) and tuple(window_strides) == (1, 1) and feature_group_count == 1
                and all(tuple(p) == (0, 0) for p in padding)
                and all(d == 1 for d in (lhs_dilation or ())) and all(d == 1 for d in (rhs_dilation or ())))
  if one_by_one and jax.default_backend() == "cpu":  # NHWC x HWIO, as nn.Conv passes them
    return jax.lax.dot_general(lhs, rhs[0, 0], (((lhs.ndim - 1,), (0,)), ((), ())), precision=precision)
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                      feature_group_count=feature_group_count, precision=precision)


def norm_factory(train: bool, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                 axis_name: str | None = None) -> ModuleDef:
  """`nn.BatchNorm` with PyTorch's defaults; batch statistics in train mode, running ones otherwise.

  `axis_name` turns on cross-replica (synchronised) statistics inside pmap / shard_map.
  """
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
                           epsilon=BN_EPSILON, dtype=dtype, param_dtype=param_dtype, axis_name=axis_name)


def conv_bn_relu(x: jax.Array, features: int, conv: ModuleDef, norm: ModuleDef, name: str) -> jax.Array:
  """conv1x1 -> BN -> ReLU, the release's `Sequential(conv, BN, ReLU)` (submodules `<name>_conv/_bn`)."""
  x = conv(features, (1, 1), padding=0, name=f"{name}_conv")(x)
  return nn.relu(norm(name=f"{name}_bn")(x))


class Residual(nn.Module):
  """Pre-activation bottleneck: BN-ReLU-conv1x1(f/2) - BN-ReLU-conv3x3(f/2) - BN-ReLU-conv1x1(f) + skip.

  The skip is the identity, or a conv1x1 of the *raw* input when the channel count changes (as in the
  release, where the skip branch is a lone conv). Every conv has a bias.

  Attributes:
    features: output channels f.
    conv, norm: factories from `conv_factory` / `norm_factory` (they carry dtype and train mode).
  """
  features: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H, W, features)."""
    half = self.features // 2
    h = nn.relu(self.norm(name="bn1")(x))
    h = self.conv(half, (1, 1), padding=0, name="conv1")(h)
    h = nn.relu(self.norm(name="bn2")(h))
    h = self.conv(half, (3, 3), padding=1, name="conv2")(h)
    h = nn.relu(self.norm(name="bn3")(h))
    h = self.conv(self.features, (1, 1), padding=0, name="conv3")(h)
    skip = x
    if x.shape[-1] != self.features:
      skip = self.conv(self.features, (1, 1), padding=0, name="skip")(x)
    return skip + h


def max_pool2(x: jax.Array) -> jax.Array:
  """2x2 max pool, stride 2: (B, H, W, C) -> (B, H/2, W/2, C). H and W must be even."""
  if x.shape[1] % 2 or x.shape[2] % 2:
    raise ValueError(f"max_pool2 needs even spatial sizes, got {x.shape[1:3]}: the hourglass depth is too "
                     "large for this input size (the stem output must be divisible by 2**depth).")
  return _max_pool2(x)


@jax.custom_vjp
def _max_pool2(x: jax.Array) -> jax.Array:
  """`nn.max_pool(x, (2, 2), strides=(2, 2))` as a reshape and a max, with the same gradient.

  Autodiff of `nn.max_pool` tracks each window's argmax with four int32 index volumes and a variadic
  reduce-window (a third of a small VRN's CPU step went there); the windows here do not overlap, so
  the backward pass is elementwise. As XLA's, it gives each window's gradient to its first maximum in
  row-major order (ties are common: flat, zero-padded image regions).
  """
  b, h, w, c = x.shape
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _max_pool2_fwd(x):
  y = _max_pool2(x)
  return y, (x, y)


def _max_pool2_bwd(res, g):
  x, y = res
  b, h, w, c = x.shape
  windows = x.reshape(b, h // 2, 2, w // 2, 2, c)
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for i in range(2):
    cols = []
    for j in range(2):
      first = (windows[:, :, i, :, j, :] == y) & ~taken
      taken = taken | first
      cols.append(jnp.where(first, g, jnp.zeros((), g.dtype)))
    rows.append(jnp.stack(cols, axis=3))  # (b, h/2, w/2, 2, c)
  return (jnp.stack(rows, axis=2).reshape(b, h, w, c),)  # (b, h/2, 2, w/2, 2, c) -> (b, h, w, c)


_max_pool2.defvjp(_max_pool2_fwd, _max_pool2_bwd)


def upsample_nearest2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsample: (B, H, W, C) -> (B, 2H, 2W, C)."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


def _align_corners_matrix(size_in: int, size_out: int, first: int, weights) -> np.ndarray:
  """(size_out, size_in) float64 matrix whose output i, at input coordinate j + t =
  i * (size_in - 1) / (size_out - 1) (align_corners=True), takes `weights(t)`[i, k] of input
  j + first + k, indices clamped to the ends."""
  m = np.zeros((size_out, size_in))
  if size_in == 1 or size_out == 1:
    m[:, 0] = 1.0
    return m
  src = np.arange(size_out) * (size_in - 1) / (size_out - 1)
  j = np.minimum(np.floor(src).astype(int), size_in - 2)
  w = weights(src - j)
  rows = np.arange(size_out)
  for k in range(w.shape[1]):
    np.add.at(m, (rows, np.clip(j + first + k, 0, size_in - 1)), w[:, k])
  return m


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) float64 matrix of 1-D linear interpolation with align_corners=True.

  Output sample i sits at input coordinate i * (size_in - 1) / (size_out - 1): first and last samples of
  both grids coincide (the release's SpatialUpSamplingBilinear).
  """
  return _align_corners_matrix(size_in, size_out, 0, lambda t: np.stack([1.0 - t, t], axis=1))


def bilinear_row_blocks(size_in: int, size_out: int, rows: int,
                        stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """`bilinear_matrix(size_in, size_out)` cut into blocks of `rows` output rows and the inputs they use.

  For each phase p in [0, stride), the output rows p, p + stride, p + 2 stride, ... (every row when
  stride is 1) are cut into blocks of `rows`: block j holds the sampled rows j * rows ... (j + 1) * rows - 1
  and its non-zero columns lie in the band [starts[p, j], starts[p, j] + k), k being the widest band of
  any block (start clamped so the band fits).

  Returns:
    starts (stride, n) int32 and blocks (stride, n, rows, k) float32, n = size_out // stride // rows;
    blocks[p, j] is M[p::stride][j * rows : (j + 1) * rows, starts[p, j] : starts[p, j] + k] and the
    rest of those rows of M is zero.
  """
  if size_out % (stride * rows):
    raise ValueError(f"{size_out} output rows do not split into blocks of {rows} rows every {stride}")
  phases = [bilinear_matrix(size_in, size_out)[p::stride] for p in range(stride)]
  n = size_out // stride // rows
  used = [[np.nonzero(m[j * rows:(j + 1) * rows].any(axis=0))[0] for j in range(n)] for m in phases]
  k = max(int(u[-1] - u[0]) + 1 for per_phase in used for u in per_phase)
  starts = np.array([[min(int(u[0]), size_in - k) for u in per_phase] for per_phase in used], np.int32)
  blocks = np.stack([np.stack([m[j * rows:(j + 1) * rows, s:s + k] for j, s in enumerate(st)])
                     for m, st in zip(phases, starts)])
  return starts, blocks.astype(np.float32)


def bspline_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) float64 matrix of the uniform cubic B-spline with the input samples as control
  points, at the positions `bilinear_matrix` samples (align_corners=True), the ends clamped.

  Unlike linear interpolation, whose output bends only at the input samples (a kink every `factor`
  outputs, which a layer after it turns into a grid on the predicted surface), the B-spline is twice
  continuously differentiable: 4 taps per output, weights ((1-t)^3, 3t^3-6t^2+4, -3t^3+3t^2+3t+1, t^3)/6
  on samples j-1..j+2 at fractional position j + t. It smooths as it upsamples (at t = 0 the weights are
  (1, 4, 1)/6); the layers around it are learnt, so it need not pass through the samples.
  """
  return _align_corners_matrix(
      size_in, size_out, -1,
      lambda t: np.stack([(1 - t) ** 3, 3 * t ** 3 - 6 * t ** 2 + 4, -3 * t ** 3 + 3 * t ** 2 + 3 * t + 1,
                          t ** 3], axis=1) / 6.0)


INTERPOLATIONS = ("linear", "bspline")


def interpolation_matrix(size_in: int, size_out: int, kind: str = "linear") -> np.ndarray:
  """`bilinear_matrix` ('linear') or `bspline_matrix` ('bspline')."""
  if kind == "linear":
    return bilinear_matrix(size_in, size_out)
  if kind == "bspline":
    return bspline_matrix(size_in, size_out)
  raise ValueError(f"interpolation {kind!r}: expected one of {INTERPOLATIONS}")


def _taps(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A banded (n_out, n_in) matrix as per-row taps: indices (n_out, K) and weights (n_out, K)."""
  k = int((m != 0).sum(axis=1).max())
  idx = np.zeros((m.shape[0], k), np.int32)
  w = np.zeros((m.shape[0], k))
  for i, row in enumerate(m):
    nz = np.nonzero(row)[0]
    idx[i, : nz.size], w[i, : nz.size] = nz, row[nz]
  return idx, w


def _apply_taps(x: jax.Array, axis: int, idx: np.ndarray, w: np.ndarray) -> jax.Array:
  shape = [1] * x.ndim
  shape[axis] = idx.shape[0]
  out = None
  for t in range(idx.shape[1]):
    term = jnp.take(x, idx[:, t], axis=axis) * jnp.asarray(w[:, t].reshape(shape), x.dtype)
    out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _resample_axis(x: jax.Array, axis: int, size_in: int, size_out: int, kind: str) -> jax.Array:
  """y = M x along `axis`, M = interpolation_matrix(size_in, size_out, kind), as a few taps per output.

  Both directions are gathers of a handful of taps: y from 2 (linear) or 4 (bspline) taps of x, and the
  gradient M^T g from the outputs each input feeds. A dense matrix (einsum) costs ~48 multiply-adds per
  output and, through autodiff, a scatter-add on the way back; on a CPU either made this one layer
  slower than the whole rest of a small VRN's step.
  """
  idx, w = _taps(interpolation_matrix(size_in, size_out, kind))
  return _apply_taps(x, axis, idx, w)


def _resample_axis_fwd(x, axis, size_in, size_out, kind):
  return _resample_axis(x, axis, size_in, size_out, kind), None


def _resample_axis_bwd(axis, size_in, size_out, kind, _, g):
  idx, w = _taps(interpolation_matrix(size_in, size_out, kind).T)
  return (_apply_taps(g, axis, idx, w),)


_resample_axis.defvjp(_resample_axis_fwd, _resample_axis_bwd)


def lerp_axis(x: jax.Array, axis: int, size_out: int) -> jax.Array:
  """1-D linear interpolation (align_corners=True) of `x` along `axis` to `size_out` samples."""
  return _resample_axis(x, axis, x.shape[axis], size_out, "linear")


def upsample_bilinear(x: jax.Array, factor: int = 4, kind: str = "linear") -> jax.Array:
  """Bilinear upsample with align_corners=True (the release's SpatialUpSamplingBilinear), separably;
  kind='bspline': the cubic B-spline at the same positions (`bspline_matrix`).

  Separable, with a few taps per sample in both directions (`_resample_axis`): the (B, 192, 192, 200)
  output is the largest tensor of the network.

  Args:
    x: (B, H, W, C).
    factor: integer scale.
    kind: 'linear' or 'bspline' (`INTERPOLATIONS`).
  Returns:
    (B, factor*H, factor*W, C), same dtype as x.
  """
  _, h, w, _ = x.shape
  return _resample_axis(_resample_axis(x, 1, h, factor * h, kind), 2, w, factor * w, kind)


def sample_bilinear(x: jax.Array, rows: jax.Array, cols: jax.Array, factor: int = 4,
                    kind: str = "linear") -> jax.Array:
  """`upsample_bilinear(x, factor, kind)` at chosen output rows and columns only, per example.

  Args:
    x: (B, h, w, C).
    rows: (B, R) int output rows (in [0, factor*h)) of each example.
    cols: (B, S) int output columns (in [0, factor*w)).
  Returns:
    (B, R, S, C), x.dtype: out[b, i, j] = upsample_bilinear(x, factor, kind)[b, rows[b, i], cols[b, j]].
  """
  _, h, w, _ = x.shape
  my = jnp.asarray(interpolation_matrix(h, factor * h, kind), x.dtype)[rows]  # (B, R, h)
  mx = jnp.asarray(interpolation_matrix(w, factor * w, kind), x.dtype)[cols]  # (B, S, w)
  return jnp.einsum("bsw,brwc->brsc", mx, jnp.einsum("brh,bhwc->brwc", my, x))


def count_parameters(params: Any) -> int:
  """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs from `jax.eval_shape`).

  Pass only the 'params' collection: like PyTorch's `parameters()`, BN running statistics are not counted.
  """
  return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree_util.tree_leaves(params)))
