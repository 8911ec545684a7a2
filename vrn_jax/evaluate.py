"""Evaluation of checkpoints on a dataset split; `run_eval.py` is the command line (photos: `reconstruct.py`).

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
  - `iou`: volume IoU of the prediction (soft volume > 0.5, after the config's smooth_z_voxels:
    `inference.fold_z_smoothing`, and with its test_time_flip the mean of the crop's and its mirror
    image's) against the decoded target.
Results go to `<workdir>/eval/<step>/`: `metrics.json` (means, medians, |yaw| bins, failures),
`samples.csv` (one row per example) and `ced.png` (cumulative error distribution, NME 0-0.1).

Ground truth. The examples carry the crop, the compact target volume, the 68 landmarks and the crop
transform, not the 3DMM mesh the NME is defined on. The mesh is rebuilt exactly as the dataset builder
made it (`GroundTruthSource`): for `synthetic` examples (and the `synthetic_*` ablation sets) from the
procedural generator (each example is a pure function of the seed and index in its name, and of the
config's `SceneOptions`, whose `expressions` choose the expression draw), for `300w_lp` / `aflw2000_3d`
from the fits in the user's `--manual_dir` (the folder the dataset was built from). Each rebuilt mesh is
checked against the example's stored crop transform and landmarks, so a generator or folder that no
longer matches the dataset is an error, not a silently wrong score. The target volume's isosurface is
*not* used as ground truth: it is a closed solid (face, sides, back plane) whose vertices carry no
identity, so neither the face region nor the vertices at landmarks 37 and 46 that define the paper's
normaliser exist on it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import json
import math
import os
import re
import time
from typing import Iterator, Sequence

import numpy as np
from absl import logging
from tqdm import tqdm

from vrn_jax.data import examples, pipeline, readers
from vrn_jax.errors import InputError
from vrn_jax.faces.scene import synthetic_configs
from vrn_jax.files import atomic_output
from vrn_jax.geometry import nme as nme_lib
from vrn_jax.geometry.crop import CropTransform
from vrn_jax.geometry.isosurface import ISO_LEVEL, Mesh, save_mesh, volume_to_mesh
from vrn_jax.geometry.pose import Pose
from vrn_jax.inference import Predictor, load_config, restore_variables
from vrn_jax.training import loop

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
    "iou": "volume IoU, prediction (soft volume > 0.5, smoothed along z by the config's smooth_z_voxels, "
           "with its test_time_flip averaged with the mirror image's) vs the decoded target",
}


# ------------------------------------------------------------------------------------------ ground truth


@dataclasses.dataclass(frozen=True)
class GroundTruth:
  """An example's 3DMM mesh in its crop frame (x, y crop pixels, z = voxel index * 0.5).

  Attributes:
    vertices: (N, 3) all model vertices.
    triangles: (T, 3) the model's triangles.
    landmark_indices: (68,) the model's vertices of the iBUG landmarks (the 3D landmarks the NME's
      normalisers read; the example's own jaw landmarks follow the face's outline instead:
      `data.examples.landmark_indices`).
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
    dataset_config: the vrn_faces config the examples come from: 'synthetic' or any synthetic_* config
      the builder registers (`scene.synthetic_configs`), '300w_lp', 'aflw2000_3d'.
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
    # A synthetic config's scene: an ablation set has the same seeds, but its expressions may differ.
    self.scene = synthetic_configs().get(dataset_config)
    if dataset_config in ("300w_lp", "aflw2000_3d"):
      if not manual_dir:
        raise InputError(
            f"the NME of vrn_faces/{dataset_config} needs the ground-truth 3DMM meshes, which the "
            "examples do not store: pass --manual_dir=DIR, the folder the dataset was built from "
            "(photos, .mat fits and the 3DMM).")
      listing = readers.list_300w_lp if dataset_config == "300w_lp" else readers.list_aflw2000
      self._items = {item.name: item for item in listing(manual_dir)}
      self._model = readers.find_morphable_model(manual_dir)
    elif self.scene is None:
      raise InputError(f"no ground-truth meshes for vrn_faces config {dataset_config!r}; expected "
                       f"one of {', '.join(synthetic_configs())}, '300w_lp' or 'aflw2000_3d'.")

  def _rebuild_hint(self) -> str:
    if self.scene is not None:
      return ("the dataset was made by another version of the procedural generator: rebuild it (tfds build "
              f"vrn_jax/datasets/vrn_faces --config={self.dataset_config} --overwrite).")
    return f"pass the --manual_dir the vrn_faces/{self.dataset_config} dataset was built from."

  def __call__(self, name: str, stored_transform, stored_landmarks) -> GroundTruth:
    if self.scene is not None:
      # The procedural generator (with its renderer, props, backgrounds) loads only for a synthetic split.
      from vrn_jax.faces.face_model import build_face_model  # pylint: disable=g-import-not-at-top
      from vrn_jax.faces.synthetic import sample_geometry  # pylint: disable=g-import-not-at-top

      match = self._SYNTHETIC_NAME.match(name)
      if not match:
        raise InputError(f"example {name!r}: not a synthetic example name (synthetic_<seed>_<index>); "
                         "cannot rebuild its ground-truth mesh.")
      model = build_face_model()
      # The geometry alone (drawn first, whatever the scene): no photo is rendered.
      face = sample_geometry(model, np.random.default_rng([int(match.group(1)), int(match.group(2))]),
                             scene=self.scene)
      photo_hw, pose_para, shape_para, exp_para = ((face.image_size, face.image_size), face.pose_para,
                                                   face.shape_para, face.exp_para)
      source = "the procedural face generator"
    else:
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
    landmark_error = float(np.max(np.abs(vertices[examples.landmark_indices(model, vertices)]
                                         - stored_landmarks)))
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
  for start in range(0, count, batch_size):
    # One batch decoded at a time: the split never sits decoded in host memory.
    items = [pipeline.flatten_example(source[i], EVAL_FIELDS)
             for i in range(start, min(start + batch_size, count))]
    yield start, {k: np.stack([it[k] for it in items]) for k in items[0]}


def evaluate_source(predictor, source, ground_truth: GroundTruthSource, out_dir: str,
                    num_examples: int = -1, export_meshes: int = 0, host_threads: int | None = None,
                    title: str = "", info: dict | None = None, progress: bool = False) -> dict:
  """Predicts, meshes and scores the first `num_examples` of `source` (all if < 0); writes
  `out_dir/metrics.json`, `samples.csv`, `ced.png` and, for the first `export_meshes`, `out_dir/meshes/`.

  Inference runs batch after batch on the devices while a thread pool meshes and scores the finished
  ones (and a reader thread decodes the next batch).

  Args:
    predictor: a `Predictor` (anything with `batch_size` and `evaluate_batch(fields)`).
    source: random-access examples (`pipeline.data_source`).
    title: the CED plot's title.
    info: what was evaluated (step, dataset, ...), written at the top of metrics.json.
    progress: a progress bar (examples scored, with ETA) on stderr.
  Returns:
    The metrics dict written to metrics.json.
  """
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

  bar = tqdm(total=count, unit="example", desc="evaluating", disable=not progress, dynamic_ncols=True)

  def collect(future):
    nonlocal done
    row = future.result()
    rows[row["index"]] = row
    done += 1
    bar.update(1)
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
      bar.close()
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
                        batch_size: int | None = None, host_threads: int | None = None,
                        progress: bool = False) -> dict:
  """Evaluates checkpoint `step` (default: latest) of `workdir` on the config's evaluation split
  (`config.data.eval_config` / `eval_split`); writes `workdir/eval/<step>/`. Returns metrics.json's dict
  plus 'step' and 'output_dir'."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = load_config(workdir, config)
  variables, step = restore_variables(config, workdir, step)
  data = config.data
  ground_truth = GroundTruthSource(data.eval_config, manual_dir)
  loop.ensure_dataset(config, data.eval_config, data.eval_split)
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
                            host_threads, title=f"{title}: NME (paper protocol)", info=info,
                            progress=progress)
  return {**metrics, "output_dir": out_dir}
