"""Soak: a small training run killed with SIGKILL at random moments of its training, restarted until it
finishes, against the same run never interrupted.

  python -m benchmarks.reliability [--kills=20] [--steps=120] [--seed=0] [--json=OUT.json]

The run is the smoke config (`configs/default.py:test`) on a 12-face procedural dataset, checkpointing
every 2 steps, in a fresh temporary directory. Each round starts `run_train.py` and, once it has logged
a training step (start-up and compilation are over: a kill there tests nothing but a restart), waits a
random time (uniform in [0, 2 / kills of the uninterrupted run's training time), so that the kills spread
over the whole run) and kills it — or, every third round, waits for one of its own saves to be in flight
(Orbax's temporary directory) and kills it then — until `--kills` kills have landed while it trained;
then the run is left to finish. Every fourth round the latest checkpoint is damaged (a byte flipped)
before the restart, which must name it and resume from the one before. Reported: kills (mid-save among
them, and the steps they interrupted), damaged checkpoints passed over, and whether the final weights,
optimiser state and moving average equal the uninterrupted run's bit for bit (they must).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _command(workdir: str, data_dir: str, steps: int) -> list[str]:
  overrides = {"data.data_dir": data_dir, "data.config": "aflw2000_3d", "data.train_split": "test",
               "data.eval_config": "aflw2000_3d", "num_train_steps": steps, "checkpoint_every_steps": 2}
  return [sys.executable, "run_train.py", "--config=configs/default.py:test", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in overrides.items())]


def _env() -> dict:
  return dict(os.environ, VRN_FACES_NUM_WORKERS="1", XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _saved(workdir: str) -> list[int]:
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _in_flight(workdir: str) -> bool:
  return bool(glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*")))


def _final_state(workdir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
    step = manager.latest_step()
    return jax.tree_util.tree_map(np.asarray, manager.restore(step, args=ocp.args.StandardRestore()))


def _flip_a_byte(workdir: str, step: int) -> None:
  files = [p for p in glob.glob(os.path.join(workdir, "checkpoints", str(step), "**", "*"), recursive=True)
           if os.path.isfile(p) and not p.endswith(".json") and "METADATA" not in p]
  path = max(files, key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  with open(path, "wb") as f:
    f.write(bytes(data))


class _Run:
  """`run_train.py` in a subprocess, its log read as it comes: when it logged its first training step and
  which step it logged last."""

  _STEP = re.compile(r"step (\d+)/\d+ ")

  def __init__(self, command: list[str]):
    self.proc = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    self.started = time.time()
    self.training = threading.Event()
    self.training_at = None
    self.last_step = None
    self.log: list[str] = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self) -> None:
    for line in self.proc.stderr:
      self.log.append(line)
      match = self._STEP.search(line)
      if match:
        self.last_step = int(match.group(1))
        if self.training_at is None:
          self.training_at = time.time()
        self.training.set()

  def wait(self) -> int:
    self.proc.wait()
    self._reader.join()
    return self.proc.returncode


def soak(kills: int, steps: int, seed: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from vrn_jax.faces.synthetic import write_aflw2000_tree  # pylint: disable=g-import-not-at-top
  from vrn_jax.datasets.vrn_faces import Builder  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  root = tempfile.mkdtemp(prefix="vrn_reliability_")
  manual, data = os.path.join(root, "manual"), os.path.join(root, "data")
  write_aflw2000_tree(manual, 12, seed=5)
  os.environ["VRN_FACES_NUM_WORKERS"] = "1"
  Builder(config="aflw2000_3d", data_dir=data).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual))

  soak_start = time.time()
  straight_dir = os.path.join(root, "straight")
  straight = _Run(_command(straight_dir, data, steps))
  if straight.wait() != 0:
    raise SystemExit("the uninterrupted run failed:\n" + "".join(straight.log[-40:]))
  straight_wall = time.time() - soak_start
  training_s = time.time() - straight.training_at  # from its first logged step (evaluation included)
  print(f"uninterrupted run: {steps} steps in {straight_wall:.1f} s, {training_s:.1f} s of them from "
        "the first step on", flush=True)

  workdir = os.path.join(root, "killed")
  landed = mid_save = damaged = named = rounds = 0
  interrupted = []
  while True:
    rounds += 1
    want_mid_save = landed < kills and rounds % 3 == 0
    run = _Run(_command(workdir, data, steps))
    killed_now = in_save = False
    if landed < kills:
      while run.proc.poll() is None and not run.training.wait(0.05):
        pass
      t = time.time()
      wait = rng.uniform(0, 2 * training_s / kills)
      while run.proc.poll() is None:
        if (_in_flight(workdir) if want_mid_save else time.time() - t >= wait):
          in_save = _in_flight(workdir)
          run.proc.send_signal(signal.SIGKILL)
          killed_now = True
          break
        time.sleep(0.002)
    code = run.wait()
    # Every round restores before its first step, so a damaged latest checkpoint is named in its log
    # whether or not the round is then killed.
    named += sum("is damaged" in line for line in run.log)
    if killed_now:
      landed += 1
      mid_save += in_save
      interrupted.append(run.last_step)
      print(f"round {rounds}: killed {time.time() - run.started:.1f} s after its start, "
            f"{time.time() - t:.1f} s into training (last step logged {run.last_step})"
            f"{' mid-save' if in_save else ''}; checkpoints {_saved(workdir)}", flush=True)
      if rounds % 4 == 0 and _saved(workdir):
        _flip_a_byte(workdir, _saved(workdir)[-1])
        damaged += 1
      continue
    if code != 0:
      raise SystemExit(f"round {rounds}: run_train.py failed ({code}):\n{''.join(run.log[-40:])}")
    if _saved(workdir) and _saved(workdir)[-1] == steps:
      break

  a, b = _final_state(straight_dir), _final_state(workdir)
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  equal = tree_a == tree_b and all(x.dtype == y.dtype and x.tobytes() == y.tobytes()
                                   for x, y in zip(leaves_a, leaves_b))
  return {"kills": landed, "kills_mid_save": int(mid_save), "rounds": rounds,
          "steps_interrupted": interrupted, "damaged_checkpoints": damaged,
          "damaged_named_in_log": named, "steps": steps, "uninterrupted_wall_s": round(straight_wall, 1),
          "soak_wall_s": round(time.time() - soak_start, 1),
          "final_state_bit_identical": bool(equal), "seed": seed}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--steps", type=int, default=120)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", default=None, help="also write the result here")
  args = parser.parse_args(argv)
  result = soak(args.kills, args.steps, args.seed)
  print(json.dumps(result, indent=1))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)
  if not result["final_state_bit_identical"]:
    raise SystemExit("the killed run's final state differs from the uninterrupted run's")


if __name__ == "__main__":
  main()
