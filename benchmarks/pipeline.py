"""Host input pipeline: examples/s and bytes per example sent to the device, compact targets against the
dense uint8 volumes a conventional pipeline would ship (decoded on the host, as the original training
did), on the same built split, in the same run."""

from __future__ import annotations

import itertools
import os
import time

import numpy as np

from benchmarks.common import Row


def _rate(batches, count: int, batch_size: int):
  next(batches)  # warm-up: thread pool, file handles
  t = time.perf_counter()
  nbytes = 0
  for batch in itertools.islice(batches, count):
    nbytes += sum(v.nbytes for v in batch.values())
  elapsed = time.perf_counter() - t
  return count * batch_size / elapsed, nbytes / (count * batch_size)


def run(quick: bool, device: str, data_dir: str | None = None) -> list[Row]:
  from vrn_jax.data import examples, pipeline

  data_dir = data_dir or os.environ.get("VRN_DATA_DIR", "~/tensorflow_datasets")
  source = pipeline.data_source(data_dir, "synthetic", "train")
  batch = 32
  count = 8 if quick else 40
  threads = os.cpu_count() or 2
  compact = pipeline.host_batches(source, batch_size=batch, num_devices=1, num_threads=threads)
  rate, per_example = _rate(compact, count, batch)

  class Dense:  # the baseline: the same examples, targets decoded to dense uint8 volumes on the host
    def __len__(self):
      return len(source)

    def __getitem__(self, i):
      e = source[i]
      return {"image": e["image"], "volume": examples.example_volume(e).astype(np.uint8),
              "landmarks": e["landmarks"]}

  dense = pipeline.host_batches(Dense(), batch_size=batch, num_devices=1, num_threads=threads,
                                fields=("image", "volume", "landmarks"))
  dense_rate, dense_bytes = _rate(dense, max(2, count // 4), batch)
  host = device.replace("(pinned to one core)", f"({threads} reader threads)")
  return [
      Row("host pipeline, compact targets", rate, "examples/s", batch, "uint8/f32", host,
          "dense uint8 targets", rate / dense_rate, "target >= 500 examples/s"),
      Row("  bytes per example to the device", per_example, "bytes", batch, "uint8/f32", host,
          "dense uint8 targets", dense_bytes / per_example, "ratio = dense / compact (target >= 20x)"),
      Row("host pipeline, dense uint8 targets (baseline)", dense_rate, "examples/s", batch, "uint8",
          host, note=f"{dense_bytes:.0f} bytes/example"),
  ]
