"""Shared test fixtures: small meshes with known geometry and the release's example photos."""

import os
import subprocess
import sys

# One BLAS thread per process: the suite runs on 2 cores, and OpenBLAS threads spinning against XLA's
# and the other tests' threads made some NumPy-heavy tests 10-25x slower. Set before NumPy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# One persistent XLA compilation cache for the session, inherited by the tests' subprocesses and the
# xdist workers (pyproject's addopts; the controller loads this file before it starts them): the
# training tests run the same small step in several runs (resume, moving average, workdir errors), each
# of which would otherwise compile it afresh. A new empty folder each session, removed at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  _cache = tempfile.mkdtemp(prefix="vrn_jax_tests_xla_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLIP_Y = np.diag([1.0, -1.0, 1.0])


def fixtures_dir() -> str:
  """The release's example photos (shared/ beside the checkout, or $VRN_FIXTURES)."""
  path = os.environ.get("VRN_FIXTURES",
                        os.path.join(REPO, os.pardir, "shared", "fixtures", "vrn_examples"))
  if not os.path.isdir(path):
    if os.environ.get("CI"):
      pytest.fail(f"{path}: the fixture photos are missing; CI needs shared/ beside the checkout.")
    pytest.skip(f"{path} not found; set VRN_FIXTURES to the vrn_examples folder")
  return path


def half_ellipsoid(radii=(50.0, 60.0, 35.0), subdivisions=5, nose=0.0):
  """The front half (z >= 0) of an ellipsoid, centred at the origin, optionally with a Gaussian nose
  bump of height `nose` on its front: (vertices (N, 3), faces (T, 3)). Its solid is exactly what the
  paper's voxelisation makes of it: front surface filled back to the plane z = 0."""
  import trimesh

  sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
  v = sphere.vertices * np.asarray(radii)
  keep = v[:, 2] >= -1e-9
  faces = sphere.faces[np.all(keep[sphere.faces], axis=1)]
  if nose:
    r2 = (v[:, 0] ** 2 + v[:, 1] ** 2) / (0.15 * radii[0]) ** 2
    v = v.copy()
    v[:, 2] += nose * np.exp(-r2) * keep
  return v, faces


def image_rotation(pitch_deg, yaw_deg, roll_deg):
  from vrn_jax.geometry.pose import rotation_3ddfa

  r = rotation_3ddfa(*np.deg2rad([pitch_deg, yaw_deg, roll_deg]))
  return FLIP_Y @ r @ FLIP_Y


def save_slab_checkpoint(config, workdir, slab_depth):
  """A checkpoint of `config`'s model (initialised) whose output layer predicts a fixed slab, occupied
  for voxel z < slab_depth whatever the image: a real restore/inference/meshing path with a known
  volume (an untrained network's volume hovers around 0.5 and meshes into noise)."""
  import jax

  state = initial_state(config)
  params = jax.tree_util.tree_map(np.asarray, state.params)
  out = params["head"]["out"]
  out["kernel"] = np.zeros_like(out["kernel"])
  out["bias"] = np.where(np.arange(out["bias"].size) < slab_depth, 4.0, -4.0).astype(np.float32)
  save_state(config, workdir, state.replace(params=params, ema_params=None), 3)


def initial_state(config):
  """`config`'s initial training state (seed 0), as the training loop creates it."""
  import jax

  from vrn_jax.training import optimizers, steps

  tx = optimizers.create_optimizer(config, optimizers.learning_rate_schedule(config, 10))
  return steps.create_train_state(config, jax.random.key(0), tx)


def save_state(config, workdir, state, step, keep=1):
  """Saves `state` as checkpoint `step` of `workdir`, with `config` as its config.json, as the training
  loop does."""
  from vrn_jax.training import checkpoints

  manager = checkpoints.checkpoint_manager(workdir, keep)
  checkpoints.save(manager, step, checkpoints.checkpoint_items(state.replace(step=step)))
  checkpoints.finish(manager)
  checkpoints.save_config(config, workdir)


# ------------------------------------------------------------------------ training on a tiny dataset


@pytest.fixture(scope="session")
def train_data_dir(tmp_path_factory):
  """A tiny vrn_faces/aflw2000_3d dataset (12 procedural faces) to train on."""
  from vrn_jax.faces.synthetic import write_aflw2000_tree
  from vrn_jax.datasets.vrn_faces import Builder

  root = tmp_path_factory.mktemp("train_data")
  write_aflw2000_tree(str(root / "manual"), 12, seed=5)
  os.environ["VRN_FACES_NUM_WORKERS"] = "1"
  import tensorflow_datasets as tfds

  Builder(config="aflw2000_3d", data_dir=str(root / "data")).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(root / "manual")))
  return str(root / "data")


def train_overrides(data_dir, **extra):
  args = {"data.data_dir": data_dir, "data.config": "aflw2000_3d", "data.train_split": "test",
          "data.eval_config": "aflw2000_3d", **extra}
  return [f"--config.{k}={v}" for k, v in args.items()]


def train_config(data_dir, **extra):
  from vrn_jax.configs import default

  config = default.get_config("test")
  config.data.data_dir = data_dir
  config.data.config = config.data.eval_config = "aflw2000_3d"
  config.data.train_split = "test"
  for k, v in extra.items():
    node = config
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return config


def read_checkpoint(workdir, step=None):
  import jax
  import orbax.checkpoint as ocp

  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
    step = manager.latest_step() if step is None else step
    state = manager.restore(step, args=ocp.args.StandardRestore())
  return step, jax.tree_util.tree_map(np.asarray, state)


def xla_env(devices=1, **extra):
  """os.environ for a subprocess with `devices` CPU devices, plus `extra`."""
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)


def run_train(workdir, args, devices=1, **kwargs):
  """run_train.py with the smoke config in a subprocess (subprocess.run's result)."""
  env = xla_env(devices, VRN_FACES_NUM_WORKERS="1")
  return subprocess.run([sys.executable, "run_train.py", "--config=configs/default.py:test",
                         f"--workdir={workdir}", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600, **kwargs)


# ------------------------------------------------------------------------------ scheduling the files

# The files with the longest runs, longest first (measured: `pytest --durations=0`, summed per file).
# The two workers take whole files (pyproject: `--dist loadfile --no-loadscope-reorder`) in collection
# order; started first, the long ones no longer end the run on one worker while the other waits.
LONGEST_FIRST = ("test_models", "test_reliability", "test_evaluate", "test_train", "test_benchmarks",
                 "test_import_release", "test_web", "test_web_faults", "test_fuzz", "test_readme")


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.splitext(os.path.basename(str(item.fspath)))[0]
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

  items.sort(key=rank)  # stable: within a file, and among the others, the collection order stays
