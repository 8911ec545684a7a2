"""Faults lose nothing: a run stopped, or killed at any moment (mid-save included), resumes to the same
weights bit for bit, a damaged checkpoint is named and passed over, an interrupted dataset build
completes exactly, non-finite steps never reach the weights or a checkpoint, and a full or unwritable
disk is an error before training starts. (The soak with many random kills:
`python -m benchmarks.reliability`.)"""

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, read_checkpoint, train_config, train_overrides, xla_env

STEPS = 6


@pytest.fixture(scope="module")
def straight(train_data_dir, tmp_path_factory):
  """An uninterrupted run of STEPS steps, a checkpoint after each (the last 3 kept)."""
  from vrn_jax.training import loop

  workdir = str(tmp_path_factory.mktemp("straight") / "w")
  loop.train_and_evaluate(train_config(train_data_dir, num_train_steps=STEPS, checkpoint_every_steps=1),
                          workdir)
  return workdir


def assert_trees_equal(a, b):
  """Bit for bit: same structure, dtypes and bytes."""
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def in_flight_saves(workdir):
  return glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*"))


def test_resume_is_exact(train_data_dir, straight, tmp_path):
  """Stopped after 3 steps and started again: the run ends with the uninterrupted run's weights and
  optimiser state."""
  from vrn_jax.training import loop

  resumed = str(tmp_path / "resumed")
  loop.train_and_evaluate(train_config(train_data_dir, num_train_steps=3), resumed)
  assert read_checkpoint(resumed)[0] == 3
  loop.train_and_evaluate(train_config(train_data_dir, num_train_steps=STEPS), resumed)
  (s1, a), (s2, b) = read_checkpoint(straight), read_checkpoint(resumed)
  assert s1 == s2 == STEPS
  assert_trees_equal(b, a)


def stopped(proc, timeout=10.0):
  """SIGSTOPs `proc` and waits until the kernel shows every one of its threads stopped (state T):
  nothing it does, a rename by Orbax's saving thread included, happens after this returns True."""
  proc.send_signal(signal.SIGSTOP)
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    states = set()
    for path in glob.glob(f"/proc/{proc.pid}/task/*/stat"):
      try:
        with open(path, encoding="ascii") as f:
          states.add(f.read().rsplit(")", 1)[1].split()[0])
      except FileNotFoundError:  # a thread that has just ended
        pass
    if states and states <= {"T", "t"}:
      return True
    time.sleep(0.001)
  return False


def test_killed_mid_save_resumes_to_the_same_weights(train_data_dir, straight, tmp_path):
  """SIGKILL while Orbax is writing a checkpoint (its temporary directory exists), then a restart: the
  run resumes from the last complete checkpoint and ends with the uninterrupted run's weights, optimiser
  state and moving average, bit for bit."""
  from vrn_jax.training import loop

  workdir = str(tmp_path / "killed")
  args = train_overrides(train_data_dir, num_train_steps=STEPS, checkpoint_every_steps=1)
  cmd = [sys.executable, "run_train.py", "--config=configs/default.py:test", f"--workdir={workdir}", *args]
  env = xla_env(1, VRN_FACES_NUM_WORKERS="1")
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  killed_in_save = False
  try:
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
      # A save after the first complete checkpoint: the kill lands mid-save with a finished one behind it.
      if in_flight_saves(workdir) and os.path.isdir(os.path.join(workdir, "checkpoints", "1")):
        # Stopped first, then looked at again: a save that finished between the look and the kill would
        # leave nothing in flight (the run is then let go on to the next save).
        if stopped(proc) and in_flight_saves(workdir):
          proc.send_signal(signal.SIGKILL)
          killed_in_save = True
          break
        proc.send_signal(signal.SIGCONT)
      time.sleep(0.002)
  finally:
    if proc.poll() is None and not killed_in_save:
      proc.kill()
    _, err = proc.communicate(timeout=60)
  assert killed_in_save, f"no save was caught in flight; the run ended with {proc.returncode}: {err[-2000:]}"
  assert proc.returncode == -signal.SIGKILL
  assert in_flight_saves(workdir)  # what the kill left behind
  # The restart (in this process: the same resume path as run_train.py's, without another start-up).
  loop.train_and_evaluate(train_config(train_data_dir, num_train_steps=STEPS, checkpoint_every_steps=1),
                          workdir)
  assert not in_flight_saves(workdir)
  (s1, a), (s2, b) = read_checkpoint(straight), read_checkpoint(workdir)
  assert s1 == s2 == STEPS
  assert_trees_equal(b, a)


def damage_checkpoint(workdir, step, how, every_file=False):
  """Damages checkpoint `step`'s largest data file (or, every_file, each of them): 'truncate' (to half)
  or 'flip' (one byte)."""
  files = [p for p in glob.glob(os.path.join(workdir, "checkpoints", str(step), "**", "*"), recursive=True)
           if os.path.isfile(p) and not p.endswith(".json") and "METADATA" not in os.path.basename(p)]
  for path in files if every_file else [max(files, key=os.path.getsize)]:
    data = bytearray(open(path, "rb").read())
    if how == "truncate":
      data = data[:len(data) // 2]
    else:
      data[len(data) // 2] ^= 0xFF
    with open(path, "wb") as f:
      f.write(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_damaged_latest_checkpoint_is_named_and_the_previous_one_used(straight, train_data_dir,
                                                                        tmp_path, caplog, how):
  from vrn_jax import files, inference
  from vrn_jax.training import loop

  workdir = str(tmp_path / "w")
  shutil.copytree(straight, workdir)
  damage_checkpoint(workdir, STEPS, how)
  latest = os.path.join(workdir, "checkpoints", str(STEPS))

  # Evaluation passes over it (and moves nothing).
  config = train_config(train_data_dir, num_train_steps=STEPS, checkpoint_every_steps=1)
  with caplog.at_level(logging.WARNING):
    variables, step = inference.restore_variables(config, workdir)
  assert step == STEPS - 1 and os.path.isdir(latest)
  assert f"checkpoint {latest} is damaged" in caplog.text
  _, previous = read_checkpoint(workdir, STEPS - 1)
  assert_trees_equal(variables["params"], previous["ema_params"])
  # An explicit --step of it is an error naming it.
  with pytest.raises(files.InputError, match=f"checkpoint {latest} is damaged"):
    inference.restore_variables(config, workdir, step=STEPS)

  # Training names it, sets it aside, resumes from the one before and ends where the straight run did.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    loop.train_and_evaluate(config, workdir)
  assert f"checkpoint {latest} is damaged" in caplog.text
  assert os.path.isdir(os.path.join(workdir, "corrupt_checkpoints", str(STEPS)))
  (s1, a), (s2, b) = read_checkpoint(straight), read_checkpoint(workdir)
  assert s1 == s2 == STEPS
  assert_trees_equal(b, a)


def test_damage_without_checksums_is_caught_by_the_restore(straight, train_data_dir, tmp_path, caplog):
  """A checkpoint saved without checksums (e.g. by an older version) and truncated: Orbax's restore
  fails, the failure is named and the previous checkpoint used. Every data file is cut short (a copy
  interrupted): without checksums only what the restore reads can show damage, and restoring the
  variables reads the weights and statistics alone, not the optimiser state that may fill the largest
  file."""
  from vrn_jax import inference
  from vrn_jax.training import checkpoints

  workdir = str(tmp_path / "w")
  shutil.copytree(straight, workdir)
  os.remove(os.path.join(workdir, "checkpoints", str(STEPS), checkpoints.CHECKSUMS))
  damage_checkpoint(workdir, STEPS, "truncate", every_file=True)
  config = train_config(train_data_dir)
  with caplog.at_level(logging.WARNING):
    _, step = inference.restore_variables(config, workdir)
  assert step == STEPS - 1
  assert "cannot be read" in caplog.text


def test_checksums_cover_every_file_of_every_kept_checkpoint(straight):
  from vrn_jax.training import checkpoints

  kept = sorted(int(d) for d in os.listdir(os.path.join(straight, "checkpoints")) if d.isdigit())
  assert kept == [STEPS - 2, STEPS - 1, STEPS]  # keep_checkpoints = 3
  for step in kept:
    directory = os.path.join(straight, "checkpoints", str(step))
    sums = json.load(open(os.path.join(directory, checkpoints.CHECKSUMS)))
    on_disk = {os.path.relpath(os.path.join(r, n), directory) for r, _, ns in os.walk(directory) for n in ns}
    assert set(sums) == on_disk - {checkpoints.CHECKSUMS} and len(sums) >= 3


# Next to the skipping test below: both train at a learning rate of 1e30, one compiled step (the
# suite's workers split the work by file).
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(train_data_dir, tmp_path):
  from vrn_jax.training import loop, steps

  workdir = str(tmp_path / "nan")
  config = train_config(train_data_dir, num_train_steps=6, checkpoint_every_steps=1)
  config.optim.learning_rate = 1e30
  with pytest.raises(steps.NonFiniteLossError, match=r"non-finite [\w, ]+ at step (\d+).*last good "
                     r"checkpoint \(step \d+\)") as info:
    loop.train_and_evaluate(config, workdir)
  bad_step = int(str(info.value).split("at step ")[1].split()[0])
  assert bad_step >= 2
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert saved and saved[-1] == bad_step - 1
  _, good = read_checkpoint(workdir)
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(good["params"]))
  # Between checkpoints the metrics are read a step late: the same step is named, nothing is saved.
  config.checkpoint_every_steps = 5
  with pytest.raises(steps.NonFiniteLossError, match=rf"non-finite [\w, ]+ at step {bad_step} .*"
                     r"last good checkpoint \(step 0\)"):
    loop.train_and_evaluate(config, str(tmp_path / "nan_late"))
  assert not os.path.isdir(os.path.join(tmp_path, "nan_late", "checkpoints", str(bad_step)))


def test_non_finite_steps_are_skipped_on_the_device_and_never_saved(train_data_dir, tmp_path):
  """A learning rate of 1e30: step 1's weights are huge, every later step's loss is infinite. With
  max_nonfinite_steps=2 steps 2 and 3 are skipped — their checkpoints hold step 1's weights and optimiser
  state exactly — and step 4 stops the run, saving nothing."""
  from vrn_jax.training import checkpoints, loop, steps

  workdir = str(tmp_path / "w")
  config = train_config(train_data_dir, num_train_steps=6, checkpoint_every_steps=1,
                        max_nonfinite_steps=2, keep_checkpoints=5)
  config.optim.learning_rate = 1e30
  with pytest.raises(steps.NonFiniteLossError, match=r"at step 4 .*steps skipped so far: 2.*last good "
                     r"checkpoint \(step 3\)"):
    loop.train_and_evaluate(config, workdir)
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert saved == [1, 2, 3]
  _, one = read_checkpoint(workdir, 1)
  for step in (2, 3):
    s, state = read_checkpoint(workdir, step)
    assert int(state["step"]) == step
    for k in ("params", "opt_state", "batch_stats", "ema_params"):
      assert_trees_equal(state[k], one[k])
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["skipped_steps"] for r in records] == [0, 1, 2]
  # The host's last guard: a tree with a NaN is never written.
  manager = checkpoints.checkpoint_manager(workdir, 5)
  one["params"] = jax.tree_util.tree_map(lambda x: np.full_like(x, np.nan), one["params"])
  with pytest.raises(steps.NonFiniteLossError, match="checkpoint 9 not written"):
    checkpoints.save(manager, 9, one)
  checkpoints.finish(manager)
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "9"))


def test_full_or_unwritable_disk_is_an_error_before_anything_starts(tmp_path, monkeypatch):
  """Checked before the dataset build: the data dir given does not exist and is never made."""
  from vrn_jax import files
  from vrn_jax.training import loop

  config = train_config(str(tmp_path / "no_data_yet"))
  config.data.build_if_missing = True
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(files.InputError, match=r"workdir .*a_file/w: cannot write there"):
    loop.train_and_evaluate(config, str(blocker / "w"))

  class Usage:
    free = 50 << 20

  monkeypatch.setattr(loop.shutil, "disk_usage", lambda path: Usage)
  with pytest.raises(files.InputError, match=r"workdir .*/w: 50 MiB free on its disk; training needs "
                     r"about \d+ MiB \(3 \+ 1 checkpoints of [\d.]+ MiB"):
    loop.train_and_evaluate(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "no_data_yet")
  assert os.listdir(tmp_path / "w") == []  # the probe is gone


def test_an_interrupted_dataset_build_completes_exactly(tmp_path):
  """A build killed while it writes examples, then run again: every example once, none missing, the
  same examples as a build never interrupted."""
  import tensorflow_datasets as tfds

  from vrn_jax.faces.synthetic import write_aflw2000_tree
  from vrn_jax.datasets.vrn_faces import Builder

  manual = str(tmp_path / "manual")
  write_aflw2000_tree(manual, 16, seed=3)
  data = str(tmp_path / "data")
  env = dict(os.environ, VRN_FACES_NUM_WORKERS="1")
  code = ("import sys, tensorflow_datasets as tfds; from vrn_jax.datasets.vrn_faces import Builder; "
          "Builder(config='aflw2000_3d', data_dir=sys.argv[1]).download_and_prepare("
          "download_config=tfds.download.DownloadConfig(manual_dir=sys.argv[2]))")
  proc = subprocess.Popen([sys.executable, "-c", code, data, manual], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 300
    # Killed once its temporary dataset directory holds written examples.
    while proc.poll() is None and time.time() < deadline:
      partial = [p for p in glob.glob(os.path.join(data, "vrn_faces", "aflw2000_3d", "*", "**", "*"),
                                      recursive=True) if "incomplete" in p and os.path.isfile(p)]
      if partial:
        proc.send_signal(signal.SIGKILL)
        break
      time.sleep(0.01)
  finally:
    proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, "the build ended before it could be interrupted"

  os.environ["VRN_FACES_NUM_WORKERS"] = "1"
  download = tfds.download.DownloadConfig(manual_dir=manual)
  Builder(config="aflw2000_3d", data_dir=data).download_and_prepare(download_config=download)
  again = Builder(config="aflw2000_3d", data_dir=data).as_data_source(split="test")
  clean_dir = str(tmp_path / "clean")
  Builder(config="aflw2000_3d", data_dir=clean_dir).download_and_prepare(download_config=download)
  clean = Builder(config="aflw2000_3d", data_dir=clean_dir).as_data_source(split="test")
  names = sorted(str(again[i]["name"]) for i in range(len(again)))
  assert len(names) == len(set(names)) == 16
  assert names == sorted(str(clean[i]["name"]) for i in range(len(clean)))
  leftovers = glob.glob(os.path.join(data, "vrn_faces", "aflw2000_3d", "*incomplete*"))
  assert not leftovers, leftovers
