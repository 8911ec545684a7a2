"""The package as a user installs it: a wheel built from the tree, installed on its own (no editable
checkout on the path), its commands run from another directory."""

import configparser
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, fixtures_dir

COMMANDS = {"vrn-train": "vrn_jax.commands.train:console", "vrn-eval": "vrn_jax.commands.evaluate:console",
            "vrn-demo": "vrn_jax.commands.demo:console", "vrn-crop": "vrn_jax.crop:console",
            "vrn-convert": "vrn_jax.convert:console"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(the wheel, the folder it is installed into): `pip wheel` with the build backend already in the
  environment (no download), `pip install --target` with no dependencies (those are the environment's)."""
  root = tmp_path_factory.mktemp("wheel")
  # Built from a copy of what the wheel is made of: setuptools writes build/ into the source tree.
  source = root / "source"
  shutil.copytree(os.path.join(REPO, "vrn_jax"), source / "vrn_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, name), source / name)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                  "-w", str(root / "dist"), str(source)], check=True, capture_output=True, timeout=300)
  (wheel,) = (root / "dist").iterdir()
  target = root / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                  "--target", str(target), str(wheel)], check=True, capture_output=True, timeout=300)
  return wheel, target


def _run(target, command, *args, cwd):
  env = dict(os.environ, PYTHONPATH=str(target))
  return subprocess.run([str(target / "bin" / command), *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def test_wheel_holds_the_page_the_configs_and_the_commands(installed):
  wheel, _ = installed
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = configparser.ConfigParser()
    scripts.read_string(z.read(entry_points).decode())
  for path in ("vrn_jax/web/static/index.html", "vrn_jax/web/static/app.js",
               "vrn_jax/web/static/vendor/model-viewer.min.js",
               "vrn_jax/web/static/vendor/model-viewer.LICENSE", "vrn_jax/configs/default.py",
               "vrn_jax/configs/vrn.py", "vrn_jax/datasets/vrn_faces/vrn_faces_dataset_builder.py"):
    assert path in names, path
  assert dict(scripts["console_scripts"]) == COMMANDS
  assert not any(n.startswith(("tests/", "configs/", "benchmarks/")) for n in names)


def test_installed_commands_run_from_another_directory(installed, tmp_path):
  _, target = installed
  found = subprocess.run([sys.executable, "-c", "import vrn_jax; print(vrn_jax.__file__)"], cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(target)), capture_output=True, text=True,
                         check=True)
  assert found.stdout.strip().startswith(str(target))  # the installed copy, not the checkout
  photo = os.path.join(fixtures_dir(), "asj.jpg")
  r = _run(target, "vrn-crop", "--image", photo, "--output", "crop.png", cwd=tmp_path)
  assert r.returncode == 0 and (tmp_path / "crop.png").is_file(), r.stderr
  # The default config is the packaged one: an unknown field is named against it.
  r = _run(target, "vrn-train", "--config.nosuch=1", cwd=tmp_path)
  assert r.returncode == 2
  assert f"no such config field in {target}/vrn_jax/configs/default.py; closest" in r.stderr
  for command in ("vrn-train", "vrn-eval", "vrn-demo"):
    r = _run(target, command, "--helpshort", cwd=tmp_path)  # (help exits 0, a usage error 2: cli.parse_flags)
    assert "--workdir" in r.stdout and "Traceback" not in r.stderr, (command, r.stdout, r.stderr)
  r = _run(target, "vrn-convert", "--help", cwd=tmp_path)
  assert r.returncode == 0 and "--volume" in r.stdout
