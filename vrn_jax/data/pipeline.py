"""The host input pipeline: read built `vrn_faces` examples, shuffle, repeat, shard per process, batch as
(local_devices, per_device_batch, ...), and prefetch to the devices.

Only compact targets travel: the crop (110 KB), the frontal depth map (147 KB), back plane, affine and
landmarks. Dense 7.4 MB volumes are never built on the host: the training step decodes them on the
accelerator after augmentation.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from typing import Iterator, Sequence

import numpy as np

from vrn_jax.errors import InputError

DATASET = "vrn_faces"
VERSION = "2.2.0"  # the built dataset version; the tfds builder takes its VERSION from here
# What a training/eval batch carries to the device (strings and host-only metadata stay behind).
DEVICE_FIELDS = ("image", "volume/depth", "volume/back", "volume/step", "volume/affine", "landmarks",
                 "yaw")


def dataset_dir(data_dir: str, config: str) -> str:
  return os.path.join(os.path.expanduser(data_dir), DATASET, config, VERSION)


def data_source(data_dir: str, config: str = "synthetic", split: str = "train") -> Sequence[dict]:
  """Random-access source of decoded examples of a built `vrn_faces/<config>` split (array_record)."""
  # TensorFlow (through tfds) loads only where a built dataset is read: the photo paths use dataset_dir.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  path = dataset_dir(data_dir, config)
  if not os.path.isfile(os.path.join(path, "dataset_info.json")):
    raise InputError(
        f"{path}: no built dataset. Build it with: tfds build vrn_jax/datasets/vrn_faces "
        f"--config={config} --data_dir={data_dir}")
  builder = tfds.builder_from_directory(path)
  if split not in builder.info.splits:
    raise InputError(f"{path}: no split {split!r}; it has {sorted(builder.info.splits)}.")
  return builder.as_data_source(split=split)


def flatten_example(example: dict, fields: Sequence[str] = DEVICE_FIELDS) -> dict:
  """Picks `fields` ('a/b' for nested) out of a decoded example, as NumPy arrays."""
  out = {}
  for field in fields:
    value = example
    for part in field.split("/"):
      value = value[part]
    out[field.replace("/", "_")] = np.asarray(value)
  return out


def pad_and_shard(arrays: dict, size: int, devices: int) -> dict:
  """{name: (n <= size, ...)} -> {name: (devices, size / devices, ...)}, the rows after n copies of the
  last one (a partial last batch runs in the compiled batch size; `unshard` drops the copies)."""
  out = {}
  for k, v in arrays.items():
    v = np.asarray(v)
    if len(v) < size:
      v = np.concatenate([v, np.repeat(v[-1:], size - len(v), axis=0)])
    out[k] = v.reshape(devices, size // devices, *v.shape[1:])
  return out


def unshard(x, n: int) -> np.ndarray:
  """(devices, per_device, ...) -> the first n rows of (devices * per_device, ...)."""
  x = np.asarray(x)
  return x.reshape(-1, *x.shape[2:])[:n]


def epoch_indices(num_examples: int, epoch: int, seed: int, shuffle: bool, process_index: int,
                  process_count: int) -> np.ndarray:
  """This process's share of one epoch: a seeded permutation (the same on every process), strided."""
  order = np.arange(num_examples)
  if shuffle:
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return order[process_index::process_count]


def host_batches(source: Sequence[dict], *, batch_size: int, num_devices: int, seed: int = 0,
                 shuffle: bool = True, repeat: bool = True, process_index: int = 0,
                 process_count: int = 1, num_threads: int = 2, drop_remainder: bool = True,
                 fields: Sequence[str] = DEVICE_FIELDS, start_batch: int = 0) -> Iterator[dict]:
  """Yields dicts of NumPy arrays shaped (num_devices, batch_size // num_devices, ...).

  The sequence is a pure function of (seed, batch index): `start_batch=s` yields exactly what the
  uninterrupted iterator yields from its s-th batch on (exact resume).

  Args:
    batch_size: examples per batch on this process (the global batch / process_count).
    num_devices: local devices; batch_size must be a multiple of it.
  """
  if batch_size % num_devices:
    raise InputError(f"batch size {batch_size} is not a multiple of {num_devices} local devices.")
  per_device = batch_size // num_devices
  n = len(source)
  pool = concurrent.futures.ThreadPoolExecutor(num_threads) if num_threads > 1 else None

  def read(i):
    return flatten_example(source[int(i)], fields)

  per_epoch = len(epoch_indices(n, 0, seed, False, process_index, process_count))
  batches_per_epoch = per_epoch // batch_size if drop_remainder else -(-per_epoch // batch_size)
  if batches_per_epoch == 0:
    raise InputError(f"{n} examples ({per_epoch} on this process) cannot fill one batch of {batch_size}.")
  try:
    epoch, skip = divmod(start_batch, batches_per_epoch)
    while True:
      idx = epoch_indices(n, epoch, seed, shuffle, process_index, process_count)
      stop = batches_per_epoch * batch_size
      for start in range(skip * batch_size, stop, batch_size):
        chunk = idx[start : start + batch_size]
        items = list(pool.map(read, chunk)) if pool else [read(i) for i in chunk]
        batch = {k: np.stack([it[k] for it in items]) for k in items[0]}
        if len(chunk) == batch_size:
          batch = {k: v.reshape(num_devices, per_device, *v.shape[1:]) for k, v in batch.items()}
        yield batch
      epoch += 1
      skip = 0
      if not repeat:
        return
  finally:
    if pool:
      pool.shutdown(wait=False, cancel_futures=True)


def background(iterator: Iterator, size: int = 2) -> Iterator:
  """Runs `iterator` in a thread, `size` items ahead, so host reading overlaps device compute."""
  q: queue.Queue = queue.Queue(maxsize=size)
  done = object()

  def fill():
    try:
      for item in iterator:
        q.put(item)
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)
      return
    q.put(done)

  threading.Thread(target=fill, daemon=True).start()
  while True:
    item = q.get()
    if item is done:
      return
    if isinstance(item, BaseException):
      raise item
    yield item


def device_batches(source: Sequence[dict], *, global_batch_size: int, seed: int = 0,
                   shuffle: bool = True, repeat: bool = True, prefetch: int = 2,
                   num_threads: int = 2, start_batch: int = 0) -> Iterator[dict]:
  """Batches placed on this process's devices, sharded on their leading axis (for pmap)."""
  # JAX only where batches go to devices: the dataset builder and the photo paths import this module.
  import jax  # pylint: disable=g-import-not-at-top
  from flax import jax_utils  # pylint: disable=g-import-not-at-top

  process_count = jax.process_count()
  if global_batch_size % process_count:
    raise InputError(f"global batch {global_batch_size} is not a multiple of {process_count} processes.")
  batches = host_batches(source, batch_size=global_batch_size // process_count,
                         num_devices=jax.local_device_count(), seed=seed, shuffle=shuffle,
                         repeat=repeat, process_index=jax.process_index(),
                         process_count=process_count, num_threads=num_threads,
                         start_batch=start_batch)
  return jax_utils.prefetch_to_device(background(batches, prefetch), prefetch)
