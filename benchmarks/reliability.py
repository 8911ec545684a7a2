"""Soak: a small training run killed with SIGKILL at random moments, restarted until it finishes, against
the same run never interrupted.

  python -m benchmarks.reliability [--kills=20] [--steps=40] [--seed=0] [--json=OUT.json]

The run is the smoke config (`configs/default.py:test`) on a 12-face procedural dataset, checkpointing
every 2 steps, in a fresh temporary directory. Each round starts `run_train.py`, waits a random time
(uniform in [0, the uninterrupted run's wall time)) and kills it — or, every third round, waits for a
save to be in flight (Orbax's temporary directory) and kills it then — until `--kills` kills have landed;
then the run is left to finish. Every few rounds the latest checkpoint is damaged (a byte flipped) before
the restart, which must name it and resume from the one before. Reported: kills (mid-save among them),
damaged checkpoints passed over, and whether the final weights, optimiser state and moving average equal
the uninterrupted run's bit for bit (they must).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
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

  straight = os.path.join(root, "straight")
  t = time.time()
  subprocess.run(_command(straight, data, steps), cwd=REPO, env=_env(), check=True,
                 capture_output=True)
  wall = time.time() - t
  print(f"uninterrupted run: {steps} steps in {wall:.1f} s", flush=True)

  workdir = os.path.join(root, "killed")
  landed = mid_save = damaged = named = rounds = 0
  while True:
    rounds += 1
    want_mid_save = landed < kills and rounds % 3 == 0
    wait = rng.uniform(0, wall)
    proc = subprocess.Popen(_command(workdir, data, steps), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t = time.time()
    killed_now = False
    while landed < kills and proc.poll() is None:
      if (_in_flight(workdir) if want_mid_save else time.time() - t >= wait):
        in_save = _in_flight(workdir)
        proc.send_signal(signal.SIGKILL)
        killed_now = True
        landed += 1
        mid_save += in_save
        break
      time.sleep(0.002)
    _, err = proc.communicate()
    if killed_now:
      print(f"round {rounds}: killed after {time.time() - t:.1f} s{' mid-save' if in_save else ''}; "
            f"checkpoints {_saved(workdir)}", flush=True)
      if rounds % 4 == 0 and _saved(workdir):
        _flip_a_byte(workdir, _saved(workdir)[-1])
        damaged += 1
      continue
    if proc.returncode != 0:
      raise SystemExit(f"round {rounds}: run_train.py failed ({proc.returncode}):\n{err[-3000:]}")
    named += err.count("is damaged")
    if _saved(workdir) and _saved(workdir)[-1] == steps and landed >= kills:
      break

  a, b = _final_state(straight), _final_state(workdir)
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  equal = tree_a == tree_b and all(x.dtype == y.dtype and x.tobytes() == y.tobytes()
                                   for x, y in zip(leaves_a, leaves_b))
  return {"kills": landed, "kills_mid_save": int(mid_save), "rounds": rounds,
          "damaged_checkpoints": damaged, "damaged_named_in_log": named, "steps": steps, "uninterrupted_wall_s": round(wall, 1),
          "final_state_bit_identical": bool(equal), "seed": seed}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--steps", type=int, default=40)
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
