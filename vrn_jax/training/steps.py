"""The training state and the pmapped steps, with on-device augmentation and targets.

The step body is a pure function of (state, batch, rng) written per replica with one axis name
('batch'), so it moves to `jit(shard_map)` unchanged when `jax.pmap` goes. The loss is the paper's
per-voxel sigmoid cross-entropy on the whole 192x192x200 volume (config.loss_stride = 1, the paper
configs), or its unbiased estimate on every s-th row and column at random offsets (loss_stride = s, the
CPU default: the targets are decoded only there).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from vrn_jax import models
from vrn_jax.data import augment
from vrn_jax.errors import InputError
from vrn_jax.training.optimizers import ema_decay

AXIS = "batch"


class TrainState(train_state.TrainState):
  batch_stats: Any
  # Exponential moving average of params (config.ema_decay > 0), or None. Evaluation and run_eval use it
  # when it is there.
  ema_params: Any = None


class NonFiniteLossError(RuntimeError):
  """The loss (or the weights after a step) became NaN or infinite; the last good checkpoint is kept."""


def create_model(config: ml_collections.ConfigDict, axis_name: str | None = AXIS):
  # Synchronised BatchNorm: statistics over the global batch, so N replicas compute what one device
  # would on the whole batch (and data parallelism is exact).
  return models.get_model(config.model, bn_axis_name=axis_name)


def create_train_state(config, rng: jax.Array, tx: optax.GradientTransformation) -> TrainState:
  """Unreplicated initial state. Initialised without the axis name (a single-device trace)."""
  model = create_model(config, axis_name=None)
  images = jax.ShapeDtypeStruct((1, 192, 192, 3), jnp.float32)  # RGB crops, every variant
  variables = model.lazy_init(rng, images, train=False)
  params = variables["params"]
  return TrainState.create(apply_fn=None, params=params, batch_stats=variables.get("batch_stats", {}),
                           tx=tx, ema_params=params if ema_decay(config) else None)


def eval_params(state: TrainState):
  """The weights evaluation uses: the moving average when the state keeps one."""
  return state.params if state.ema_params is None else state.ema_params


# ------------------------------------------------------------------------------------------ the steps


def _example_keys(rng: jax.Array, step: jax.Array, per_device: int) -> jax.Array:
  """One key per example from its *global* index, so any device count draws the same augmentations."""
  base = jax.random.fold_in(rng, step)
  first = jax.lax.axis_index(AXIS) * per_device
  return jax.vmap(lambda i: jax.random.fold_in(base, first + i))(jnp.arange(per_device))


def loss_stride(config) -> int:
  """config.loss_stride (1 when absent: configs saved before it existed), checked."""
  stride = config.get("loss_stride", 1)
  if stride not in (1, 2, 4, 8):
    raise InputError(f"config loss_stride {stride!r}: expected 1 (every voxel), 2, 4 or 8.")
  return stride


def _loss_weight(config, field: str, off_means: str, off: float = 1.0) -> float:
  """config.<field> (`off` when absent), a loss term's weight: >= off, and != off only with a head the
  weighted per-voxel loss trains ('features' or 'features_bspline')."""
  weight = float(config.get(field, off))
  if not weight >= off:
    raise InputError(f"config {field} {weight!r}: expected >= {off:g} ({off:g}: {off_means}).")
  if weight != off and config.model.get("head_upsample", "logits") == "logits":
    raise InputError(f"config {field} != {off:g} needs model.head_upsample 'features' or "
                     "'features_bspline' (the 'logits' head trains through the fused paper loss).")
  return weight


def thin_column_weight(config) -> float:
  """config.thin_column_weight (1, the paper's loss, when absent), checked against the head it needs."""
  weight = _loss_weight(config, "thin_column_weight", "the paper's loss")
  voxels = config.get("thin_column_voxels", None)
  if weight != 1.0 and not (isinstance(voxels, int) and 1 <= voxels <= config.model.volume_depth):
    raise InputError(f"config thin_column_voxels {voxels!r}: expected a whole number of voxels from 1 to "
                     f"{config.model.volume_depth} (the most a column holds to count as thin).")
  return weight


def iou_loss_weight(config) -> float:
  """config.iou_loss_weight (0, off, when absent): the soft IoU's weight beside the per-voxel loss;
  checked against the head it needs."""
  return _loss_weight(config, "iou_loss_weight", "off", off=0.0)


def relief_weight(config) -> tuple[float, int]:
  """(config.relief_weight, its window in the loss's columns): 1 (off) when absent; checked."""
  weight = _loss_weight(config, "relief_weight", "off")
  if weight == 1.0:
    return weight, 1
  window_px = config.get("relief_window_px", None)
  stride = loss_stride(config)
  if not (isinstance(window_px, int) and 3 * stride <= window_px <= 96):
    raise InputError(f"config relief_window_px {window_px!r}: expected a whole number of crop pixels "
                     f"from {3 * stride} (3 of the loss's columns at loss_stride {stride}) to 96: the "
                     "square the surface's local mean is taken over.")
  # The loss sees every loss_stride-th column: the window in those, the nearest odd number (centred).
  columns = round(window_px / stride)
  return weight, columns if columns % 2 else columns + 1


def augment_config(config) -> augment.AugmentConfig | None:
  """config.augment as an `augment.AugmentConfig` (None when off); fields a config lacks (one saved
  before they existed) keep AugmentConfig's defaults."""
  if not config.augment.enabled:
    return None
  fields = {f.name for f in dataclasses.fields(augment.AugmentConfig)}
  given = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in config.augment.items()
           if k in fields}
  return augment.AugmentConfig(**given)


def _targets(config, batch, keys, train: bool):
  """(images, targets, landmarks, offsets): targets (B, 192, 192, 200), or in training with loss_stride
  s > 1 (B, 192/s, 192/s, 200), each example's rows oy + s * i and columns ox + s * j for its `offsets`
  (B, 2) (oy, ox), drawn uniformly from [0, s)^2 (None with s = 1)."""
  cfg = augment_config(config)
  stride = loss_stride(config) if train else 1
  if stride == 1:
    return (*jax.vmap(lambda k, e: augment.augment_example(k, e, cfg, train))(keys, batch), None)

  def one(k, e):
    offsets = jax.random.randint(jax.random.fold_in(k, 1), (2,), 0, stride)
    grid = jnp.arange(0, e["image"].shape[0], stride)
    return (*augment.augment_example(k, e, cfg, train, rows=offsets[0] + grid, cols=offsets[1] + grid),
            offsets)

  return jax.vmap(one)(keys, batch)


def loss_and_outputs(config, model, variables, images, targets, landmarks, train: bool, offsets=None):
  """Total loss and the volume logits, for any variant; returns (loss, (logits, aux, new_state)).
  offsets: where `targets` were sampled (see `_targets`), or None for whole volumes."""
  variant = config.model.variant
  mutable = ["batch_stats"] if train else False
  kwargs = {}
  heatmaps = None
  if variant in ("vrn_multitask", "vrn_guided"):
    # What the landmark heads regress: Gaussians they can draw (`models.heatmaps`); configs from before
    # the field trained against the guidance's own.
    heatmaps = models.render_heatmaps(landmarks[..., :2],
                                      sigma=config.get("heatmap_sigma_px", models.SIGMA_PX))
    if variant == "vrn_guided" and train:
      # Ground-truth landmarks in training (the paper), as the paper's 1 px guidance.
      kwargs["heatmaps"] = models.render_heatmaps(landmarks[..., :2])
  # Training with the 'logits' head takes its logits before their x4 upsample: the fused loss forms the
  # full-size volume a few rows at a time (the paper's loss on all 192x192x200 voxels, without the
  # volume in memory); the returned logits are then (B, 48, 48, 200). The 'features' head is evaluated
  # where the targets were sampled (all of the volume at loss_stride 1). Evaluation gets the full volume.
  fused = train and config.model.get("head_upsample", "logits") == "logits"
  thin_weight = thin_column_weight(config) if train else 1.0
  relief, relief_window = relief_weight(config) if train else (1.0, 1)
  if train and not fused and offsets is not None:
    stride = loss_stride(config)
    grid = jnp.arange(0, images.shape[1], stride)
    kwargs["volume_at"] = (offsets[:, :1] + grid, offsets[:, 1:] + grid)
  out = model.apply(variables, images, train=train, mutable=mutable, upsample_volume=not fused,
                    **kwargs)
  out, new_state = out if train else (out, {})
  logits = out["volume"] if isinstance(out, dict) else out
  if fused:
    stride = 1 if offsets is None else loss_stride(config)
    loss = models.upsampled_volume_loss(logits, targets, models.OUTPUT_STRIDE, stride=stride,
                                        offsets=offsets)
  elif thin_weight != 1.0 or relief != 1.0:
    loss = models.weighted_volume_loss(logits, targets, thin_weight, config.get("thin_column_voxels", 1),
                                       relief, relief_window)
  else:
    loss = models.volume_loss(logits, targets)
  aux = {"volume_loss": loss}
  iou_weight = iou_loss_weight(config) if train else 0.0
  if iou_weight:
    aux["iou_loss"] = models.soft_iou_loss(logits, targets)
    loss = loss + iou_weight * aux["iou_loss"]
  if heatmaps is not None:
    hm_loss = models.heatmap_loss(out["heatmaps"], heatmaps)
    aux["heatmap_loss"] = hm_loss
    loss = loss + config.heatmap_loss_weight * hm_loss
  return loss, (logits, aux, new_state)


def train_step(config, model, schedule, state: TrainState, batch: dict, rng: jax.Array):
  """One step on one replica's share of the global batch (inside pmap over AXIS)."""
  per_device = batch["image"].shape[0]
  images, targets, landmarks, offsets = _targets(config, batch,
                                                 _example_keys(rng, state.step, per_device), train=True)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    return loss_and_outputs(config, model, variables, images, targets, landmarks, train=True, offsets=offsets)

  (loss, (_, aux, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  batch_stats = jax.lax.pmean(new_state["batch_stats"], AXIS)
  new = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  decay = ema_decay(config)
  if decay:
    # The usual warm-up of the decay, (1 + t) / (10 + t): early averages do not drag in the random init.
    d = jnp.minimum(decay, (1.0 + state.step) / (10.0 + state.step))
    new = new.replace(ema_params=jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p,
                                                        state.ema_params, new.params))
  metrics = jax.lax.pmean({"loss": loss, **aux}, AXIS)
  metrics["learning_rate"] = schedule(state.step)
  # Finite iff every new weight is (the same on every replica): a step can break the weights while its
  # loss, taken before it, is still finite (Muon's step is finite-sized whatever the gradient's size).
  # The largest |weight| (|gradient|) rather than a norm, which could overflow where every one is finite.
  metrics["max_abs_weight"] = optax.tree_utils.tree_norm(new.params, ord=jnp.inf)
  metrics["max_abs_gradient"] = optax.tree_utils.tree_norm(grads, ord=jnp.inf)
  # A step with a non-finite loss, gradient, new weight or new BatchNorm statistic is skipped on the
  # device: the weights, optimiser state, statistics and average stay as they were and only the step
  # count moves on (the data order follows it). The host then stops training or counts the skip
  # (config.max_nonfinite_steps). The statistics need their own check: huge but finite weights can give
  # a finite loss (BatchNorm rescales the activations) while the batch variance overflows to inf.
  finite = (jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["max_abs_gradient"])
            & jnp.isfinite(metrics["max_abs_weight"])
            & jnp.isfinite(optax.tree_utils.tree_norm(new.batch_stats, ord=jnp.inf)))
  kept = state.replace(step=new.step)
  new = jax.lax.cond(finite, lambda: new, lambda: kept)
  metrics["skipped"] = jnp.logical_not(finite).astype(jnp.int32)
  return new, metrics


def eval_step(config, model, state: TrainState, batch: dict):
  """Per-example volume IoU (prediction p > 0.5) and loss, no augmentation."""
  keys = jnp.zeros((batch["image"].shape[0], 2), jnp.uint32)
  keys = jax.vmap(jax.random.wrap_key_data)(keys)
  images, targets, landmarks, _ = _targets(config, batch, keys, train=False)
  variables = {"params": eval_params(state), "batch_stats": state.batch_stats}
  loss, (logits, _, _) = loss_and_outputs(config, model, variables, images, targets, landmarks, train=False)
  pred = logits > 0.0
  iou = models.volume_iou(pred, targets)
  return {"iou": iou, "loss": jnp.broadcast_to(loss, iou.shape),
          "depth": front_depth(pred), "target_depth": front_depth(targets)}


def front_depth(volumes: jax.Array) -> jax.Array:
  """(B, 192, 192, 200) bool -> (B, 192, 192) uint8 front surface: the nearest occupied voxel's z
  (z grows toward the camera) scaled to 1..255, 0 where the column is empty (the summaries' images)."""
  z = jnp.arange(volumes.shape[-1], dtype=jnp.int32)
  nearest = jnp.max(jnp.where(volumes, z, -1), axis=-1)
  scaled = 1 + (nearest * 254) // (volumes.shape[-1] - 1)
  return jnp.where(nearest >= 0, scaled, 0).astype(jnp.uint8)

