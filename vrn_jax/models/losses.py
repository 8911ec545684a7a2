"""Training losses: per-voxel sigmoid cross-entropy for the volume (paper) and a soft IoU beside it, MSE for
landmark heatmaps."""

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from vrn_jax.models.layers import bilinear_matrix, bilinear_row_blocks, lerp_axis


def volume_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Mean per-voxel sigmoid cross-entropy, the paper's volume loss.

  Stable for any |logit| via the log-sum-exp form max(x, 0) - x t + log(1 + exp(-|x|)).

  Args:
    logits: (B, 192, 192, 200) volume logits (any float dtype; computed in float32).
    target: same shape, binary occupancy (bool / uint8 / float in [0, 1]).
  Returns:
    () float32 mean over all voxels and the batch.
  """
  x = logits.astype(jnp.float32)
  t = target.astype(jnp.float32)
  return jnp.mean(_sigmoid_xent(x, t, jnp.exp(-jnp.abs(x))))


def weighted_volume_loss(logits: jax.Array, target: jax.Array, thin_weight: float, thin_voxels: int,
                         relief_weight: float = 1.0, relief_window: int = 5) -> jax.Array:
  """`volume_loss` with the filled voxels of thin columns weighted `thin_weight`, and the voxels of the
  surface's relief weighted `relief_weight` (not the paper's loss).

  A column (y, x) is thin when its target holds 1 to `thin_voxels` filled voxels: the face's edge,
  where the front surface meets the back plane. There a network unsure of the depth spreads its
  probability over more voxels than are filled, none reaches 0.5, and the 0.5 isosurface loses the
  column: the silhouette shrinks. Weighting those voxels' positive term by w moves the loss's minimiser
  from p to w p / (w p + 1 - p), so a column the network gives 1/(1 + w) or more is kept.

  The relief (`relief_voxels`): the voxels between each column's front surface and the local mean of
  the front surfaces around it, filled where the surface stands out (the nose) and empty where it sinks
  in (eye sockets, the mouth's corners). A network unsure of where a small feature lies blurs it into
  its surroundings: the nose erodes, the hollows fill. Weighting those voxels' terms by w keeps the
  feature wherever the network gives it 1/(1 + w) or more.

  Args:
    logits, target: as `volume_loss`, (..., H, W, Z) with z last.
    thin_weight: w >= 1 for the thin columns' filled voxels (1: off).
    thin_voxels: the most filled voxels a column holds to count as thin.
    relief_weight: w >= 1 for the relief's voxels (1: off).
    relief_window: the side, in columns of `target`, of the square the local mean is taken over.
  Returns:
    () float32 mean over all voxels and the batch.
  """
  x = logits.astype(jnp.float32)
  t = target.astype(jnp.float32)
  filled = jnp.sum(t, axis=-1, keepdims=True)
  thin = (filled > 0) & (filled <= thin_voxels)
  w = jnp.where(thin, jnp.float32(thin_weight), 1.0)
  w_empty = 1.0
  if relief_weight != 1.0:
    bump, hollow = relief_voxels(target, relief_window)
    w = w * jnp.where(bump, jnp.float32(relief_weight), 1.0)
    w_empty = jnp.where(hollow, jnp.float32(relief_weight), 1.0)
  e = jnp.log1p(jnp.exp(-jnp.abs(x)))
  # softplus(-x) for the filled voxels, softplus(x) for the empty ones.
  return jnp.mean(t * w * (jnp.maximum(-x, 0.0) + e) + (1.0 - t) * w_empty * (jnp.maximum(x, 0.0) + e))


def relief_voxels(target: jax.Array, window: int) -> tuple[jax.Array, jax.Array]:
  """The voxels between each column's front surface and its neighbourhood's mean front surface.

  front(y, x) is the largest z a column fills (z grows toward the camera); its local mean is taken over
  the filled columns of the window x window square centred there (clipped at the edges).

  Args:
    target: (..., H, W, Z) binary occupancy.
    window: odd side of the square, in columns.
  Returns:
    (bump, hollow), bool, target's shape: bump the filled voxels in front of the local mean (z > mean),
    hollow the empty voxels of a filled column between its front surface and the mean
    (front < z <= mean). At the face's outline, where the surface falls to the back plane, that takes
    in the empty voxels in front of the edge columns too: weighted, they keep those columns from
    growing forward. Leaving them out (hollows only where the whole window is filled) widened the
    photos' outline but cost held-out IoU and put the face 3.7 voxels in front of the ground truth's
    (docs/experiments.md, row relief_inner).
  """
  occupied = target > 0
  z = jnp.arange(target.shape[-1], dtype=jnp.float32)
  column = jnp.any(occupied, axis=-1)
  front = jnp.max(jnp.where(occupied, z, -1.0), axis=-1)
  dims = (1,) * (target.ndim - 3) + (window, window)
  box = functools.partial(jax.lax.reduce_window, init_value=0.0, computation=jax.lax.add,
                          window_dimensions=dims, window_strides=(1,) * (target.ndim - 1),
                          padding="SAME")
  count = box(column.astype(jnp.float32))
  mean = box(jnp.where(column, front, 0.0)) / jnp.maximum(count, 1.0)
  mean, front, column = mean[..., None], front[..., None], column[..., None]
  bump = occupied & (z > mean)
  hollow = ~occupied & column & (z > front) & (z <= mean)
  return bump, hollow


def soft_iou_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
  """1 - the soft intersection over union of sigmoid(logits) and the target, averaged over the batch.

  Per example sum(p t) / sum(p + t - p t): with p in {0, 1} exactly `volume_iou`'s figure, which the
  per-voxel cross-entropy only reaches through every voxel's own error. Each example's gradient is
  scaled by its union, so a small face's volume counts as much as a large one's (not the paper's loss).

  Args:
    logits: (B, ...) volume logits (any float dtype; float32 inside), e.g. the loss's sampled voxels.
    target: same shape, binary occupancy.
  Returns:
    () float32 mean over the batch of 1 - soft IoU (0 where an example's target and prediction are
    both empty).
  """
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  t = target.astype(jnp.float32)
  axes = tuple(range(1, p.ndim))
  inter = jnp.sum(p * t, axis=axes)
  union = jnp.sum(p + t - p * t, axis=axes)
  return jnp.mean(jnp.where(union > 0, 1.0 - inter / jnp.maximum(union, 1e-30), 0.0))


def volume_iou(pred: jax.Array, target: jax.Array) -> jax.Array:
  """(B, ...) bool predicted and target volumes -> (B,) intersection over union (0 where both are
  empty)."""
  axes = tuple(range(1, pred.ndim))
  inter = jnp.sum(pred & target, axis=axes)
  union = jnp.sum(pred | target, axis=axes)
  return inter / jnp.maximum(union, 1)


def _sigmoid_xent(x: jax.Array, t: jax.Array, e: jax.Array) -> jax.Array:
  """Per-voxel sigmoid cross-entropy given e = exp(-|x|)."""
  return jnp.maximum(x, 0.0) - x * t + jnp.log1p(e)


def upsampled_volume_loss(logits: jax.Array, target: jax.Array, factor: int = 4,
                          rows_per_block: int | None = None, stride: int = 1,
                          offsets: jax.Array | None = None) -> jax.Array:
  """`volume_loss(upsample_bilinear(logits, factor), target)` without the upsampled volume in memory.

  The paper's loss on the full volume: the x`factor` bilinear upsample (align_corners=True) of the
  head's logits is formed a block of output rows at a time, each block's loss and gradient
  (sigmoid(x) - t) / n taken there, and the gradient mapped back through the same block of the
  interpolation; the full-size logits and their gradient (236 MB each for 8 examples at 192x192x200)
  are never written. On a 2-core CPU this made the loss and its gradient 2.5x cheaper than autodiff of
  the unfused pair (and XLA no longer writes several volume-sized temporaries per step). The value
  equals the unfused loss, and the gradient its gradient, to float32 rounding.

  stride > 1 takes the loss on every stride-th row and column of the upsampled volume, from each
  example's offsets (oy, ox): with offsets uniform in [0, stride)^2 every voxel is equally likely to be
  sampled, so the result is an unbiased estimate of the full-volume loss and of its gradient, at
  1/stride^2 of the voxels (and the target need only be decoded there).

  Args:
    logits: (B, h, w, C) volume logits at the head's resolution (any float dtype; float32 inside).
    target: (B, factor*h/stride, factor*w/stride, C) binary occupancy (bool / uint8 / float in [0, 1]):
      the upsampled volume's rows oy + stride * i and columns ox + stride * j. No gradient flows to it.
    factor: the upsample factor (4, the VRN head's).
    rows_per_block: (sampled) output rows per block; None picks 8 (or the largest divisor of the row
      count below it) on a CPU (blocks that stay in cache) and all of them elsewhere (one block per
      example: accelerators prefer few large kernels).
    stride: 1 (every voxel, the paper's loss) or the sampling step along y and x.
    offsets: (B, 2) int (oy, ox) in [0, stride); required when stride > 1.
  Returns:
    () float32 mean over the (sampled) voxels and the batch.
  """
  b, h, w, c = logits.shape
  if stride > 1 and offsets is None:
    raise ValueError("upsampled_volume_loss: stride > 1 needs each example's offsets")
  offsets = jnp.zeros((b, 2), jnp.int32) if offsets is None else offsets.astype(jnp.int32)
  if (factor * h) % stride or (factor * w) % stride:
    raise ValueError(f"stride {stride} does not divide the upsampled {factor * h}x{factor * w}")
  if target.shape != (b, factor * h // stride, factor * w // stride, c):
    raise ValueError(f"target shape {target.shape} is not the x{factor} upsample of logits {logits.shape}"
                     + (f" sampled every {stride} rows and columns" if stride > 1 else ""))
  if rows_per_block is None:
    sampled = factor * h // stride
    rows_per_block = math.gcd(8, sampled) if jax.default_backend() == "cpu" else sampled
  return _upsampled_xent(logits.astype(jnp.float32), jax.lax.stop_gradient(target), offsets, factor,
                         rows_per_block, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _upsampled_xent(logits, target, offsets, factor, rows, stride):
  return _upsampled_xent_fwd(logits, target, offsets, factor, rows, stride)[0]


def _upsample_columns(logits, ox, width: int, stride: int):
  """(b, h, w, c) -> (b, h, width / stride * c): x-upsampled, columns ox + stride * j of each example."""
  b, h, w, c = logits.shape
  if stride == 1:
    return lerp_axis(logits, 2, width).reshape(b, h, width * c)
  # Only the sampled columns: each example's rows ox + stride * j of the interpolation matrix, applied
  # as a batched matmul. (Upsampling all `width` columns and then keeping 1/stride of them cost more
  # than the loss itself: 2-core CPU, batch 8, 48 -> 192, loss and gradient alone at stride 8 47.6 ->
  # 18.1 ms; the default config's train_step 192 -> 171 ms at stride 8, 208 -> 193 ms at stride 4.)
  m = jnp.asarray(bilinear_matrix(w, width).reshape(width // stride, stride, w), logits.dtype)
  pick = jnp.transpose(jnp.take(m, ox, axis=1), (1, 0, 2))  # (b, width / stride, w)
  return jnp.einsum("bjw,bhwc->bhjc", pick, logits).reshape(b, h, width // stride * c)


def _upsampled_xent_fwd(logits, target, offsets, factor, rows, stride):
  """(mean loss, d mean / d logits), both in one pass over the blocks."""
  b, h, w, c = logits.shape
  height, width = factor * h, factor * w
  n = b * (height // stride) * (width // stride) * c
  # Along x first, at the low resolution of y (cheap), then y block by block.
  x_up, x_vjp = jax.vjp(lambda z: _upsample_columns(z, offsets[:, 1], width, stride), logits)
  cols = x_up.shape[2]
  target = target.reshape(b, height // stride, cols)
  starts, blocks = bilinear_row_blocks(h, height, rows, stride)
  per_example, band = starts.shape[1], blocks.shape[3]
  starts, blocks = jnp.asarray(starts), jnp.asarray(blocks)

  def block(i, carry):
    total, grad = carry
    e, j = i // per_example, i % per_example
    phase = offsets[e, 0]
    m, start = blocks[phase, j], starts[phase, j]
    band_in = jax.lax.dynamic_slice(x_up, (e, start, 0), (1, band, cols))[0]
    x = m @ band_in  # (rows, cols): these (sampled) rows of the upsampled logits
    t = jax.lax.dynamic_slice(target, (e, j * rows, 0), (1, rows, cols))[0].astype(jnp.float32)
    exp_neg = jnp.exp(-jnp.abs(x))
    total = total + jnp.sum(_sigmoid_xent(x, t, exp_neg))
    g = jnp.where(x >= 0, 1.0, exp_neg) / (1.0 + exp_neg) - t  # sigmoid(x) - t
    old = jax.lax.dynamic_slice(grad, (e, start, 0), (1, band, cols))
    return total, jax.lax.dynamic_update_slice(grad, old + (m.T @ g)[None], (e, start, 0))

  total, grad = jax.lax.fori_loop(0, b * per_example, block, (jnp.float32(0), jnp.zeros_like(x_up)))
  (grad,) = x_vjp(grad / n)
  return total / n, grad


def _upsampled_xent_bwd(factor, rows, stride, grad, ct):
  del factor, rows, stride
  return ct * grad, None, None


_upsampled_xent.defvjp(_upsampled_xent_fwd, _upsampled_xent_bwd)


def heatmap_loss(predicted: jax.Array | Sequence[jax.Array], target: jax.Array) -> jax.Array:
  """Mean squared error of landmark heatmaps; for a list (stacked hourglass) the sum over stacks.

  Summing over stacks is the usual intermediate supervision (Newell et al.): every stack is pulled to
  the target.

  Args:
    predicted: (B, H, W, 68) heatmaps, or a list of them.
    target: (B, H, W, 68) heatmaps from `render_heatmaps`.
  Returns:
    () float32.
  """
  stacks = [predicted] if not isinstance(predicted, (list, tuple)) else list(predicted)
  t = target.astype(jnp.float32)
  return sum(jnp.mean((p.astype(jnp.float32) - t) ** 2) for p in stacks)
