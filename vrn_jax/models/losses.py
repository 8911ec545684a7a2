"""Training losses: per-voxel sigmoid cross-entropy for the volume (paper), MSE for landmark heatmaps."""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from vrn_jax.models.layers import bilinear_row_blocks, lerp_axis


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


def _sigmoid_xent(x: jax.Array, t: jax.Array, e: jax.Array) -> jax.Array:
  """Per-voxel sigmoid cross-entropy given e = exp(-|x|)."""
  return jnp.maximum(x, 0.0) - x * t + jnp.log1p(e)


def upsampled_volume_loss(logits: jax.Array, target: jax.Array, factor: int = 4,
                          rows_per_block: int | None = None) -> jax.Array:
  """`volume_loss(upsample_bilinear(logits, factor), target)` without the upsampled volume in memory.

  The paper's loss on the full volume: the x`factor` bilinear upsample (align_corners=True) of the
  head's logits is formed a block of output rows at a time, each block's loss and gradient
  (sigmoid(x) - t) / n taken there, and the gradient mapped back through the same block of the
  interpolation; the full-size logits and their gradient (236 MB each for 8 examples at 192x192x200)
  are never written. On a 2-core CPU this made the loss and its gradient 2.5x cheaper than autodiff of
  the unfused pair (and XLA no longer writes several volume-sized temporaries per step). The value
  equals the unfused loss, and the gradient its gradient, to float32 rounding.

  Args:
    logits: (B, h, w, C) volume logits at the head's resolution (any float dtype; float32 inside).
    target: (B, factor*h, factor*w, C) binary occupancy (bool / uint8 / float in [0, 1]). No gradient
      flows to the target.
    factor: the upsample factor (4, the VRN head's).
    rows_per_block: output rows per block; None picks 8 on a CPU (blocks that stay in cache) and the
      whole height elsewhere (one block per example: accelerators prefer few large kernels).
  Returns:
    () float32 mean over all voxels and the batch.
  """
  if rows_per_block is None:
    rows_per_block = 8 if jax.default_backend() == "cpu" else factor * logits.shape[1]
  b, h, w, c = logits.shape
  if target.shape != (b, factor * h, factor * w, c):
    raise ValueError(f"target shape {target.shape} is not the x{factor} upsample of logits {logits.shape}")
  return _upsampled_xent(logits.astype(jnp.float32), jax.lax.stop_gradient(target), factor,
                         rows_per_block)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _upsampled_xent(logits, target, factor, rows):
  return _upsampled_xent_fwd(logits, target, factor, rows)[0]


def _upsampled_xent_fwd(logits, target, factor, rows):
  """(mean loss, d mean / d logits), both in one pass over the blocks."""
  b, h, w, c = logits.shape
  height, width = factor * h, factor * w
  n = b * height * width * c
  # Along x first, at the low resolution of y (cheap), then y block by block.
  x_up = lerp_axis(logits, 2, width).reshape(b, h, width * c)
  target = target.reshape(b, height, width * c)
  starts, blocks = bilinear_row_blocks(h, height, rows)
  per_example, band = len(starts), blocks.shape[2]
  starts, blocks = jnp.asarray(starts), jnp.asarray(blocks)

  def block(i, carry):
    total, grad = carry
    e, j = i // per_example, i % per_example
    m = blocks[j]
    band_in = jax.lax.dynamic_slice(x_up, (e, starts[j], 0), (1, band, width * c))[0]
    x = m @ band_in  # (rows, width * c): these rows of the upsampled logits
    t = jax.lax.dynamic_slice(target, (e, j * rows, 0), (1, rows, width * c))[0].astype(jnp.float32)
    exp_neg = jnp.exp(-jnp.abs(x))
    total = total + jnp.sum(_sigmoid_xent(x, t, exp_neg))
    g = jnp.where(x >= 0, 1.0, exp_neg) / (1.0 + exp_neg) - t  # sigmoid(x) - t
    old = jax.lax.dynamic_slice(grad, (e, starts[j], 0), (1, band, width * c))
    return total, jax.lax.dynamic_update_slice(grad, old + (m.T @ g)[None], (e, starts[j], 0))

  total, grad = jax.lax.fori_loop(0, b * per_example, block, (jnp.float32(0), jnp.zeros_like(x_up)))
  _, x_vjp = jax.vjp(lambda z: lerp_axis(z, 2, width), logits)
  (grad,) = x_vjp(grad.reshape(b, h, width, c) / n)
  return total / n, grad


def _upsampled_xent_bwd(factor, rows, grad, ct):
  del factor, rows
  return ct * grad, None


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
