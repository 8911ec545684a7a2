"""The released-weights importer and the PyTorch twins of our networks.

- Parity: a PyTorch release-topology VRN (random weights, random BatchNorm affine parameters and running
  statistics, eval mode) saved with torch.save, imported by the CLI, restored the way training/evaluation
  restore a workdir, run in JAX: same volume as PyTorch. Tolerance 1e-4 in sigmoid space (the issue's);
  both are float32 with different summation orders: measured 1.8e-6 (logits in [-9, 9], max difference
  1.1e-5). Likewise the standard topology at a reduced size (measured 6.6e-7), and one PyTorch training
  step (loss, gradients, RMSProp update, running statistics) against ours, with float64 PyTorch as the
  reference for both.
- The .t7 path: a minimal Torch7 serializer (below; Torch7's File.lua / Tensor.c binary format, only the
  object kinds a module tree needs) writes the same network as a Torch7 module tree, which the importer
  must read into the same variables.
- Bad input: missing/extra keys, wrong shapes, non-state-dict files, an existing workdir: one `error:`
  line naming the file and what was expected, exit status 1, nothing written.

One full-size forward per framework (the release's size is what matters); `pytest -s` prints the measured
differences and times.
"""

import ast
import json
import os
import shutil
import struct
import time
import types

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torchfile

from vrn_jax.interop import release_import as import_release
from vrn_jax import cli, models
from vrn_jax.training import checkpoints, optimizers, steps
from vrn_jax.interop import torch_reference as tr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TSV = os.path.join(REPO, "..", "shared", "reference", "vrn_unguided_torch_state_dict.tsv")
SIGMOID_TOL = 1e-4  # the parity tolerance, in sigmoid (probability) space


def _seeded(cls, seed: int, **kwargs) -> "torch.nn.Module":
  """`cls(**kwargs)` with random weights, random BN affine parameters and running statistics, and a head
  wide enough to leave the linear part of the sigmoid; deterministic for a seed."""
  torch.manual_seed(seed)
  model = cls(**kwargs)
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.Conv2d):
        torch.nn.init.uniform_(module.bias, -0.2, 0.2, generator=gen)
      if isinstance(module, torch.nn.BatchNorm2d):
        c = module.num_features
        module.weight.copy_(torch.empty(c).uniform_(0.5, 1.5, generator=gen))
        module.bias.copy_(torch.empty(c).normal_(0.0, 0.2, generator=gen))
        module.running_mean.copy_(torch.empty(c).normal_(0.0, 0.5, generator=gen))
        module.running_var.copy_(torch.empty(c).uniform_(0.5, 2.0, generator=gen))
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    last.weight.mul_(10.0)  # logits of a few units: the comparison covers the sigmoid's tails too
  return model


def _images(batch: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(size=(batch, 192, 192, 3)).astype(np.float32)


def _run_cli(argv, capsys):
  """`python -m data_prep.import_release ARGV` in this process."""
  cli.set_command_flags(import_release.define_flags, [str(a) for a in argv])
  rc = cli.run_main(import_release.main, [])
  out, err = capsys.readouterr()
  return rc, out, err


def _restore(workdir):
  """What run_eval does: config.json -> create_train_state -> restore_latest."""
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  tx = optimizers.create_optimizer(config, optimizers.learning_rate_schedule(config, 1))
  state = steps.create_train_state(config, jax.random.key(1), tx)
  manager = checkpoints.checkpoint_manager(workdir, config.keep_checkpoints)
  try:
    state = checkpoints.restore_latest(manager, state)
    step = manager.latest_step()
  finally:
    manager.close()
  return config, state, step, tx


def _leftovers(parent):
  return sorted(n for n in os.listdir(parent) if ".import-" in n)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """Random release-topology PyTorch model -> .pth -> CLI -> workdir -> restored state."""
  model = _seeded(tr.ReleaseVRN, 0).eval()
  root = tmp_path_factory.mktemp("release")
  pth = root / "vrn_unguided.pth"
  torch.save(model.state_dict(), pth)
  workdir = root / "imported"
  start = time.perf_counter()
  cli.set_command_flags(import_release.define_flags, [f"--weights={pth}", f"--workdir={workdir}"])
  rc = cli.run_main(import_release.main, [])
  print(f"\n[import .pth] CLI {time.perf_counter() - start:.1f} s")
  assert rc == 0
  start = time.perf_counter()
  config, state, step, tx = _restore(str(workdir))
  print(f"[import .pth] restore {time.perf_counter() - start:.1f} s")
  yield types.SimpleNamespace(model=model, pth=pth, root=root, workdir=workdir, config=config,
                              state=state, step=step, tx=tx)
  shutil.rmtree(root, ignore_errors=True)  # ~500 MB of weights and checkpoints


# --- the release topology ----------------------------------------------------------------------------


def _read_tsv():
  if not os.path.exists(TSV):
    if os.environ.get("CI"):
      pytest.fail(f"{TSV} is missing; CI needs shared/ beside the checkout.")
    pytest.skip(f"{TSV} not found (shared/reference/ beside the checkout); set CI to make this fatal")
  rows = []
  with open(TSV, encoding="utf-8") as f:
    for line in f:
      if line.strip() and not line.startswith("#"):
        key, shape = line.rstrip("\n").split("\t")
        rows.append((key, tuple(ast.literal_eval(shape))))
  return rows


def test_release_torch_layout_is_the_released_state_dict():
  expected = _read_tsv()
  ours = [(k, tuple(v.shape)) for k, v in tr.ReleaseVRN().state_dict().items()]
  assert ours == expected  # keys, order and shapes


def test_release_parity_through_the_cli(release):
  images = _images(2)
  start = time.perf_counter()
  with torch.no_grad():
    ref = tr.to_our_volume(release.model(tr.to_torch_images(images)))
  t_torch = time.perf_counter() - start
  model = models.get_model(release.config.model)
  variables = {"params": release.state.params, "batch_stats": release.state.batch_stats}
  start = time.perf_counter()
  ours = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(images)))
  t_jax = time.perf_counter() - start
  assert ours.shape == ref.shape == (2, 192, 192, 200)
  p_ref, p_ours = jax.nn.sigmoid(ref.astype(np.float64)), jax.nn.sigmoid(ours.astype(np.float64))
  d_sigmoid = float(np.max(np.abs(np.asarray(p_ref) - np.asarray(p_ours))))
  d_logits = float(np.max(np.abs(ref - ours)))
  print(f"[release parity] batch 2, 192x192, float32 CPU: max |d sigmoid| {d_sigmoid:.2e}, "
        f"max |d logits| {d_logits:.2e} (logits in [{ref.min():.1f}, {ref.max():.1f}]); torch forward "
        f"{t_torch:.1f} s, jax compile+forward {t_jax:.1f} s")
  # Not a vacuous comparison: a good part of the volume is away from 0 and 1 and in the tails.
  p = np.asarray(p_ref)
  assert 0.2 < np.mean((p > 0.05) & (p < 0.95)) < 0.95
  assert d_sigmoid <= SIGMOID_TOL


def test_release_checkpoint_is_a_training_state(release):
  assert release.step == 0 and int(release.state.step) == 0
  assert release.config.model.topology == "release" and release.config.model.features == 256
  checkpoints.check_workdir_model(release.config, str(release.workdir))  # the matching config resumes
  # Every tensor exactly, through the key mapping (OIHW -> HWIO etc.).
  variables = flax.traverse_util.flatten_dict(
      {"params": release.state.params, "batch_stats": release.state.batch_stats})
  state_dict = release.model.state_dict()
  for key, t in models.release_param_paths().items():
    value = state_dict[key].numpy()
    if t.transpose is not None:
      value = np.transpose(value, t.transpose)
    np.testing.assert_array_equal(np.asarray(variables[(t.collection,) + t.path]), value, err_msg=key)
  # A fresh optimizer state (RMSProp's square averages at 0, step count 0).
  fresh = release.tx.init(release.state.params)
  assert (jax.tree_util.tree_structure(release.state.opt_state) == jax.tree_util.tree_structure(fresh))
  for a, b in zip(jax.tree_util.tree_leaves(release.state.opt_state), jax.tree_util.tree_leaves(fresh)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- bad input ---------------------------------------------------------------------------------------


def test_refuses_to_overwrite_checkpoints(release, capsys):
  before = sorted(os.listdir(release.workdir / "checkpoints"))
  rc, _, err = _run_cli([f"--weights={release.pth}", f"--workdir={release.workdir}"], capsys)
  assert rc == 1 and err.startswith("error:") and err.count("\n") == 1
  assert str(release.workdir) in err and "--force" in err
  assert sorted(os.listdir(release.workdir / "checkpoints")) == before


def test_missing_and_unexpected_keys_are_listed(release, tmp_path, capsys):
  state_dict = dict(release.model.state_dict())
  del state_dict["9.1.3.1.running_var"]
  del state_dict["0.bias"]
  state_dict["12.weight"] = torch.zeros(3)
  path = tmp_path / "bad.pth"
  # The wrapped form, as saved from a DataParallel model: both are unwrapped.
  torch.save({"state_dict": {f"module.{k}": v for k, v in state_dict.items()}, "epoch": 3}, path)
  rc, _, err = _run_cli([f"--weights={path}", f"--workdir={tmp_path / 'out'}"], capsys)
  assert rc == 1 and err.startswith("error:") and err.count("\n") == 1
  assert str(path) in err
  assert "2 missing key(s): 0.bias, 9.1.3.1.running_var" in err
  assert "1 unexpected key(s): 12.weight" in err
  assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_wrong_shape_names_key_and_shapes(release, tmp_path, capsys):
  state_dict = dict(release.model.state_dict())
  state_dict["3.0.0.5.weight"] = torch.zeros(64, 64, 1, 1)
  path = tmp_path / "bad.pth"
  torch.save(state_dict, path)
  rc, _, err = _run_cli([f"--weights={path}", f"--workdir={tmp_path / 'out'}"], capsys)
  assert rc == 1 and str(path) in err
  assert "3.0.0.5.weight is (64, 64, 1, 1), expected (64, 64, 3, 3)" in err
  assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_files_that_are_not_state_dicts(tmp_path, capsys):
  cases = {"list.pth": [torch.zeros(2)], "module.pth": torch.nn.Conv2d(1, 1, 1)}
  for name, obj in cases.items():
    torch.save(obj, tmp_path / name)
  (tmp_path / "garbage.pth").write_bytes(b"not a zip file")
  (tmp_path / "garbage.t7").write_bytes(b"\x04\x00")
  (tmp_path / "weights.h5").write_bytes(b"")
  expect = {"list.pth": "holds a list; expected a state dict", "module.pth": "not a plain state dict",
            "garbage.pth": "not a readable PyTorch file", "garbage.t7": "not a readable Torch7",
            "weights.h5": "unknown extension '.h5'", "absent.pth": "no such file"}
  for name, message in expect.items():
    rc, _, err = _run_cli([f"--weights={tmp_path / name}", f"--workdir={tmp_path / 'out'}"], capsys)
    assert rc == 1 and err.startswith("error: ") and str(tmp_path / name) in err, (name, err)
    assert message in err, (name, err)
  assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


# --- Torch7 (.t7) ------------------------------------------------------------------------------------


class _Torch:
  """A Torch7 class instance to serialize: class name and payload (a table, or a tensor/storage)."""

  def __init__(self, class_name: str, payload):
    self.class_name, self.payload = class_name, payload


class T7Writer:
  """Torch7's binary serialization (File.lua writeObject; Tensor.c / Storage.c write), 64-bit longs.

  Only what a module tree needs: nil, numbers, strings, booleans, tables (dicts; lists become tables
  keyed 1..n as in Lua), FloatTensors with their FloatStorage, and torch classes whose payload is a table.
  """

  def __init__(self, f):
    self.f, self.index = f, 0

  def _int(self, v):
    self.f.write(struct.pack("<i", v))

  def _long(self, v):
    self.f.write(struct.pack("<q", v))

  def _string(self, s):
    b = s.encode() if isinstance(s, str) else s
    self._int(len(b))
    self.f.write(b)

  def _new_index(self):
    self.index += 1
    self._int(self.index)

  def write(self, v):
    if v is None:
      self._int(0)
    elif isinstance(v, bool):
      self._int(5)
      self._int(1 if v else 0)
    elif isinstance(v, (int, float)):
      self._int(1)
      self.f.write(struct.pack("<d", float(v)))
    elif isinstance(v, (str, bytes)):
      self._int(2)
      self._string(v)
    elif isinstance(v, (dict, list)):
      items = list(v.items()) if isinstance(v, dict) else [(i + 1, x) for i, x in enumerate(v)]
      self._int(3)
      self._new_index()
      self._int(len(items))
      for key, value in items:
        self.write(key)
        self.write(value)
    elif isinstance(v, np.ndarray):  # torch.FloatTensor: dims, sizes, strides, 1-based offset, storage
      self._int(4)
      self._new_index()
      self._string("V 1")
      self._string("torch.FloatTensor")
      a = np.ascontiguousarray(v, np.float32)
      if a.size == 0:  # Torch7's empty tensor: no dimensions, no storage
        self._int(0)
        self._long(1)
        self._int(0)
        return
      self._int(a.ndim)
      for s in a.shape:
        self._long(s)
      for s in a.strides:
        self._long(s // 4)
      self._long(1)
      self._int(4)
      self._new_index()
      self._string("V 1")
      self._string("torch.FloatStorage")
      self._long(a.size)
      self.f.write(a.tobytes())
    elif isinstance(v, _Torch):
      self._int(4)
      self._new_index()
      self._string("V 1")
      self._string(v.class_name)
      self.write(v.payload)
    else:
      raise TypeError(type(v))


EMPTY = np.zeros((0,), np.float32)


def _t7_module(m, options, counter):
  """A PyTorch module of ReleaseVRN -> the Torch7 module it stands for (fields as nn's)."""
  common = {"output": EMPTY, "gradInput": EMPTY, "train": False, "_type": "torch.FloatTensor"}
  if isinstance(m, (torch.nn.Sequential, tr.ConcatTable)):
    name = "nn.Sequential" if isinstance(m, torch.nn.Sequential) else "nn.ConcatTable"
    return _Torch(name, {**common, "modules": [_t7_module(c, options, counter) for c in m.children()]})
  if isinstance(m, torch.nn.Conv2d):
    i = counter["conv"] = counter.get("conv", -1) + 1
    weight = m.weight.detach().numpy()
    if i == options.get("mm_conv"):  # SpatialConvolutionMM's 2-D weight
      weight = weight.reshape(weight.shape[0], -1)
    return _Torch("cudnn.SpatialConvolution", {
        **common, "weight": weight, "bias": m.bias.detach().numpy(), "nInputPlane": m.in_channels,
        "nOutputPlane": m.out_channels, "kW": m.kernel_size[1], "kH": m.kernel_size[0],
        "dW": m.stride[1], "dH": m.stride[0], "padW": m.padding[1], "padH": m.padding[0]})
  if isinstance(m, torch.nn.BatchNorm2d):
    i = counter["bn"] = counter.get("bn", -1) + 1
    var = m.running_var.detach().numpy().astype(np.float64)
    fields = {**common, "weight": m.weight.detach().numpy(), "bias": m.bias.detach().numpy(),
              "running_mean": m.running_mean.detach().numpy(), "eps": 1e-5, "momentum": 0.1,
              "affine": True}
    if i == options.get("std_bn"):  # older nn: running_std = 1 / sqrt(var + eps)
      fields["running_std"] = (1.0 / np.sqrt(var + 1e-5)).astype(np.float32)
    elif i == options.get("eps_bn"):  # another eps: the same var + eps
      fields["eps"], fields["running_var"] = 1e-3, (var + 1e-5 - 1e-3).astype(np.float32)
    else:
      fields["running_var"] = var.astype(np.float32)
    return _Torch("nn.SpatialBatchNormalization", fields)
  names = {torch.nn.ReLU: "nn.ReLU", torch.nn.MaxPool2d: "nn.SpatialMaxPooling",
           torch.nn.Identity: "nn.Identity", tr.CAddTable: "nn.CAddTable"}
  if isinstance(m, tr.Upsample):
    return _Torch("nn.SpatialUpSamplingNearest" if m.mode == "nearest" else
                  "nn.SpatialUpSamplingBilinear", {**common, "scale_factor": m.factor})
  return _Torch(names[type(m)], dict(common))


def write_t7(path, model, **options):
  root = _t7_module(model, options, {})
  root.payload["modules"].append(_Torch("nn.Sigmoid", {"output": EMPTY, "gradInput": EMPTY}))
  with open(path, "wb") as f:
    T7Writer(f).write(root)


def test_t7_import_matches_the_state_dict(release, capsys):
  path = release.root / "vrn-unguided.t7"
  # Conv 5 stored in the MM layout, BN 7 as running_std, BN 11 with eps 1e-3 (folded into the variance).
  write_t7(path, release.model, mm_conv=5, std_bn=7, eps_bn=11)
  # An existing workdir with checkpoints: refused without --force; with it, replaced (other files kept).
  workdir = release.root / "from_t7"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "checkpoints" / "junk").write_text("old")
  (workdir / "notes.txt").write_text("mine")
  rc, _, err = _run_cli([f"--weights={path}", f"--workdir={workdir}"], capsys)
  assert rc == 1 and "--force" in err
  start = time.perf_counter()
  rc, out, err = _run_cli([f"--weights={path}", f"--workdir={workdir}", "--force"], capsys)
  print(f"\n[import .t7] CLI {time.perf_counter() - start:.1f} s")
  assert rc == 0, err
  assert "19,184,968 parameters" in out
  assert not (workdir / "checkpoints" / "junk").exists() and (workdir / "notes.txt").read_text() == "mine"
  assert not _leftovers(release.root)
  # The restore itself is covered by the .pth import; here the fixture's state serves as the template.
  manager = checkpoints.checkpoint_manager(str(workdir), 1)
  try:
    assert manager.latest_step() == 0
    state = checkpoints.restore_latest(manager, release.state)
  finally:
    manager.close()
  ours = flax.traverse_util.flatten_dict({"params": state.params, "batch_stats": state.batch_stats})
  ref = flax.traverse_util.flatten_dict({"params": release.state.params,
                                         "batch_stats": release.state.batch_stats})
  assert set(ours) == set(ref)
  worst = 0.0
  for key in ref:
    a, b = np.asarray(ours[key]), np.asarray(ref[key])
    if key[-1] == "var":  # running_std and the eps fold go through float32 arithmetic
      np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=str(key))
      worst = max(worst, float(np.max(np.abs(a / b - 1))))
    else:
      np.testing.assert_array_equal(a, b, err_msg=str(key))
  print(f"[import .t7] every tensor equal to the .pth import; running_var rel. diff <= {worst:.1e}")


def _tiny_t7(tmp_path, modules):
  path = tmp_path / "tiny.t7"
  with open(path, "wb") as f:
    T7Writer(f).write(_Torch("nn.Sequential", {"modules": modules}))
  return torchfile.load(str(path))


def test_t7_reader_errors(tmp_path):
  rng = np.random.default_rng(0)
  conv = _Torch("nn.SpatialConvolution", {"weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
                                           "bias": np.zeros(4, np.float32)})
  bn = _Torch("nn.SpatialBatchNormalization", {
      "weight": np.ones(4, np.float32), "bias": np.zeros(4, np.float32),
      "running_mean": np.zeros(4, np.float32), "running_var": np.full(4, 2.0, np.float32)})
  relu = _Torch("nn.ReLU", {})
  expected = {"0.weight": (4, 3, 3, 3), "0.bias": (4,), "2.0.weight": (4,), "2.0.bias": (4,),
              "2.0.running_mean": (4,), "2.0.running_var": (4,)}
  got = import_release.state_dict_from_t7(
      _tiny_t7(tmp_path, [conv, relu, _Torch("nn.Sequential", {"modules": [bn]})]), expected, "tiny.t7")
  np.testing.assert_array_equal(got["0.weight"], conv.payload["weight"])
  np.testing.assert_array_equal(got["2.0.running_var"], 2.0)

  with pytest.raises(import_release.InputError, match=r"tiny.t7: t7 module 0 \(nn.SpatialBatch"
                     r"Normalization\) is a bn; expected a convolution there \(state-dict key 0\)"):
    import_release.state_dict_from_t7(_tiny_t7(tmp_path, [bn, conv]), expected, "tiny.t7")
  with pytest.raises(import_release.InputError, match=r"2 parametrised modules \(1 convolutions, 1 batch "
                     r"norms\); expected 3"):
    import_release.state_dict_from_t7(_tiny_t7(tmp_path, [conv, bn]), {**expected, "3.weight": (4, 4, 1, 1),
                                                                         "3.bias": (4,)}, "tiny.t7")
  small = dict(expected, **{"0.weight": (4, 3, 1, 1)})
  with pytest.raises(import_release.InputError, match=r"t7 module 0 \(nn.SpatialConvolution\) weight is "
                     r"\(4, 3, 3, 3\); expected \(4, 3, 1, 1\) \(state-dict key 0.weight\)"):
    import_release.state_dict_from_t7(_tiny_t7(tmp_path, [conv, bn]), small, "tiny.t7")
  no_bias = _Torch("nn.SpatialConvolution", {"weight": conv.payload["weight"]})
  with pytest.raises(import_release.InputError, match=r"t7 module 0 .* has no 'bias' tensor"):
    import_release.state_dict_from_t7(_tiny_t7(tmp_path, [no_bias, bn]), expected, "tiny.t7")


# --- the standard topology ---------------------------------------------------------------------------

SMALL = dict(features=16, depth=2, num_hourglasses=2)
ONE_STACK = dict(SMALL, num_hourglasses=1)  # the train step: half the XLA compile time, same modules


def test_standard_parity():
  model = _seeded(tr.VRN, 3, **SMALL).eval()
  images = _images(2, seed=1)
  with torch.no_grad():
    ref = tr.to_our_volume(model(tr.to_torch_images(images)))
  variables = tr.to_flax_variables(model.state_dict(), SMALL)
  ours = np.asarray(jax.jit(models.get_model(SMALL).apply)(variables, jnp.asarray(images)))
  d_sigmoid = float(np.max(np.abs(np.asarray(jax.nn.sigmoid(ref.astype(np.float64)))
                                  - np.asarray(jax.nn.sigmoid(ours.astype(np.float64))))))
  d_logits = float(np.max(np.abs(ref - ours)))
  print(f"\n[standard parity] features 16, depth 2, batch 2: max |d sigmoid| {d_sigmoid:.2e}, max |d logits| "
        f"{d_logits:.2e} (logits in [{ref.min():.1f}, {ref.max():.1f}])")
  assert ref.std() > 1.0  # not a flat output
  assert d_sigmoid <= SIGMOID_TOL


def test_standard_conversion_errors():
  state_dict = dict(tr.VRN(**SMALL).state_dict())
  state_dict["head.out.weight"] = torch.zeros(200, 16, 3, 3)
  with pytest.raises(import_release.InputError, match=r"mine.pth: 1 tensor\(s\) of the wrong shape .*"
                     r"head.out.weight is \(200, 16, 3, 3\), expected \(200, 16, 1, 1\)"):
    tr.to_flax_variables(state_dict, SMALL, source="mine.pth")
  del state_dict["head.out.weight"]
  with pytest.raises(import_release.InputError, match=r"1 missing key\(s\): head.out.weight\. Expected a "
                     r"standard-topology VRN \(features 16, depth 2, 2 hourglasses\)"):
    tr.to_flax_variables(state_dict, SMALL, source="mine.pth")


OPTIM = ml_collections.ConfigDict({"optim": {"rmsprop_decay": 0.99, "eps": 1e-8, "eps_in_sqrt": False,
                                             "initial_mean_square": 0.0}})


def test_torch_rmsprop_is_our_optimizer():
  """TrainStep's torch.optim.RMSprop == optimizers.create_optimizer (Torch7's rmsprop), over gradient
  magnitudes where eps inside vs outside the square root matters (|g| <~ 1e-6)."""
  lr = 1e-3
  rng = np.random.default_rng(0)
  grads = [(rng.normal(size=64) * 10.0 ** rng.uniform(-9, 0, size=64)).astype(np.float32) for _ in range(5)]
  holder = torch.nn.Module()
  holder.param = torch.nn.Parameter(torch.zeros(64))
  opt = tr.TrainStep(holder, learning_rate=lr).optimizer
  tx = optimizers.create_optimizer(OPTIM, lr)
  ours, opt_state = jnp.zeros(64), tx.init(jnp.zeros(64))
  for g in grads:
    holder.param.grad = torch.from_numpy(g.copy())
    opt.step()
    updates, opt_state = tx.update(jnp.asarray(g), opt_state, ours)
    ours = ours + updates
  # float32 rounding of (1 - alpha) and the square average: ~2e-5 where eps dominates; eps inside the
  # root would differ by orders of magnitude there.
  np.testing.assert_allclose(np.asarray(ours), holder.param.detach().numpy(), rtol=1e-4)


def _grad_errors(grads, reference, paths):
  """Per-tensor ||g - ref|| / ||ref|| in our layout, over tensors with a gradient well above rounding
  noise (biases right before a BatchNorm have a true gradient of 0)."""
  norms = {k: np.linalg.norm(g) for k, g in reference.items()}
  big = max(norms.values())
  errors = []
  for key, t in paths.items():
    if t.collection == "params" and norms[key] > 1e-4 * big:
      ref = reference[key] if t.transpose is None else np.transpose(reference[key], t.transpose)
      errors.append(float(np.linalg.norm(grads[key] - ref) / norms[key]))
  return np.asarray(errors)


def test_torch_train_step_matches_ours():
  """One TrainStep (train-mode BN, BCE, backward, RMSprop) against our loss, gradients and running
  statistics, at a reduced size; a float64 PyTorch run of the same step is the reference for both."""
  torch_model = _seeded(tr.VRN, 5, **ONE_STACK)
  torch64 = _seeded(tr.VRN, 5, **ONE_STACK).double().train()
  variables = tr.to_flax_variables(torch_model.state_dict(), ONE_STACK)  # copies
  before = {k: v.detach().clone() for k, v in torch_model.state_dict().items()}
  # 128x128 (the networks take any multiple of 4 * 2**depth): a quarter of the cost, same code paths.
  images = _images(2, seed=2)[:, 32:160, 32:160]
  targets = np.zeros((2, 128, 128, 200), bool)
  targets[:, 20:100, 30:90, 60:130] = True
  targets ^= np.random.default_rng(3).uniform(size=targets.shape) < 0.05
  images_t, targets_t = tr.to_torch_images(images), tr.to_torch_volume(targets)

  lr = 1e-4
  step = tr.TrainStep(torch_model, learning_rate=lr)
  loss_t = float(step(images_t, targets_t))
  grads_t = {k: p.grad.detach().numpy() for k, p in torch_model.named_parameters()}
  after = torch_model.state_dict()
  loss_64 = tr.volume_loss(torch64(images_t.double()), targets_t.double())
  loss_64.backward()
  grads_64 = {k: p.grad.numpy() for k, p in torch64.named_parameters()}

  model = models.get_model(ONE_STACK)

  def loss_fn(params, images, targets):
    logits, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                  images, train=True, mutable=["batch_stats"])
    return models.volume_loss(logits, targets), updates

  (loss_j, updates), grads_j = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      variables["params"], jnp.asarray(images), jnp.asarray(targets))

  paths = tr.named_param_paths(variables)
  flat = flax.traverse_util.flatten_dict({"params": grads_j, "batch_stats": updates["batch_stats"]})
  ours = {key: np.asarray(flat[(t.collection,) + t.path]) for key, t in paths.items()}
  err_jax = _grad_errors(ours, grads_64, paths)
  err_torch = _grad_errors({k: (np.transpose(grads_t[k], t.transpose) if t.transpose else grads_t[k])
                            for k, t in paths.items() if t.collection == "params"}, grads_64, paths)
  # The optimizer moved TrainStep's parameters by RMSProp's first step on its own gradients.
  tx = optimizers.create_optimizer(OPTIM, lr)
  grads_t_ours = {k: jnp.asarray(g) for k, g in grads_t.items()}
  expected_deltas, _ = tx.update(grads_t_ours, tx.init(grads_t_ours))
  for key, delta in expected_deltas.items():
    np.testing.assert_allclose((after[key] - before[key]).numpy(), np.asarray(delta), rtol=1e-3,
                               atol=1e-7, err_msg=key)  # atol: float32 parameters' rounding
  stat_err = max(float(np.max(np.abs(after[key].numpy() - ours[key])) / np.max(np.abs(ours[key])))
                 for key, t in paths.items() if t.collection == "batch_stats")
  loss_64 = float(loss_64.detach())
  print(f"\n[train step] features 16, depth 2, one hourglass, batch 2, 128x128, float32 CPU: loss torch "
        f"{loss_t:.7f}, jax {float(loss_j):.7f}, float64 {loss_64:.7f}; gradient ||d|| / ||g_float64|| per tensor "
        f"({err_jax.size} tensors): jax median {np.median(err_jax):.1e} max {err_jax.max():.1e}, torch "
        f"median {np.median(err_torch):.1e} max {err_torch.max():.1e}; running statistics max |d| / max "
        f"|stat| {stat_err:.1e}")
  assert abs(float(loss_j) - loss_64) <= 1e-5 * loss_64 and abs(loss_t - loss_64) <= 1e-5 * loss_64
  # Our float32 gradients are those of the float64 PyTorch step to ~1e-4 (measured <= 9e-5). PyTorch's
  # own float32 CPU backward depends on the kernels it picks (measured 6e-5 here, 1.1e-2 at 192x192),
  # hence its looser bound. A layout, loss or BatchNorm error gives O(1).
  assert err_jax.size > 100 and err_jax.max() <= 1e-3
  assert err_torch.max() <= 5e-2
  # running_var: PyTorch updates with the unbiased batch variance, flax the biased: 0.1 / (n - 1) with
  # n >= 2*8*8 (the innermost level at 128x128) is 7.9e-4 at most.
  assert stat_err <= 2e-3


@pytest.mark.parametrize("field,value", [("head_upsample", "features_bspline"), ("stem", "patchify"),
                                         ("body_stride", 2)])
def test_torch_twin_refuses_parts_it_does_not_build(field, value):
  """The PyTorch twin builds the paper's stem, body and head: a config asking for another is refused by
  name, not compared against a different network."""
  with pytest.raises(ValueError, match=f"{field} {value!r}"):
    tr.build_torch_vrn({"features": 8, "depth": 1, "num_hourglasses": 1, field: value})
