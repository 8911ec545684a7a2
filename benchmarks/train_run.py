"""A training run at a config's full size on synthetic data: examples/s over hundreds of steps, peak memory.

`python benchmarks/train_run.py --config=configs/vrn.py[:ARG] [--steps=300] [--batch=32]
[--dtype=float32|bfloat16] [--set=model.depth=3 ...] [--json=OUT.json]`

What runs is `vrn_jax.train.train_step` under `jax.pmap` over every local device, exactly as
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

import argparse
import ast
import datetime
import functools
import importlib
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(spec: str):
  """`configs/NAME.py[:ARG]` -> that file's get_config(ARG) (the files of configs/ only)."""
  path, _, arg = spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if os.path.dirname(os.path.normpath(path)) != "configs" or not os.path.isfile(path):
    raise SystemExit(f"--config={spec}: expected configs/NAME.py[:ARG], one of the files in configs/.")
  return importlib.import_module(f"configs.{name}").get_config(arg or None)


def apply_overrides(config, items):
  """`KEY=VALUE` strings (a dotted field of the config; the value a Python literal, else a string)."""
  for item in items:
    key, sep, value = item.partition("=")
    *path, name = key.split(".")
    try:
      parent = functools.reduce(getattr, path, config)
      current = getattr(parent, name)
    except AttributeError:
      raise SystemExit(f"--set={item}: the config has no field {key!r}.") from None
    if not sep:
      raise SystemExit(f"--set={item}: expected KEY=VALUE (now {current!r}).")
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # a string
    setattr(parent, name, value)
  return config


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
  from vrn_jax import train  # pylint: disable=g-import-not-at-top

  config = config.copy_and_resolve_references()
  n = jax.local_device_count()
  if batch % n:
    raise SystemExit(f"--batch={batch}: not a multiple of the {n} local devices.")
  config.global_batch_size, config.model.dtype = batch, dtype
  t = time.perf_counter()
  host_batch = bench.example_batch(batch, n, distinct)
  data_s = time.perf_counter() - t
  schedule = train.learning_rate_schedule(config, steps_per_epoch=1000)
  tx = train.create_optimizer(config, schedule)
  state = train.replicate(train.create_train_state(config, jax.random.key(0), tx))
  params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params)) // n
  rngs = train.replicate(jax.random.key(1))
  device_batch = next(jax_utils.prefetch_to_device(iter([host_batch]), 1))
  p_step = jax.pmap(functools.partial(train.train_step, config, train.create_model(config), schedule),
                    axis_name=train.AXIS, donate_argnums=(0,))
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
               f"stem {m.stem}, body_stride {m.body_stride}, loss_stride {train.loss_stride(config)}",
      "params": params, "batch": batch, "dtype": dtype, "steps": steps, "chunk": chunk,
      "distinct_faces": distinct,
      "examples_per_s_median": statistics.median(rates), "examples_per_s_min": min(rates),
      "examples_per_s_all": steps * batch / total_s, "step_ms_median": 1000.0 * batch / statistics.median(rates),
      "compile_s": compile_s, "lower_s": lower_s, "data_s": data_s, "peak_bytes": peak, "peak_what": peak_what,
      "loss_first_chunk": losses[0], "loss_last_chunk": losses[-1],
      "losses": losses,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/vrn.py")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--chunk", type=int, default=50, help="steps between waits for the device")
  parser.add_argument("--distinct", type=int, default=16, help="procedural faces in the batch (cycled)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config field (a Python literal, else a string), e.g. loss_stride=8")
  parser.add_argument("--json", help="append the result as one JSON line here")
  args = parser.parse_args()
  if args.steps < 1 or args.chunk < 1:
    raise SystemExit("--steps and --chunk: expected positive integers.")
  from vrn_jax import host_memory  # pylint: disable=g-import-not-at-top

  host_memory.keep_freed_memory()  # as run_train.py trains (before JAX starts its threads)
  config = apply_overrides(load_config(args.config), args.set)
  r = run(config, args.steps, args.batch, args.dtype, args.chunk, args.distinct)
  r["config"], r["overrides"] = args.config, args.set
  print(f"{args.config} {r['model']}, {r['params']:,} params | {r['device']} | batch {r['batch']} "
        f"{r['dtype']} | {r['steps']} steps: {r['examples_per_s_median']:.1f} examples/s median per "
        f"{r['chunk']}-step chunk (slowest {r['examples_per_s_min']:.1f}; all steps "
        f"{r['examples_per_s_all']:.1f}), {r['step_ms_median']:.1f} ms/step | compile {r['compile_s']:.1f} s "
        f"| peak {r['peak_bytes'] / 2**30:.2f} GiB ({r['peak_what']}) | loss {r['loss_first_chunk']:.4f} -> "
        f"{r['loss_last_chunk']:.4f}", flush=True)
  if args.json:
    with open(args.json, "a", encoding="utf-8") as f:
      f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main()
