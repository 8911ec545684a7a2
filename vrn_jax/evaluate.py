"""Evaluation of checkpoints and reconstruction of faces from photos; `run_eval.py` is the command line.

Evaluation (`evaluate_checkpoint`): restore a checkpoint, predict the soft volume (sigmoid) of every
example of the config's evaluation split on all local devices, and on the host, overlapped with the
inference of the next batches, isosurface it at 0.5 and score it:
  - `nme`: the paper's NME (DESIGN section 1, `vrn_jax.geometry.nme.nme_paper`): the prediction mapped
    back through the inverse crop into the photo, ICP only to find the point of the unaligned prediction
    that corresponds to each ground-truth face-region vertex, errors / the 3D outer interocular distance.
  - `nme_aligned`: the same errors measured on the rigidly ICP-aligned prediction (the paper's "with rigid
    ICP alignment" numbers).
  - `nme_bbox`: PRNet's protocol (aligned errors / sqrt(w h) of the 68 landmarks' box). A different
    normaliser: never compare it with the interocular numbers.
  - `iou`: volume IoU of the prediction (logits > 0) against the decoded target.
Results go to `<workdir>/eval/<step>/`: `metrics.json` (means, medians, |yaw| bins, failures),
`samples.csv` (one row per example) and `ced.png` (cumulative error distribution, NME 0-0.1).

Ground truth. The examples carry the crop, the compact target volume, the 68 landmarks and the crop
transform, not the 3DMM mesh the NME is defined on. The mesh is rebuilt exactly as the dataset builder
made it (`GroundTruthSource`): for `synthetic` examples from the procedural generator (each example is a
pure function of the seed and index in its name), for `300w_lp` / `aflw2000_3d` from the fits in the
user's `--manual_dir` (the folder the dataset was built from). Each rebuilt mesh is checked against the
example's stored crop transform and landmarks, so a generator or folder that no longer matches the dataset
is an error, not a silently wrong score. The target volume's isosurface is *not* used as ground truth: it
is a closed solid (face, sides, back plane) whose vertices carry no identity, so neither the face region
nor the vertices at landmarks 37 and 46 that define the paper's normaliser exist on it.

Reconstruction (`reconstruct_photos`): crop each photo (68 landmarks as the release's run.m, a face box, a
centred square, or nothing for 192x192 inputs; with neither landmarks nor boxes, VRN-Guided's own
landmark detector), predict in batches, and write the crop, the soft volume (`.npy`, optionally the
release's `.raw`), coloured meshes in crop and photo coordinates and a rendered preview.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import functools
import glob
import json
import math
import os
import re
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from absl import logging

from vrn_jax.files import (InputError, atomic_output, read_image_rgb, read_landmarks_txt,
                           write_image_rgb)
from vrn_jax.geometry import nme as nme_lib
from vrn_jax.geometry.crop import (CROP_SIZE, CropTransform, crop_centre, crop_from_box,
                                   crop_from_landmarks, crop_image)
from vrn_jax.geometry.isosurface import Mesh, save_mesh, volume_to_mesh, write_raw

ISO_LEVEL = 0.5  # the release's isosurface level on the soft (sigmoid) volume
# Fields of an example read for evaluation: what the device needs, and the host-only ones for scoring.
EVAL_FIELDS = ("image", "volume/depth", "volume/back", "volume/step", "volume/affine", "landmarks",
               "yaw", "pitch", "roll", "crop_transform", "name")
SAMPLE_COLUMNS = ("index", "name", "nme", "nme_aligned", "nme_bbox", "iou", "yaw", "pitch", "roll",
                  "yaw_bin", "pred_vertices", "host_seconds", "error")
PROTOCOLS = {
    "nme": "paper (Jackson et al. 2017): mean distance of the ground-truth face-region vertices to their "
           "ICP-found correspondences on the unaligned prediction (mapped back through the inverse "
           "crop), / 3D outer interocular distance (landmarks 37, 46)",
    "nme_aligned": "as nme, measured on the rigidly ICP-aligned prediction (the paper's 'with rigid ICP "
                   "alignment')",
    "nme_bbox": "PRNet-style: aligned errors / sqrt(w h) of the ground truth's 68-landmark x, y box; a "
                "different normaliser, not comparable with nme",
    "iou": "volume IoU, prediction (logits > 0) vs the decoded target",
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
CROP_MODES = ("auto", "landmarks", "box", "center", "none")


# ------------------------------------------------------------------------------------------- checkpoints


def load_config(workdir: str, config=None):
  """The config to evaluate `workdir` with: `config` if given (checked against `workdir/config.json`),
  else `workdir/config.json` as written by training."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  from vrn_jax import train  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(workdir):
    raise InputError(f"--workdir={workdir}: no such directory; expected a training directory with "
                     "checkpoints/ and config.json (python run_train.py --workdir=DIR makes one).")
  path = os.path.join(workdir, "config.json")
  if config is not None:
    train.check_workdir_model(config, workdir, optimiser=False)  # evaluation needs no optimiser state
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
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from vrn_jax import train  # pylint: disable=g-import-not-at-top

  model = train.create_model(config, axis_name=None)
  images = jax.ShapeDtypeStruct((1, CROP_SIZE, CROP_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda rng: model.lazy_init(rng, images, train=False), jax.random.key(0))


def _shapes(tree) -> dict[str, tuple]:
  import jax  # pylint: disable=g-import-not-at-top

  return {jax.tree_util.keystr(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def restore_variables(config, workdir: str, step: int | None = None) -> tuple[dict, int]:
  """{'params', 'batch_stats'} of checkpoint `step` (default: the latest) in `workdir/checkpoints`, as
  NumPy arrays, checked against the model of `config`.

  Any Orbax checkpoint in train.py's layout ({'step', 'params', 'batch_stats', 'opt_state'}, optionally
  'ema_params') is accepted; only params (the moving average when saved) and batch_stats are used.
  Restored without the saved device layout, so a checkpoint written on accelerators restores on a CPU.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise InputError(f"{directory}: no such checkpoint directory; train first (python run_train.py "
                     f"--workdir={workdir}) or point --workdir at a training directory.")
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  with ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler(),
                             options=options) as manager:
    steps = sorted(manager.all_steps())
    if not steps:
      raise InputError(f"{directory}: no checkpoints in it; train first (python run_train.py "
                       f"--workdir={workdir}).")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise InputError(f"{directory}: no checkpoint of step {step}; it has steps {steps}.")
    metadata = manager.item_metadata(step)
    if metadata is None or "params" not in metadata or "batch_stats" not in metadata:
      found = sorted(metadata) if metadata is not None else "nothing readable"
      raise InputError(f"{directory}/{step}: not a vrn_jax checkpoint (found {found}); expected "
                       "'params' and 'batch_stats' (train.py's layout).")
    expected = _abstract_variables(config)
    _check_model(config, directory, step, expected, metadata)
    # ShapeDtypeStructs without a sharding restore as NumPy arrays, whatever devices wrote them.
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), metadata)
    restored = manager.restore(step, args=ocp.args.StandardRestore(target))
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


def heatmap_peaks(heatmaps: np.ndarray) -> np.ndarray:
  """(B, H, W, L) landmark heatmaps -> (B, L, 2) (x, y) pixel positions: each channel's maximum, refined
  to sub-pixel by a parabola through the log-values of it and its two neighbours along x and along y
  (exact for the Gaussians the networks are trained to produce)."""
  h = np.asarray(heatmaps, np.float64)
  b, height, width, count = h.shape
  peak = np.argmax(h.reshape(b, height * width, count), axis=1)  # (B, L)
  py, px = np.divmod(peak, width)
  bi, li = np.arange(b)[:, None], np.arange(count)[None, :]

  def refine(centre, size, sample):
    inner = (centre > 0) & (centre < size - 1)
    lo, mid, hi = (np.log(np.maximum(sample(np.clip(centre + d, 0, size - 1)), 1e-12))
                   for d in (-1, 0, 1))
    curvature = lo - 2 * mid + hi
    ok = inner & (curvature < 0)
    offset = np.where(ok, (lo - hi) / (2 * np.where(ok, curvature, -1.0)), 0.0)
    return centre + np.clip(offset, -1.0, 1.0)

  x = refine(px, width, lambda c: h[bi, py, c, li])
  y = refine(py, height, lambda c: h[bi, c, px, li])
  return np.stack([x, y], axis=-1)


def _volume_logits(model, variables, images):
  out = model.apply(variables, images, train=False)
  return out["volume"] if isinstance(out, dict) else out


def _eval_forward(model, variables, batch):
  """Per replica: soft volumes (b, 192, 192, 200) float32 and IoU (b,) against the decoded targets."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from vrn_jax.data import augment  # pylint: disable=g-import-not-at-top

  # No augmentation: the crop as stored (float in [0, 1]) and its target, as train.eval_step sees them.
  images, targets, _ = jax.vmap(lambda e: augment.augment_example(None, e, None, train=False))(batch)
  logits = _volume_logits(model, variables, images)
  pred = logits > 0.0
  inter = jnp.sum(pred & targets, axis=(1, 2, 3))
  union = jnp.sum(pred | targets, axis=(1, 2, 3))
  return jax.nn.sigmoid(logits), inter / jnp.maximum(union, 1)


def _photo_forward(model, variables, images):
  """Per replica: (b, 192, 192, 3) uint8 crops -> (b, 192, 192, 200) float32 soft volumes."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  return jax.nn.sigmoid(_volume_logits(model, variables, images.astype(jnp.float32) / 255.0))


def _detector_forward(detector, variables, images):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  return detector.apply(variables, images.astype(jnp.float32) / 255.0, train=False)[-1]


class Predictor:
  """Batched inference on every local device (`jax.pmap`); the last batch is padded, padding dropped.

  Attributes:
    batch_size: images per call, a multiple of the local device count.
  """

  def __init__(self, config, variables: dict, batch_size: int | None = None):
    import jax  # pylint: disable=g-import-not-at-top
    from flax import jax_utils  # pylint: disable=g-import-not-at-top

    from vrn_jax import models, train  # pylint: disable=g-import-not-at-top

    self.config = config
    self.model = train.create_model(config, axis_name=None)
    self.num_devices = jax.local_device_count()
    size = int(batch_size or config.eval_batch_size)
    self.batch_size = max(self.num_devices, size - size % self.num_devices)
    self._variables = jax_utils.replicate(variables)
    self._eval = jax.pmap(functools.partial(_eval_forward, self.model))
    self._photo = jax.pmap(functools.partial(_photo_forward, self.model))
    self.has_detector = config.model.variant == "vrn_guided"
    if self.has_detector:
      m = self.model
      detector = models.LandmarkDetector(
          features=m.features, num_hourglasses=m.num_detector_hourglasses, depth=m.depth,
          num_landmarks=m.num_landmarks, dtype=m.dtype, param_dtype=m.param_dtype)
      self._detector_variables = jax_utils.replicate(
          {"params": variables["params"]["detector"],
           "batch_stats": variables["batch_stats"]["detector"]})
      self._detect = jax.pmap(functools.partial(_detector_forward, detector))

  def _shard(self, arrays: dict) -> tuple[dict, int]:
    """(n <= batch_size, ...) arrays -> (devices, batch_size / devices, ...), padded with the last row."""
    n = len(next(iter(arrays.values())))
    per = self.batch_size // self.num_devices
    out = {}
    for k, v in arrays.items():
      v = np.asarray(v)
      if n < self.batch_size:
        v = np.concatenate([v, np.repeat(v[-1:], self.batch_size - n, axis=0)])
      out[k] = v.reshape(self.num_devices, per, *v.shape[1:])
    return out, n

  @staticmethod
  def _unshard(x, n: int) -> np.ndarray:
    x = np.asarray(x)
    return x.reshape(-1, *x.shape[2:])[:n]

  def evaluate_batch(self, fields: dict) -> tuple[np.ndarray, np.ndarray]:
    """Dataset fields (n <= batch_size rows, `pipeline.DEVICE_FIELDS` names) -> soft volumes
    (n, 192, 192, 200) float32 and IoU (n,)."""
    from vrn_jax.data import pipeline  # pylint: disable=g-import-not-at-top

    device = {k.replace("/", "_"): fields[k.replace("/", "_")] for k in pipeline.DEVICE_FIELDS}
    sharded, n = self._shard(device)
    probs, iou = self._eval(self._variables, sharded)
    return self._unshard(probs, n), self._unshard(iou, n)

  def volumes(self, crops: np.ndarray) -> np.ndarray:
    """(n <= batch_size, 192, 192, 3) uint8 crops -> (n, 192, 192, 200) float32 soft volumes."""
    sharded, n = self._shard({"image": crops})
    return self._unshard(self._photo(self._variables, sharded["image"]), n)

  def detect_landmarks(self, crops: np.ndarray) -> np.ndarray:
    """VRN-Guided only: (n <= batch_size, 192, 192, 3) uint8 -> (n, 68, 2) detected crop landmarks."""
    if not self.has_detector:
      raise ValueError("detect_landmarks needs a VRN-Guided model.")
    sharded, n = self._shard({"image": crops})
    return heatmap_peaks(self._unshard(self._detect(self._detector_variables, sharded["image"]), n))


# ------------------------------------------------------------------------------------------ ground truth


@dataclasses.dataclass(frozen=True)
class GroundTruth:
  """An example's 3DMM mesh in its crop frame (x, y crop pixels, z = voxel index * 0.5).

  Attributes:
    vertices: (N, 3) all model vertices.
    triangles: (T, 3) the model's triangles.
    landmark_indices: (68,) vertices of the iBUG landmarks.
    face_mask: (N,) bool, the face region the NME is taken over (no ears, no neck).
    transform: the crop transform (crop = scale * photo + t).
  """

  vertices: np.ndarray
  triangles: np.ndarray
  landmark_indices: np.ndarray
  face_mask: np.ndarray
  transform: CropTransform

  def face_mesh(self) -> Mesh:
    """The face region alone (its vertices and the triangles inside it), crop frame."""
    index = np.full(self.vertices.shape[0], -1, np.int64)
    index[self.face_mask] = np.arange(int(np.count_nonzero(self.face_mask)))
    faces = index[self.triangles[np.all(self.face_mask[self.triangles], axis=1)]]
    return Mesh(self.vertices[self.face_mask], faces)

  @property
  def landmarks(self) -> np.ndarray:
    """(68, 3) crop frame."""
    return self.vertices[self.landmark_indices]


class GroundTruthSource:
  """Rebuilds an example's ground-truth mesh the way the dataset builder made it (see the module doc).

  Args:
    dataset_config: the vrn_faces config the examples come from ('synthetic', '300w_lp', 'aflw2000_3d').
    manual_dir: for the real-data configs, the folder the dataset was built from (photos, .mat fits and
      the 3DMM).
  """

  # synthetic examples are named synthetic_<seed>_<index> (vrn_jax.data.build.synthetic_example).
  _SYNTHETIC_NAME = re.compile(r"^synthetic_(\d+)_(\d+)$")
  # Rebuilt vs stored: float32 storage of coordinates of a few hundred pixels rounds at ~1e-5 px.
  _TOLERANCE_PX = 1e-3

  def __init__(self, dataset_config: str, manual_dir: str | None = None):
    self.dataset_config = dataset_config
    self.manual_dir = manual_dir
    self._items = None
    self._model = None
    if dataset_config in ("300w_lp", "aflw2000_3d"):
      if not manual_dir:
        raise InputError(
            f"the NME of vrn_faces/{dataset_config} needs the ground-truth 3DMM meshes, which the "
            "examples do not store: pass --manual_dir=DIR, the folder the dataset was built from "
            "(photos, .mat fits and the 3DMM).")
      from vrn_jax.data import readers  # pylint: disable=g-import-not-at-top

      listing = readers.list_300w_lp if dataset_config == "300w_lp" else readers.list_aflw2000
      self._items = {item.name: item for item in listing(manual_dir)}
      self._model = readers.find_morphable_model(manual_dir)
    elif dataset_config != "synthetic":
      raise InputError(f"no ground-truth meshes for vrn_faces config {dataset_config!r}; expected "
                       "'synthetic', '300w_lp' or 'aflw2000_3d'.")

  def _rebuild_hint(self) -> str:
    if self.dataset_config == "synthetic":
      return ("the dataset was made by another version of the procedural generator: rebuild it (tfds build "
              "vrn_jax/datasets/vrn_faces --config=synthetic --overwrite).")
    return f"pass the --manual_dir the vrn_faces/{self.dataset_config} dataset was built from."

  def __call__(self, name: str, stored_transform, stored_landmarks) -> GroundTruth:
    from vrn_jax.data import examples  # pylint: disable=g-import-not-at-top
    from vrn_jax.geometry.pose import Pose  # pylint: disable=g-import-not-at-top

    if self.dataset_config == "synthetic":
      from vrn_jax.data.face_model import build_face_model  # pylint: disable=g-import-not-at-top
      from vrn_jax.data.synthetic import sample_face  # pylint: disable=g-import-not-at-top

      match = self._SYNTHETIC_NAME.match(name)
      if not match:
        raise InputError(f"example {name!r}: not a synthetic example name (synthetic_<seed>_<index>); "
                         "cannot rebuild its ground-truth mesh.")
      model = build_face_model()
      face = sample_face(model, np.random.default_rng([int(match.group(1)), int(match.group(2))]))
      photo_hw, pose_para, shape_para, exp_para = (face.image.shape[:2], face.pose_para,
                                                   face.shape_para, face.exp_para)
      source = "the procedural face generator"
    else:
      from vrn_jax.data import readers  # pylint: disable=g-import-not-at-top

      item = self._items.get(name)
      if item is None:
        raise InputError(f"example {name!r}: no such photo in {self.manual_dir}; pass the --manual_dir "
                         f"the vrn_faces/{self.dataset_config} dataset was built from.")
      model = self._model
      fit = readers.read_fit(item, model)
      photo_hw, pose_para, shape_para, exp_para = (fit.photo.shape[:2], fit.pose_para, fit.shape_para,
                                                   fit.exp_para)
      source = item.mat_path
    vertices, transform = examples.crop_vertices(model, Pose.from_pose_para(pose_para), shape_para,
                                                 exp_para, photo_hw)
    stored = CropTransform.from_array(stored_transform)
    landmark_error = float(np.max(np.abs(vertices[model.landmark_indices] - stored_landmarks)))
    scale_error = abs(transform.scale - stored.scale) / stored.scale
    offset_error = max(abs(a - b) for a, b in zip(transform.as_array()[1:], stored.as_array()[1:]))
    if landmark_error > self._TOLERANCE_PX or offset_error > self._TOLERANCE_PX or scale_error > 1e-6:
      raise InputError(
          f"example {name!r}: the ground truth rebuilt from {source} does not match the dataset example "
          f"(landmarks differ by up to {landmark_error:.3g} px, crop transform {transform.as_array()} "
          f"vs stored {stored.as_array()}); {self._rebuild_hint()}")
    return GroundTruth(vertices=vertices, triangles=np.asarray(model.triangles, np.int64),
                       landmark_indices=np.asarray(model.landmark_indices, np.int64),
                       face_mask=np.asarray(model.face_mask, bool), transform=stored)


# ------------------------------------------------------------------------------------ scoring, reporting


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def write_landmarks_xyz(path: str, points: np.ndarray) -> None:
  """(68, 3) points as 68 lines `x y z` (crop frame, 0-based pixels), atomically."""
  with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    for x, y, z in np.asarray(points, np.float64):
      f.write(f"{x:.6f} {y:.6f} {z:.6f}\n")


def score_example(index: int, example: dict, probs: np.ndarray, iou: float,
                  ground_truth: GroundTruthSource, export_dir: str | None = None) -> dict:
  """One row of samples.csv: isosurface of the soft volume, NMEs against the rebuilt ground truth.

  A prediction without a surface at level 0.5 is a failure (NaN NMEs, the reason in `error`). With
  `export_dir`, writes `<name>_pred.ply` (coloured from the crop), `<name>_gt.ply` (face region) and
  `<name>_landmarks.txt` (68 lines `x y z`), all in the crop frame.
  """
  start = time.perf_counter()
  name = _text(example["name"])
  yaw = float(example["yaw"])
  row = {"index": index, "name": name, "nme": math.nan, "nme_aligned": math.nan, "nme_bbox": math.nan,
         "iou": float(iou), "yaw": yaw, "pitch": float(example["pitch"]),
         "roll": float(example["roll"]), "yaw_bin": str(nme_lib.yaw_bins([yaw])[0]), "pred_vertices": 0,
         "error": ""}
  gt = ground_truth(name, example["crop_transform"], example["landmarks"])
  try:
    mesh = volume_to_mesh(probs, ISO_LEVEL, image=example["image"])
  except InputError as e:
    mesh = None
    row["error"] = f"no mesh: {e}"
  if mesh is not None:
    row["pred_vertices"] = int(mesh.vertices.shape[0])
    # The paper's frame: the prediction mapped back through the inverse crop, beside the photo's mesh.
    to_photo = gt.transform.to_photo
    try:
      row.update(nme_lib.nme_metrics(to_photo(mesh.vertices), to_photo(gt.vertices),
                                     gt.landmark_indices, gt.face_mask, mesh.faces))
      row["nme"] = row.pop("nme_paper")
    except InputError as e:
      row["error"] = f"no NME: {e}"
  if export_dir is not None:
    if mesh is not None:
      save_mesh(os.path.join(export_dir, f"{name}_pred.ply"), mesh)
    save_mesh(os.path.join(export_dir, f"{name}_gt.ply"), gt.face_mesh())
    write_landmarks_xyz(os.path.join(export_dir, f"{name}_landmarks.txt"), gt.landmarks)
  row["host_seconds"] = time.perf_counter() - start
  return row


def _stats(values) -> dict:
  v = np.asarray(values, np.float64)
  ok = v[np.isfinite(v)]
  if ok.size == 0:
    return {"mean": None, "median": None}
  return {"mean": float(np.mean(ok)), "median": float(np.median(ok))}


def summarise(rows: Sequence[dict]) -> dict:
  """Overall and per-|yaw|-bin means and medians (failures left out of them, and counted)."""
  def block(selected):
    failed = [r for r in selected if not np.isfinite(r["nme"])]
    return {"count": len(selected), "failures": len(failed),
            **{k: _stats([r[k] for r in selected]) for k in ("nme", "nme_aligned", "nme_bbox", "iou")}}

  out = block(rows)
  out["yaw_bins"] = {label: block([r for r in rows if r["yaw_bin"] == label])
                     for label in nme_lib.YAW_BIN_LABELS}
  return out


def write_samples_csv(path: str, rows: Sequence[dict]) -> None:
  with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=SAMPLE_COLUMNS)
    writer.writeheader()
    for r in rows:
      writer.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in SAMPLE_COLUMNS})


def _read_batches(source, count: int, batch_size: int) -> Iterator[tuple[int, dict]]:
  from vrn_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  for start in range(0, count, batch_size):
    # One batch decoded at a time: the split never sits decoded in host memory.
    items = [pipeline.flatten_example(source[i], EVAL_FIELDS)
             for i in range(start, min(start + batch_size, count))]
    yield start, {k: np.stack([it[k] for it in items]) for k in items[0]}


def evaluate_source(predictor, source, ground_truth: GroundTruthSource, out_dir: str,
                    num_examples: int = -1, export_meshes: int = 0, host_threads: int | None = None,
                    title: str = "", info: dict | None = None) -> dict:
  """Predicts, meshes and scores the first `num_examples` of `source` (all if < 0); writes
  `out_dir/metrics.json`, `samples.csv`, `ced.png` and, for the first `export_meshes`, `out_dir/meshes/`.

  Inference runs batch after batch on the devices while a thread pool meshes and scores the finished
  ones (and a reader thread decodes the next batch).

  Args:
    predictor: a `Predictor` (anything with `batch_size` and `evaluate_batch(fields)`).
    source: random-access examples (`pipeline.data_source`).
    title: the CED plot's title.
    info: what was evaluated (step, dataset, ...), written at the top of metrics.json.
  Returns:
    The metrics dict written to metrics.json.
  """
  from vrn_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  count = len(source) if num_examples < 0 else min(num_examples, len(source))
  if count == 0:
    raise InputError("no examples to evaluate (the split is empty or --num_examples=0).")
  threads = host_threads or min(4, os.cpu_count() or 1)
  export_dir = os.path.join(out_dir, "meshes") if export_meshes > 0 else None
  rows: list[dict | None] = [None] * count
  pending: collections.deque = collections.deque()
  started = time.perf_counter()
  infer_seconds = 0.0
  done = 0

  def collect(future):
    nonlocal done
    row = future.result()
    rows[row["index"]] = row
    done += 1
    if done % 50 == 0 or done == count:
      rate = done / (time.perf_counter() - started)
      logging.info("scored %d/%d examples (%.2f examples/s)", done, count, rate)

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    try:
      for start, fields in pipeline.background(_read_batches(source, count, predictor.batch_size)):
        t0 = time.perf_counter()
        probs, ious = predictor.evaluate_batch(fields)
        infer_seconds += time.perf_counter() - t0
        for j in range(probs.shape[0]):
          # Bound the soft volumes (29 MB each) waiting on the host.
          while len(pending) >= 2 * max(threads, predictor.batch_size):
            collect(pending.popleft())
          index = start + j
          example = {k: v[j] for k, v in fields.items()}
          pending.append(pool.submit(score_example, index, example, probs[j], float(ious[j]),
                                     ground_truth, export_dir if index < export_meshes else None))
      while pending:
        collect(pending.popleft())
    finally:
      for future in pending:
        future.cancel()
  wall = time.perf_counter() - started

  metrics = {**(info or {}), **summarise(rows), "protocols": PROTOCOLS, "iso_level": ISO_LEVEL,
             "timing": {"wall_seconds": wall, "inference_seconds": infer_seconds,
                        "host_seconds_per_example": float(np.mean([r["host_seconds"] for r in rows])),
                        "host_threads": threads, "batch_size": predictor.batch_size,
                        "examples_per_second": count / wall}}
  write_samples_csv(os.path.join(out_dir, "samples.csv"), rows)
  nmes = np.array([r["nme"] for r in rows])
  bins = np.array([r["yaw_bin"] for r in rows])
  curves = {f"all ({count})": nmes,
            f"all, with rigid ICP alignment ({count})": np.array([r["nme_aligned"] for r in rows])}
  for label in nme_lib.YAW_BIN_LABELS:
    if np.any(bins == label):
      curves[f"|yaw| {label} ({int(np.sum(bins == label))})"] = nmes[bins == label]
  nme_lib.plot_ced(curves, os.path.join(out_dir, "ced.png"), title=title or None)
  with atomic_output(os.path.join(out_dir, "metrics.json")) as tmp, open(tmp, "w") as f:
    json.dump(metrics, f, indent=1)
  return metrics


def evaluate_checkpoint(workdir: str, config=None, step: int | None = None, num_examples: int = -1,
                        export_meshes: int = 0, manual_dir: str | None = None,
                        batch_size: int | None = None, host_threads: int | None = None) -> dict:
  """Evaluates checkpoint `step` (default: latest) of `workdir` on the config's evaluation split
  (`config.data.eval_config` / `eval_split`); writes `workdir/eval/<step>/`. Returns metrics.json's dict
  plus 'step' and 'output_dir'."""
  from vrn_jax import train  # pylint: disable=g-import-not-at-top
  from vrn_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = load_config(workdir, config)
  variables, step = restore_variables(config, workdir, step)
  data = config.data
  ground_truth = GroundTruthSource(data.eval_config, manual_dir)
  train.ensure_dataset(config, data.eval_config, data.eval_split)
  source = pipeline.data_source(data.data_dir, data.eval_config, data.eval_split)
  predictor = Predictor(config, variables, batch_size)
  out_dir = os.path.join(workdir, "eval", str(step))
  title = f"{config.model.variant} step {step}, vrn_faces/{data.eval_config} {data.eval_split}"
  logging.info("Evaluating %s on vrn_faces/%s/%s (%d examples) with batches of %d on %d device(s).",
               title, data.eval_config, data.eval_split,
               len(source) if num_examples < 0 else min(num_examples, len(source)),
               predictor.batch_size, predictor.num_devices)
  info = {"step": step, "workdir": workdir,
          "dataset": f"vrn_faces/{data.eval_config}/{data.eval_split}",
          "model": {k: config.model[k] for k in ("variant", "topology", "features", "depth")}}
  metrics = evaluate_source(predictor, source, ground_truth, out_dir, num_examples, export_meshes,
                            host_threads, title=f"{title}: NME (paper protocol)", info=info)
  return {**metrics, "output_dir": out_dir}


# -------------------------------------------------------------------------------------------- photos


@dataclasses.dataclass
class PhotoResult:
  """What became of one photo: its outputs, or the error that stopped it (then nothing was written)."""

  path: str
  name: str
  outputs: list[str] = dataclasses.field(default_factory=list)
  error: str | None = None
  crop_source: str = ""


def find_images(spec: str) -> list[str]:
  """Photos named by `spec`: comma-separated files, directories (their images) or glob patterns."""
  paths = []
  for part in (p.strip() for p in spec.split(",")):
    if not part:
      continue
    part = os.path.expanduser(part)
    if os.path.isdir(part):
      found = sorted(p for p in glob.glob(os.path.join(part, "*"))
                     if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS)
    elif glob.has_magic(part):
      found = sorted(p for p in glob.glob(part) if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS)
    else:
      found = [part]  # a missing file becomes that photo's own error
    if not found:
      raise InputError(f"--images {part!r}: matches no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    paths += found
  if not paths:
    raise InputError("--images: no photos given.")
  return list(dict.fromkeys(paths))


def read_boxes(path: str) -> dict[str, tuple[float, float, float, float]]:
  """A face-box file: one line `name x0 y0 x1 y1` per photo (spaces or commas), `name` the photo's file
  name or stem, the box in 0-based pixels (x0, y0 top-left, x1, y1 bottom-right); blank lines and lines
  starting with # are ignored."""
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such box file.")
  boxes = {}
  with open(path, encoding="utf-8", errors="replace") as f:
    for line_no, line in enumerate(f, 1):
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      parts = line.replace(",", " ").split()
      try:
        values = tuple(float(v) for v in parts[1:])
      except ValueError:
        values = ()
      if len(parts) != 5 or len(values) != 4:
        raise InputError(f"{path}, line {line_no}: {line!r}; expected `name x0 y0 x1 y1`.")
      boxes[parts[0]] = values
  return boxes


def _photo_transform(path: str, photo: np.ndarray, mode: str, landmarks_dir: str | None,
                     boxes: dict | None) -> tuple[CropTransform | None, str]:
  """The crop of one photo, and where it came from; None with mode 'auto' when only the detector (or a
  centred crop) is left."""
  stem = os.path.splitext(os.path.basename(path))[0]
  landmark_path = os.path.join(landmarks_dir or os.path.dirname(path), stem + ".txt")
  if mode == "landmarks" or (mode == "auto" and os.path.isfile(landmark_path)):
    if not os.path.isfile(landmark_path):
      raise InputError(f"{landmark_path}: no such landmark file (68 lines `x,y`, 1-based, named after "
                       "the photo); pass --landmarks=DIR or another --crop.")
    return crop_from_landmarks(read_landmarks_txt(landmark_path), photo.shape[:2],
                               what=landmark_path), f"landmarks {landmark_path}"
  if mode == "box" or (mode == "auto" and boxes):
    box = None if boxes is None else boxes.get(os.path.basename(path), boxes.get(stem))
    if box is None:
      if mode == "box":
        raise InputError(f"{path}: no box for {os.path.basename(path)!r} or {stem!r} in the --boxes file.")
    else:
      return crop_from_box(box), "box"
  if mode == "center":
    return crop_centre(photo.shape[:2]), "centre"
  if mode == "none":
    if photo.shape[:2] != (CROP_SIZE, CROP_SIZE):
      raise InputError(f"{path}: image is {photo.shape[1]}x{photo.shape[0]}; --crop=none takes "
                       f"{CROP_SIZE}x{CROP_SIZE} crops as they are.")
    return CropTransform(1.0, 0.0, 0.0), "none"
  return None, ""


def _shaded(mesh: Mesh, rotation: np.ndarray, size: int, scale: int) -> np.ndarray:
  """(size * scale)^2 grey Lambert render of a crop-frame mesh turned by `rotation` about its centre."""
  from vrn_jax.data import render  # pylint: disable=g-import-not-at-top

  v = mesh.vertices
  centre = np.array([(size - 1) / 2, (size - 1) / 2, float(np.mean(v[:, 2]))])
  v = (v - centre) @ rotation.T + centre
  # Pixel i of the crop covers [i - 0.5, i + 0.5]; its `scale` sub-pixels have centres at scale * i +
  # (scale - 1) / 2 + ... : x' = scale * (x + 0.5) - 0.5.
  v = np.concatenate([scale * (v[:, :2] + 0.5) - 0.5, scale * v[:, 2:]], axis=1)
  albedo = np.full((v.shape[0], 3), 0.8)
  rgb, covered = render.render_layers(v, mesh.faces, albedo, (0.3, -0.4, 1.0), 0.25,
                                      (size * scale, size * scale), diffuse=0.85)
  out = np.full(rgb.shape, 0.12)
  out[covered] = rgb[covered]
  return (np.clip(out, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def preview_image(crop: np.ndarray, mesh: Mesh, scale: int = 2) -> np.ndarray:
  """The crop beside shaded renders of its mesh, frontal and turned 50 degrees: (192 s, 3 * 192 s, 3)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from scipy.spatial.transform import Rotation  # pylint: disable=g-import-not-at-top

  size = crop.shape[0]
  big = np.asarray(Image.fromarray(crop).resize((size * scale, size * scale), Image.Resampling.BICUBIC))
  turned = Rotation.from_euler("y", -50, degrees=True).as_matrix()
  return np.concatenate([big, _shaded(mesh, np.eye(3), size, scale),
                         _shaded(mesh, turned, size, scale)], axis=1)


def _write_photo_outputs(result: PhotoResult, output_dir: str, crop: np.ndarray,
                         transform: CropTransform, probs: np.ndarray, raw: bool) -> PhotoResult:
  """Meshes and renders first, then writes every output (each atomically); if anything fails, the
  outputs already written for this photo are removed again."""
  name = result.name
  try:
    mesh = volume_to_mesh(probs, ISO_LEVEL, image=crop)
  except InputError as e:
    result.error = f"{result.path}: the predicted volume has no face surface ({e})."
    return result
  preview = preview_image(crop, mesh)
  base = os.path.join(output_dir, name)
  writers: list[tuple[str, Callable[[str], Any]]] = [
      (base + "_crop.png", lambda p: write_image_rgb(p, crop)),
      (base + "_crop.json", transform.save_json),
      (base + ".npy", lambda p: _save_npy(p, probs)),
  ]
  if raw:
    writers.append((base + ".raw", lambda p: write_raw(p, probs)))
  writers += [
      (base + ".obj", lambda p: save_mesh(p, mesh)),
      (base + "_photo.obj", lambda p: save_mesh(p, mesh.to_photo(transform))),
      (base + "_preview.png", lambda p: write_image_rgb(p, preview)),
  ]
  try:
    for path, write in writers:
      write(path)
      result.outputs.append(path)
  except BaseException:
    for path in result.outputs:
      if os.path.exists(path):
        os.remove(path)
    result.outputs = []
    raise
  return result


def _save_npy(path: str, volume: np.ndarray) -> None:
  with atomic_output(path) as tmp:
    np.save(tmp, np.asarray(volume, np.float32))


def _prepare_photo(path: str, mode: str, landmarks_dir: str | None, boxes: dict | None):
  photo = read_image_rgb(path)
  transform, source = _photo_transform(path, photo, mode, landmarks_dir, boxes)
  return photo, transform, source


def reconstruct_photos(predictor, paths: Sequence[str], output_dir: str, crop: str = "auto",
                       landmarks_dir: str | None = None, boxes: dict | None = None, raw: bool = False,
                       host_threads: int | None = None) -> list[PhotoResult]:
  """Reconstructs each photo; returns one `PhotoResult` per path, in order (bad inputs carry `error`).

  Outputs per photo `<name>` (its file stem) in `output_dir`: `<name>_crop.png` (the 192x192 input),
  `<name>_crop.json` (its crop transform), `<name>.npy` (192, 192, 200) float32 soft volume (y, x, z),
  `<name>.raw` with `raw` (the release's format), `<name>.obj` (coloured mesh, crop pixels),
  `<name>_photo.obj` (the same in photo pixels), `<name>_preview.png` (crop, shaded frontal and turned
  renders).

  Args:
    predictor: a `Predictor`.
    crop: 'landmarks' (`<stem>.txt` in `landmarks_dir`, default beside the photo), 'box' (`boxes`),
      'center', 'none' (192x192 inputs as they are) or 'auto': landmarks when the file exists, else a box
      when `boxes` has one, else VRN-Guided's landmark detector, else a centred crop (with a warning).
    boxes: name -> (x0, y0, x1, y1), see `read_boxes`.
  """
  if crop not in CROP_MODES:
    raise InputError(f"--crop={crop!r}; expected one of {', '.join(CROP_MODES)}.")
  os.makedirs(output_dir, exist_ok=True)
  threads = host_threads or min(4, os.cpu_count() or 1)
  results = []
  seen: dict[str, str] = {}
  for path in paths:
    name = os.path.splitext(os.path.basename(path))[0]
    result = PhotoResult(path=path, name=name)
    if name in seen:
      result.error = f"{path}: same name as {seen[name]}; its outputs would overwrite that photo's."
    seen.setdefault(name, path)
    results.append(result)

  todo = [r for r in results if r.error is None]
  chunks = [todo[i:i + predictor.batch_size] for i in range(0, len(todo), predictor.batch_size)]
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    # One batch of photos in memory at a time: the next is read while this one is predicted, and the
    # finished ones are meshed and written meanwhile.
    def read(chunk):
      return [pool.submit(_prepare_photo, r.path, crop, landmarks_dir, boxes) for r in chunk]

    pending: collections.deque = collections.deque()
    reading = read(chunks[0]) if chunks else []
    for k, chunk in enumerate(chunks):
      prepared = {}
      for r, future in zip(chunk, reading):
        try:
          prepared[id(r)] = future.result()
        except InputError as e:
          r.error = str(e)
      reading = read(chunks[k + 1]) if k + 1 < len(chunks) else []
      _fill_missing_crops(predictor, [r for r in chunk if r.error is None], prepared)
      ready = [r for r in chunk if r.error is None]
      if not ready:
        continue
      crops = np.stack([crop_image(*prepared[id(r)][:2]) for r in ready])
      probs = predictor.volumes(crops)
      for j, r in enumerate(ready):
        r.crop_source = prepared[id(r)][2]
        while len(pending) >= 2 * max(threads, predictor.batch_size):
          _finish(pending.popleft())
        pending.append((r, pool.submit(_write_photo_outputs, r, output_dir, crops[j],
                                       prepared[id(r)][1], probs[j], raw)))
    while pending:
      _finish(pending.popleft())
  return results


def _finish(item) -> None:
  result, future = item
  try:
    future.result()
  except InputError as e:
    result.error = f"{result.path}: {e}"


def _fill_missing_crops(predictor, results: Sequence[PhotoResult], prepared: dict) -> None:
  """Photos with neither landmarks nor a box: VRN-Guided's detector on a centred crop finds the 68
  landmarks, and run.m's crop is taken from them; other models get the centred crop (with a warning)."""
  missing = [r for r in results if prepared[id(r)][1] is None]
  if not missing:
    return
  if not predictor.has_detector:
    logging.warning("no landmarks or box for %d photo(s) (%s) and the model has no landmark detector: "
                    "using a centred square crop; give --landmarks or --boxes for faces that do not fill "
                    "the photo's centre.", len(missing), ", ".join(r.name for r in missing[:5]))
    for r in missing:
      photo = prepared[id(r)][0]
      prepared[id(r)] = (photo, crop_centre(photo.shape[:2]), "centre (no landmarks)")
    return
  for start in range(0, len(missing), predictor.batch_size):
    chunk = missing[start:start + predictor.batch_size]
    centred = [crop_centre(prepared[id(r)][0].shape[:2]) for r in chunk]
    crops = np.stack([crop_image(prepared[id(r)][0], t) for r, t in zip(chunk, centred)])
    detected = predictor.detect_landmarks(crops)
    for r, t, points in zip(chunk, centred, detected):
      photo = prepared[id(r)][0]
      try:
        transform = crop_from_landmarks(t.to_photo(points), photo.shape[:2],
                                        what=f"{r.path} (detected landmarks)")
      except InputError as e:
        r.error = str(e)
        continue
      prepared[id(r)] = (photo, transform, "detected landmarks")


def reconstruct_checkpoint(workdir: str, images: str, output_dir: str, config=None,
                           step: int | None = None, crop: str = "auto", landmarks_dir: str | None = None,
                           boxes_file: str | None = None, raw: bool = False,
                           batch_size: int | None = None,
                           host_threads: int | None = None) -> list[PhotoResult]:
  """`reconstruct_photos` with checkpoint `step` (default: latest) of `workdir`."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  paths = find_images(images)
  boxes = read_boxes(boxes_file) if boxes_file else None
  if crop == "box" and boxes is None:
    raise InputError("--crop=box needs --boxes=FILE (lines `name x0 y0 x1 y1`).")
  if crop not in CROP_MODES:
    raise InputError(f"--crop={crop!r}; expected one of {', '.join(CROP_MODES)}.")
  if landmarks_dir and not os.path.isdir(landmarks_dir):
    raise InputError(f"--landmarks={landmarks_dir}: no such directory.")
  config = load_config(workdir, config)
  variables, step = restore_variables(config, workdir, step)
  predictor = Predictor(config, variables, batch_size)
  logging.info("Reconstructing %d photo(s) with %s step %d, batches of %d on %d device(s).", len(paths),
               config.model.variant, step, predictor.batch_size, predictor.num_devices)
  return reconstruct_photos(predictor, paths, output_dir, crop, landmarks_dir, boxes, raw, host_threads)
