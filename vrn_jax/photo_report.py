"""Real-photo measurements without 3D ground truth: `run_eval.py --images=... --photo_metrics`.

Reconstructs the photos as `run_eval.py --images` does (`reconstruct.reconstruct_photos`: every output of
every face), then scores each face with `vrn_jax.photo_metrics` against the same figures of the synthetic
ground truth at its yaw, and writes

  OUT/photo_metrics.json   per face, a summary, the ground-truth reference and pass/fail against the
                           issue's goals (`photo_metrics.GOALS`; relief inside the ground truth's range);
  OUT/contact_sheet.png    one row per face (the first CONTACT_SHEET_MAX_ROWS): the photo with the crop's
                           square, the crop with its landmarks (green; the network's own in red), the
                           face hull (yellow) and the volume's silhouette (cyan), the shaded mesh over the
                           photo, and the mesh turned 60 degrees about the vertical axis.

Landmarks: the crop's own when it came from a landmark file (`<stem>.txt` beside the photo or in
--landmarks) or from the face finder; otherwise (--crop=box, center, guided, none) `<stem>.txt` if there
is one, else the face the face finder finds nearest the crop's centre.

The ground-truth reference (`photo_metrics.reference_from_examples`) comes from the evaluation split of
the model's config (`data.eval_config` / `data.eval_split`: the synthetic test split for the default
model). It is built once per dataset and kept beside it as `photo_metrics_reference_<split>.json`, tied to
that build by a hash of its dataset_info.json; `--photo_reference=FILE` names another.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
from typing import Sequence

import numpy as np
from absl import logging
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from vrn_jax import photo_metrics, reconstruct
from vrn_jax.data import pipeline
from vrn_jax.errors import InputError
from vrn_jax.face_finder import default_face_finder
from vrn_jax.files import atomic_output, read_image_rgb, read_landmarks_txt, write_image_rgb
from vrn_jax.geometry.crop import CROP_SIZE, CropTransform, crop_image
from vrn_jax.geometry.isosurface import Mesh

METRICS_FILE = "photo_metrics.json"
CONTACT_SHEET_FILE = "contact_sheet.png"
CONTACT_SHEET_MAX_ROWS = 100  # rows of 256 x 1024 pixels: a folder of thousands of faces stays viewable
TILE = 256  # contact-sheet tile side (pixels)
TURN_DEG = 60.0
# A cached reference is rebuilt when this changes (a figure's definition, the template, the bins).
REFERENCE_VERSION = 2


def _json_safe(value):
  """NumPy scalars/arrays to Python, NaN and infinity to None (JSON has neither)."""
  if isinstance(value, dict):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, np.ndarray):
    return _json_safe(value.tolist())
  if isinstance(value, (np.bool_, bool)):
    return bool(value)
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


def write_json(path: str, data) -> None:
  with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    json.dump(_json_safe(data), f, indent=1)


# ------------------------------------------------------------------------------- ground-truth reference


def reference_cache_path(data_dir: str, dataset_config: str, split: str) -> str:
  return os.path.join(pipeline.dataset_dir(data_dir, dataset_config),
                      f"photo_metrics_reference_{split}.json")


def _fingerprint(data_dir: str, dataset_config: str, split: str) -> str:
  """Which build of the dataset (its dataset_info.json), split and reference definition."""
  info = os.path.join(pipeline.dataset_dir(data_dir, dataset_config), "dataset_info.json")
  digest = hashlib.sha256()
  with open(info, "rb") as f:
    digest.update(f.read())
  digest.update(f"{split}:{REFERENCE_VERSION}".encode())
  return digest.hexdigest()


def load_reference(path: str) -> dict:
  """A reference JSON written by `dataset_reference` (or the 'reference' of a photo_metrics.json)."""
  try:
    with open(path, encoding="utf-8") as f:
      reference = json.load(f)
  except FileNotFoundError:
    raise InputError(f"{path}: no such reference file.") from None
  except ValueError as e:
    raise InputError(f"{path}: not a readable JSON reference ({e}).") from e
  if isinstance(reference, dict) and "reference" in reference and "faces" in reference:
    reference = reference["reference"]  # a photo_metrics.json
  missing = [k for k in ("yaw_bins", "template") if not isinstance(reference, dict) or k not in reference]
  if missing:
    raise InputError(f"{path}: not a photo-metrics reference (missing {', '.join(missing)}); expected the "
                     "JSON `run_eval.py --photo_metrics` writes beside the dataset.")
  bins = reference["yaw_bins"]
  if not isinstance(bins, dict) or set(bins) != set(photo_metrics.YAW_BIN_LABELS):
    raise InputError(f"{path}: yaw_bins {sorted(bins) if isinstance(bins, dict) else bins!r}; expected "
                     f"{list(photo_metrics.YAW_BIN_LABELS)}.")
  if np.asarray(reference["template"]).shape != (photo_metrics.NUM_LANDMARKS, 3):
    raise InputError(f"{path}: template of shape {np.asarray(reference['template']).shape}; expected "
                     f"({photo_metrics.NUM_LANDMARKS}, 3).")
  return reference


def dataset_reference(data_dir: str, dataset_config: str, split: str, threads: int = 2,
                      progress: bool = True) -> tuple[dict, str]:
  """The ground-truth reference of a built `vrn_faces` split, from its cache beside the dataset when
  that matches the build, else computed from every example of the split (and cached, where the
  dataset's folder is writable). Returns (reference, where it was read or written)."""
  source = pipeline.data_source(data_dir, dataset_config, split)  # an InputError naming a missing build
  path = reference_cache_path(data_dir, dataset_config, split)
  fingerprint = _fingerprint(data_dir, dataset_config, split)
  if os.path.isfile(path):
    try:
      cached = load_reference(path)
      if cached.get("fingerprint") == fingerprint:
        return cached, path
      logging.info("%s: another build or definition; recomputing the reference.", path)
    except InputError as e:
      logging.warning("%s; recomputing the reference.", e)
  count = len(source)
  logging.info("Ground-truth reference from the %d examples of vrn_faces/%s %s (once per dataset).",
               count, dataset_config, split)
  examples = tqdm((source[i] for i in range(count)), total=count, unit="example", desc="ground truth",
                  disable=not progress, dynamic_ncols=True)
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    # In order, a few at a time: examples are read as they are scored, not all up front.
    reference = photo_metrics.reference_from_examples(
        examples, map_fn=lambda fn, items: _bounded_map(pool, fn, items, 4 * max(1, threads)))
  examples.close()
  reference.update(dataset=f"vrn_faces/{dataset_config} {pipeline.VERSION}", split=split,
                   fingerprint=fingerprint, version=REFERENCE_VERSION)
  try:
    write_json(path, reference)
  except OSError as e:
    logging.warning("Could not cache the reference at %s (%s); it is in photo_metrics.json.", path, e)
    path = ""
  return reference, path


def _bounded_map(pool, fn, items, window: int):
  """`pool.map(fn, items)` in order with at most `window` items in flight."""
  pending = []
  for item in items:
    pending.append(pool.submit(fn, item))
    if len(pending) >= window:
      yield pending.pop(0).result()
  for future in pending:
    yield future.result()


# ------------------------------------------------------------------------------------------ landmarks


def face_landmarks(result: reconstruct.PhotoResult, photo: np.ndarray, transform: CropTransform,
                   landmarks_dir: str | None, finder_fn) -> tuple[np.ndarray | None, str]:
  """(68, 2) photo landmarks of one reconstructed face and where they came from (see the module doc);
  (None, why) when there are none. `finder_fn()` gives the face finder, made only when needed."""
  stem = os.path.splitext(os.path.basename(result.path))[0]
  txt = os.path.join(landmarks_dir or os.path.dirname(result.path), stem + ".txt")
  if result.crop_source.startswith("landmarks "):
    path = result.crop_source[len("landmarks "):]
    return read_landmarks_txt(path), f"file {path}"
  if result.face is not None:
    return np.asarray(result.face.landmarks, np.float64), f"face finder ({result.face.detector})"
  if os.path.isfile(txt):
    return read_landmarks_txt(txt), f"file {txt}"
  faces = finder_fn().find(photo)
  if not faces:
    return None, f"no landmarks: no {txt} and the face finder found no face"
  centre = np.array([(CROP_SIZE - 1) / 2] * 2)
  nearest = min(faces, key=lambda f: float(np.linalg.norm(
      transform.to_crop(f.landmarks).mean(axis=0) - centre)))
  return np.asarray(nearest.landmarks, np.float64), f"face finder ({nearest.detector}, nearest the crop)"


# ---------------------------------------------------------------------------------------- contact sheet


def _to_tile(points: np.ndarray, k: float) -> np.ndarray:
  """Crop pixel coordinates -> coordinates in a crop resampled k times (pixel centres)."""
  return k * (np.asarray(points, np.float64) + 0.5) - 0.5


def _mesh_in_tile(mesh: Mesh, k: float) -> Mesh:
  v = mesh.vertices
  return Mesh(np.concatenate([_to_tile(v[:, :2], k), k * v[:, 2:]], axis=1), mesh.faces, mesh.colors)


def _turned(mesh: Mesh, degrees: float) -> Mesh:
  """The mesh turned about the vertical axis through the crop's centre at its mean depth."""
  v = mesh.vertices
  centre = np.array([(CROP_SIZE - 1) / 2, (CROP_SIZE - 1) / 2, float(np.mean(v[:, 2]))])
  rotation = Rotation.from_euler("y", -degrees, degrees=True).as_matrix()
  return Mesh((v - centre) @ rotation.T + centre, mesh.faces, mesh.colors)


def _render_over(background: np.ndarray, mesh: Mesh, opacity: float) -> np.ndarray:
  """The tile-frame mesh shaded over `background` (the shading of the reconstructions' overlays)."""
  return reconstruct.overlay_image(background, [(mesh, CropTransform(1.0, 0.0, 0.0))],
                                   max_side=max(background.shape[:2]), opacity=opacity)


def _photo_tile(photo: np.ndarray, transform: CropTransform) -> np.ndarray:
  """The photo letterboxed into TILE x TILE, the crop's square drawn on it."""
  h, w = photo.shape[:2]
  f = TILE / max(h, w)
  size = (max(1, round(w * f)), max(1, round(h * f)))
  im = Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR)
  tile = Image.new("RGB", (TILE, TILE), (20, 20, 20))
  ox, oy = (TILE - size[0]) // 2, (TILE - size[1]) // 2
  tile.paste(im, (ox, oy))
  (x0, y0), (x1, y1) = transform.to_photo(np.array([[-0.5, -0.5], [CROP_SIZE - 0.5, CROP_SIZE - 0.5]]))
  ImageDraw.Draw(tile).rectangle([ox + x0 * f, oy + y0 * f, ox + x1 * f, oy + y1 * f],
                                 outline=(255, 220, 0), width=2)
  return np.asarray(tile)


def _crop_tile(crop: np.ndarray, landmarks: np.ndarray | None, predicted: np.ndarray | None,
               sil: np.ndarray) -> np.ndarray:
  """The network's input, enlarged, with the silhouette's outline, the face hull and the landmarks."""
  k = TILE / CROP_SIZE
  big = np.asarray(Image.fromarray(crop).resize((TILE, TILE), Image.Resampling.BICUBIC)).copy()
  edge = sil & ~ndimage.binary_erosion(sil)
  big[np.asarray(Image.fromarray(edge).resize((TILE, TILE), Image.Resampling.NEAREST))] = (0, 230, 255)
  im = Image.fromarray(big)
  draw = ImageDraw.Draw(im)
  if landmarks is not None:
    hull_points = landmarks[list(photo_metrics.HULL_LANDMARKS), :2]
    corners = _to_tile(hull_points[ConvexHull(hull_points).vertices], k)
    draw.polygon([tuple(p) for p in corners], outline=(255, 220, 0))
    for x, y in _to_tile(landmarks[:, :2], k):
      draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(60, 255, 60))
  if predicted is not None:
    for x, y in _to_tile(predicted[:, :2], k):
      draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(255, 50, 50))
  return np.asarray(im)


def sheet_row(photo: np.ndarray, crop: np.ndarray, transform: CropTransform, mesh: Mesh | None,
              sil: np.ndarray, landmarks: np.ndarray | None, predicted: np.ndarray | None,
              caption: Sequence[str]) -> np.ndarray:
  """One contact-sheet row: caption lines over photo | crop | mesh over photo | mesh turned 60 degrees
  (TILE-pixel tiles; the last two dark grey when there is no mesh)."""
  k = TILE / CROP_SIZE
  tiles = [_photo_tile(photo, transform), _crop_tile(crop, landmarks, predicted, sil)]
  dark = np.full((TILE, TILE, 3), 30, np.uint8)
  if mesh is None:
    tiles += [dark, dark]
  else:
    zoomed = CropTransform(transform.scale * k, k * (transform.tx + 0.5) - 0.5,
                           k * (transform.ty + 0.5) - 0.5, size=TILE)
    tiles += [_render_over(crop_image(photo, zoomed), _mesh_in_tile(mesh, k), 0.8),
              _render_over(dark, _mesh_in_tile(_turned(mesh, TURN_DEG), k), 1.0)]
  line_px = 14
  strip = Image.new("RGB", (4 * TILE, 6 + line_px * len(caption)), (0, 0, 0))
  draw = ImageDraw.Draw(strip)
  for i, line in enumerate(caption):
    draw.text((6, 3 + line_px * i), line, fill=(235, 235, 235))
  return np.concatenate([np.asarray(strip), np.concatenate(tiles, axis=1)], axis=0)


# ---------------------------------------------------------------------------------------------- scoring


@dataclasses.dataclass
class _Face:
  result: reconstruct.PhotoResult
  row: dict
  image: np.ndarray | None = None


def _fmt(value, digits: int = 1) -> str:
  return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _caption(row: dict) -> list[str]:
  def short(source: str) -> str:  # 'landmarks /a/b/x.txt' -> 'landmarks x.txt'
    head, _, path = source.partition(" ")
    return f"{head} {os.path.basename(path)}" if os.sep in path else source

  lines = [f"{row['name']}  (crop: {short(row['crop_source'])}; landmarks: "
           f"{short(row['landmarks_source'])})"]
  if row.get("error"):
    return lines + [f"error: {row['error']}"]
  yaw = f"yaw ~{_fmt(row.get('yaw_estimate_deg'), 0)} deg (bin {row.get('yaw_bin', 'n/a')})"
  lines.append(f"hull {row['hull_coverage']:.3f} (GT {_fmt(row.get('gt_hull_coverage'), 3)})  inner "
               f"{row['inner_share']:.3f} (GT {_fmt(row.get('gt_inner_share'), 3)})  {yaw}  landmark "
               f"NME {_fmt(row.get('landmark_nme'), 4)}  grid {_fmt(row.get('surface_grid'), 2)}")
  for kind, label in (("relief", "relief, camera z"), ("relief_face", "relief, face axis")):
    ranges = row.get(f"{kind}_range") or {}
    parts = []
    for f in photo_metrics.RELIEF_FIGURES:
      r = ranges.get(f)
      span = f" [{_fmt(r[0], 0)}..{_fmt(r[1], 0)}]" if r else ""
      parts.append(f"{f.replace('nose_minus_', 'nose-')} {_fmt(row[kind].get(f))}{span}"
                   if kind in row else "")
    lines.append(f"{label} (voxels): " + "  ".join(p for p in parts if p))
  return lines


def score_face(result: reconstruct.PhotoResult, output_dir: str, reference: dict | None,
               landmarks_dir: str | None, finder_fn, predicted: np.ndarray | None,
               sheet: bool) -> _Face:
  """Scores one reconstructed face from its outputs in `output_dir` (`<name>_crop.png`, `_crop.json`,
  `.npy`) and draws its contact-sheet row (with `sheet`)."""
  row = {"name": result.name, "photo": result.path, "crop_source": result.crop_source,
         "landmarks_source": "", "error": result.error}
  if result.error:
    return _Face(result, row)
  base = os.path.join(output_dir, result.name)
  crop = read_image_rgb(base + "_crop.png")
  transform = CropTransform.load_json(base + "_crop.json")
  volume = np.load(base + ".npy")
  photo = read_image_rgb(result.path)
  photo_landmarks, row["landmarks_source"] = face_landmarks(result, photo, transform, landmarks_dir,
                                                            finder_fn)
  sil = photo_metrics.silhouette(volume)
  landmarks = None
  if photo_landmarks is None:
    row["error"] = f"{result.path}: {row['landmarks_source']}; give its 68 landmarks as <name>.txt."
  else:
    landmarks = transform.to_crop(photo_landmarks)
    template = reference["template"] if reference else None
    scores = photo_metrics.score_volume(volume, landmarks, predicted, template)
    row.update(scores)
    row["landmarks"] = np.round(landmarks, 2)
    if predicted is not None:
      row["predicted_landmarks"] = np.round(predicted, 2)
    comparison = None
    if reference is not None:
      comparison = photo_metrics.compare_with_reference(scores, reference)
      row.update(comparison)
    row["passes"] = photo_metrics.goal_checks(scores, comparison)
  image = None
  if sheet:
    try:
      mesh = reconstruct.face_mesh(crop, volume, result.path)
    except InputError:
      mesh = None
    image = sheet_row(photo, crop, transform, mesh, sil, landmarks, predicted, _caption(row))
  return _Face(result, row, image)


def _summary(rows: list[dict], reference: dict | None, predicts_landmarks: bool) -> dict:
  scored = [r for r in rows if not r.get("error")]

  def stats(key, worst):
    values = [r[key] for r in scored if r.get(key) is not None]
    if not values:
      return None
    return {"mean": float(np.mean(values)), worst.__name__: float(worst(values))}

  goals = {}
  for goal in ("hull_coverage", "inner_share", "relief", "landmark_nme"):
    verdicts = [r["passes"][goal] for r in scored]
    goals[goal] = None if not verdicts or any(v is None for v in verdicts) else all(verdicts)
  if reference is None:
    goals["relief"] = None
  if not predicts_landmarks:
    goals["landmark_nme"] = None
  return {
      "faces": len(rows), "scored": len(scored), "failed": len(rows) - len(scored),
      "hull_coverage": stats("hull_coverage", min), "inner_share": stats("inner_share", min),
      "landmark_nme": stats("landmark_nme", max), "surface_grid": stats("surface_grid", max),
      "goals_met": goals,
      "all_goals_met": (len(scored) == len(rows) and len(rows) > 0
                        and all(v is True for k, v in goals.items()
                                if not (k == "landmark_nme" and not predicts_landmarks))),
      "contact_sheet": "judged by a person: a face one recognises (eyes, nose, mouth, no stair steps)",
  }


def score_reconstructions(predictor, results: Sequence[reconstruct.PhotoResult], output_dir: str,
                          reference: dict | None, landmarks_dir: str | None = None,
                          host_threads: int | None = None, finder=None, progress: bool = True,
                          contact_sheet: bool = True) -> tuple[list[dict], np.ndarray | None]:
  """Scores `reconstruct_photos`' results (their outputs in `output_dir`); returns the per-face rows
  and the contact sheet (None without faces or with `contact_sheet` False)."""
  finder_box = [finder]

  def finder_fn():
    if finder_box[0] is None:
      finder_box[0] = default_face_finder()
    return finder_box[0]

  predicted = {}
  good = [r for r in results if not r.error]
  if getattr(predictor, "predicts_landmarks", False):
    for start in range(0, len(good), predictor.batch_size):
      part = good[start:start + predictor.batch_size]
      crops = np.stack([read_image_rgb(os.path.join(output_dir, r.name + "_crop.png")) for r in part])
      for r, p in zip(part, predictor.predict_landmarks(crops)):
        predicted[r.name] = p
  threads = host_threads or min(4, os.cpu_count() or 1)
  bar = tqdm(total=len(results), unit="face", desc="scoring", disable=not progress, dynamic_ncols=True)

  def one(i_result):
    i, r = i_result
    face = score_face(r, output_dir, reference, landmarks_dir, finder_fn, predicted.get(r.name),
                      contact_sheet and i < CONTACT_SHEET_MAX_ROWS)
    bar.update(1)
    return face

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    faces = list(pool.map(one, enumerate(results)))
  bar.close()
  if len(results) > CONTACT_SHEET_MAX_ROWS and contact_sheet:
    logging.info("The contact sheet shows the first %d of %d faces.", CONTACT_SHEET_MAX_ROWS,
                 len(results))
  images = [f.image for f in faces if f.image is not None]
  sheet = None
  if images:
    width = max(im.shape[1] for im in images)
    sheet = np.concatenate([np.pad(im, ((0, 4), (0, width - im.shape[1]), (0, 0))) for im in images])
  return [f.row for f in faces], sheet


def format_table(report: dict) -> str:
  """The faces of a report as a text table: hull coverage and inner share beside the ground truth's
  medians, relief figures (camera z, then along the face's axis) with the ground truth's range at the
  face's yaw ('!' outside it), landmark NME, the surface's grid (`photo_metrics.surface_grid`)."""
  short = {f: f.replace("nose_minus_", "n-") for f in photo_metrics.RELIEF_FIGURES}
  header = (["photo", "yaw~ (bin)", "hull (GT)", "inner (GT)"]
            + [f"{short[f]} cam [GT]" for f in photo_metrics.RELIEF_FIGURES]
            + [f"{short[f]} face [GT]" for f in photo_metrics.RELIEF_FIGURES] + ["lm NME", "grid", "goals"])
  table = [header]
  for r in report["faces"]:
    if r.get("error"):
      table.append([r["name"], "error: " + r["error"]] + [""] * (len(header) - 2))
      continue
    cells = [r["name"], f"{_fmt(r.get('yaw_estimate_deg'), 0)} ({r.get('yaw_bin', 'n/a')})",
             f"{r['hull_coverage']:.3f} ({_fmt(r.get('gt_hull_coverage'), 3)})",
             f"{r['inner_share']:.3f} ({_fmt(r.get('gt_inner_share'), 3)})"]
    for kind in photo_metrics.RELIEF_KINDS:
      ranges = r.get(f"{kind}_range") or {}
      inside = r.get(f"{kind}_inside") or {}
      for f in photo_metrics.RELIEF_FIGURES:
        value = r.get(kind, {}).get(f)
        span = ranges.get(f)
        mark = "!" if inside.get(f) is False else ""
        cells.append(f"{_fmt(value)}{mark}" + (f" [{_fmt(span[0], 0)},{_fmt(span[1], 0)}]" if span else ""))
    passes = r.get("passes", {})
    cells += [_fmt(r.get("landmark_nme"), 4), _fmt(r.get("surface_grid"), 2),
              " ".join(f"{k}:{'ok' if v else 'NO'}" for k, v in passes.items() if v is not None)]
    table.append(cells)
  widths = [max(len(row[i]) for row in table if len(row) > i) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
  s = report["summary"]
  lines.append(f"summary: {s['scored']} of {s['faces']} face(s) scored; goals met: "
               + ", ".join(f"{k} {'n/a' if v is None else ('yes' if v else 'NO')}"
                           for k, v in s["goals_met"].items())
               + f"; contact sheet: {s['contact_sheet']}")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- command


def reconstruct_and_score(workdir: str, images: str, output_dir: str, config=None, step: int | None = None,
                          crop: str = "auto", landmarks_dir: str | None = None,
                          boxes_file: str | None = None, raw: bool = False,
                          batch_size: int | None = None, host_threads: int | None = None,
                          mesh_formats: Sequence[str] = reconstruct.DEFAULT_MESH_FORMATS,
                          progress: bool = True, reference_path: str | None = None,
                          finder=None) -> tuple[dict, list[reconstruct.PhotoResult]]:
  """`reconstruct.reconstruct_checkpoint`, then the photo metrics: writes OUT/photo_metrics.json and
  OUT/contact_sheet.png; returns (the report written to the JSON, the reconstruction results)."""
  # JAX loads here, once the inputs are checked: run_eval imports this module at start-up.
  from vrn_jax import inference  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(os.path.expanduser(workdir))
  paths = reconstruct.find_images(images)
  boxes = reconstruct.read_boxes(boxes_file) if boxes_file else None
  if crop == "box" and boxes is None:
    raise InputError("--crop=box needs --boxes=FILE (lines `name x0 y0 x1 y1`).")
  if landmarks_dir and not os.path.isdir(landmarks_dir):
    raise InputError(f"--landmarks={landmarks_dir}: no such directory.")
  reference_note = ""
  if reference_path:
    reference, reference_note = load_reference(reference_path), reference_path
  config = inference.load_config(workdir, config)
  if not reference_path:
    d = config.data
    try:
      reference, reference_note = dataset_reference(d.data_dir, d.eval_config, d.eval_split,
                                                    host_threads or 2, progress)
    except InputError as e:
      reference, reference_note = None, f"no ground-truth reference: {e}"
      logging.warning("%s (relief is not compared; pass --photo_reference=FILE).", reference_note)
  variables, step = inference.restore_variables(config, workdir, step)
  predictor = inference.Predictor(config, variables, batch_size)
  logging.info("Reconstructing %d photo(s) with %s step %d for the photo metrics.", len(paths),
               config.model.variant, step)
  results = reconstruct.reconstruct_photos(predictor, paths, output_dir, crop, landmarks_dir, boxes, raw,
                                           host_threads, finder=finder, mesh_formats=mesh_formats,
                                           progress=progress)
  rows, sheet = score_reconstructions(predictor, results, output_dir, reference, landmarks_dir,
                                      host_threads, finder, progress)
  report = {
      "model": {"workdir": workdir, "variant": config.model.variant, "step": step},
      "images": images,
      "goals": {**photo_metrics.GOALS,
                "relief": "every figure inside the ground truth's range at the face's yaw bin, in camera z "
                          "and along the face's axis",
                "contact_sheet": "a face a person recognises (eyes, nose, mouth, no stair steps)"},
      "definitions": {
          "hull_coverage": "share of the convex hull of landmarks 1-27 (jaw, brows) covered by the "
                           "silhouette of p > 0.5 seen along z",
          "inner_share": f"share of landmarks 18-68 within {photo_metrics.ON_SILHOUETTE_PX} px of a covered "
                         "pixel centre",
          "relief": "front-surface z (voxels) of the nose tip (31) minus the mean of the eye corners (37, "
                    "40, 43, 46) / mouth corners (49, 55) / cheeks (midpoints of 3-32 and 15-36)",
          "relief_face": "the same along the face's forward axis (points turned back to frontal by the "
                         "pose estimated from the inner landmarks)",
          "landmark_nme": "mean 2D distance of the network's 68 landmarks to the given ones / the given "
                          "outer interocular distance (37-46)",
          "yaw_estimate_deg": "|yaw| of a scaled orthographic fit of the reference's frontal template to "
                              "landmarks 18-68",
          "surface_grid": "mean |second difference| of the front surface's depth at rows and columns "
                          "within 1 px of the heads' 48x48 samples over the same >= 1.5 px from one, "
                          f"{photo_metrics.GRID_INSET_PX} px inside the silhouette (1: no grid)",
      },
      "reference_source": reference_note,
      "reference": reference,  # with its template: `load_reference` takes a photo_metrics.json too
      "summary": _summary(rows, reference, predictor.predicts_landmarks),
      "faces": rows,
  }
  os.makedirs(output_dir, exist_ok=True)
  write_json(os.path.join(output_dir, METRICS_FILE), report)
  if sheet is not None:
    write_image_rgb(os.path.join(output_dir, CONTACT_SHEET_FILE), sheet)
  return report, results
