"""Photos -> 3D faces: find each face, crop it as the release's run.m did, predict its volume, mesh it and
write (or return) the results. `run_eval.py --images` and the web app (`vrn_jax/web`) both use it.

The stages, each usable alone (the web app batches the predictions of several requests):
  `photo_crops`    one photo -> a `FaceCrop` per face (crop transform, where it came from, the found face)
  `Predictor.volumes` (vrn_jax.inference)   a batch of 192x192 crops -> soft (192, 192, 200) volumes
  `face_mesh`      a crop and its volume -> the coloured isosurface (crop frame)
  `mesh_bytes` (geometry.isosurface)   -> OBJ / PLY / GLB; `preview_image`, `overlay_image` -> PNGs

Crops come from 68 landmarks (`<stem>.txt` beside the photo or in `--landmarks`, run.m's rule), a face box
(`--boxes`), the face finder (`vrn_jax.face_finder`: every face in the photo, run.m's rule on the found
landmarks), VRN-Guided's own landmark network on a centred crop, the centred square, or nothing (192x192
inputs). A photo with several faces gives one output set per face, named `<stem>_face1`, `<stem>_face2`,
... left to right; a photo with one face gives `<stem>`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import glob
import os
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging
from PIL import Image
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from vrn_jax.faces import render
from vrn_jax.face_finder import DlibFaceFinder, Face, FaceFinder, NoFaceError
from vrn_jax.errors import InputError
from vrn_jax.files import atomic_output, read_image_rgb, read_landmarks_txt, write_image_rgb
from vrn_jax.geometry.crop import (CROP_SIZE, CropTransform, crop_centre, crop_from_box,
                                   crop_from_landmarks, crop_image)
from vrn_jax.geometry.isosurface import ISO_LEVEL, MESH_FORMATS, Mesh, save_mesh, volume_to_mesh, write_raw

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CROP_MODES = ("auto", "landmarks", "box", "find", "guided", "center", "none")
DEFAULT_MESH_FORMATS = ("obj", "glb")


@dataclasses.dataclass(frozen=True)
class FaceCrop:
  """How one face of a photo is cropped.

  Attributes:
    transform: photo -> crop; None until VRN-Guided's landmark network gives it (source 'guided').
    source: where the crop came from ('landmarks <file>', 'box', 'found (hog)', 'centre', ...).
    face: the face finder's result, when it found this face.
  """

  transform: CropTransform | None
  source: str
  face: Face | None = None


@dataclasses.dataclass
class PhotoResult:
  """What became of one face of a photo (or of a photo with no face): its outputs, or the error that
  stopped it (then nothing of it was written)."""

  path: str
  name: str
  outputs: list[str] = dataclasses.field(default_factory=list)
  error: str | None = None
  crop_source: str = ""
  face: Face | None = None


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


def face_names(stem: str, count: int) -> list[str]:
  """Output names of a photo's faces (in `order_faces` order): the stem alone for one face."""
  return [stem] if count == 1 else [f"{stem}_face{i}" for i in range(1, count + 1)]


def found_face_crops(photo: np.ndarray, finder: FaceFinder, what: str) -> list[FaceCrop]:
  """A run.m crop from each face the finder finds (left to right); no face is an error naming `what`."""
  faces = finder.find(photo)
  if not faces:
    raise NoFaceError(f"{what}: no face found ({photo.shape[1]}x{photo.shape[0]} pixels, {finder.name}); "
                     "give its 68 landmarks (<name>.txt) or a face box (--boxes), or crop it yourself.")
  return [FaceCrop(crop_from_landmarks(f.landmarks, photo.shape[:2], what=f"{what} (found landmarks)"),
                   f"found ({f.detector})", f) for f in faces]


def photo_crops(path: str, photo: np.ndarray, mode: str, landmarks_dir: str | None = None,
                boxes: dict | None = None, finder: FaceFinder | None = None) -> list[FaceCrop]:
  """The crops of one photo (see the module doc for the modes; 'auto': a landmark file if there is one,
  else a box if `boxes` has one, else the face finder)."""
  stem = os.path.splitext(os.path.basename(path))[0]
  landmark_path = os.path.join(landmarks_dir or os.path.dirname(path), stem + ".txt")
  if mode == "landmarks" or (mode == "auto" and os.path.isfile(landmark_path)):
    if not os.path.isfile(landmark_path):
      raise InputError(f"{landmark_path}: no such landmark file (68 lines `x,y`, 1-based, named after "
                       "the photo); pass --landmarks=DIR or another --crop.")
    return [FaceCrop(crop_from_landmarks(read_landmarks_txt(landmark_path), photo.shape[:2],
                                         what=landmark_path), f"landmarks {landmark_path}")]
  if mode == "box" or (mode == "auto" and boxes):
    box = None if boxes is None else boxes.get(os.path.basename(path), boxes.get(stem))
    if box is not None:
      return [FaceCrop(crop_from_box(box), "box")]
    if mode == "box":
      raise InputError(f"{path}: no box for {os.path.basename(path)!r} or {stem!r} in the --boxes file.")
  if mode in ("auto", "find"):
    if finder is None:
      raise ValueError("photo_crops: modes 'auto' and 'find' need a face finder.")
    return found_face_crops(photo, finder, path)
  if mode == "guided":
    return [FaceCrop(None, "guided")]
  if mode == "center":
    return [FaceCrop(crop_centre(photo.shape[:2]), "centre")]
  if mode == "none":
    if photo.shape[:2] != (CROP_SIZE, CROP_SIZE):
      raise InputError(f"{path}: image is {photo.shape[1]}x{photo.shape[0]}; --crop=none takes "
                       f"{CROP_SIZE}x{CROP_SIZE} crops as they are.")
    return [FaceCrop(CropTransform(1.0, 0.0, 0.0), "none")]
  raise InputError(f"--crop={mode!r}; expected one of {', '.join(CROP_MODES)}.")


def guided_crops(predictor, photos: Sequence[np.ndarray],
                 what: Sequence[str]) -> list[FaceCrop | InputError]:
  """VRN-Guided's landmark network on each photo's centred crop, then run.m's crop from its 68
  landmarks (mapped back to the photo); an InputError in place of a photo whose landmarks give no crop."""
  if not predictor.has_detector:
    raise InputError("--crop=guided needs a VRN-Guided checkpoint (its landmark network); this model is "
                     f"{predictor.config.model.variant}.")
  out = []
  for start in range(0, len(photos), predictor.batch_size):
    chunk = photos[start:start + predictor.batch_size]
    centred = [crop_centre(p.shape[:2]) for p in chunk]
    detected = predictor.detect_landmarks(np.stack([crop_image(p, t) for p, t in zip(chunk, centred)]))
    for p, t, points, w in zip(chunk, centred, detected, what[start:]):
      try:
        out.append(FaceCrop(crop_from_landmarks(t.to_photo(points), p.shape[:2],
                                                what=f"{w} (detected landmarks)"), "guided landmarks"))
      except InputError as e:
        out.append(e)
  return out


def face_mesh(crop: np.ndarray, probs: np.ndarray, what: str) -> Mesh:
  """The coloured isosurface of a face's soft volume, crop frame; no surface is an error naming `what`."""
  try:
    return volume_to_mesh(probs, ISO_LEVEL, image=crop)
  except InputError as e:
    raise InputError(f"{what}: the predicted volume has no face surface ({e}).") from None


# ----------------------------------------------------------------------------------------------- renders


def _shade(mesh_vertices: np.ndarray, faces: np.ndarray, shape: tuple[int, int]):
  """Grey Lambert render of a mesh already in image pixels (x, y, z toward the camera): rgb in [0, 1]
  and coverage."""
  albedo = np.full((mesh_vertices.shape[0], 3), 0.8)
  return render.render_layers(mesh_vertices, faces, albedo, (0.3, -0.4, 1.0), 0.25, shape, diffuse=0.85)


def _shaded(mesh: Mesh, rotation: np.ndarray, size: int, scale: int) -> np.ndarray:
  """(size * scale)^2 grey render of a crop-frame mesh turned by `rotation` about its centre."""
  v = mesh.vertices
  centre = np.array([(size - 1) / 2, (size - 1) / 2, float(np.mean(v[:, 2]))])
  v = (v - centre) @ rotation.T + centre
  # Pixel i of the crop covers [i - 0.5, i + 0.5]; its `scale` sub-pixels have centres at scale * i +
  # (scale - 1) / 2 + ... : x' = scale * (x + 0.5) - 0.5.
  v = np.concatenate([scale * (v[:, :2] + 0.5) - 0.5, scale * v[:, 2:]], axis=1)
  rgb, covered = _shade(v, mesh.faces, (size * scale, size * scale))
  out = np.full(rgb.shape, 0.12)
  out[covered] = rgb[covered]
  return (np.clip(out, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def preview_image(crop: np.ndarray, mesh: Mesh, scale: int = 2) -> np.ndarray:
  """The crop beside shaded renders of its mesh, frontal and turned 50 degrees: (192 s, 3 * 192 s, 3)."""
  size = crop.shape[0]
  big = np.asarray(Image.fromarray(crop).resize((size * scale, size * scale), Image.Resampling.BICUBIC))
  turned = Rotation.from_euler("y", -50, degrees=True).as_matrix()
  return np.concatenate([big, _shaded(mesh, np.eye(3), size, scale),
                         _shaded(mesh, turned, size, scale)], axis=1)


def overlay_image(photo: np.ndarray, meshes: Sequence[tuple[Mesh, CropTransform]], max_side: int = 1024,
                  opacity: float = 0.8) -> np.ndarray:
  """The photo (scaled to at most `max_side` pixels) with each crop-frame mesh, taken back through its
  crop transform, drawn over it shaded: (h, w, 3) uint8."""
  h, w = photo.shape[:2]
  factor = min(1.0, max_side / max(h, w))
  size = (max(1, round(w * factor)), max(1, round(h * factor)))
  base = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR)
                    if factor < 1.0 else Image.fromarray(photo), np.float64) / 255.0
  # Photo pixel x lands at (x + 0.5) * (size / w) - 0.5 in the scaled photo (pixel centres).
  sx, sy = size[0] / w, size[1] / h
  out = base.copy()
  for mesh, transform in meshes:
    v = transform.to_photo(mesh.vertices)
    v = np.stack([(v[:, 0] + 0.5) * sx - 0.5, (v[:, 1] + 0.5) * sy - 0.5, v[:, 2] * sx], axis=1)
    rgb, covered = _shade(v, mesh.faces, (size[1], size[0]))
    out[covered] = (1 - opacity) * out[covered] + opacity * np.clip(rgb[covered], 0, 1)
  return (out * 255 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------------------------ batch of files


def _save_npy(path: str, volume: np.ndarray) -> None:
  with atomic_output(path) as tmp:
    np.save(tmp, np.asarray(volume, np.float32))


def _write_face_outputs(result: PhotoResult, output_dir: str, crop: np.ndarray, transform: CropTransform,
                        probs: np.ndarray, raw: bool, mesh_formats: Sequence[str]) -> Mesh | None:
  """Meshes and renders one face, then writes every output (each atomically); if anything fails, the
  outputs already written for this face are removed again. Returns the mesh (None on error)."""
  try:
    mesh = face_mesh(crop, probs, result.path)
  except InputError as e:
    result.error = str(e)
    return None
  preview = preview_image(crop, mesh)
  base = os.path.join(output_dir, result.name)
  photo_mesh = mesh.to_photo(transform)
  writers: list[tuple[str, Callable[[str], Any]]] = [
      (base + "_crop.png", lambda p: write_image_rgb(p, crop)),
      (base + "_crop.json", transform.save_json),
      (base + ".npy", lambda p: _save_npy(p, probs)),
  ]
  if raw:
    writers.append((base + ".raw", lambda p: write_raw(p, probs)))
  for fmt in mesh_formats:
    writers += [(f"{base}.{fmt}", lambda p: save_mesh(p, mesh)),
                (f"{base}_photo.{fmt}", lambda p: save_mesh(p, photo_mesh))]
  writers.append((base + "_preview.png", lambda p: write_image_rgb(p, preview)))
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
  return mesh


def _check_mesh_formats(mesh_formats: Sequence[str]) -> tuple[str, ...]:
  bad = [f for f in mesh_formats if f not in MESH_FORMATS]
  if bad or not mesh_formats:
    raise InputError(f"--mesh_formats={','.join(mesh_formats)}: expected one or more of "
                     f"{', '.join(MESH_FORMATS)}.")
  return tuple(dict.fromkeys(mesh_formats))


def reconstruct_photos(predictor, paths: Sequence[str], output_dir: str, crop: str = "auto",
                       landmarks_dir: str | None = None, boxes: dict | None = None, raw: bool = False,
                       host_threads: int | None = None, finder: FaceFinder | None = None,
                       mesh_formats: Sequence[str] = DEFAULT_MESH_FORMATS,
                       progress: bool = True) -> list[PhotoResult]:
  """Reconstructs every face of each photo; returns `PhotoResult`s in photo order, faces left to right
  (a photo that failed as a whole, e.g. unreadable or with no face, has one result carrying `error`).

  Outputs per face `<name>` (`face_names`) in `output_dir`: `<name>_crop.png` (the 192x192 input),
  `<name>_crop.json` (its crop transform), `<name>.npy` (192, 192, 200) float32 soft volume (y, x, z),
  `<name>.raw` with `raw` (the release's format), the coloured mesh `<name>.<fmt>` (crop pixels) and
  `<name>_photo.<fmt>` (photo pixels) per mesh format, `<name>_preview.png` (crop, shaded frontal and
  turned renders); per photo `<stem>_overlay.png`, the shaded meshes over the photo.

  Args:
    predictor: a `vrn_jax.inference.Predictor` (or anything with `batch_size`, `has_detector`,
      `volumes(crops)` and, for 'guided', `detect_landmarks(crops)`).
    crop: one of `CROP_MODES` (see `photo_crops`).
    boxes: name -> (x0, y0, x1, y1), see `read_boxes`.
    finder: the face finder for 'auto' and 'find' (default: `face_finder.DlibFaceFinder()`).
    progress: a progress bar (photos, with ETA) on stderr.
  """
  if crop not in CROP_MODES:
    raise InputError(f"--crop={crop!r}; expected one of {', '.join(CROP_MODES)}.")
  mesh_formats = _check_mesh_formats(mesh_formats)
  if crop == "guided" and not predictor.has_detector:
    raise InputError("--crop=guided needs a VRN-Guided checkpoint (its landmark network).")
  if crop in ("auto", "find") and finder is None:
    finder = DlibFaceFinder()
  os.makedirs(output_dir, exist_ok=True)
  threads = host_threads or min(4, os.cpu_count() or 1)
  def prepare(path: str):
    photo = read_image_rgb(path)
    return photo, photo_crops(path, photo, crop, landmarks_dir, boxes, finder)

  photo_results: dict[str, list[PhotoResult]] = {}
  seen: dict[str, str] = {}
  todo = []
  for path in paths:
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem in seen:
      photo_results[path] = [PhotoResult(path, stem, error=f"{path}: same name as {seen[stem]}; its "
                                         "outputs would overwrite that photo's.")]
    else:
      seen[stem] = path
      todo.append(path)
  chunks = [todo[i:i + predictor.batch_size] for i in range(0, len(todo), predictor.batch_size)]
  bar = tqdm(total=len(paths), unit="photo", desc="photos", disable=not progress, dynamic_ncols=True)
  bar.update(len(paths) - len(todo))
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    # One batch of photos in memory at a time: the next is read (and its faces found) while this one is
    # predicted, and the finished faces are meshed and written meanwhile.
    pending: collections.deque = collections.deque()
    overlays: dict[str, list] = {}
    reading = [pool.submit(prepare, p) for p in chunks[0]] if chunks else []
    for k, chunk in enumerate(chunks):
      units = []  # (result, photo, FaceCrop)
      for path, future in zip(chunk, reading):
        stem = os.path.splitext(os.path.basename(path))[0]
        try:
          photo, crops = future.result()
        except InputError as e:
          photo_results[path] = [PhotoResult(path, stem, error=str(e))]
          bar.update(1)
          continue
        names = face_names(stem, len(crops))
        photo_results[path] = [PhotoResult(path, n, crop_source=c.source, face=c.face)
                               for n, c in zip(names, crops)]
        units += [(r, photo, c) for r, c in zip(photo_results[path], crops)]
      reading = [pool.submit(prepare, p) for p in chunks[k + 1]] if k + 1 < len(chunks) else []
      guided = [i for i, u in enumerate(units) if u[2].transform is None]
      if guided:
        for i, c in zip(guided, guided_crops(predictor, [units[i][1] for i in guided],
                                             [units[i][0].path for i in guided])):
          if isinstance(c, InputError):
            units[i][0].error = str(c)
            bar.update(1)  # guided crops are one per photo: that photo is done
          else:
            units[i] = (units[i][0], units[i][1], c)
            units[i][0].crop_source = c.source
        units = [u for u in units if u[0].error is None]
      for start in range(0, len(units), predictor.batch_size):
        part = units[start:start + predictor.batch_size]
        crops = np.stack([crop_image(photo, c.transform) for _, photo, c in part])
        probs = predictor.volumes(crops)
        for j, (r, photo, c) in enumerate(part):
          while len(pending) >= 2 * max(threads, predictor.batch_size):
            _finish(pending.popleft(), overlays, output_dir, bar)
          pending.append((r, photo, c.transform, pool.submit(
              _write_face_outputs, r, output_dir, crops[j], c.transform, probs[j], raw, mesh_formats),
              len(photo_results[r.path])))
    while pending:
      _finish(pending.popleft(), overlays, output_dir, bar)
  bar.close()
  return [r for path in paths for r in photo_results.get(path, [])]


def _finish(item, overlays: dict, output_dir: str, bar) -> None:
  """Collects one face's outputs; when the last face of its photo is in, writes the photo's overlay."""
  result, photo, transform, future, faces_in_photo = item
  try:
    mesh = future.result()
  except InputError as e:
    result.error, mesh = f"{result.path}: {e}", None
  done = overlays.setdefault(result.path, [])
  done.append((result, mesh, transform))
  if len(done) < faces_in_photo:
    return
  bar.update(1)
  meshes = [(m, t) for _, m, t in done if m is not None]
  if meshes:
    first = min((r for r, m, _ in done if m is not None), key=lambda r: r.name)
    path = os.path.join(output_dir, os.path.splitext(os.path.basename(result.path))[0] + "_overlay.png")
    write_image_rgb(path, overlay_image(photo, meshes))
    first.outputs.append(path)
  del overlays[result.path]


def reconstruct_checkpoint(workdir: str, images: str, output_dir: str, config=None,
                           step: int | None = None, crop: str = "auto", landmarks_dir: str | None = None,
                           boxes_file: str | None = None, raw: bool = False,
                           batch_size: int | None = None, host_threads: int | None = None,
                           mesh_formats: Sequence[str] = DEFAULT_MESH_FORMATS,
                           progress: bool = True) -> list[PhotoResult]:
  """`reconstruct_photos` with checkpoint `step` (default: latest) of `workdir`."""
  # JAX loads here, once the inputs are checked: the web app and run_eval import this module at start-up.
  from vrn_jax import inference  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(os.path.expanduser(workdir))
  paths = find_images(images)
  boxes = read_boxes(boxes_file) if boxes_file else None
  if crop == "box" and boxes is None:
    raise InputError("--crop=box needs --boxes=FILE (lines `name x0 y0 x1 y1`).")
  if crop not in CROP_MODES:
    raise InputError(f"--crop={crop!r}; expected one of {', '.join(CROP_MODES)}.")
  if landmarks_dir and not os.path.isdir(landmarks_dir):
    raise InputError(f"--landmarks={landmarks_dir}: no such directory.")
  mesh_formats = _check_mesh_formats(mesh_formats)
  config = inference.load_config(workdir, config)
  variables, step = inference.restore_variables(config, workdir, step)
  predictor = inference.Predictor(config, variables, batch_size)
  logging.info("Reconstructing %d photo(s) with %s step %d, batches of %d on %d device(s).", len(paths),
               config.model.variant, step, predictor.batch_size, predictor.num_devices)
  return reconstruct_photos(predictor, paths, output_dir, crop, landmarks_dir, boxes, raw, host_threads,
                            mesh_formats=mesh_formats, progress=progress)
