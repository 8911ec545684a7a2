"""Restoring checkpoints and batched inference on every local device: used by evaluation, photo
reconstruction and the web app.

`load_config` + `restore_variables` give a model's config and weights from a training directory;
`Predictor` runs the soft volume (and VRN-Guided's landmark detector) on batches of 192x192 crops,
`jax.pmap`ped over the local devices, the last batch padded and the padding dropped.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import jax_utils

from vrn_jax import models
from vrn_jax.data import augment, pipeline
from vrn_jax.errors import InputError
from vrn_jax.geometry.crop import CROP_SIZE
from vrn_jax.training import checkpoints, steps

# ------------------------------------------------------------------------------------------- checkpoints


def load_config(workdir: str, config=None):
  """The config to evaluate `workdir` with: `config` if given (checked against `workdir/config.json`),
  else `workdir/config.json` as written by training."""
  if not os.path.isdir(workdir):
    raise InputError(f"--workdir={workdir}: no such directory; expected a training directory with "
                     "checkpoints/ and config.json (python run_train.py --workdir=DIR makes one).")
  path = os.path.join(workdir, "config.json")
  if config is not None:
    checkpoints.check_workdir_model(config, workdir, optimiser=False)  # evaluation needs no optimiser state
    return config
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such file; {workdir} holds no training config. Pass the config the "
                     "checkpoint was trained with, e.g. --config=configs/default.py.")
  try:
    with open(path, encoding="utf-8") as f:
      return ml_collections.ConfigDict(json.load(f))
  except ValueError as e:
    raise InputError(f"{path}: not a readable JSON config ({e}).") from e


def _abstract_variables(config) -> dict:
  model = steps.create_model(config, axis_name=None)
  images = jax.ShapeDtypeStruct((1, CROP_SIZE, CROP_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda rng: model.lazy_init(rng, images, train=False), jax.random.key(0))


def _shapes(tree) -> dict[str, tuple]:
  return {jax.tree_util.keystr(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def restore_variables(config, workdir: str, step: int | None = None) -> tuple[dict, int]:
  """{'params', 'batch_stats'} of checkpoint `step` (default: the latest) in `workdir/checkpoints`, as
  NumPy arrays, checked against the model of `config`.

  Any Orbax checkpoint in the layout of `vrn_jax.training.checkpoints` ({'step', 'params', 'batch_stats', 'opt_state'}, optionally
  'ema_params') is accepted; only params (the moving average when saved) and batch_stats are used.
  Restored without the saved device layout, so a checkpoint written on accelerators restores on a CPU.
  """
  directory = checkpoints.checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise InputError(f"{directory}: no such checkpoint directory; train first (python run_train.py "
                     f"--workdir={workdir}) or point --workdir at a training directory.")
  expected = _abstract_variables(config)

  def target_for(candidate):
    metadata = manager.item_metadata(candidate)
    if metadata is None or "params" not in metadata or "batch_stats" not in metadata:
      found = sorted(metadata) if metadata is not None else "nothing readable"
      raise InputError(f"{directory}/{candidate}: not a vrn_jax checkpoint (found {found}); expected "
                       "'params' and 'batch_stats' (the layout of vrn_jax.training.checkpoints).")
    _check_model(config, directory, candidate, expected, metadata)
    # ShapeDtypeStructs without a sharding restore as NumPy arrays, whatever devices wrote them.
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), metadata)

  with checkpoints.checkpoint_manager(workdir, 0, read_only=True) as manager:
    steps_saved = sorted(manager.all_steps())
    if not steps_saved:
      raise InputError(f"{directory}: no checkpoints in it; train first (python run_train.py "
                       f"--workdir={workdir}).")
    if step is not None and step not in steps_saved:
      raise InputError(f"{directory}: no checkpoint of step {step}; it has steps {steps_saved}.")
    # Evaluation moves nothing: a damaged latest checkpoint is named in the log and the one before used.
    restored, step = checkpoints.restore_usable(manager, target_for, step, move_damaged=False)
  # A run with config.ema_decay > 0 saved a moving average of its weights: that is the model it evaluated.
  variables = {"params": restored.get("ema_params", restored["params"]),
               "batch_stats": restored["batch_stats"]}
  return variables, int(step)


def _check_model(config, directory: str, step: int, expected: dict, metadata) -> None:
  """A checkpoint whose arrays do not match the config's model is an error naming the differences."""
  only_checkpoint, only_model, other_shape = [], [], []
  for collection in ("params", "batch_stats"):
    want = _shapes(expected.get(collection, {}))
    have = _shapes(metadata[collection])
    only_checkpoint += [collection + k for k in sorted(set(have) - set(want))]
    only_model += [collection + k for k in sorted(set(want) - set(have))]
    other_shape += [f"{collection}{k}: checkpoint {have[k]} vs model {want[k]}"
                    for k in sorted(set(want) & set(have)) if want[k] != have[k]]
  details = [f"{len(found)} {what} (e.g. {found[0]})" for found, what in (
      (other_shape, "arrays of other shapes"), (only_checkpoint, "arrays only in the checkpoint"),
      (only_model, "arrays missing from the checkpoint")) if found]
  if details:
    m = config.model
    raise InputError(
        f"{directory}/{step} holds a checkpoint of another model than the config's ({m.variant}, "
        f"{m.topology}, {m.features} features, depth {m.depth}): {'; '.join(details)}. Use the config "
        "it was trained with (the workdir's config.json).")


# --------------------------------------------------------------------------------------------- inference


def _volume_logits(model, variables, images):
  out = model.apply(variables, images, train=False)
  return out["volume"] if isinstance(out, dict) else out


def uses_test_time_flip(config) -> bool:
  """config.test_time_flip (False when absent: configs from before it, the paper's)."""
  return bool(config.get("test_time_flip", False))


def _mirrored(images):
  """(b, h, w, c) crops mirrored left-right: x -> w - 1 - x, about the crop's centre (95.5)."""
  return images[:, :, ::-1]


def _mean_with_mirror(fn, images, unmirror):
  """The mean of `fn(images)` and `unmirror(fn(mirrored images))` (test-time flip), computed as a loop
  of two passes over the batch: the network is traced and compiled once (two calls would inline it
  twice in every program), and only one batch's activations and outputs are alive at a time. One
  forward pass over the crops and their mirror images concatenated gave the same volumes (to 5e-7)
  with a higher peak memory (913 against 862 MiB for 4 photos on the default model) and ran slower on
  the 2-core CPU (429 against 326 ms). In inference BatchNorm uses its running statistics, so each
  crop's output does not depend on the others'."""

  def add_pass(i, total):
    out = fn(jnp.where(i == 0, images, _mirrored(images)))
    return total + 0.5 * jnp.where(i == 0, out, unmirror(out))

  shape = jax.eval_shape(fn, images)
  return jax.lax.fori_loop(0, 2, add_pass, jnp.zeros(shape.shape, shape.dtype))


def _volume_probs_and_mask(model, variables, images, flip: bool):
  """Soft volumes (b, 192, 192, 200) and their occupied voxels. With `flip`, the mean of the soft
  volumes of the crop and of its mirror image mirrored back (test-time flip: the network is not exactly
  mirror-symmetric, and on every model raced the mean scored a higher IoU than one pass:
  docs/experiments.md)."""
  if not flip:
    logits = _volume_logits(model, variables, images)
    return jax.nn.sigmoid(logits), logits > 0.0
  probs = _mean_with_mirror(lambda x: jax.nn.sigmoid(_volume_logits(model, variables, x)), images,
                            _mirrored)
  return probs, probs > 0.5


def _landmark_peaks(heatmaps_fn, images, flip: bool):
  """(b, 68, 2) crop landmarks at the peaks of `heatmaps_fn(images)` (b, h, w, 68); with `flip`, of the
  mean of those heatmaps and the mirror image's, mirrored back with each landmark's channel swapped for
  its mirror partner's (`augment.FLIP_PERMUTATION`)."""
  if not flip:
    return models.heatmap_peaks(heatmaps_fn(images))
  return models.heatmap_peaks(_mean_with_mirror(
      heatmaps_fn, images, lambda h: _mirrored(h)[..., augment.FLIP_PERMUTATION]))


def smooth_z_voxels(config) -> float:
  """config.smooth_z_voxels (0, none, when absent: configs from before it, the paper's), checked."""
  sigma = float(config.get("smooth_z_voxels", 0.0))
  if not 0.0 <= sigma <= 8.0:
    raise InputError(f"config smooth_z_voxels {sigma!r}: expected 0 (off) to 8 voxels.")
  return sigma


def z_smoothing_matrix(depth: int, sigma: float) -> np.ndarray:
  """(depth, depth) float64 G: `x @ G.T` is a Gaussian of `sigma` voxels along x's last axis, edges
  replicated, truncated at 4 sigma (scipy.ndimage.gaussian_filter1d with mode='nearest')."""
  if sigma == 0.0:
    return np.eye(depth)
  g = np.zeros((depth, depth))
  radius = int(4.0 * sigma + 0.5)
  offsets = np.arange(-radius, radius + 1)
  taps = np.exp(-0.5 * (offsets / sigma) ** 2)
  taps /= taps.sum()
  rows = np.arange(depth)
  for k, w in zip(offsets, taps):
    np.add.at(g, (rows, np.clip(rows + k, 0, depth - 1)), w)
  return g


# The volume heads' output layer (a 1x1 convolution: `models.vrn.volume_head`) of each variant.
_VOLUME_HEADS = ("head", "volume_head")


def fold_z_smoothing(variables: dict, sigma: float, depth: int) -> dict:
  """`variables` whose volume logits come out smoothed along z by `sigma` voxels, at no cost.

  Why: the head regresses each of the 200 depths with its own output channel, and at the front surface
  the soft volume falls off gently along z (~0.03 per voxel), so the channels' small biases move the 0.5
  crossing toward some depths more than others: the surface comes out terraced, rings of equal depth
  across the face. Smoothing the logits along z removes that ripple and leaves x and y alone. The
  output layer is a linear map per pixel (and the 'logits' head's x4 upsample acts on pixels, not
  channels), so smoothing its outputs is `z_smoothing_matrix` applied to its kernel and bias.
  """
  if sigma == 0.0:
    return variables
  g = z_smoothing_matrix(depth, sigma)
  found = []

  def fold(path, leaf):
    names = [getattr(k, "key", None) for k in path]
    if len(names) >= 3 and names[-3] in _VOLUME_HEADS and names[-2] == "out" and leaf.shape[-1] == depth:
      found.append(names)
      return (np.asarray(leaf, np.float64) @ g.T).astype(leaf.dtype)
    return leaf

  folded = jax.tree_util.tree_map_with_path(fold, variables)
  if len(found) != 2:  # a kernel and a bias
    raise ValueError(f"fold_z_smoothing: expected one volume head's output kernel and bias, found {found}.")
  return folded


def _eval_forward(model, flip, variables, batch):
  """Per replica: soft volumes (b, 192, 192, 200) float32 and IoU (b,) against the decoded targets."""
  # No augmentation: the crop as stored (float in [0, 1]) and its target, as steps.eval_step sees them.
  images, targets, _ = jax.vmap(lambda e: augment.augment_example(None, e, None, train=False))(batch)
  probs, occupied = _volume_probs_and_mask(model, variables, images, flip)
  return probs, models.volume_iou(occupied, targets)


def _photo_forward(model, flip, variables, images):
  """Per replica: (b, 192, 192, 3) uint8 crops -> (b, 192, 192, 200) float32 soft volumes."""
  return _volume_probs_and_mask(model, variables, images.astype(jnp.float32) / 255.0, flip)[0]


# The landmark forwards return the heatmaps' peaks, found on the device: (b, 68, 2) crop pixels cross to
# the host instead of (b, 192, 192, 68) float32 heatmaps.


def _detector_forward(detector, flip, variables, images):
  """Per replica: VRN-Guided's detected landmarks (b, 68, 2) of (b, 192, 192, 3) uint8 crops."""
  return _landmark_peaks(lambda x: detector.apply(variables, x, train=False)[-1],
                         images.astype(jnp.float32) / 255.0, flip)


def _heatmap_forward(model, flip, variables, images):
  """Per replica: VRN-Multitask's own landmarks (b, 68, 2) of (b, 192, 192, 3) uint8 crops."""
  return _landmark_peaks(lambda x: model.apply(variables, x, train=False)["heatmaps"],
                         images.astype(jnp.float32) / 255.0, flip)


class Predictor:
  """Batched inference on every local device (`jax.pmap`); the last batch is padded, padding dropped.

  Attributes:
    batch_size: images per call, a multiple of the local device count.
    small_batches: pad a short batch only to the next power of two (one compilation per size; for
      serving, where most calls hold one photo) instead of to `batch_size`.
  """

  def __init__(self, config, variables: dict, batch_size: int | None = None,
               small_batches: bool = False):
    self.config = config
    self.small_batches = small_batches
    self.model = steps.create_model(config, axis_name=None)
    self.num_devices = jax.local_device_count()
    size = int(batch_size or config.eval_batch_size)
    self.batch_size = max(self.num_devices, size - size % self.num_devices)
    # The volume logits (and the soft volumes, meshes, IoU and figures made from them) come out smoothed
    # along z by the config's smooth_z_voxels, folded into the head's output layer.
    self.smooth_z = smooth_z_voxels(config)
    self._variables = jax_utils.replicate(
        fold_z_smoothing(variables, self.smooth_z, config.model.volume_depth))
    # With the config's test_time_flip, every volume and landmark is the mean of the crop's and its
    # mirror image's (two forward passes).
    self.flip = uses_test_time_flip(config)
    self._eval = jax.pmap(functools.partial(_eval_forward, self.model, self.flip))
    self._photo = jax.pmap(functools.partial(_photo_forward, self.model, self.flip))
    self.has_detector = config.model.variant == "vrn_guided"
    if self.has_detector:
      m = self.model
      detector = models.LandmarkDetector(
          features=m.features, num_hourglasses=m.num_detector_hourglasses, depth=m.depth, stem=m.stem,
          num_landmarks=m.num_landmarks, dtype=m.dtype, param_dtype=m.param_dtype)
      self._detector_variables = jax_utils.replicate(
          {"params": variables["params"]["detector"],
           "batch_stats": variables["batch_stats"]["detector"]})
      self._detect = jax.pmap(functools.partial(_detector_forward, detector, self.flip))
    # VRN-Multitask regresses landmarks beside the volume; VRN-Guided's detector finds them.
    self.predicts_landmarks = config.model.variant in ("vrn_multitask", "vrn_guided")
    if config.model.variant == "vrn_multitask":
      self._heatmaps = jax.pmap(functools.partial(_heatmap_forward, self.model, self.flip))

  def padded_size(self, n: int) -> int:
    """The batch `n` images run as: `batch_size`, or with `small_batches` the smallest power of two
    (times the device count) that holds them, so that one photo costs one forward pass, not a batch."""
    if not self.small_batches:
      return self.batch_size
    size = self.num_devices
    while size < n:
      size *= 2
    return min(size, self.batch_size)

  def _shard(self, arrays: dict) -> tuple[dict, int]:
    """(n <= batch_size, ...) arrays -> (devices, padded / devices, ...), padded with the last row."""
    n = len(next(iter(arrays.values())))
    if n > self.batch_size:
      raise ValueError(f"{n} images in one call; at most batch_size = {self.batch_size}.")
    return pipeline.pad_and_shard(arrays, self.padded_size(n), self.num_devices), n

  @staticmethod
  def _unshard(x, n: int) -> np.ndarray:
    return pipeline.unshard(x, n)

  def evaluate_batch(self, fields: dict) -> tuple[np.ndarray, np.ndarray]:
    """Dataset fields (n <= batch_size rows, `pipeline.DEVICE_FIELDS` names) -> soft volumes
    (n, 192, 192, 200) float32 and IoU (n,)."""

    device = {k.replace("/", "_"): fields[k.replace("/", "_")] for k in pipeline.DEVICE_FIELDS}
    sharded, n = self._shard(device)
    probs, iou = self._eval(self._variables, sharded)
    return self._unshard(probs, n), self._unshard(iou, n)

  def warm_up(self) -> None:
    """Compiles `volumes` for every batch size it will run (with `small_batches`, each power of two)."""
    n = self.num_devices
    while True:
      self.volumes(np.zeros((n, CROP_SIZE, CROP_SIZE, 3), np.uint8))
      if n >= self.batch_size or not self.small_batches:
        return
      n = min(2 * n, self.batch_size)

  def volumes(self, crops: np.ndarray) -> np.ndarray:
    """(n <= batch_size, 192, 192, 3) uint8 crops -> (n, 192, 192, 200) float32 soft volumes."""
    sharded, n = self._shard({"image": crops})
    return self._unshard(self._photo(self._variables, sharded["image"]), n)

  def detect_landmarks(self, crops: np.ndarray) -> np.ndarray:
    """VRN-Guided only: (n <= batch_size, 192, 192, 3) uint8 -> (n, 68, 2) detected crop landmarks."""
    if not self.has_detector:
      raise ValueError("detect_landmarks needs a VRN-Guided model.")
    sharded, n = self._shard({"image": crops})
    return self._unshard(self._detect(self._detector_variables, sharded["image"]), n).astype(np.float64)

  def predict_landmarks(self, crops: np.ndarray) -> np.ndarray:
    """VRN-Multitask / VRN-Guided: (n <= batch_size, 192, 192, 3) uint8 -> (n, 68, 2) the network's
    own crop landmarks (Multitask: its landmark head's; Guided: its detector's)."""
    if not self.predicts_landmarks:
      raise ValueError(f"predict_landmarks needs a VRN-Multitask or VRN-Guided model, not "
                       f"{self.config.model.variant}.")
    if self.has_detector:
      return self.detect_landmarks(crops)
    sharded, n = self._shard({"image": crops})
    return self._unshard(self._heatmaps(self._variables, sharded["image"]), n).astype(np.float64)

