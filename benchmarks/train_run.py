"""A training run at a config's full size on synthetic data: examples/s over hundreds of steps, peak memory.

`python benchmarks/train_run.py [--config=configs/vrn.py[:ARG]] [--steps=300] [--batch=32]
[--dtype=float32|bfloat16] [--config.model.depth=3 ...] [--json=OUT.json]`

The config file and its `--config.x=y` overrides are read as `run_train.py` reads them (absl flags,
ml_collections; a misspelt field is refused with the closest names).

What runs is `vrn_jax.training.steps.train_step` under `jax.pmap` over every local device, exactly as
`run_train.py` runs it: augmentation, the 192x192x200 targets (and heatmaps) made on the device from
compact examples, the model, the loss, the cross-replica means and RMSProp. The compact batch is made
once from `--distinct` procedural faces (the synthetic set's recipe) and stays on the device; the
augmentation makes every step's examples new. The host input pipeline is left out (it has its own rows in
BENCHMARKS.md). The steps run in chunks of `--chunk`, each ended by waiting for the device; examples/s
is reported per chunk (median, and the slowest) after the first chunk, and over all of them.

Peak memory: the accelerator allocator's peak bytes in use (`Device.memory_stats()`); on a CPU, which has
no such statistics, the process's peak resident set. One config per process, so that the peak is that
config's alone.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULT_CONFIG = "configs/vrn.py"
FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line (defined only when run as a script: importing `run` defines no flags)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Training config file.", lock_config=True)
  flags.DEFINE_integer("steps", 300, "Training steps.", lower_bound=1)
  flags.DEFINE_integer("batch", 32, "Global batch (a multiple of the local devices).", lower_bound=1)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (parameters stay float32).")
  flags.DEFINE_integer("chunk", 50, "Steps between waits for the device.", lower_bound=1)
  flags.DEFINE_integer("distinct", 16, "Procedural faces in the batch (cycled).", lower_bound=1)
  flags.DEFINE_string("json", None, "Append the result as one JSON line here.")


def peak_memory() -> tuple[float, str]:
  """(peak bytes, what was read)."""
  import jax  # pylint: disable=g-import-not-at-top

  stats = jax.local_devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    limit = stats.get("bytes_limit")
    what = "device allocator peak bytes in use, first device"
    return float(stats["peak_bytes_in_use"]), what + (f" (limit {limit / 2**30:.1f} GiB)" if limit else "")
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0, "process peak RSS (CPU)"


def progress(message: str) -> None:
  """A timestamped line on stderr as each phase ends: a run stopped at a time limit says how far it got."""
  print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(config, steps: int, batch: int, dtype: str, chunk: int, distinct: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import jax_utils  # pylint: disable=g-import-not-at-top

  from benchmarks import train_step as bench  # pylint: disable=g-import-not-at-top
  from vrn_jax import models  # pylint: disable=g-import-not-at-top
  from vrn_jax.training import loop, optimizers  # pylint: disable=g-import-not-at-top
  from vrn_jax.training import steps as train_steps  # pylint: disable=g-import-not-at-top

  config = config.copy_and_resolve_references()
  n = jax.local_device_count()
  if batch % n:
    raise SystemExit(f"--batch={batch}: not a multiple of the {n} local devices.")
  config.global_batch_size, config.model.dtype = batch, dtype
  t = time.perf_counter()
  host_batch = bench.example_batch(batch, n, distinct)
  data_s = time.perf_counter() - t
  schedule = optimizers.learning_rate_schedule(config, steps_per_epoch=1000)
  tx = optimizers.create_optimizer(config, schedule)
  state = train_steps.create_train_state(config, jax.random.key(0), tx)
  params = models.count_parameters(state.params)
  state = loop.replicate(state)
  rngs = loop.replicate(jax.random.key(1))
  device_batch = next(jax_utils.prefetch_to_device(iter([host_batch]), 1))
  p_step = jax.pmap(functools.partial(train_steps.train_step, config, train_steps.create_model(config), schedule),
                    axis_name=train_steps.AXIS, donate_argnums=(0,))
  t = time.perf_counter()
  lowered = p_step.lower(state, device_batch, rngs)
  lower_s = time.perf_counter() - t
  progress(f"batch of {distinct} faces made in {data_s:.1f} s; step traced and lowered in {lower_s:.1f} s")
  t = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  progress(f"compiled in {compile_s:.1f} s")

  chunk_s, losses, done = [], [], 0
  t_all = time.perf_counter()
  while done < steps:
    k = min(chunk, steps - done)
    t = time.perf_counter()
    for _ in range(k):
      state, metrics = compiled(state, device_batch, rngs)
    loss = float(np.asarray(metrics["loss"])[0])  # waits for the chunk's last step
    chunk_s.append((k, time.perf_counter() - t))
    losses.append(loss)
    done += k
    progress(f"step {done}: loss {loss:.4f}, {k * batch / chunk_s[-1][1]:.1f} examples/s")
    if not np.isfinite(loss):
      raise SystemExit(f"step {done}: the loss is {loss}")
  total_s = time.perf_counter() - t_all
  rates = [k * batch / s for k, s in chunk_s[1:]] or [chunk_s[0][0] * batch / chunk_s[0][1]]
  peak, peak_what = peak_memory()
  m = config.model
  return {
      "date": datetime.date.today().isoformat(),
      "device": f"{jax.devices()[0].device_kind} x {n} ({jax.devices()[0].platform}, JAX {jax.__version__})",
      "model": f"{m.variant}, {m.topology} topology, {m.num_hourglasses} HG x {m.features}, depth {m.depth}, "
               f"stem {m.stem}, body_stride {m.body_stride}, loss_stride {train_steps.loss_stride(config)}",
      "params": params, "batch": batch, "dtype": dtype, "steps": steps, "chunk": chunk,
      "distinct_faces": distinct, "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "examples_per_s_median": statistics.median(rates), "examples_per_s_min": min(rates),
      "examples_per_s_all": steps * batch / total_s, "step_ms_median": 1000.0 * batch / statistics.median(rates),
      "compile_s": compile_s, "lower_s": lower_s, "data_s": data_s, "peak_bytes": peak, "peak_what": peak_what,
      "loss_first_chunk": losses[0], "loss_last_chunk": losses[-1],
      "losses": losses,
  }


def main(argv) -> None:
  del argv
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  r = run(FLAGS.config, FLAGS.steps, FLAGS.batch, FLAGS.dtype, FLAGS.chunk, FLAGS.distinct)
  spec = config_flags.get_config_filename(FLAGS["config"])  # the file and its :ARG, as given
  r["config"], r["overrides"] = spec, [a for a in sys.argv if a.startswith("--config.")]
  print(f"{spec} {r['model']}, {r['params']:,} params | {r['device']} | XLA_FLAGS='{r['xla_flags']}' | "
        f"batch {r['batch']} {r['dtype']} | {r['steps']} steps: {r['examples_per_s_median']:.1f} examples/s "
        f"median per {r['chunk']}-step chunk (slowest {r['examples_per_s_min']:.1f}; all steps "
        f"{r['examples_per_s_all']:.1f}), {r['step_ms_median']:.1f} ms/step | compile {r['compile_s']:.1f} s "
        f"| peak {r['peak_bytes'] / 2**30:.2f} GiB ({r['peak_what']}) | loss {r['loss_first_chunk']:.4f} -> "
        f"{r['loss_last_chunk']:.4f}", flush=True)
  if FLAGS.json:
    with open(FLAGS.json, "a", encoding="utf-8") as f:
      f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  from vrn_jax import host_memory

  host_memory.keep_freed_memory()  # as run_train.py trains (before NumPy and JAX start their threads)
  from absl import app

  from vrn_jax import cli

  cli.exit_on_bad_config_overrides(sys.argv[1:], DEFAULT_CONFIG)
  define_flags()
  app.run(main)
