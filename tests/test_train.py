"""Training: data parallelism is exact, the command logs and checkpoints, the weights' moving average,
clear errors for another model's workdir and bad config fields. (Resume and faults: test_reliability.)"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import (REPO, initial_state, read_checkpoint, run_train, save_state, train_config,
                      train_overrides, xla_env)


@pytest.fixture(scope="module")
def data_dir(train_data_dir):
  return train_data_dir


_overrides, _config, _checkpoint, _run_train = train_overrides, train_config, read_checkpoint, run_train


def _assert_trees_close(a, b, rtol):
  """||a - b|| <= rtol ||b|| over the whole tree (leaf structure equal)."""
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  diff = np.sqrt(sum(np.sum((np.asarray(x, np.float64) - y) ** 2) for x, y in zip(leaves_a, leaves_b)))
  norm = np.sqrt(sum(np.sum(np.asarray(y, np.float64) ** 2) for y in leaves_b))
  assert diff <= rtol * norm, (diff / norm, rtol)
  return diff / norm


def _step_by_step(data_dir):
  """Runs in a process with 4 fake CPU devices: 3 training steps on 1 device; before each, the same
  state and batch also go through the 4-device step. Prints the relative differences as JSON."""
  import functools

  from flax import jax_utils

  from vrn_jax.training import optimizers, steps
  from vrn_jax.data import pipeline

  config = _config(data_dir)
  # RMSProp in its smooth regime for every parameter (not Muon for the kernels), see the test.
  config.optim.name, config.optim.eps, config.optim.learning_rate = "rmsprop", 1.0, 1.0
  source = pipeline.data_source(data_dir, "aflw2000_3d", "test")
  schedule = optimizers.learning_rate_schedule(config, len(source) // config.global_batch_size)
  state = steps.create_train_state(config, jax.random.key(0), optimizers.create_optimizer(config, schedule))
  initial = jax.device_get(state.params)
  model = steps.create_model(config)
  # One pmapped step per device count, built once: each is compiled once and run for every step.
  step_fn = functools.partial(steps.train_step, config, model, schedule)
  device_sets = {n: jax.devices()[:n] for n in (1, 4)}
  p_steps = {n: jax.pmap(step_fn, axis_name=steps.AXIS, devices=d) for n, d in device_sets.items()}
  results = []
  for step in range(3):
    out = {}
    for n, devices in device_sets.items():
      p_step = p_steps[n]
      batch = next(pipeline.host_batches(source, batch_size=4, num_devices=n, seed=0, num_threads=1,
                                         start_batch=step))
      new, _ = p_step(jax_utils.replicate(state, devices), batch,
                      jax_utils.replicate(jax.random.key(1), devices))
      out[n] = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], new)
    results.append({c: _relative(getattr(out[4], c), getattr(out[1], c))
                    for c in ("params", "batch_stats")})
    state = out[1]
  moved = _relative(initial, state.params)
  print(json.dumps({"steps": results, "moved": moved}))


def _relative(a, b):
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  diff = np.sqrt(sum(np.sum((np.asarray(x, np.float64) - y) ** 2) for x, y in zip(leaves_a, leaves_b)))
  return float(diff / np.sqrt(sum(np.sum(np.asarray(y, np.float64) ** 2) for y in leaves_b)))


def test_one_device_and_four_agree(data_dir):
  """Data parallelism is exact: 3 steps, each on 1 device and on 4 fake CPU devices from the same state
  and global batch, give params and batch statistics that agree to 1e-4 relative.

  RMSProp runs in its smooth regime here (eps 1: an update is ~lr * g), and each step starts from the
  same state. With Torch7's defaults (mean square starting at 0, eps 1e-8) the first updates are
  +-10 lr sign(g) for every |g| > 1e-7, so gradient components at the level of float32 summation-order
  rounding (biases of convolutions followed by BatchNorm: exactly 0 in exact arithmetic) flip sign
  between any two reduction orders, and small networks then drift apart chaotically: a property of the
  optimiser, not of the data parallelism, which is what this checks. Muon (the CPU default's optimiser
  for the kernels) is left out for the same reason: it gives every kernel a step of the same size
  whatever its gradient's, so a kernel whose gradient differs by a few percent between the reduction
  orders (this tiny network's BatchNorm over 1-example device batches at 6x6 is ill-conditioned) moves
  by a few percent of a full step apart (2.3e-4 relative after the first step). The optimiser runs
  after the cross-replica mean, on the same gradients on every device.
  """
  env = xla_env(4, PYTHONPATH=REPO)
  code = f"import test_train; test_train._step_by_step({data_dir!r})"
  r = subprocess.run([sys.executable, "-c", code], cwd=os.path.join(REPO, "tests"), env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  for step in result["steps"]:
    assert step["params"] <= 1e-4 and step["batch_stats"] <= 1e-4, result
  assert result["moved"] > 1e-3, result  # the steps moved the parameters far beyond the tolerance


@pytest.fixture(scope="module")
def cli_run(data_dir, tmp_path_factory):
  """run_train.py's smoke run in a fresh workdir: (workdir, the subprocess's result)."""
  workdir = tmp_path_factory.mktemp("cli") / "w"
  return workdir, _run_train(str(workdir), _overrides(data_dir))


def test_cli_runs_logs_and_checkpoints(cli_run):
  workdir, r = cli_run
  assert r.returncode == 0, r.stderr[-3000:]
  assert "held-out volume IoU" in r.stdout
  assert "step 3/3" in r.stderr and "examples/s" in r.stderr and "ETA" in r.stderr
  lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [l["step"] for l in lines if "step" in l] == [1, 2, 3]
  assert all(np.isfinite(l["loss"]) and l["learning_rate"] > 0 for l in lines if "loss" in l)
  assert "eval" in lines[-1] and 0 <= lines[-1]["eval"]["iou"] <= 1
  assert json.load(open(workdir / "config.json"))["model"]["features"] == 8
  assert _checkpoint(str(workdir))[0] == 3
  # The same figures as TensorBoard summaries, and the held-out examples as images.
  from tensorboard.backend.event_processing import event_accumulator

  events = event_accumulator.EventAccumulator(str(workdir / "tensorboard"), size_guidance={"tensors": 0})
  events.Reload()
  losses = [(e.step, float(np.asarray(tf_value(e)))) for e in events.Tensors("loss")]
  assert losses == [(l["step"], pytest.approx(l["loss"], rel=1e-6)) for l in lines if "loss" in l]
  (iou,) = events.Tensors("eval/iou")
  assert float(tf_value(iou)) == pytest.approx(lines[-1]["eval"]["iou"], rel=1e-6)
  (image,) = events.Tensors("eval/crop_prediction_target")
  width, height = (int(v) for v in tf_value(image)[:2])  # an image summary: width, height, PNGs
  shown = min(8, json.load(open(workdir / "config.json"))["eval_examples"])
  assert (width, height) == (3 * 192, 192) and len(tf_value(image)) == 2 + shown


def tf_value(event):
  """A TensorBoard tensor event's value as NumPy (its TensorProto decoded by TensorFlow)."""
  import tensorflow as tf

  return tf.make_ndarray(event.tensor_proto)


def test_moving_average_of_the_weights(data_dir, tmp_path):
  """ema_decay > 0: after each step ema = d ema + (1 - d) params, d = min(decay, (1 + t) / (10 + t)); it
  is saved, evaluated and restored by run_eval. A run that turns it on resumes from a checkpoint without
  one (the average starts from the restored weights); one that turns it off drops it."""
  from vrn_jax import evaluate
  from vrn_jax.training import checkpoints, loop, steps

  workdir = str(tmp_path / "ema")
  # A run without an average, at step 2: its initial state saved as the loop saves one (training it
  # would compile a step without the average, which no other test runs).
  off = _config(data_dir, ema_decay=0.0)
  initial = initial_state(off)
  assert initial.ema_params is None
  save_state(off, workdir, initial, 2, off.keep_checkpoints)
  _, two = _checkpoint(workdir, 2)
  assert "ema_params" not in two
  # Turned on: the default decay (the suite's other runs compile its step; 0.9 would compile another).
  config = _config(data_dir, num_train_steps=3, checkpoint_every_steps=1)
  assert config.ema_decay > 0
  loop.train_and_evaluate(config, workdir)
  _, three = _checkpoint(workdir, 3)
  d = min(config.ema_decay, 3 / 12)  # the update of step t = 2 -> 3 (state.step 2)
  expected = jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, two["params"], three["params"])
  _assert_trees_close(three["ema_params"], expected, 1e-6)
  assert _relative(three["ema_params"], three["params"]) > 1e-3  # an average, not the weights
  variables, step = evaluate.restore_variables(config, workdir)
  assert step == 3
  _assert_trees_close(variables["params"], three["ema_params"], 0.0)
  state = steps.TrainState(step=3, apply_fn=None, params=three["params"], tx=None, opt_state=None,
                           batch_stats=three["batch_stats"], ema_params=three["ema_params"])
  assert steps.eval_params(state) is state.ema_params
  assert steps.eval_params(state.replace(ema_params=None)) is state.params
  # Turned off again: the state a run without the average resumes with (the loop's initial state,
  # restored from the latest checkpoint) has the weights and no average, and so has its next save.
  with checkpoints.checkpoint_manager(workdir, off.keep_checkpoints, read_only=True) as manager:
    resumed = checkpoints.restore_latest(manager, initial)
  assert int(resumed.step) == 3 and resumed.ema_params is None
  _assert_trees_close(resumed.params, three["params"], 0.0)
  save_state(off, workdir, resumed, 4, off.keep_checkpoints)
  step, four = _checkpoint(workdir)
  assert step == 4 and "ema_params" not in four


def test_another_models_workdir_and_unknown_keys_are_clear_errors(data_dir, cli_run, tmp_path):
  from vrn_jax import files
  from vrn_jax.training import checkpoints

  workdir = str(tmp_path / "w")
  shutil.copytree(cli_run[0], workdir)  # a trained smoke workdir, changed below
  r = _run_train(workdir, _overrides(data_dir, **{"model.features": 16}))
  assert r.returncode == 1
  assert "holds checkpoints of another model (features: checkpoint 8 vs config 16)" in r.stderr
  r = _run_train(workdir, _overrides(data_dir, **{"optim.name": "rmsprop"}))
  assert r.returncode == 1
  assert "another optimiser (optim.name: checkpoint 'muon' vs config 'rmsprop')" in r.stderr
  # A config.json from before the stem field was added means that field's default then, the paper's.
  saved = json.load(open(os.path.join(workdir, "config.json")))
  del saved["model"]["stem"]
  json.dump(saved, open(os.path.join(workdir, "config.json"), "w"))
  with pytest.raises(files.InputError, match="stem: checkpoint 'conv7x7' vs config 'patchify'"):
    checkpoints.check_workdir_model(_config(data_dir), workdir)
  r = _run_train(workdir, ["--config.optim.learning_rte=1"])
  assert r.returncode == 2
  assert "--config.optim.learning_rte: no such config field" in r.stderr
  assert "closest: optim.learning_rate" in r.stderr


_PAGE_FAULTS = """
import resource
from vrn_jax import host_memory
applied = host_memory.keep_freed_memory()  # first, as run_train.py does
import jax, jax.numpy as jnp
x = jnp.ones((16, 1024, 1024))  # 64 MB
f = jax.jit(lambda x: jnp.sum(jnp.sin(x * 2) + x))  # XLA makes a 64 MB temporary each call
for _ in range(4):
  jax.block_until_ready(f(x))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(16):
  jax.block_until_ready(f(x))
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 16 / (x.nbytes / 4096))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_reuses_big_buffers():
  """With `keep_freed_memory` (what run_train.py calls first), the big temporary XLA allocates and frees
  in every call is mostly reused; without it (the control) glibc returns it to the kernel and every call
  faults in all of its pages again (1.0 fault per page per call). Kept memory still faults now and then
  (0.0-0.5 measured on a shared 2-core VM: the order in which freed blocks come back, the kernel
  reclaiming idle pages), hence the margin."""
  faults = {}
  for keep in ("1", "0"):
    env = dict(os.environ, VRN_KEEP_FREED_MEMORY=keep, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "-c", _PAGE_FAULTS], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    applied, per_page = r.stdout.split()
    assert applied == ("True" if keep == "1" else "False")
    faults[keep] = float(per_page)  # page faults per call per page of the temporary
  assert faults["1"] < 0.6 and faults["0"] > 0.9, faults


def test_keep_freed_memory_only_for_jax_on_the_cpu(monkeypatch):
  """The malloc settings are for JAX on the CPU: JAX_PLATFORMS decides when set, else an accelerator's
  device node means JAX runs there (and one arena would serialise its compiler's threads)."""
  import fnmatch  # pylint: disable=g-import-not-at-top

  from vrn_jax import host_memory  # pylint: disable=g-import-not-at-top

  nodes = []  # the device nodes the fake machine has
  monkeypatch.setattr(host_memory.glob, "glob", lambda pattern: fnmatch.filter(nodes, pattern))
  for platforms, present, expected in [("", [], True), ("", ["/dev/nvidia0"], False), ("", ["/dev/accel0"], False),
                                       ("cpu", ["/dev/nvidia0"], True), ("cuda", [], False),
                                       ("cuda,cpu", [], False), ("cpu,cuda", ["/dev/nvidia0"], True)]:
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    nodes[:] = present
    assert host_memory.jax_runs_on_cpu() == expected, (platforms, present)
  nodes[:] = ["/dev/nvidia0"]
  monkeypatch.setenv("JAX_PLATFORMS", "")
  monkeypatch.delenv("VRN_KEEP_FREED_MEMORY", raising=False)
  assert not host_memory.keep_freed_memory()  # an accelerator: malloc left alone, nothing applied


def test_config_override_checks_before_flag_parsing(capsys, monkeypatch):
  """The early check both entry points run: a bad override is one line and exit status 2; run_eval's
  overrides need an explicit --config=FILE; good overrides pass."""
  from vrn_jax import cli

  monkeypatch.chdir(REPO)
  cli.exit_on_bad_config_overrides(["--config.optim.learning_rate=1e-3"], "configs/default.py")
  cli.exit_on_bad_config_overrides(["--workdir=w"], None)
  for argv, default, expected in [
      (["--config.model.featurs=8"], "configs/default.py", "closest: model.features"),
      (["--config=configs/nope.py"], "configs/default.py", "no such config file configs/nope.py"),
      (["--config=configs/default.py:tset"], "configs/default.py", "unknown argument 'tset'"),
      (["--workdir=w", "--config.seed=1"], None, "need --config=FILE")]:
    with pytest.raises(SystemExit) as e:
      cli.exit_on_bad_config_overrides(argv, default)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err, err


def test_schedules_and_paper_configs():
  """The paper configs keep the paper's stem, head, loss, optimisation and augmentation whatever the CPU
  default uses; configs/long.py is the default, longer;
  'step' multiplies by decay_factor at each boundary, 'cosine' decays to learning_rate * decay_factor;
  an unknown schedule is an error naming the field."""
  import importlib

  from vrn_jax import files
  from vrn_jax.data import augment
  from vrn_jax.training import optimizers, steps

  default = importlib.import_module("configs.default").get_config()
  for name in ("vrn", "vrn_multitask", "vrn_guided"):
    c = importlib.import_module(f"configs.{name}").get_config()
    assert (c.optim.name, c.optim.learning_rate, c.optim.schedule, tuple(c.optim.decay_epochs),
            c.optim.decay_factor, c.optim.momentum) == ("rmsprop", 1e-4, "step", (40.0,), 0.1, 0.0), name
    assert (c.augment.enabled, c.augment.rotation_deg, c.augment.translation_px,
            tuple(c.augment.scale_range), c.augment.flip_probability, tuple(c.augment.colour_range)) == (
                True, 45.0, 15.0, (0.85, 1.15), 0.2, (0.6, 1.4)), name
    assert (c.model.stem, c.model.body_stride, c.model.depth, c.loss_stride, c.model.features,
            c.ema_decay, c.model.head_upsample) == ("conv7x7", 1, 4, 1, 256, 0.0, "logits"), name
    assert steps.augment_config(c) == augment.AugmentConfig(), name  # the paper's, nothing else
  # configs/long.py: the default three times as long, decayed at the same share of the run.
  for arg in (None, "multitask"):
    base, long = (importlib.import_module(f"configs.{n}").get_config(arg) for n in ("default", "long"))
    assert long.num_epochs == pytest.approx(3 * base.num_epochs), arg
    assert long.optim.decay_epochs[0] / long.num_epochs == pytest.approx(
        base.optim.decay_epochs[0] / base.num_epochs), arg
    assert long.model.to_dict() == base.model.to_dict() and long.augment.to_dict() == base.augment.to_dict()
  paper = importlib.import_module("configs.vrn").get_config()
  step = optimizers.learning_rate_schedule(paper, steps_per_epoch=10)
  np.testing.assert_allclose([float(step(s)) for s in (0, 399, 400, 10_000)], [1e-4, 1e-4, 1e-5, 1e-5],
                             rtol=1e-6)
  default.optim.schedule, default.optim.learning_rate, default.optim.decay_factor = "cosine", 2e-3, 0.05
  cosine = optimizers.learning_rate_schedule(default, steps_per_epoch=10, num_steps=100)
  np.testing.assert_allclose([float(cosine(s)) for s in (0, 50, 100)],
                             [2e-3, 2e-3 * (0.05 + 0.95 * 0.5), 2e-3 * 0.05], rtol=1e-5)
  default.optim.schedule = "linear"
  with pytest.raises(files.InputError, match="optim.schedule 'linear'"):
    optimizers.learning_rate_schedule(default, 10, 100)


def test_muon_orthogonalises_the_kernels_and_leaves_the_rest_to_rmsprop():
  """optim.name 'muon': each convolution kernel's step, as a (kh * kw * cin, cout) matrix, has all its
  singular values near muon_learning_rate * sqrt(max(1, cout / fan_in)) (Newton-Schulz leaves them in
  about [0.6, 1.2] times that); every other parameter, and the kernels in muon_exclude, take exactly
  the RMSProp step. Unknown names are errors that name the field."""
  import importlib

  import flax

  from vrn_jax import files
  from vrn_jax.training import optimizers, steps

  config = importlib.import_module("configs.default").get_config("test")
  config.optim.name = "muon"
  schedule = optimizers.learning_rate_schedule(config, steps_per_epoch=10)
  state = steps.create_train_state(config, jax.random.key(0), optimizers.create_optimizer(config, schedule))
  rng = np.random.default_rng(0)

  def gradient(x):
    """Random; a kernel's as a matrix with singular values spread over [0.1, 1] (ten times apart) in
    random directions. Five Newton-Schulz steps cannot lift a direction near zero (a square Gaussian
    matrix has some), so the test draws none: it checks the spread collapses to about one."""
    if x.ndim != 4:
      return rng.normal(size=x.shape).astype(np.float32)
    rows, cols = int(np.prod(x.shape[:3])), x.shape[3]
    u, _ = np.linalg.qr(rng.normal(size=(rows, min(rows, cols))))
    v, _ = np.linalg.qr(rng.normal(size=(cols, min(rows, cols))))
    s = rng.uniform(0.1, 1.0, size=min(rows, cols))
    return ((u * s) @ v.T).reshape(x.shape).astype(np.float32)

  grads = jax.tree_util.tree_map(gradient, state.params)
  muon, _ = jax.jit(state.tx.update)(grads, state.opt_state, state.params)
  config.optim.name = "rmsprop"
  rmsprop_tx = optimizers.create_optimizer(config, schedule)
  rmsprop, _ = jax.jit(rmsprop_tx.update)(grads, rmsprop_tx.init(state.params), state.params)
  muon, rmsprop = flax.traverse_util.flatten_dict(muon), flax.traverse_util.flatten_dict(rmsprop)
  orthogonalised = set()
  for key, update in muon.items():
    update = np.asarray(update)
    if update.ndim == 4 and "/".join(key[:-1]) not in config.optim.muon_exclude:
      matrix = update.reshape(-1, update.shape[3])
      scale = config.optim.muon_learning_rate * max(1.0, matrix.shape[1] / matrix.shape[0]) ** 0.5
      singular = np.linalg.svd(matrix, compute_uv=False) / scale
      assert 0.5 < singular.min() and singular.max() < 1.3, (key, singular)
      orthogonalised.add("/".join(key[:-1]))
    else:
      np.testing.assert_allclose(update, rmsprop[key], rtol=1e-6, err_msg=str(key))
  assert len(orthogonalised) > 10 and "head/out" in orthogonalised
  assert tuple(config.optim.muon_exclude) == ("stem/conv",) and ("stem", "conv", "kernel") in muon
  config.optim.name = "adam"
  with pytest.raises(files.InputError, match="optim.name 'adam': expected one of rmsprop, muon"):
    optimizers.create_optimizer(config, schedule)
  config.optim.name, config.optim.muon_exclude = "muon", ("head/outt",)
  with pytest.raises(files.InputError, match=r"muon_exclude: \['head/outt'\] is not a convolution"):
    optimizers.create_optimizer(config, schedule).init(state.params)


def test_a_bad_schedule_is_reported_before_the_dataset_is_looked_at(tmp_path):
  """The schedule, the optimiser, the loss stride and weights and the average's decay are checked
  before the dataset: the error names them even where there is no dataset (where run_train.py would
  otherwise first build one)."""
  import importlib

  from vrn_jax import files
  from vrn_jax.training import loop, steps

  config = importlib.import_module("configs.default").get_config("test")
  config.data.data_dir = str(tmp_path / "no_datasets_here")
  config.data.build_if_missing = False
  config.optim.schedule = "cosin"
  with pytest.raises(files.InputError, match="optim.schedule 'cosin'"):
    loop.train_and_evaluate(config, str(tmp_path / "w"))
  config.optim.schedule = "cosine"
  config.optim.name = "sgd"
  with pytest.raises(files.InputError, match="optim.name 'sgd'"):
    loop.train_and_evaluate(config, str(tmp_path / "w"))
  config.optim.name = "muon"
  # Each case: fields set (the earlier cases' fixed first), then the error naming them; nothing written.
  cases = [({"loss_stride": 3}, "loss_stride 3: expected 1"),
           ({"loss_stride": 2, "ema_decay": 1.0}, "ema_decay 1.0: expected 0"),
           ({"ema_decay": 0.9, "model.head_upsample": "logits"},
            "thin_column_weight != 1 needs model.head_upsample"),
           ({"model.head_upsample": "features", "thin_column_weight": 0.5},
            "thin_column_weight 0.5: expected >= 1"),
           ({"thin_column_weight": 3.0, "thin_column_voxels": 0},
            "thin_column_voxels 0: expected a whole number"),
           ({"thin_column_voxels": 40, "relief_weight": 0.5}, "relief_weight 0.5: expected >= 1"),
           ({"relief_weight": 3.0, "relief_window_px": 4},  # 2 of the loss's columns (loss_stride 2)
            "relief_window_px 4: expected a whole number of crop pixels from 6"),
           ({"relief_window_px": 40, "thin_column_weight": 1.0, "model.head_upsample": "logits"},
            "relief_weight != 1 needs model.head_upsample"),
           ({"relief_weight": 1.0, "iou_loss_weight": 0.5}, "iou_loss_weight != 0 needs model.head_upsample"),
           ({"model.head_upsample": "features", "iou_loss_weight": -1.0},
            "iou_loss_weight -1.0: expected >= 0")]
  for i, (fields, match) in enumerate(cases):
    for name, value in fields.items():
      *parents, leaf = name.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      node[leaf] = value
    with pytest.raises(files.InputError, match=match):
      loop.train_and_evaluate(config, str(tmp_path / f"w{i}"))
    assert not os.path.exists(tmp_path / f"w{i}")  # nothing written
  config.model.head_upsample = "features_bspline"
  config.thin_column_weight = 3.0
  config.relief_weight = 3.0
  config.iou_loss_weight = 0.5
  assert steps.relief_weight(config) == (3.0, 21)  # 40 px: 20 of the loss's columns, made odd
  config.loss_stride = 4
  assert steps.relief_weight(config) == (3.0, 11)  # the default's: 10 columns at loss_stride 4, made odd
  config.loss_stride = 8
  assert steps.relief_weight(config) == (3.0, 5)
  with pytest.raises(files.InputError, match="no built dataset"):
    loop.train_and_evaluate(config, str(tmp_path / "w"))
