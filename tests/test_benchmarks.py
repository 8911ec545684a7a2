"""Benchmarks: the analytic FLOP count agrees with XLA's, the training/inference suites run (tiny), and the
end-to-end pipeline meshes exactly what the serial chain meshes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, fixtures_dir


@pytest.mark.parametrize("topology", ["standard", "release"])
def test_analytic_flops_match_xla_cost_analysis(topology):
  import jax
  import jax.numpy as jnp

  from benchmarks import flops
  from vrn_jax import models

  # One hourglass of depth 1, small enough to compile in seconds, wide enough that convolutions are most
  # of the work (93% of the forward; 99% at the paper's size). The deeper recursion is checked below.
  shape = dict(topology=topology, features=32, depth=1, num_hourglasses=1, image_size=64,
               volume_depth=16)
  model_fields = {k: v for k, v in shape.items() if k != "image_size"}
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  params = models.count_parameters(
      jax.eval_shape(models.get_model(**model_fields).init, jax.random.key(0), images)["params"])
  xla_forward = flops.xla_model_flops(False, image_size=64, **model_fields)
  xla_train = flops.xla_model_flops(True, image_size=64, **model_fields)
  count = flops.vrn_flops(exact_borders=True, **shape)
  assert count.params == params  # the analytic walk has exactly the model's layers
  # Convolutions are counted exactly (XLA skips the taps on padding, as exact_borders does; measured
  # 0.6-0.7% apart here); the elementwise layers are per-element estimates (BatchNorm 4-7, ReLU 1, ...)
  # on a 7% share: 2% on the forward. Their backward is estimated at 2x forward (XLA's BatchNorm
  # backward costs more; measured 2.6% low here, 0.3% at the paper's size): 5% on the training step.
  assert count.forward == pytest.approx(xla_forward, rel=0.02)
  assert count.train == pytest.approx(xla_train, rel=0.05)
  # The nominal count (padding multiplied too) is larger, never smaller.
  assert flops.vrn_flops(**shape).forward > count.forward


def test_paper_size_counts_match_the_models():
  import jax
  import jax.numpy as jnp

  from benchmarks import flops
  from vrn_jax import models

  release = flops.vrn_flops(topology="release")  # the released vrn-unguided (DESIGN.md section 1)
  assert release.params == 19_184_968
  assert release.forward == pytest.approx(49e9, rel=0.02)
  assert release.train == pytest.approx(3 * release.forward, rel=0.02)
  # The standard hourglass's recursion at depth 4: the analytic walk has exactly the model's layers.
  images = jax.ShapeDtypeStruct((1, 192, 192, 3), jnp.float32)
  variables = jax.eval_shape(models.get_model(topology="standard").init, jax.random.key(0), images)
  assert flops.vrn_flops(topology="standard").params == models.count_parameters(variables["params"])


def test_training_and_inference_suites_run_tiny(tmp_path):
  out = tmp_path / "rows.json"
  result = subprocess.run(
      [sys.executable, "benchmarks/run.py", "--tiny", "--only", "training", "--only", "inference",
       "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())["rows"]
  table = "\n".join(f"{r['name']} | {r['value']} | {r['ratio']} | {r['note']}" for r in rows)
  for row in rows:
    assert row["units"] and row["device"], row
    if row["value"] is None:  # never a number that was not measured, and always the reason
      assert row["note"].startswith("not measured: "), row
  ours = [r for r in rows if "ours, train_step (pmap" in r["name"] and r["units"] == "examples/s"]
  assert len(ours) == 1 and ours[0]["value"] and ours[0]["value"] > 0, table
  assert ours[0]["batch"] == 2 and ours[0]["baseline"] == "PyTorch eager fp32", table
  assert ours[0]["ratio"] and ours[0]["ratio"] > 0 and "MFU" in ours[0]["note"], table
  torch_rows = [r for r in rows if "PyTorch eager (baseline)" in r["name"] and r["value"] is not None]
  assert torch_rows and torch_rows[0]["ratio"] == pytest.approx(1.0), table
  forward = [r for r in rows if r["name"].startswith("forward, tiny") and "ours" in r["name"]]
  assert [r["batch"] for r in forward] == [2], table
  assert all(r["value"] and r["ratio"] and r["value"] > 0 and r["ratio"] > 0 for r in forward), table
  flop_rows = [r for r in rows if "FLOPs" in r["name"]]
  assert flop_rows and all(r["value"] > 0 for r in flop_rows), table
  skipped = [r for r in rows if "torch.compile" in r["name"]]
  assert skipped and all(r["value"] is None and "--tiny" in r["note"] for r in skipped), table
  assert "measurement" in result.stdout  # the table was printed


def test_end_to_end_pipeline_meshes_what_the_serial_chain_meshes():
  """Shared-memory handoff and ordering: every photo's mesh from the pipelined run (worker processes)
  equals the one meshed in-process from the same volume."""
  from benchmarks import inference
  from vrn_jax.data import build, examples

  fixtures_dir()  # skips without the release's photos
  photos = inference.fixture_photos(3)
  assert len(photos) == 3
  solid = examples.example_volume(build.synthetic_example(0, 0)[1]).astype(np.uint8) * 255

  def predict(crops):  # a different, face-shaped volume per crop
    return np.stack([np.roll(solid, int(c.mean()) % 9, axis=0) for c in crops])

  import concurrent.futures

  pool = inference.MeshPool(2)
  crop_pool = concurrent.futures.ThreadPoolExecutor(2)
  try:
    seconds, stats = inference.end_to_end(predict, photos, batch=2, batches=2, mesh_pool=pool,
                                          crop_pool=crop_pool)
  finally:
    pool.close()
    crop_pool.shutdown()
  assert seconds > 0 and len(stats) == 4
  _, expected = inference.serial(predict, photos, 4)
  assert stats == expected
  assert all(v > 1000 and f > 1000 for v, f in stats)
  assert pool.blocks == []  # every shared block was unlinked


def test_train_run_counts_steps_and_reports_what_it_measured():
  """benchmarks/train_run.py (the GPU issue-4 run) at the tiny config: every step runs, the rates come
  from the timed chunks after the first, the loss is finite and falls on a fixed batch. (Its command
  line is run_train.py's: absl flags, the config file and `--config.x=y` overrides, checked by
  `cli.exit_on_bad_config_overrides`.)"""
  import importlib

  from benchmarks import train_run
  from vrn_jax import cli

  with pytest.raises(SystemExit) as e:  # a misspelt override is refused before anything runs
    cli.exit_on_bad_config_overrides(["--config=configs/default.py:test", "--config.model.featurs=8"],
                                     train_run.DEFAULT_CONFIG)
  assert e.value.code == 2
  config = importlib.import_module("configs.default").get_config("test")
  config.loss_stride, config.optim.learning_rate = 2, 3e-3
  r = train_run.run(config, steps=5, batch=2, dtype="float32", chunk=2, distinct=2)
  assert "loss_stride 2" in r["model"]
  assert len(r["losses"]) == 3 and r["steps"] == 5  # chunks of 2, 2, 1
  assert all(np.isfinite(r["losses"])) and r["loss_last_chunk"] < r["loss_first_chunk"], r["losses"]
  assert 0 < r["examples_per_s_min"] <= r["examples_per_s_median"], r
  assert r["params"] > 0 and r["peak_bytes"] > 0 and r["compile_s"] > 0, r
  # XLA's flags decide GPU figures (autotuning level: BENCHMARKS.md), so each result records them.
  assert r["xla_flags"] == os.environ.get("XLA_FLAGS", ""), r["xla_flags"]
