"""Import the released vrn-unguided weights into a workdir that training and evaluation restore.

Examples, with your copy of the PyTorch port's state dict or of the Torch7 original in this directory:
  python -m data_prep.import_release --weights=vrn_unguided.pth --workdir=workdirs/vrn_release [--force]
  python -m data_prep.import_release --weights=vrn-unguided.t7 --workdir=workdirs/vrn_release

Writes `WORKDIR/checkpoints` (Orbax, step 0: params, batch_stats and a fresh RMSProp state, the items
`vrn_jax.training.checkpoints` saves) and `WORKDIR/config.json` (`configs/vrn.py:release`), so that the workdir restores
exactly like a training run's (`steps.create_train_state` + `checkpoints.restore_latest`), and
`python run_train.py --config=configs/vrn.py:release --workdir=WORKDIR` fine-tunes from it.

Accepted weights:
- `.pth` / `.pt`: the public PyTorch port's state dict (keys and shapes of
  shared/reference/vrn_unguided_torch_state_dict.tsv), bare or wrapped as {'state_dict': ...}; a
  DataParallel 'module.' prefix is stripped. Loaded with torch.load(weights_only=True): tensors only,
  no code runs.
- `.t7`: the original Torch7 model (binary, 64-bit longs, as written by torch.save on Linux/x86-64),
  read with `torchfile`. Assumed layout: a module tree (`modules` lists) whose convolutions
  (`*SpatialConvolution*`, weight (out, in, kh, kw) or the MM layout (out, in*kh*kw), with a bias) and
  batch normalisations (`*BatchNormalization`, affine, `running_mean` + `running_var`, or the older
  `running_std` = 1/sqrt(var + eps)) appear, depth first, in the order of the PyTorch port's state dict
  (the port keeps Torch7's nesting). They are assigned to the port's keys in that order, with a check of
  module kind and shape at every step; other parametrised modules are an error. A BatchNorm eps other
  than 1e-5 is folded into running_var (eval-exact).

BatchNorm eps is 1e-5 in both PyTorch and our models; a .pth carries no eps, and 1e-5 is assumed.
An existing WORKDIR/checkpoints is never overwritten without --force (which replaces checkpoints/ and
config.json and leaves other files). Everything is written to a temporary directory beside WORKDIR and
moved into place at the end: an error leaves nothing behind.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
from typing import Any, Iterator, Mapping

import jax
import numpy as np
from absl import flags

from vrn_jax import cli
from vrn_jax.configs import vrn as vrn_config
from vrn_jax.errors import InputError
from vrn_jax.models import count_parameters
from vrn_jax.models.layers import BN_EPSILON
from vrn_jax.training import checkpoints, optimizers, steps

LAYOUT = "the released vrn-unguided (PyTorch port)"

FLAGS = flags.FLAGS


# ------------------------------------------------------------------------------------------ .pth


def _unpickler_reason(e: Exception) -> str:
  found = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
  return found.group(1).strip() if found else type(e).__name__


def load_pth(path: str) -> dict[str, Any]:
  """A .pth/.pt state dict (bare or under 'state_dict') -> {key: tensor}, without running pickled code."""
  # torch and torchfile are the [release] extra: the module and --help import without them.
  import torch  # pylint: disable=g-import-not-at-top

  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if found is None:
      raise InputError(f"{path}: not a readable PyTorch file (the unpickler failed: "
                       f"{_unpickler_reason(e)}).") from None
    raise InputError(
        f"{path}: not a plain state dict: it pickles a {found.group(1)} object, which torch.load("
        "weights_only=True) does not run. Load it where that class is defined and save "
        "model.state_dict() instead.") from None
  except Exception as e:  # torch raises RuntimeError / EOFError / zipfile errors for corrupt files
    raise InputError(f"{path}: not a readable PyTorch file ({type(e).__name__}: {e}).") from None
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise InputError(f"{path}: holds a {type(obj).__name__}; expected a state dict (a mapping of names to "
                     "tensors) or a dict with one under 'state_dict'.")
  not_tensors = sorted(str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v))
  if not_tensors:
    raise InputError(f"{path}: entries {not_tensors[:20]} are not named tensors; expected a state dict "
                     "(a mapping of names to tensors) or a dict with one under 'state_dict'.")
  if obj and all(k.startswith("module.") for k in obj):  # saved from a DataParallel wrapper
    obj = {k[len("module."):]: v for k, v in obj.items()}
  return dict(obj)


# ------------------------------------------------------------------------------------------- .t7


def _t7_field(module: Any, name: str) -> Any:
  try:
    return module[name]
  except (KeyError, TypeError, AttributeError):  # torchfile reads a field-less object's table as a list
    return None


def _t7_typename(module: Any) -> str:
  name = module.torch_typename() if hasattr(module, "torch_typename") else type(module).__name__
  return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _walk_t7(module: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
  """Depth-first (path, typename, module) of every parametrised module; path = 0-based child indices."""
  children = _t7_field(module, "modules")
  if isinstance(children, (list, tuple)):
    for i, child in enumerate(children):
      yield from _walk_t7(child, f"{path}.{i}" if path else str(i))
    return
  if _t7_field(module, "weight") is not None or _t7_field(module, "running_mean") is not None:
    yield path, _t7_typename(module), module


def _module_groups(expected: Mapping[str, tuple[int, ...]]) -> list[tuple[str, str, dict]]:
  """Expected state-dict keys grouped by module, in order: [(prefix, 'conv' | 'bn', {field: shape})]."""
  groups: dict[str, dict[str, tuple[int, ...]]] = {}
  for key, shape in expected.items():
    prefix, field = key.rsplit(".", 1)
    groups.setdefault(prefix, {})[field] = shape
  return [(p, "bn" if "running_mean" in f else "conv", f) for p, f in groups.items()]


def _t7_array(source: str, where: str, module: Any, field: str) -> np.ndarray:
  value = _t7_field(module, field)
  if value is None or not isinstance(value, np.ndarray) or value.size == 0:
    raise InputError(f"{source}: {where} has no '{field}' tensor; expected one (every convolution of "
                     "the released model has a bias, every batch norm is affine with running statistics).")
  return np.array(value, np.float32)


def state_dict_from_t7(root: Any, expected: Mapping[str, tuple[int, ...]],
                       source: str) -> dict[str, np.ndarray]:
  """Assigns the Torch7 tree's convolutions and batch norms, in order, to `expected`'s keys.

  Args:
    root: the object `torchfile.load` returned (the top-level nn.Sequential).
    expected: {PyTorch key: shape} in state-dict order (no num_batches_tracked).
    source: the file, for errors.
  Returns:
    {key: float32 array} in PyTorch layout.
  """
  if _t7_field(root, "modules") is None:
    raise InputError(f"{source}: the top-level object is a {_t7_typename(root)} without 'modules'; "
                     "expected the released model (an nn.Sequential).")
  found = list(_walk_t7(root))
  groups = _module_groups(expected)
  kinds = lambda items: {k: sum(1 for x in items if x == k) for k in ("conv", "bn")}
  found_kinds = [("bn" if "BatchNormalization" in t else "conv" if "SpatialConvolution" in t else t)
                 for _, t, _ in found]
  if len(found) != len(groups):
    f, e = kinds(found_kinds), kinds([g[1] for g in groups])
    raise InputError(f"{source}: {len(found)} parametrised modules ({f['conv']} convolutions, "
                     f"{f['bn']} batch norms); expected {len(groups)} ({e['conv']} and {e['bn']}) for "
                     f"{LAYOUT} model.")
  out: dict[str, np.ndarray] = {}
  for (path, typename, module), kind, (prefix, want_kind, shapes) in zip(found, found_kinds, groups):
    where = f"t7 module {path} ({typename})"
    if kind != want_kind:
      raise InputError(f"{source}: {where} is a {'convolution' if kind == 'conv' else kind}; expected a "
                       f"{'batch norm' if want_kind == 'bn' else 'convolution'} there (state-dict key "
                       f"{prefix}) in {LAYOUT} layout.")
    if kind == "conv":
      weight = _t7_array(source, where, module, "weight")
      want = shapes["weight"]
      if weight.shape != want and weight.ndim == 2 and weight.shape == (want[0], int(np.prod(want[1:]))):
        weight = weight.reshape(want)  # SpatialConvolutionMM's (out, in*kh*kw)
      values = {"weight": weight, "bias": _t7_array(source, where, module, "bias")}
    else:
      mean = _t7_array(source, where, module, "running_mean")
      eps = float(_t7_field(module, "eps") or BN_EPSILON)
      if _t7_field(module, "running_var") is not None:
        var = _t7_array(source, where, module, "running_var") + (eps - BN_EPSILON)
      elif _t7_field(module, "running_std") is not None:  # older nn: the inverse standard deviation
        var = 1.0 / np.square(_t7_array(source, where, module, "running_std")) - BN_EPSILON
      else:
        raise InputError(f"{source}: {where} has neither running_var nor running_std.")
      values = {"weight": _t7_array(source, where, module, "weight"),
                "bias": _t7_array(source, where, module, "bias"), "running_mean": mean,
                "running_var": var.astype(np.float32)}
    for field, value in values.items():
      if value.shape != shapes[field]:
        raise InputError(f"{source}: {where} {field} is {value.shape}; expected {shapes[field]} "
                         f"(state-dict key {prefix}.{field}) in {LAYOUT} layout.")
      out[f"{prefix}.{field}"] = value
  return out


def read_t7(path: str) -> Any:
  """The object tree of a Torch7 binary file (`torchfile.load`), errors as InputError."""
  import torchfile  # pylint: disable=g-import-not-at-top  (the [release] extra, as torch above)

  try:
    return torchfile.load(path)
  except Exception as e:  # struct.error, T7ReaderException, NotImplementedError (half tensors), ...
    raise InputError(f"{path}: not a readable Torch7 binary file ({type(e).__name__}: {e}).") from None


# ---------------------------------------------------------------------------------------- workdir


def _check_workdir(workdir: str, force: bool) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise InputError(f"--workdir {workdir}: exists and is not a directory.")
  existing = os.path.join(workdir, "checkpoints")
  if os.path.exists(existing) and not force:
    raise InputError(f"--workdir {workdir}: already holds checkpoints ({existing}); choose a new "
                     "--workdir, or pass --force to replace them.")


def _move_into_place(tmp: str, workdir: str) -> None:
  """tmp/{checkpoints, config.json} -> workdir (replacing those two); tmp becomes scratch."""
  if not os.path.exists(workdir):
    os.rename(tmp, workdir)
    return
  old = os.path.join(workdir, "checkpoints")
  if os.path.exists(old):
    os.rename(old, os.path.join(tmp, "replaced_checkpoints"))
  os.rename(os.path.join(tmp, "checkpoints"), old)
  os.replace(os.path.join(tmp, "config.json"), os.path.join(workdir, "config.json"))


def import_release(weights: str, workdir: str, force: bool = False) -> dict:
  """Converts `weights` (.pth / .pt / .t7) and writes the restorable workdir. Returns a summary."""
  from vrn_jax.interop import torch_reference  # pylint: disable=g-import-not-at-top  (imports torch: [release])

  if not os.path.isfile(weights):
    raise InputError(f"--weights {weights}: no such file.")
  ext = os.path.splitext(weights)[1].lower()
  if ext not in (".pth", ".pt", ".t7"):
    raise InputError(f"--weights {weights}: unknown extension {ext!r}; expected a PyTorch state dict "
                     "(.pth / .pt) or the Torch7 model (.t7).")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  _check_workdir(workdir, force)

  # Read the file before building anything, so that a wrong file fails fast.
  loaded = read_t7(weights) if ext == ".t7" else load_pth(weights)
  config = vrn_config.get_config("release")
  like = torch_reference.variable_shapes(config.model)
  paths = torch_reference.param_paths_for(config.model, like)
  if ext == ".t7":
    state_dict = state_dict_from_t7(loaded, torch_reference.expected_state_dict_shapes(paths, like), weights)
  else:
    state_dict = loaded
  variables = torch_reference.state_dict_to_variables(state_dict, paths, like, weights, LAYOUT)

  tx = optimizers.create_optimizer(config, optimizers.learning_rate_schedule(config, steps_per_epoch=1))
  to_jax = lambda tree: jax.tree_util.tree_map(jax.numpy.asarray, tree)
  state = steps.TrainState.create(apply_fn=None, params=to_jax(variables["params"]),
                                  batch_stats=to_jax(variables["batch_stats"]), tx=tx)

  parent = os.path.dirname(workdir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(workdir)}.import-", dir=parent)
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's directory is private; the workdir gets the usual mode
    manager = checkpoints.checkpoint_manager(tmp, config.keep_checkpoints)
    try:
      checkpoints.save(manager, 0, checkpoints.checkpoint_items(state))
    finally:
      checkpoints.finish(manager)
    checkpoints.save_config(config, tmp)
    _check_workdir(workdir, force)  # again: another process may have written there meanwhile
    _move_into_place(tmp, workdir)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
  return {"workdir": workdir, "tensors": len(paths), "parameters": count_parameters(variables["params"])}


def define_flags() -> None:
  flags.DEFINE_string("weights", None, "vrn_unguided.pth (PyTorch port) or vrn-unguided.t7.", required=True)
  flags.DEFINE_string("workdir", None, "Output workdir (checkpoints/ and config.json).", required=True)
  flags.DEFINE_bool("force", False, "Replace the workdir's existing checkpoints.")


def main(argv: list[str]) -> None:
  del argv
  summary = import_release(FLAGS.weights, FLAGS.workdir, FLAGS.force)
  print(f"{FLAGS.weights}: {summary['tensors']} tensors, {summary['parameters']:,} parameters -> "
        f"{summary['workdir']}/checkpoints (step 0) and config.json (configs/vrn.py:release)")


def console() -> None:
  """`python -m data_prep.import_release` (and `python -m vrn_jax.interop.release_import`)."""
  cli.run_absl_command(main, define_flags, __name__, config_file=False, log_progress=False)


if __name__ == "__main__":
  console()
