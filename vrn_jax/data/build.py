"""Making dataset examples in parallel: the work behind the `vrn_faces` tfds builder.

Examples are made in worker processes (all cores by default; `VRN_FACES_NUM_WORKERS=N` to choose, 1 for
none). Workers are spawned, not forked: they import NumPy/SciPy only, never TensorFlow. A bad source
file is skipped with a warning naming it; the build ends with the count of skipped files.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from typing import Callable, Iterable, Iterator

import numpy as np
from absl import logging

from vrn_jax.data import examples, readers
from vrn_jax.errors import InputError
from vrn_jax.faces.scene import SceneOptions

SYNTHETIC_SPLIT_SEEDS = {"train": 1, "test": 2}


def num_workers() -> int:
  value = os.environ.get("VRN_FACES_NUM_WORKERS", "")
  if value:
    try:
      return max(1, int(value))
    except ValueError:
      raise InputError(f"VRN_FACES_NUM_WORKERS={value!r}: expected a whole number.") from None
  return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())


@functools.lru_cache(maxsize=4)
def _model_from(manual_dir: str | None):
  if manual_dir is None:
    from vrn_jax.faces.face_model import build_face_model  # pylint: disable=g-import-not-at-top

    return build_face_model()
  return readers.find_morphable_model(manual_dir)


def synthetic_example(seed: int, index: int, scene: SceneOptions = SceneOptions()) -> tuple[str, dict]:
  """Example `index` of the procedural set with base `seed`: deterministic, independent of the others.
  `scene`: which parts of the photo are drawn (an ablation set turns some off; the geometry, and so the
  target, is the same whatever they are, but for `expressions`)."""
  from vrn_jax.faces.synthetic import sample_face  # pylint: disable=g-import-not-at-top

  model = _model_from(None)
  face = sample_face(model, np.random.default_rng([seed, index]), scene=scene)
  name = f"synthetic_{seed}_{index:06d}"
  return name, examples.make_example(face.image, model, face.pose_para, face.shape_para,
                                     face.exp_para, name)


def real_example(manual_dir: str, item: readers.Item) -> tuple[str, dict]:
  model = _model_from(manual_dir)
  fit = readers.read_fit(item, model)
  try:
    return item.name, examples.make_example(fit.photo, model, fit.pose_para, fit.shape_para,
                                            fit.exp_para, item.name)
  except ValueError as e:  # e.g. a fit that leaves the face outside the volume
    raise InputError(f"{item.mat_path}: cannot voxelise this fit ({e}).") from e


def _guarded(fn: Callable, args) -> tuple[str, dict | None, str | None]:
  try:
    key, example = fn(*args)
    return key, example, None
  except InputError as e:
    return str(args[-1]), None, str(e)


def generate(fn: Callable, jobs: Iterable[tuple], workers: int | None = None) -> Iterator[tuple[str, dict]]:
  """Yields (key, example) for fn(*job) over `jobs`, in order, on `workers` processes; skips (with a
  warning) the jobs whose input is bad, and logs how many were skipped at the end."""
  workers = num_workers() if workers is None else workers
  jobs = list(jobs)
  skipped = 0
  call = functools.partial(_guarded, fn)
  if workers <= 1:
    results = map(call, jobs)
    pool = None
  else:
    # One BLAS thread per worker: the workers already use every core, and oversubscribed OpenBLAS threads
    # made a 3DMM matrix-vector product 75x slower.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
      os.environ.setdefault(var, "1")
    pool = multiprocessing.get_context("spawn").Pool(workers)
    results = pool.imap(call, jobs, chunksize=4)
  try:
    for key, example, error in results:
      if error is not None:
        skipped += 1
        logging.warning("skipped: %s", error)
        continue
      yield key, example
  finally:
    if pool is not None:
      pool.terminate()
  logging.warning("vrn_faces: %d examples written, %d source files skipped%s", len(jobs) - skipped,
              skipped, " (see the warnings above)" if skipped else "")
