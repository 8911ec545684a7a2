"""Training: pmapped steps with on-device augmentation and targets, RMSProp (the CPU default: Muon for
the convolution kernels), Orbax checkpoints.

`train_and_evaluate(config, workdir)` is what `run_train.py` calls. The step body is a pure function of
(state, batch, rng) written per replica with one axis name ('batch'), so it moves to `jit(shard_map)`
unchanged when `jax.pmap` goes. The loss is the paper's per-voxel sigmoid cross-entropy on the whole
192x192x200 volume (config.loss_stride = 1, the paper configs), or its unbiased estimate on every s-th
row and column at random offsets (loss_stride = s, the CPU default: the targets are decoded only there).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from flax import jax_utils
from flax.training import train_state

from vrn_jax import models
from vrn_jax.data import augment, pipeline
from vrn_jax.files import InputError, atomic_output

AXIS = "batch"


class TrainState(train_state.TrainState):
  batch_stats: Any
  # Exponential moving average of params (config.ema_decay > 0), or None. Evaluation and run_eval use it
  # when it is there.
  ema_params: Any = None


class NonFiniteLossError(RuntimeError):
  """The loss (or the weights after a step) became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------- model


def create_model(config: ml_collections.ConfigDict, axis_name: str | None = AXIS):
  # Synchronised BatchNorm: statistics over the global batch, so N replicas compute what one device
  # would on the whole batch (and data parallelism is exact).
  return models.get_model(config.model, bn_axis_name=axis_name)


def schedule_kind(config) -> str:
  """config.optim.schedule, checked: 'step' or 'cosine' (InputError otherwise)."""
  # .get: configs saved before these fields existed (an older workdir's config.json) mean the defaults.
  kind = config.optim.get("schedule", "step")
  if kind not in ("step", "cosine"):
    raise InputError(f"config optim.schedule {kind!r}: expected 'step' or 'cosine'.")
  return kind


def learning_rate_schedule(config, steps_per_epoch: int, num_steps: int | None = None):
  """optim.schedule 'step' (the paper's: x decay_factor after each of decay_epochs) or 'cosine' (from
  learning_rate down to learning_rate * decay_factor over the run's num_steps)."""
  kind = schedule_kind(config)
  if kind == "cosine":
    if not num_steps:
      raise ValueError("the cosine schedule needs the run's number of steps")
    return optax.cosine_decay_schedule(config.optim.learning_rate, num_steps,
                                       alpha=config.optim.decay_factor)
  boundaries = {int(round(e * steps_per_epoch)): config.optim.decay_factor
                for e in config.optim.decay_epochs}
  return optax.piecewise_constant_schedule(config.optim.learning_rate, boundaries)


OPTIMIZERS = ("rmsprop", "muon")


def optimizer_name(config) -> str:
  """config.optim.name, checked: 'rmsprop' (the paper's) or 'muon' (InputError otherwise)."""
  # .get: a workdir's config.json from before the field existed means RMSProp, the only one then.
  name = config.optim.get("name", "rmsprop")
  if name not in OPTIMIZERS:
    raise InputError(f"config optim.name {name!r}: expected one of {', '.join(OPTIMIZERS)}.")
  return name


def create_optimizer(config, schedule) -> optax.GradientTransformation:
  """optim.name 'rmsprop': Torch7's rmsprop (the paper's); 'muon': Muon for the convolution kernels,
  RMSProp for everything else."""
  # optax.rmsprop with eps outside the root and decay 0.99 is Torch7's optim.rmsprop:
  #   m = alpha m + (1 - alpha) g^2;  x -= lr g / (sqrt(m) + eps).
  # momentum > 0 adds heavy-ball momentum on the scaled step (PyTorch's RMSprop(momentum=...)).
  rmsprop = optax.rmsprop(schedule, decay=config.optim.rmsprop_decay, eps=config.optim.eps,
                          eps_in_sqrt=config.optim.eps_in_sqrt,
                          initial_scale=config.optim.initial_mean_square,
                          momentum=config.optim.get("momentum", 0.0) or None)
  if optimizer_name(config) == "rmsprop":
    return rmsprop
  # Muon (K. Jordan et al., 2024; optax.contrib): a kernel's Nesterov momentum, viewed as a
  # (kh * kw * cin, cout) matrix, is replaced by its nearest semi-orthogonal matrix (5 Newton-Schulz
  # iterations), scaled by sqrt(max(1, cout / (kh * kw * cin))) and the Muon rate, which follows the
  # same schedule (learning_rate_schedule * muon_learning_rate / learning_rate). BatchNorm parameters,
  # biases and the kernels named in optim.muon_exclude take the RMSProp step (Muon's authors keep the
  # first and the last layer off it; the CPU default keeps only the first: configs/default.py has the
  # races).
  ratio = config.optim.muon_learning_rate / config.optim.learning_rate
  exclude = tuple(config.optim.muon_exclude)

  def labels(params):
    flat = flax.traverse_util.flatten_dict(params)
    kernels = {"/".join(k[:-1]) for k, v in flat.items() if v.ndim == 4}
    if missing := sorted(set(exclude) - kernels):
      raise InputError(f"config optim.muon_exclude: {missing} is not a convolution of this model; "
                       f"its convolutions are e.g. {sorted(kernels)[:3]}.")
    return flax.traverse_util.unflatten_dict(
        {k: "muon" if v.ndim == 4 and "/".join(k[:-1]) not in exclude else "rmsprop"
         for k, v in flat.items()})

  kernel = optax.contrib.MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=(3,))
  # Called with the Muon part of the tree only (the rest is masked out): every leaf there is a kernel.
  dimension_numbers = lambda tree: jax.tree.map(lambda _: kernel, tree)

  # optax.contrib.muon's own width scaling (`_muon.scale_by_shape`) is not exported by optax 0.2.8.
  def width_scale(updates, params=None):
    del params
    return jax.tree.map(lambda u: u * max(1.0, u.shape[3] / math.prod(u.shape[:3])) ** 0.5, updates)

  muon = optax.chain(
      optax.contrib.scale_by_muon(beta=config.optim.muon_beta, nesterov=True,
                                  weight_dimension_numbers=dimension_numbers),
      optax.stateless(width_scale),
      optax.scale_by_learning_rate(lambda step: schedule(step) * ratio))
  return optax.partition({"muon": muon, "rmsprop": rmsprop}, labels)


def create_train_state(config, rng: jax.Array, tx: optax.GradientTransformation) -> TrainState:
  """Unreplicated initial state. Initialised without the axis name (a single-device trace)."""
  model = create_model(config, axis_name=None)
  images = jax.ShapeDtypeStruct((1, 192, 192, 3), jnp.float32)  # RGB crops, every variant
  variables = model.lazy_init(rng, images, train=False)
  params = variables["params"]
  return TrainState.create(apply_fn=None, params=params, batch_stats=variables.get("batch_stats", {}),
                           tx=tx, ema_params=params if ema_decay(config) else None)


def ema_decay(config) -> float:
  """config.ema_decay (0 when absent: configs saved before it existed), checked: 0 (off) or in (0, 1)."""
  decay = config.get("ema_decay", 0.0)
  if not 0.0 <= decay < 1.0:
    raise InputError(f"config ema_decay {decay!r}: expected 0 (no average) or a decay in (0, 1).")
  return decay


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


def _targets(config, batch, keys, train: bool):
  """(images, targets, landmarks, offsets): targets (B, 192, 192, 200), or in training with loss_stride
  s > 1 (B, 192/s, 192/s, 200), each example's rows oy + s * i and columns ox + s * j for its `offsets`
  (B, 2) (oy, ox), drawn uniformly from [0, s)^2 (None with s = 1)."""
  cfg = augment.AugmentConfig(
      rotation_deg=config.augment.rotation_deg, translation_px=config.augment.translation_px,
      scale_range=tuple(config.augment.scale_range),
      flip_probability=config.augment.flip_probability,
      colour_range=tuple(config.augment.colour_range)) if config.augment.enabled else None
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
    heatmaps = models.render_heatmaps(landmarks[..., :2])
    if variant == "vrn_guided" and train:
      kwargs["heatmaps"] = heatmaps  # ground-truth landmarks in training (the paper)
  # Training takes the head's logits before their x4 upsample: the fused loss forms the full-size volume
  # a few rows at a time (the paper's loss on all 192x192x200 voxels, without the volume in memory).
  # The returned logits are then (B, 48, 48, 200); evaluation gets the upsampled volume.
  out = model.apply(variables, images, train=train, mutable=mutable, upsample_volume=not train,
                    **kwargs)
  out, new_state = out if train else (out, {})
  logits = out["volume"] if isinstance(out, dict) else out
  if train:
    stride = 1 if offsets is None else loss_stride(config)
    loss = models.upsampled_volume_loss(logits, targets, models.OUTPUT_STRIDE, stride=stride,
                                        offsets=offsets)
  else:
    loss = models.volume_loss(logits, targets)
  aux = {"volume_loss": loss}
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
  # The largest |weight| rather than a norm, which could overflow where every weight is finite.
  metrics["max_abs_weight"] = optax.tree_utils.tree_norm(new.params, ord=jnp.inf)
  return new, metrics


def eval_step(config, model, state: TrainState, batch: dict):
  """Per-example volume IoU (prediction p > 0.5) and loss, no augmentation."""
  keys = jnp.zeros((batch["image"].shape[0], 2), jnp.uint32)
  keys = jax.vmap(jax.random.wrap_key_data)(keys)
  images, targets, landmarks, _ = _targets(config, batch, keys, train=False)
  variables = {"params": eval_params(state), "batch_stats": state.batch_stats}
  loss, (logits, _, _) = loss_and_outputs(config, model, variables, images, targets, landmarks, train=False)
  pred = logits > 0.0
  inter = jnp.sum(pred & targets, axis=(1, 2, 3))
  union = jnp.sum(pred | targets, axis=(1, 2, 3))
  return {"iou": inter / jnp.maximum(union, 1), "loss": jnp.broadcast_to(loss, inter.shape),
          "depth": front_depth(pred), "target_depth": front_depth(targets)}


def front_depth(volumes: jax.Array) -> jax.Array:
  """(B, 192, 192, 200) bool -> (B, 192, 192) uint8 front surface: the nearest occupied voxel's z
  (z grows toward the camera) scaled to 1..255, 0 where the column is empty (the summaries' images)."""
  z = jnp.arange(volumes.shape[-1], dtype=jnp.int32)
  nearest = jnp.max(jnp.where(volumes, z, -1), axis=-1)
  scaled = 1 + (nearest * 254) // (volumes.shape[-1] - 1)
  return jnp.where(nearest >= 0, scaled, 0).astype(jnp.uint8)


# ------------------------------------------------------------------------------------- checkpointing


def checkpoint_manager(workdir: str, keep: int):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True)
  # The handler named up front, so that item_metadata can read a saved step's tree (restore_latest).
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               item_handlers=ocp.StandardCheckpointHandler(), options=options)


def checkpoint_items(state: TrainState) -> dict:
  tree = {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state}
  if state.ema_params is not None:
    tree["ema_params"] = state.ema_params
  return tree


def save_config(config, workdir: str) -> None:
  with atomic_output(os.path.join(workdir, "config.json")) as tmp, open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=1, sort_keys=True))


def check_workdir_model(config, workdir: str, optimiser: bool = True) -> None:
  """A workdir that holds checkpoints of another model is an error, not a shape crash; for training
  (`optimiser`), so is one of another optimiser, whose state the checkpoints hold too."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return
  with open(path, encoding="utf-8") as f:
    saved_config = json.load(f)
  # A field the saved config predates had its default value then (e.g. stem: 'conv7x7').
  saved = {**models.default_model_config().to_dict(), **saved_config.get("model", {})}
  current = json.loads(config.model.to_json_best_effort())
  differ = {k: (saved.get(k), current.get(k)) for k in current if k != "dtype"
            and saved.get(k) != current.get(k)}
  what = ["model"] if differ else []
  optimizers = optimizer_name(ml_collections.ConfigDict(saved_config)), optimizer_name(config)
  if optimiser and optimizers[0] != optimizers[1]:
    differ["optim.name"] = optimizers
    what.append("optimiser")
  if differ and os.path.isdir(os.path.join(workdir, "checkpoints")):
    details = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(differ.items()))
    raise InputError(f"{workdir} holds checkpoints of another {' and '.join(what)} ({details}); use a new "
                     "--workdir or the config it was trained with.")


def restore_latest(manager, state: TrainState) -> TrainState:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  step = manager.latest_step()
  if step is None:
    return state
  # The restore target follows what the checkpoint holds: a run that turns the moving average on (off)
  # resumes from a checkpoint without (with) one; the average then starts from the restored weights (is
  # dropped).
  target = checkpoint_items(state)
  target.pop("ema_params", None)
  if "ema_params" in manager.item_metadata(step):
    target["ema_params"] = state.params  # the average has the weights' structure
  restored = manager.restore(step, args=ocp.args.StandardRestore(target))
  ema = None if state.ema_params is None else restored.get("ema_params", restored["params"])
  return state.replace(step=restored["step"], params=restored["params"],
                       batch_stats=restored["batch_stats"], opt_state=restored["opt_state"],
                       ema_params=ema)


# ------------------------------------------------------------------------------------------- the loop


def ensure_dataset(config, name: str, split: str) -> None:
  """Builds the synthetic vrn_faces config if it is missing and the config allows it."""
  path = pipeline.dataset_dir(config.data.data_dir, name)
  if os.path.isfile(os.path.join(path, "dataset_info.json")):
    return
  if name != "synthetic" or not config.data.build_if_missing:
    pipeline.data_source(config.data.data_dir, name, split)  # raises with the build command
  logging.info("Building vrn_faces/%s in %s (first run only)...", name, config.data.data_dir)
  from vrn_jax.datasets.vrn_faces import Builder  # pylint: disable=g-import-not-at-top

  Builder(config=name, data_dir=os.path.expanduser(config.data.data_dir)).download_and_prepare()


def replicate(tree):
  """One copy of `tree` per local device, laid out as `jax.pmap(..., axis_name=AXIS)` lays out its
  outputs, so that the step that takes the initial state and every later one share one compilation.

  (flax's `jax_utils.replicate` names its mesh axis differently; pmap then sees a new input sharding at
  the second step and compiles the whole training step again: ~30 s of a 15-minute CPU run.)
  """
  if jax.process_count() > 1:
    return jax_utils.replicate(tree)
  devices = jax.local_devices()
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)),
                                        jax.sharding.PartitionSpec(AXIS))
  return jax.device_put(jax_utils.replicate(tree), sharding)


def _unreplicate(tree):
  """The first replica's copy, on the host."""
  return jax.tree_util.tree_map(lambda x: np.asarray(x)[0], tree)


def evaluate(config, p_eval_step, state_repl, source, max_examples: int, num_images: int = 0) -> dict:
  """Mean IoU/loss over the first `max_examples` of `source` (all if < 0), on every local device; with
  `num_images`, also 'images': (n, 192, 3 * 192, 3) uint8 rows of crop | predicted front-surface depth |
  target depth for the first examples."""
  n = len(source) if max_examples < 0 else min(max_examples, len(source))
  devices = jax.local_device_count()
  batch = max(devices, config.eval_batch_size - config.eval_batch_size % devices)
  ious, losses, images = [], [], []
  for start in range(0, n, batch):
    # One batch read at a time: a full evaluation split does not sit decoded in host memory.
    items = [pipeline.flatten_example(source[i]) for i in range(start, min(start + batch, n))]
    real = len(items)
    items += [items[-1]] * (batch - real)  # pad the last batch; padded rows are dropped below
    stacked = {k: np.stack([it[k] for it in items]).reshape(devices, batch // devices,
                                                             *items[0][k].shape) for k in items[0]}
    out = jax.device_get(p_eval_step(state_repl, stacked))
    ious.append(out["iou"].reshape(-1)[:real])
    losses.append(out["loss"].reshape(-1)[:real])
    for j in range(min(real, num_images - len(images))):
      depths = [np.repeat(out[k].reshape(-1, *out[k].shape[2:])[j][..., None], 3, axis=-1)
                for k in ("depth", "target_depth")]
      images.append(np.concatenate([items[j]["image"], *depths], axis=1))
  result = {"iou": float(np.mean(np.concatenate(ious))),
            "loss": float(np.mean(np.concatenate(losses))), "examples": n}
  if images:
    result["images"] = np.stack(images)
  return result


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and evaluates held-out IoU."""
  if config.distributed:
    jax.distributed.initialize()
  # Config fields are checked first: a mistyped one is reported before a dataset build and before
  # anything is written.
  schedule_kind(config)
  optimizer_name(config)
  loss_stride(config)
  ema_decay(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  check_workdir_model(config, workdir)

  ensure_dataset(config, config.data.config, config.data.train_split)
  train_source = pipeline.data_source(config.data.data_dir, config.data.config, config.data.train_split)
  devices = jax.local_device_count()
  if config.global_batch_size % (devices * jax.process_count()):
    raise InputError(f"global_batch_size {config.global_batch_size} is not a multiple of the "
                     f"{devices * jax.process_count()} devices.")
  steps_per_epoch = max(1, len(train_source) // config.global_batch_size)
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else int(math.ceil(config.num_epochs * steps_per_epoch)))

  schedule = learning_rate_schedule(config, steps_per_epoch, num_steps)
  tx = create_optimizer(config, schedule)
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  state = create_train_state(config, init_rng, tx)
  manager = checkpoint_manager(workdir, config.keep_checkpoints)
  state = restore_latest(manager, state)
  start_step = int(state.step)
  if jax.process_index() == 0:
    save_config(config, workdir)

  model = create_model(config)
  p_train_step = jax.pmap(functools.partial(train_step, config, model, schedule), axis_name=AXIS,
                          donate_argnums=(0,))
  p_eval_step = jax.pmap(functools.partial(eval_step, config, model), axis_name=AXIS)
  state_repl = replicate(state)
  step_rngs = replicate(step_rng)
  batches = pipeline.device_batches(train_source, global_batch_size=config.global_batch_size,
                                    seed=config.seed, num_threads=config.data.num_threads,
                                    start_batch=start_step)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  writer = summary_writer(workdir)
  logging.info("Training %s (%s, %d features) for %d steps (%d per epoch) on %d device(s), from step "
               "%d.", config.model.variant, config.model.topology, config.model.features, num_steps,
               steps_per_epoch, devices, start_step)
  last_good = start_step
  t0, t_since, done_since = time.time(), time.time(), start_step

  def finish(done: int, metrics) -> None:
    """Step `done`'s metrics on the host: the NaN check, and the log line when it is a log step."""
    nonlocal t_since, done_since
    m = _unreplicate(metrics)
    if bad := [k for k, v in m.items() if not np.isfinite(float(v))]:
      raise NonFiniteLossError(
          f"non-finite {', '.join(bad)} at step {done} ({ {k: float(v) for k, v in m.items()} }); "
          f"training stopped; the last good checkpoint (step {last_good}) is kept in {workdir}/checkpoints.")
    if done % config.log_every_steps == 0 or done == num_steps:
      now = time.time()
      rate = (done - done_since) * config.global_batch_size / max(now - t_since, 1e-9)
      eta = (num_steps - done) * config.global_batch_size / max(rate, 1e-9)
      record = {"step": done, **{k: float(v) for k, v in m.items()}, "examples_per_s": rate,
                "eta_s": eta, "elapsed_s": now - t0}
      logging.info("step %d/%d  loss %.5f  lr %.2e  %.1f examples/s  ETA %s", done, num_steps,
                   record["loss"], record["learning_rate"], rate, _hms(eta))
      if jax.process_index() == 0:
        with open(metrics_path, "a", encoding="utf-8") as f:
          f.write(json.dumps(record) + "\n")
        writer.write_scalars(done, {k: v for k, v in record.items() if k != "step"})
      t_since, done_since = now, done

  pending = None  # (step, metrics) not yet looked at on the host
  try:
    for step in range(start_step, num_steps):
      state_repl, metrics = p_train_step(state_repl, next(batches), step_rngs)
      done = step + 1
      # Each step's metrics are read on the host while the next step runs (reading them at once would
      # leave the cores idle between steps), so a NaN stops training one step after it appears. A
      # checkpoint step is read at once: no broken state is ever saved.
      if pending is not None:
        finish(*pending)
      pending = (done, metrics)
      if done % config.checkpoint_every_steps == 0 or done == num_steps:
        import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

        finish(*pending)
        pending = None
        manager.save(done, args=ocp.args.StandardSave(checkpoint_items(_unreplicate(state_repl))))
        last_good = done
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.flush()

  state = _unreplicate(state_repl)
  ensure_dataset(config, config.data.eval_config, config.data.eval_split)
  eval_source = pipeline.data_source(config.data.data_dir, config.data.eval_config,
                                     config.data.eval_split)
  result = evaluate(config, p_eval_step, state_repl, eval_source, config.eval_examples,
                    num_images=SUMMARY_IMAGES)
  images = result.pop("images", None)
  result["step"] = int(state.step)
  logging.info("held-out %s/%s: volume IoU %.4f, loss %.5f over %d examples (step %d)",
               config.data.eval_config, config.data.eval_split, result["iou"], result["loss"],
               result["examples"], result["step"])
  if jax.process_index() == 0:
    with open(metrics_path, "a", encoding="utf-8") as f:
      f.write(json.dumps({"eval": result}) + "\n")
    writer.write_scalars(result["step"], {"eval/iou": result["iou"], "eval/loss": result["loss"]})
    if images is not None:
      writer.write_images(result["step"], {"eval/crop_prediction_target": images})
  writer.close()
  return result


SUMMARY_IMAGES = 8  # held-out examples shown in TensorBoard: crop | predicted depth | target depth


def summary_writer(workdir: str):
  """TensorBoard summaries in `workdir/tensorboard` (clu's writer, off the training thread), beside
  metrics.jsonl; other processes of a multi-host run write none."""
  if jax.process_index() != 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncWriter(
      metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard")))


def _hms(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
