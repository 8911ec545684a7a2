"""The web app's reconstruction engine: one photo's bytes -> its faces' meshes, with the network's work
of concurrent requests batched on the accelerator.

A request runs its host stages (decode, find, crop, mesh, encode) in its own worker thread; its crops go
into one queue, which a single batching thread drains: it waits for the first crop, takes every crop
that arrives within `max_wait_s` (up to the predictor's batch size), runs one forward pass and hands each
request its own volumes. The model is loaded and compiled once, before the server answers.

Memory: each mesh file is written through a trimesh object, a reference cycle that holds copies of the
mesh (61 MB for a face's GLB, 12 MB for a PLY or OBJ) until Python's cyclic collector frees it. Its
full collections come seldom (they are counted in objects, not bytes), so under load the server's RSS
grew by 1.5 GB every 32 photos. The engine collects after every file it writes instead; the objects
alive after warm-up (JAX, the model, the libraries: ~330,000, 150 ms a collection) are frozen out of
the collector first (`gc.freeze`), which makes one a fraction of a millisecond. (A young-generation
collection alone made it worse: it promotes other threads' live trimesh objects to the old
generation, where they stay as garbage.)
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import gc
import queue
import secrets
import threading
import time

import numpy as np

from vrn_jax import reconstruct
from vrn_jax.face_finder import Face, FaceFinder
from vrn_jax.files import decode_image_rgb
from vrn_jax.geometry.crop import CropTransform, crop_image
from vrn_jax.geometry.isosurface import MESH_FORMATS, Mesh, mesh_bytes

STAGES = ("decode", "find", "crop", "forward", "mesh", "encode")  # `Reconstruction.timing_ms`, in order


@dataclasses.dataclass
class FaceResult:
  """One reconstructed face: the crop-frame mesh, the transform back to the photo, the found face."""

  mesh: Mesh
  transform: CropTransform
  face: Face | None
  glb: bytes


@dataclasses.dataclass
class Reconstruction:
  """One photo's result, kept for its downloads."""

  id: str
  name: str
  width: int
  height: int
  faces: list[FaceResult]
  timing_ms: dict[str, float]

  def face_name(self, index: int) -> str:
    """Face `index`'s (0-based) name, as `run_eval.py --images` names its files."""
    return reconstruct.face_names(self.name, len(self.faces))[index]


def _compact(mesh: Mesh) -> Mesh:
  """The mesh in float32 / int32, half the memory of a kept result (its files are float32 anyway)."""
  return Mesh(mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32), mesh.colors)


class _Batcher:
  """Runs `predict(crops)` on batches gathered from many threads' `submit` calls."""

  def __init__(self, predict, batch_size: int, max_wait_s: float):
    self._predict, self._batch_size, self._max_wait_s = predict, batch_size, max_wait_s
    self._queue: queue.Queue = queue.Queue()
    self.batches: collections.Counter = collections.Counter()  # batch size -> count (for the benchmark)
    self._thread = threading.Thread(target=self._loop, name="vrn-batcher", daemon=True)
    self._thread.start()

  def submit(self, crop: np.ndarray) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    self._queue.put((crop, future))
    return future

  def _loop(self) -> None:
    while True:
      items = [self._queue.get()]
      deadline = time.perf_counter() + self._max_wait_s
      while len(items) < self._batch_size:
        try:
          items.append(self._queue.get(timeout=max(0.0, deadline - time.perf_counter())))
        except queue.Empty:
          break
      items = [(c, f) for c, f in items if f.set_running_or_notify_cancel()]
      if not items:
        continue
      self.batches[len(items)] += 1
      try:
        volumes = self._predict(np.stack([c for c, _ in items]))
      except Exception as e:  # pylint: disable=broad-except  (each waiting request gets the error)
        for _, f in items:
          f.set_exception(e)
        continue
      for (_, f), v in zip(items, volumes):
        f.set_result(v)


class Engine:
  """Photo bytes -> `Reconstruction`; thread-safe.

  Args:
    predictor: a `vrn_jax.inference.Predictor` (built with `small_batches=True` for serving).
    finder: the face finder.
    max_wait_s: how long the batcher waits for more requests' crops before running a batch.
    max_pixels: larger photos are refused (`TooLargeError`).
    max_active: photos reconstructed at once; more wait their turn. Each holds its photo, a 29 MB soft
      volume per face and the meshing's working memory, so this bounds the server's memory; the
      batcher can only batch faces of photos that are active together.
    keep: how many results are kept for their downloads (oldest dropped first).
  """

  def __init__(self, predictor, finder: FaceFinder, max_wait_s: float = 0.02,
               max_pixels: int = 40_000_000, max_active: int = 4, keep: int = 16):
    self.predictor, self.finder, self.max_pixels, self._keep = predictor, finder, max_pixels, keep
    self.max_active = max_active
    self._active = threading.BoundedSemaphore(max_active)
    self._batcher = _Batcher(predictor.volumes, predictor.batch_size, max_wait_s)
    self._results: collections.OrderedDict[str, Reconstruction] = collections.OrderedDict()
    self._results_lock = threading.Lock()

  @property
  def batches(self) -> collections.Counter:
    return self._batcher.batches

  def reconstruct(self, data: bytes, what: str = "photo", name: str = "face") -> Reconstruction:
    """`what` names the upload in errors, `name` its files. Raises `InputError` (a subclass for no face:
    `NoFaceError`; too large: `TooLargeError`)."""
    with self._active:
      return self._reconstruct(data, what, name)

  def _reconstruct(self, data: bytes, what: str, name: str) -> Reconstruction:
    timing = {}
    t = time.perf_counter()

    def lap(stage):
      nonlocal t
      now = time.perf_counter()
      timing[stage] = round(1000 * (now - t), 2)
      t = now

    photo = decode_image_rgb(data, what, self.max_pixels)
    lap("decode")
    found = reconstruct.found_face_crops(photo, self.finder, what)
    lap("find")
    crops = [crop_image(photo, c.transform) for c in found]
    lap("crop")
    futures = [self._batcher.submit(c) for c in crops]
    volumes = [f.result() for f in futures]
    lap("forward")
    meshes = [_compact(reconstruct.face_mesh(c, v, what)) for c, v in zip(crops, volumes)]
    del volumes
    lap("mesh")
    faces = [FaceResult(m, c.transform, c.face, self.mesh_file(m, "glb")) for m, c in zip(meshes, found)]
    lap("encode")
    result = Reconstruction(secrets.token_urlsafe(12), name, photo.shape[1], photo.shape[0], faces,
                            timing)
    with self._results_lock:
      self._results[result.id] = result
      while len(self._results) > self._keep:
        self._results.popitem(last=False)
    return result

  @staticmethod
  def mesh_file(mesh: Mesh, fmt: str) -> bytes:
    """`mesh_bytes`, then the garbage it leaves collected (module doc)."""
    data = mesh_bytes(mesh, fmt)
    gc.collect()
    return data

  def result(self, result_id: str) -> Reconstruction | None:
    with self._results_lock:
      return self._results.get(result_id)

  def warm_up(self) -> None:
    """Compiles every batch size, runs the finder once (its CNN loads lazily) and encodes a small mesh
    in each format (the exporters' first call costs a few hundred milliseconds)."""
    self.predictor.warm_up()
    self.finder.find(np.zeros((64, 64, 3), np.uint8))
    tetrahedron = Mesh(np.eye(4, 3), np.array([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]]),
                       np.full((4, 3), 200, np.uint8))
    for fmt in MESH_FORMATS:
      mesh_bytes(tetrahedron, fmt)
    gc.collect()
    gc.freeze()  # what is alive now lives as long as the server: out of every later collection
