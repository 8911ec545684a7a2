"""Every command the README shows is run by a test: the quick ones here, as written, in a scratch
directory laid out as the README assumes (`workdirs/default`, `photos/`, `photo.jpg` ...), the heavy ones
(training, dataset builds, the server, the importer) by the test named for each, with a tiny config."""

import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np

from conftest import REPO, fixtures_dir, save_slab_checkpoint

README = os.path.join(REPO, "README.md")


def readme_commands() -> list[str]:
  """The command lines of the README's fenced blocks (comments after '#' dropped), in order."""
  text = open(README, encoding="utf-8").read()
  commands = []
  for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S):
    for line in block.splitlines():
      line = re.sub(r"\s+#.*$", "", line).strip()
      if re.match(r"^(python3?|tfds|pip) ", line):
        commands.append(line)
  return commands


# Commands run elsewhere: (file, the strings that show it runs this command there).
ELSEWHERE = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt":
        (".ci/run", ["-m venv", "pip install --quiet -r requirements.txt"]),
    "python -m pytest -q": (".ci/run", ["python -m pytest -q"]),
    # tests/test_web.py starts the server through DemoServer.
    "python run_demo.py": ("benchmarks/demo_server.py", ['"run_demo.py"']),
    "python run_train.py": ("tests/conftest.py", ['"run_train.py", "--config=configs/default.py:test"']),
    "tfds build vrn_jax/datasets/vrn_faces --config=synthetic":
        ("tests/test_dataset.py", ['["tfds", "build"', '"vrn_faces"']),
    "tfds build vrn_jax/datasets/vrn_faces --config=300w_lp --manual_dir=DIR":
        ("tests/test_dataset.py", ['["tfds", "build"', "--manual_dir"]),
    "tfds build vrn_jax/datasets/vrn_faces --config=aflw2000_3d --manual_dir=DIR":
        ("tests/test_dataset.py", ['["tfds", "build"', "--config=aflw2000_3d", "--manual_dir"]),
    "python run_eval.py --workdir=workdirs/default [--step=N] [--num_examples=N] [--export_meshes=N]":
        ("tests/test_evaluate.py", ['"run_eval.py"', "--export_meshes", "--num_examples"]),
    "python -m data_prep.import_release --weights=vrn_unguided.pth --workdir=workdirs/vrn_release":
        ("tests/test_import_release.py", ["import_release.main", ".pth"]),
    "python -m data_prep.import_release --weights=vrn-unguided.t7 --workdir=workdirs/vrn_release":
        ("tests/test_import_release.py", ["import_release.main", ".t7"]),
    "python run_eval.py --workdir=workdirs/vrn_release --images='photos/*.jpg' --output_dir=out":
        ("tests/test_readme.py", ["--workdir=workdirs/default --images='photos/*.jpg'"]),
}

# Run here, in this order (each command's outputs are the next ones' inputs).
HERE = [
    "python -m vrn_jax.crop --image photo.jpg --output crop.png --transform_out crop.json",
    "python -m vrn_jax.crop --image photo.jpg --landmarks photo.txt --output crop.png",
    "python -m vrn_jax.crop --image photo.jpg --box 120,80,330,300 --output crop.png",
    "python run_eval.py --workdir=workdirs/default --images='photos/*.jpg' --output_dir=out",
    "python -m vrn_jax.convert --volume face.raw --image crop.png --output face.obj",
    "python -m vrn_jax.convert --volume face.npy --image crop.png --transform crop.json --output face_photo.ply",
]


def test_every_readme_command_is_run_by_a_test():
  commands = readme_commands()
  assert len(commands) >= 15, commands
  unplanned = [c for c in commands if c not in ELSEWHERE and c not in HERE]
  assert not unplanned, f"README commands no test runs: {unplanned}"
  for command, (path, needles) in ELSEWHERE.items():
    if command not in commands:
      continue
    text = open(os.path.join(REPO, path), encoding="utf-8").read()
    missing = [n for n in needles if n not in text]
    assert not missing, f"{command!r}: {path} does not show {missing}"
  assert set(HERE) <= set(commands), set(HERE) - set(commands)


def test_the_quick_readme_commands_run_as_written(tmp_path):
  """The photo -> mesh commands, verbatim (python = this interpreter), on a fixture photo and a model
  with known output (a slab checkpoint of the default config)."""
  from vrn_jax.configs import default
  from vrn_jax.geometry import isosurface

  fixtures = fixtures_dir()
  work = tmp_path / "user"
  (work / "photos").mkdir(parents=True)
  for name in ("AFLW_image00046", "AFLW_image00095"):
    shutil.copy(os.path.join(fixtures, name + ".jpg"), work / "photos" / (name + ".jpg"))
  shutil.copy(os.path.join(fixtures, "AFLW_image00046.jpg"), work / "photo.jpg")
  shutil.copy(os.path.join(fixtures, "AFLW_image00046.txt"), work / "photo.txt")
  save_slab_checkpoint(default.get_config(), str(work / "workdirs" / "default"), slab_depth=120)
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  for command in HERE:
    if command.startswith("python -m vrn_jax.convert --volume face.raw"):
      # The volumes the README's convert commands take: the .npy run_eval wrote, and it as a .raw.
      volume = np.load(work / "out" / "AFLW_image00046.npy")
      np.save(work / "face.npy", volume)
      isosurface.write_raw(work / "face.raw", volume)
    argv = shlex.split(command)
    script = argv[1] if argv[1].endswith(".py") else None
    if script:
      argv[1] = os.path.join(REPO, script)
    r = subprocess.run([sys.executable, *argv[1:]], cwd=work, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"{command}: exit {r.returncode}\n{r.stderr[-3000:]}"
  for name in ("crop.png", "crop.json", "face.obj", "face_photo.ply", "out/AFLW_image00046.obj",
               "out/AFLW_image00095.glb", "out/AFLW_image00046_overlay.png"):
    assert (work / name).is_file() and (work / name).stat().st_size > 0, name
