"""Checkpoints: the one owner of a workdir's layout.

  W/config.json                  the config the run trained with
  W/checkpoints/<step>/          one Orbax checkpoint per saved step: {'step', 'params', 'batch_stats',
                                 'opt_state'[, 'ema_params']} (StandardCheckpointHandler)
  W/checkpoints/<step>/sha256.json   the SHA-256 of every file of that checkpoint, written once Orbax has
                                 finished it
  W/corrupt_checkpoints/<step>   a checkpoint found damaged, moved aside (never read again)

Orbax writes a step into a temporary directory and renames it when complete, so a process killed
mid-save leaves no half-checkpoint under its step's name. A checkpoint damaged afterwards (a truncated
or overwritten file, a full disk at the wrong moment, a bad copy) fails its checksums or its restore: it is
named in the log, moved aside, and the previous one is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from vrn_jax import models
from vrn_jax.errors import InputError
from vrn_jax.files import atomic_output
from vrn_jax.training.optimizers import optimizer_name
from vrn_jax.training.steps import NonFiniteLossError, TrainState

CHECKSUMS = "sha256.json"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")


def checkpoint_manager(workdir: str, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  """The workdir's checkpoint manager (keeping the last `keep` steps); `read_only` for evaluation."""
  # A training run removes what a process killed mid-save left (`<step>.orbax-checkpoint-tmp-*`).
  options = (ocp.CheckpointManagerOptions(read_only=True, create=False) if read_only else
             ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                          cleanup_tmp_directories=True))
  # The handler named up front, so that item_metadata can read a saved step's tree.
  return ocp.CheckpointManager(checkpoint_dir(workdir), item_handlers=ocp.StandardCheckpointHandler(),
                               options=options)


def checkpoint_items(state: TrainState) -> dict:
  tree = {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state}
  if state.ema_params is not None:
    tree["ema_params"] = state.ema_params
  return tree


def save(manager: ocp.CheckpointManager, step: int, items: dict) -> None:
  """Saves `items` (host or device arrays) as checkpoint `step`, in the background. A tree with a NaN
  or infinite weight is never written. Checksums of the steps Orbax has finished are written first."""
  bad = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(
      {k: items[k] for k in ("params", "batch_stats", "ema_params") if k in items})
         if not np.all(np.isfinite(np.asarray(leaf)))]
  if bad:
    raise NonFiniteLossError(f"checkpoint {step} not written: non-finite values in {len(bad)} arrays "
                             f"(e.g. {bad[0]}).")
  # Orbax finishes the previous background save before it starts this one; waiting first costs nothing
  # and lets the finished steps' checksums be taken now.
  manager.wait_until_finished()
  write_checksums(manager)
  manager.save(step, args=ocp.args.StandardSave(items))


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for the background save, writes its checksums and closes the manager."""
  try:
    manager.wait_until_finished()
    write_checksums(manager)
  finally:
    manager.close()


def _step_path(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def _digests(directory: str) -> dict[str, str]:
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, directory)
      if rel == CHECKSUMS:
        continue
      digest = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          digest.update(block)
      out[rel] = digest.hexdigest()
  return out


def write_checksums(manager: ocp.CheckpointManager) -> None:
  """sha256.json for every finished step that has none (a checkpoint read, not written, by this run —
  e.g. one imported — gets them too)."""
  for step in manager.all_steps():
    directory = _step_path(manager, step)
    if os.path.isdir(directory) and not os.path.exists(os.path.join(directory, CHECKSUMS)):
      digests = _digests(directory)  # before atomic_output's temporary file is beside them
      with atomic_output(os.path.join(directory, CHECKSUMS)) as tmp, open(tmp, "w") as f:
        json.dump(digests, f, indent=0, sort_keys=True)


def damage(manager: ocp.CheckpointManager, step: int) -> str | None:
  """Why checkpoint `step` is damaged (a file missing, changed or added since its checksums were
  taken), or None (intact, or saved without checksums)."""
  directory = _step_path(manager, step)
  path = os.path.join(directory, CHECKSUMS)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      expected = json.load(f)
  except (OSError, ValueError) as e:
    return f"its {CHECKSUMS} is unreadable ({e})"
  found = _digests(directory)
  if missing := sorted(set(expected) - set(found)):
    return f"{len(missing)} files missing (e.g. {missing[0]})"
  if changed := sorted(k for k in expected if found[k] != expected[k]):
    return f"{len(changed)} files changed since it was saved (e.g. {changed[0]}: SHA-256 mismatch)"
  return None


def set_aside(manager: ocp.CheckpointManager, step: int, why: str) -> None:
  """Logs why checkpoint `step` cannot be used and moves it to W/corrupt_checkpoints/."""
  directory = _step_path(manager, step)
  aside = os.path.join(os.path.dirname(str(manager.directory)), "corrupt_checkpoints")
  os.makedirs(aside, exist_ok=True)
  target = os.path.join(aside, str(step))
  n = 1
  while os.path.exists(target):
    n += 1
    target = os.path.join(aside, f"{step}.{n}")
  shutil.move(directory, target)
  manager.reload()
  logging.warning("checkpoint %s is damaged (%s); moved to %s, using an earlier one.", directory, why,
                  target)


def restore_usable(manager: ocp.CheckpointManager, target_for, step: int | None = None,
                   move_damaged: bool = True):
  """(restored tree, step) of checkpoint `step`, or by default of the latest one that is intact: a
  damaged one is named in the log, set aside (`move_damaged`, training) or skipped (evaluation, which
  changes nothing in a workdir), and the one before it tried. `target_for(step)` gives the restore
  target of a step from its saved tree's metadata. (None, None) when there is no checkpoint."""
  tried = []
  for candidate in [step] if step is not None else sorted(manager.all_steps(), reverse=True):
    why = damage(manager, candidate)
    if why is None:
      try:
        return manager.restore(candidate, args=ocp.args.StandardRestore(target_for(candidate))), candidate
      except InputError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        # Orbax/TensorStore raise many types for a file that is truncated or not what it should be.
        why = f"it cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if step is not None:
      raise InputError(f"checkpoint {_step_path(manager, step)} is damaged: {why}.")
    tried.append(candidate)
    if move_damaged:
      set_aside(manager, candidate, why)
    else:
      logging.warning("checkpoint %s is damaged (%s); using an earlier one.",
                      _step_path(manager, candidate), why)
  if tried:
    raise InputError(f"{manager.directory}: every checkpoint is damaged (steps {sorted(tried)}); see "
                     "the warnings above.")
  return None, None


def save_config(config, workdir: str) -> None:
  with atomic_output(os.path.join(workdir, "config.json")) as tmp, open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=1, sort_keys=True))


def check_workdir_model(config, workdir: str, optimiser: bool = True) -> None:
  """A workdir that holds checkpoints of another model is an error, not a shape crash; for training
  (`optimiser`), so is one of another optimiser, whose state the checkpoints hold too."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return
  with open(path, encoding="utf-8") as f:
    saved_config = json.load(f)
  # A field the saved config predates had its default value then (e.g. stem: 'conv7x7').
  saved = {**models.default_model_config().to_dict(), **saved_config.get("model", {})}
  current = json.loads(config.model.to_json_best_effort())
  differ = {k: (saved.get(k), current.get(k)) for k in current if k != "dtype"
            and saved.get(k) != current.get(k)}
  what = ["model"] if differ else []
  optimizers = optimizer_name(ml_collections.ConfigDict(saved_config)), optimizer_name(config)
  if optimiser and optimizers[0] != optimizers[1]:
    differ["optim.name"] = optimizers
    what.append("optimiser")
  if differ and os.path.isdir(os.path.join(workdir, "checkpoints")):
    details = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(differ.items()))
    raise InputError(f"{workdir} holds checkpoints of another {' and '.join(what)} ({details}); use a new "
                     "--workdir or the config it was trained with.")


def restore_latest(manager: ocp.CheckpointManager, state: TrainState) -> TrainState:
  """`state` resumed from the latest intact checkpoint (unchanged when there is none)."""

  def target_for(step):
    # The restore target follows what the checkpoint holds: a run that turns the moving average on
    # (off) resumes from a checkpoint without (with) one; the average then starts from the restored
    # weights (is dropped).
    target = checkpoint_items(state)
    target.pop("ema_params", None)
    if "ema_params" in manager.item_metadata(step):
      target["ema_params"] = state.params  # the average has the weights' structure
    return target

  restored, _ = restore_usable(manager, target_for)
  if restored is None:
    return state
  ema = None if state.ema_params is None else restored.get("ema_params", restored["params"])
  return state.replace(step=restored["step"], params=restored["params"],
                       batch_stats=restored["batch_stats"], opt_state=restored["opt_state"],
                       ema_params=ema)
