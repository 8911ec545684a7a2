"""Training losses: per-voxel sigmoid cross-entropy for the volume (paper), MSE for landmark heatmaps."""

from typing import Sequence

import jax
import jax.numpy as jnp


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
  return jnp.mean(jnp.maximum(x, 0.0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x))))


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
