"""The training loop: `train_and_evaluate(config, workdir)` is what `run_train.py` calls."""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from flax import jax_utils

from vrn_jax.data import pipeline
from vrn_jax.datasets.vrn_faces import Builder
from vrn_jax.errors import InputError
from vrn_jax.training import checkpoints, optimizers, steps
from vrn_jax.training.steps import AXIS


def ensure_dataset(config, name: str, split: str) -> None:
  """Builds a synthetic vrn_faces config (synthetic, synthetic_plain, synthetic_no_<part>) if it is missing
  and the config allows it."""
  path = pipeline.dataset_dir(config.data.data_dir, name)
  if os.path.isfile(os.path.join(path, "dataset_info.json")):
    return
  if not name.startswith("synthetic") or not config.data.build_if_missing:
    pipeline.data_source(config.data.data_dir, name, split)  # raises with the build command
  logging.info("Building vrn_faces/%s in %s (first run only)...", name, config.data.data_dir)
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


def unreplicate(tree):
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
    stacked = pipeline.pad_and_shard({k: np.stack([it[k] for it in items]) for k in items[0]}, batch,
                                     devices)
    out = {k: pipeline.unshard(v, real) for k, v in jax.device_get(p_eval_step(state_repl,
                                                                               stacked)).items()}
    ious.append(out["iou"])
    losses.append(out["loss"])
    for j in range(min(real, num_images - len(images))):
      depths = [np.repeat(out[k][j][..., None], 3, axis=-1) for k in ("depth", "target_depth")]
      images.append(np.concatenate([items[j]["image"], *depths], axis=1))
  result = {"iou": float(np.mean(np.concatenate(ious))),
            "loss": float(np.mean(np.concatenate(losses))), "examples": n}
  if images:
    result["images"] = np.stack(images)
  return result


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its latest intact checkpoint) and evaluates held-out
  IoU."""
  if config.distributed:
    jax.distributed.initialize()
  # Config fields are checked first: a mistyped one is reported before a dataset build and before
  # anything is written.
  optimizers.schedule_kind(config)
  optimizers.optimizer_name(config)
  steps.loss_stride(config)
  steps.thin_column_weight(config)
  steps.relief_weight(config)
  steps.iou_loss_weight(config)
  optimizers.ema_decay(config)
  allowed_nonfinite = max_nonfinite_steps(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  # The disk is checked before the dataset build and the first step, not when the first save fails.
  check_workdir_space(config, workdir, jax.eval_shape(
      lambda r: checkpoints.checkpoint_items(steps.create_train_state(
          config, r, optimizers.create_optimizer(config, lambda step: 0.0))), init_rng))
  checkpoints.check_workdir_model(config, workdir)

  ensure_dataset(config, config.data.config, config.data.train_split)
  train_source = pipeline.data_source(config.data.data_dir, config.data.config, config.data.train_split)
  devices = jax.local_device_count()
  if config.global_batch_size % (devices * jax.process_count()):
    raise InputError(f"global_batch_size {config.global_batch_size} is not a multiple of the "
                     f"{devices * jax.process_count()} devices.")
  steps_per_epoch = max(1, len(train_source) // config.global_batch_size)
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else int(math.ceil(config.num_epochs * steps_per_epoch)))

  schedule = optimizers.learning_rate_schedule(config, steps_per_epoch, num_steps)
  tx = optimizers.create_optimizer(config, schedule)
  state = steps.create_train_state(config, init_rng, tx)
  manager = checkpoints.checkpoint_manager(workdir, config.keep_checkpoints)
  state = checkpoints.restore_latest(manager, state)
  start_step = int(state.step)
  if jax.process_index() == 0:
    checkpoints.save_config(config, workdir)

  model = steps.create_model(config)
  p_train_step = jax.pmap(functools.partial(steps.train_step, config, model, schedule), axis_name=AXIS,
                          donate_argnums=(0,))
  p_eval_step = jax.pmap(functools.partial(steps.eval_step, config, model), axis_name=AXIS)
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
  skipped = 0
  t0, t_since, done_since = time.time(), time.time(), start_step

  def finish(done: int, metrics) -> None:
    """Step `done`'s metrics on the host: the non-finite check, and the log line on a log step."""
    nonlocal t_since, done_since, skipped
    m = unreplicate(metrics)
    skip = bool(m.pop("skipped"))
    if bad := [k for k, v in m.items() if not np.isfinite(float(v))] or (["step"] if skip else []):
      skipped += 1
      values = {k: float(v) for k, v in m.items()}
      if skipped > allowed_nonfinite:
        raise steps.NonFiniteLossError(
            f"non-finite {', '.join(bad)} at step {done} ({values}); training stopped (steps skipped "
            f"so far: {skipped - 1}, config.max_nonfinite_steps={allowed_nonfinite}); the last good "
            f"checkpoint (step {last_good}) is kept in {workdir}/checkpoints.")
      logging.warning("step %d skipped, its weights unchanged: non-finite %s (%s); %d of %d allowed "
                      "(config.max_nonfinite_steps).", done, ", ".join(bad), values, skipped,
                      allowed_nonfinite)
    if done % config.log_every_steps == 0 or done == num_steps:
      now = time.time()
      rate = (done - done_since) * config.global_batch_size / max(now - t_since, 1e-9)
      eta = (num_steps - done) * config.global_batch_size / max(rate, 1e-9)
      record = {"step": done, **{k: float(v) for k, v in m.items()}, "skipped_steps": skipped,
                "examples_per_s": rate, "eta_s": eta, "elapsed_s": now - t0}
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
      # leave the cores idle between steps), so a NaN stops training one step after it appears (the
      # step itself left the weights as they were). A checkpoint step is read at once.
      if pending is not None:
        finish(*pending)
      pending = (done, metrics)
      if done % config.checkpoint_every_steps == 0 or done == num_steps:
        finish(*pending)
        pending = None
        checkpoints.save(manager, done, checkpoints.checkpoint_items(unreplicate(state_repl)))
        last_good = done
  finally:
    checkpoints.finish(manager)
    writer.flush()

  state = unreplicate(state_repl)
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


def max_nonfinite_steps(config) -> int:
  """config.max_nonfinite_steps (0 when absent: configs saved before it existed), checked."""
  value = config.get("max_nonfinite_steps", 0)
  if not isinstance(value, int) or value < 0:
    raise InputError(f"config max_nonfinite_steps {value!r}: expected a whole number >= 0.")
  return value


# Room for metrics.jsonl, TensorBoard summaries and config.json beside the checkpoints.
LOG_BYTES = 64 << 20


def check_workdir_space(config, workdir: str, items) -> None:
  """Makes `workdir` and checks that it is writable and that its disk has room for
  config.keep_checkpoints + 1 checkpoints of `items` (the tree `checkpoints.save` writes; shapes
  suffice) and the logs, so a full disk or a read-only directory is an error before training starts."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    with open(probe, "wb") as f:
      f.write(b"\0" * 4096)
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
  except OSError as e:
    raise InputError(f"workdir {workdir}: cannot write there ({e.strerror or e}); choose another "
                     "--workdir.") from e
  size = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(items))
  need = size * (config.keep_checkpoints + 1) + LOG_BYTES
  free = shutil.disk_usage(workdir).free
  if free < need:
    raise InputError(
        f"workdir {workdir}: {free / 2**20:.0f} MiB free on its disk; training needs about "
        f"{need / 2**20:.0f} MiB ({config.keep_checkpoints} + 1 checkpoints of {size / 2**20:.1f} MiB, "
        f"keep_checkpoints={config.keep_checkpoints}, and logs). Free some space, choose another --workdir "
        "or lower --config.keep_checkpoints.")


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
