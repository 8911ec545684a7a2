"""Inference throughput: forward passes, ours (jit, eval mode) against PyTorch's, and photos to meshes.

Forward rows (images/s, per size and batch): `model.apply` in eval mode (running BatchNorm statistics)
and the sigmoid, jitted, the volume left on the device; the baseline is the PyTorch twin of the same
network (`torch_reference.build_torch_vrn`, eval mode, inference_mode) at the same batch on the same
device. Sizes as in the 'training' suite, plus the released model's topology at batch 1.

End-to-end rows (photos/s): decoded photo + its 68 landmarks -> the release's crop
(`geometry.crop.crop_from_landmarks`, `crop_image`; a thread pool) -> forward -> 255 * sigmoid as uint8 (the
release's `.raw` quantisation; 4x fewer bytes off the device than float32) -> marching cubes with colours
(`geometry.isosurface.volume_to_mesh`, level 127.5) in worker processes, one per core (scikit-image's
marching cubes holds the GIL), volumes handed over in shared memory. Meshing of batch k overlaps the
forward of batch k+1. The baseline is the same chain run one photo after another in one process.

Meshing cost depends on the surface: an untrained network's volume is noise whose isosurface has ~4 M
vertices (seconds per mesh) where a face has ~150 k. End-to-end rows therefore need trained weights: a
workdir written by `run_train.py` or `vrn_jax/interop/release_import.py`, from $VRN_BENCH_WORKDIR
(comma-separated for several) or `workdirs/default` when it exists. Photos: the release's examples
(shared/fixtures/vrn_examples or $VRN_FIXTURES), cycled.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import gc
import glob
import multiprocessing
import os
import time

import numpy as np

from benchmarks import common, flops
from benchmarks.common import Measured, Row, try_variant

LEVEL_U8 = 127.5  # the 0.5 isosurface of a volume stored as uint8 = 255 * sigmoid
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GFLOP = 1e9


@dataclasses.dataclass(frozen=True)
class Plan:
  """Forward: (batch, repeats, dtype) cases per size; end to end: (batch, batches, dtype) cases."""
  sizes: dict  # size -> list of (batch, repeats, dtype), or a str: why the size is skipped
  release_batch1: bool
  end_to_end: list  # (batch, number of batches timed, dtype)
  serial_photos: int  # photos through the serial baseline


def plan(quick: bool, tiny: bool, accelerator: bool) -> Plan:
  if tiny:
    return Plan({"tiny": [(2, 1, "float32")]}, False, [], 0)
  if accelerator:
    r = 3 if quick else 10
    cases = [(1, r, "float32"), (32, r, "float32"), (64, r, "float32"), (64, r, "bfloat16")]
    return Plan({"paper": cases, "reduced": cases}, True,
                [(1, 16, "float32"), (32, 4, "float32"), (64, 4, "bfloat16")], 32)
  if quick:
    return Plan({"reduced": [(1, 3, "float32"), (32, 1, "float32")],
                 "paper": "--quick skips the paper size on a CPU (run without --quick)"}, False,
                [(1, 4, "float32"), (32, 1, "float32")], 8)
  return Plan({"paper": [(1, 3, "float32"), (32, 1, "float32")],
               "reduced": [(1, 5, "float32"), (32, 3, "float32")]}, True,
              [(1, 8, "float32"), (32, 2, "float32")], 16)


# ------------------------------------------------------------------------------------- forward


def _model_config(config, dtype: str):
  model = config.model.copy_and_resolve_references()
  model.dtype = dtype
  return model


def ours_forward(model_config, batch: int, repeats: int, variables=None) -> Measured:
  """sigmoid(model.apply(variables, images)) at `batch`, jitted, eval mode; the volume stays on device."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from vrn_jax import models  # pylint: disable=g-import-not-at-top

  model = models.get_model(model_config)
  images = jax.random.uniform(jax.random.key(0), (batch, 192, 192, 3), jnp.float32)
  if variables is None:
    variables = model.init(jax.random.key(1), images[:1])
  forward = jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x)))
  t = time.perf_counter()
  compiled = forward.lower(variables, images).compile()
  compile_s = time.perf_counter() - t
  first, best = common.timed(lambda: compiled(variables, images), jax.block_until_ready, repeats)
  total = flops.compiled_flops(compiled)
  return Measured(batch / best, compile_s + first, None if total is None else total / batch)


def torch_forward(model_config, batch: int, repeats: int, bf16: bool) -> Measured:
  """The PyTorch twin's eval-mode forward and sigmoid, under inference_mode (and bf16 autocast)."""
  torch, device, _ = common.torch_setup()
  from vrn_jax.interop import torch_reference  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  net = torch_reference.build_torch_vrn(model_config).to(device).eval()
  x = torch.rand(batch, 3, 192, 192, device=device)
  autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

  def forward():
    with torch.inference_mode(), autocast():
      return torch.sigmoid(net(x))

  sync = (lambda r: torch.cuda.synchronize()) if device.type == "cuda" else (lambda r: None)
  try:
    first, best = common.timed(forward, sync, repeats)
  finally:
    del net, x
    gc.collect()
    if device.type == "cuda":
      torch.cuda.empty_cache()
  return Measured(batch / best, first)




def forward_rows(size: str, cases, device: str, torch_device: str | None, accelerator: bool,
                 release: bool = False, small_peak: bool = False) -> list[Row]:
  from benchmarks.train_step import describe, size_config  # pylint: disable=g-import-not-at-top

  config = size_config(size)
  if release:
    config.model.topology = "release"
  m = config.model
  count = flops.vrn_flops(sigmoid=True, features=m.features, num_hourglasses=m.num_hourglasses,
                          depth=m.depth, topology=m.topology, volume_depth=m.volume_depth)
  what = f"{size}{' release' if release else ''} ({describe(config)})"
  rows, xla = [], None
  for batch, repeats, dtype in cases:
    model_config = _model_config(config, dtype)
    ours = try_variant(ours_forward, model_config, batch, repeats)
    if torch_device is None:
      base = Measured(None, why="PyTorch sees no CUDA device here (a CPU-only torch build)")
    else:
      base = try_variant(torch_forward, model_config, batch, repeats, bf16=dtype == "bfloat16")
    peak = flops.peak_flops(dtype, accelerator, small_peak)
    base_name = f"PyTorch eager{' bf16 autocast' if dtype == 'bfloat16' else ''}"
    for name, r, dev in ((f"ours (jit, eval){', bf16 compute' if dtype == 'bfloat16' else ''}", ours,
                          device), (f"{base_name} (baseline)", base, torch_device or device)):
      label = f"forward, {what}: {name}"
      if r.rate is None:
        rows.append(common.not_measured(label, "images/s", batch, dtype, dev, r.why, base_name))
        continue
      xla = r.xla_flops or xla
      note = (f"best of {repeats}; first call {r.first_s:.1f} s; MFU {100 * r.rate * count.forward / peak:.1f}% "
              f"(analytic; {dtype} matmul peak {peak / 1e12:.3g} TFLOP/s)")
      ratio = None if base.rate is None else r.rate / base.rate
      rows.append(Row(label, r.rate, "images/s", batch, dtype, dev, base_name, ratio, note))
  rows.insert(0, Row(f"forward FLOPs/image, {what}: analytic", count.forward / GFLOP, "GFLOP", 1, "",
                     device, "XLA cost analysis", None if xla is None else count.forward / xla,
                     f"forward + sigmoid; {count.params:,} params; XLA "
                     + ("n/a" if xla is None else f"{xla / GFLOP:.4g}")))
  return rows


# ---------------------------------------------------------------------------------- end to end


def fixture_photos(max_photos: int = 8) -> list[tuple[np.ndarray, np.ndarray, str]]:
  """The release's example photos with their landmarks: [(photo uint8, (68, 2) 0-based, name)]."""
  from vrn_jax.files import read_image_rgb, read_landmarks_txt  # pylint: disable=g-import-not-at-top

  folder = os.environ.get("VRN_FIXTURES", os.path.join(REPO, os.pardir, "shared", "fixtures",
                                                       "vrn_examples"))
  photos = []
  for txt in sorted(glob.glob(os.path.join(folder, "*.txt")))[:max_photos]:
    jpg = txt[:-4] + ".jpg"
    if os.path.isfile(jpg):
      photos.append((read_image_rgb(jpg), read_landmarks_txt(txt), os.path.basename(jpg)))
  return photos


def crop(photo: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
  """The release's `run.m` crop: (192, 192, 3) uint8."""
  from vrn_jax.geometry.crop import crop_from_landmarks, crop_image  # pylint: disable=g-import-not-at-top

  return crop_image(photo, crop_from_landmarks(landmarks, photo.shape[:2]))


_ATTACHED: dict = {}  # in a worker: shared-memory name -> block, the two most recent batches


def mesh_from_shared(name: str, shape: tuple, index: int, image: np.ndarray) -> tuple[int, int]:
  """Worker: marching cubes on volume `index` of the uint8 batch in shared memory `name`.

  Returns (vertices, faces): the mesh stays in the worker (a writer would save it there).
  """
  from multiprocessing import shared_memory  # pylint: disable=g-import-not-at-top

  from vrn_jax.geometry.isosurface import volume_to_mesh  # pylint: disable=g-import-not-at-top

  if name not in _ATTACHED:
    # Jobs arrive in submission order, so an older batch's mapping is no longer needed here (were it,
    # it would be attached again: the parent unlinks a block only once all its meshes are done).
    while len(_ATTACHED) >= 2:
      _ATTACHED.pop(next(iter(_ATTACHED))).close()
    _ATTACHED[name] = shared_memory.SharedMemory(name=name)
  volumes = np.ndarray(shape, np.uint8, buffer=_ATTACHED[name].buf)
  mesh = volume_to_mesh(volumes[index], LEVEL_U8, image)
  del volumes  # no view may outlive the mapping
  return len(mesh.vertices), len(mesh.faces)


class MeshPool:
  """Worker processes that mesh uint8 volume batches handed over in shared memory."""

  def __init__(self, workers: int):
    self.pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"))
    self.blocks = []

  def submit(self, volumes: np.ndarray, crops: list[np.ndarray]) -> list[concurrent.futures.Future]:
    from multiprocessing import shared_memory  # pylint: disable=g-import-not-at-top

    block = shared_memory.SharedMemory(create=True, size=volumes.nbytes)
    np.ndarray(volumes.shape, np.uint8, buffer=block.buf)[...] = volumes
    futures = [self.pool.submit(mesh_from_shared, block.name, volumes.shape, i, c)
               for i, c in enumerate(crops)]
    self.blocks.append((block, futures))
    return futures

  def release_done(self) -> None:
    keep = []
    for block, futures in self.blocks:
      if all(f.done() for f in futures):
        block.close()
        block.unlink()
      else:
        keep.append((block, futures))
    self.blocks = keep

  def close(self) -> None:
    for _, futures in self.blocks:
      concurrent.futures.wait(futures)
    self.release_done()
    self.pool.shutdown()


def end_to_end(predict, photos, batch: int, batches: int, mesh_pool: MeshPool,
               crop_pool: concurrent.futures.Executor) -> tuple[float, list[tuple[int, int]]]:
  """Photos -> crops -> volumes -> meshes, pipelined: the crops of batch k+1 (threads) and the meshes of
  batch k (processes) run while batch k+1 is predicted.

  Args:
    predict: (B, 192, 192, 3) uint8 crops -> (B, 192, 192, 200) uint8 volumes (NumPy, on the host).
    photos: [(photo, landmarks, name)], cycled to `batch * batches`.
  Returns:
    (seconds, [(vertices, faces)] per photo).
  """
  jobs = [photos[i % len(photos)] for i in range(batch * batches)]
  chunks = [jobs[k * batch:(k + 1) * batch] for k in range(batches)]
  t = time.perf_counter()
  pending = crop_pool.map(lambda p: crop(p[0], p[1]), chunks[0])
  futures = []
  for k in range(batches):
    crops = list(pending)
    if k + 1 < batches:
      pending = crop_pool.map(lambda p: crop(p[0], p[1]), chunks[k + 1])
    futures += mesh_pool.submit(predict(np.stack(crops)), crops)
    mesh_pool.release_done()
  stats = [f.result() for f in futures]
  elapsed = time.perf_counter() - t
  mesh_pool.release_done()
  return elapsed, stats


def serial(predict, photos, count: int) -> tuple[float, list[tuple[int, int]]]:
  """The baseline: the same chain, one photo at a time, in this process."""
  from vrn_jax.geometry.isosurface import volume_to_mesh  # pylint: disable=g-import-not-at-top

  t = time.perf_counter()
  stats = []
  for i in range(count):
    photo, landmarks, _ = photos[i % len(photos)]
    c = crop(photo, landmarks)
    mesh = volume_to_mesh(predict(c[None])[0], LEVEL_U8, c)
    stats.append((len(mesh.vertices), len(mesh.faces)))
  return time.perf_counter() - t, stats


def restore_workdir(workdir: str):
  """(model config, variables) of the latest checkpoint in a run_train.py / import_release workdir."""
  import json  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  from vrn_jax.training import checkpoints, optimizers, steps  # pylint: disable=g-import-not-at-top

  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  tx = optimizers.create_optimizer(config, optimizers.learning_rate_schedule(config, 1))
  state = steps.create_train_state(config, jax.random.key(0), tx)
  manager = checkpoints.checkpoint_manager(workdir, keep=1)
  try:
    if manager.latest_step() is None:
      raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint")
    state = checkpoints.restore_latest(manager, state)
  finally:
    manager.close()
  return config, {"params": state.params, "batch_stats": state.batch_stats}


def trained_workdirs() -> list[str]:
  given = os.environ.get("VRN_BENCH_WORKDIR", "")
  if given:
    return [os.path.abspath(os.path.expanduser(w)) for w in given.split(",") if w]
  default = os.path.join(REPO, "workdirs", "default")
  return [default] if os.path.isfile(os.path.join(default, "config.json")) else []


def end_to_end_rows(e2e_plan: Plan, device: str, host: str, accelerator: bool) -> list[Row]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from benchmarks.train_step import describe  # pylint: disable=g-import-not-at-top
  from vrn_jax import inference, models  # pylint: disable=g-import-not-at-top

  if not e2e_plan.end_to_end:
    return []
  workers = common.cores()
  label = f"end to end (photo -> crop -> volume -> mesh), {workers} meshing processes"
  photos = fixture_photos()
  workdirs = trained_workdirs()
  why = None
  if not photos:
    why = "no example photos (shared/fixtures/vrn_examples or $VRN_FIXTURES)"
  elif not workdirs:
    why = ("needs trained weights: set VRN_BENCH_WORKDIR to a run_train.py or data_prep/import_release.py "
           "workdir (an untrained network's isosurface is noise, ~4 M vertices, seconds per mesh)")
  if why:
    return [common.not_measured(label, "photos/s", b, dtype, device, why)
            for b, _, dtype in e2e_plan.end_to_end]
  rows = []
  crop_pool = concurrent.futures.ThreadPoolExecutor(max(2, workers))
  mesh_pool = MeshPool(workers)
  try:
    for workdir in workdirs:
      config, variables = restore_workdir(workdir)
      # The meshes' volume as the Predictor makes it: logits smoothed along z, folded into the head.
      variables = inference.fold_z_smoothing(variables, inference.smooth_z_voxels(config),
                                             config.model.volume_depth)
      what = f"{describe(config)}, weights {os.path.relpath(workdir, REPO)}"
      for batch, batches, dtype in e2e_plan.end_to_end:
        model = models.get_model(_model_config(config, dtype))

        @jax.jit
        def volumes(v, crops):
          logits = model.apply(v, crops.astype(jnp.float32) / 255.0)
          return (jax.nn.sigmoid(logits) * 255.0).astype(jnp.uint8)  # the release's .raw values

        predict = lambda c: np.asarray(volumes(variables, c))  # pylint: disable=cell-var-from-loop
        end_to_end(predict, photos, batch, 1, mesh_pool, crop_pool)  # compile, start the workers
        seconds, stats = end_to_end(predict, photos, batch, batches, mesh_pool, crop_pool)
        rate = len(stats) / seconds
        serial_n = min(e2e_plan.serial_photos, len(stats))
        predict(np.zeros((1, 192, 192, 3), np.uint8))  # compile batch 1 outside the timing
        serial_s, _ = serial(predict, photos, serial_n)
        vertices = np.mean([s[0] for s in stats])
        dev = device if device == host else f"{device}; meshing on {host}"
        rows.append(Row(f"{label}: {what}", rate, "photos/s", batch, dtype, dev,
                        "the same chain one photo at a time", rate / (serial_n / serial_s),
                        f"{len(stats)} photos in {seconds:.1f} s; mean mesh {vertices:,.0f} vertices; "
                        f"serial {serial_n / serial_s:.3g} photos/s; photos decoded beforehand"))
      del variables
  finally:
    mesh_pool.close()
    crop_pool.shutdown()
  return rows


def gpu_placeholders(why: str) -> list[Row]:
  """The accelerator rows of the issue (named as a GPU run names them), not measured without one."""
  from benchmarks.train_step import describe, size_config  # pylint: disable=g-import-not-at-top

  gpu = "GPU: H200 (not in this run)"
  what = f"forward, paper ({describe(size_config('paper'))})"
  return [
      common.not_measured(f"{what}: ours (jit, eval), bf16 compute", "images/s", 64, "bfloat16", gpu, why,
                          "PyTorch eager bf16 autocast"),
      common.not_measured(f"{what}: PyTorch eager bf16 autocast (baseline)", "images/s", 64, "bfloat16",
                          gpu, why),
      common.not_measured("end to end (photo -> crop -> volume -> mesh), 16 meshing processes", "photos/s",
                          64, "bfloat16", gpu, why, "the same chain one photo at a time"),
  ]


def run(quick: bool, device: str, tiny: bool = False) -> list[Row]:
  accelerator, jax_device, torch_device = common.run_devices(device)
  p = plan(quick, tiny, accelerator)
  rows = []
  for size, cases in p.sizes.items():
    if isinstance(cases, str):
      rows.append(common.not_measured(f"forward, {size}", "images/s", 0, "", jax_device, cases))
      continue
    rows += forward_rows(size, cases, jax_device, torch_device, accelerator, small_peak=tiny)
  if p.release_batch1:
    rows += forward_rows("paper", [(1, 3, "float32")], jax_device, torch_device, accelerator, release=True)
  rows += end_to_end_rows(p, jax_device, device, accelerator)
  if not accelerator and not tiny:
    rows += gpu_placeholders("no accelerator in this run; the same command measures these on a GPU")
  return rows
