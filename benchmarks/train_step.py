"""Training-step throughput, ours against PyTorch on the same network, loss, optimiser, batch and device.

Sizes: 'paper' (configs/vrn.py: two standard hourglasses of 256 features, depth 4) and 'reduced'
(configs/default.py's hourglasses, 64 features, depth 4, with the paper's stem); both output the full
192x192x200 volume and take the loss on all of it. 'tiny' (configs/default.py:test, 8 features, depth 2)
is for the tests (`--tiny`).

Rows per size, in examples/s:
- ours, train_step: `vrn_jax.training.steps.train_step` under `jax.pmap` exactly as run_train.py runs it:
  augmentation and the dense targets are made on the device from compact examples. The batch stays on
  the device between steps (the host pipeline has its own rows in the 'pipeline' suite).
- ours, model step: forward + backward + RMSProp on ready images and dense targets, jitted: the same work
  as the PyTorch step.
- PyTorch eager float32 (`vrn_jax.interop.torch_reference.TrainStep`: per-voxel BCE-with-logits,
  torch.optim.RMSprop alpha 0.99, eps 1e-8): the baseline of every ratio. Then torch.compile, and bf16
  autocast. A variant a mode leaves out (`plans`) is a 'not measured' row with the reason.
MFU = model FLOPs per step / step time / the device's peak, measured in the same run with a large matmul
per dtype (`flops.peak_flops`). Model FLOPs (forward + backward) are counted analytically
(`flops.vrn_flops`) and by XLA's cost analysis of the model (`flops.xla_model_flops`); both are reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import sys

import numpy as np

from benchmarks import common, flops
from benchmarks.common import Measured, Row, try_variant

GFLOP = 1e9


# Variants besides our fp32 train_step and the PyTorch eager baseline, which every size measures.
VARIANTS = ("model_step", "ours_bf16", "torch_compile", "torch_bf16", "torch_compile_bf16")
COMPILE_ON_CPU = "torch.compile of this network takes minutes to build on a CPU (Inductor's C++)"


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one size is measured: `repeats` timed calls of `steps` steps each (best kept), after warm-up.

  skip: variant (of VARIANTS) -> why it is not measured here (printed as a 'not measured' row).
  """
  batch: int
  steps: int
  repeats: int
  warmup: int = 1
  skip: tuple[tuple[str, str], ...] = ()
  small_peak: bool = False  # a small matmul for the peak (smoke tests)
  # XLA's count of the model's FLOPs beside the analytic one: a separate compilation of the model
  # (seconds), left out of smoke tests (tests/test_benchmarks.py checks the count itself).
  xla_count: bool = True
  distinct: int = 4  # procedural faces made for the batch (cycled)

  def why_not(self, variant: str) -> str:
    return dict(self.skip).get(variant, "")


def plans(quick: bool, tiny: bool, accelerator: bool) -> dict[str, Plan | str]:
  """Size -> Plan, or the reason the size is not measured in this mode.

  The CPU full run of this suite takes ~6 minutes on 2 quiet cores: at the paper size batch 2 and the
  best of 3 timed calls of 2 steps (one call varied by +-15% between runs; best of 1 was too noisy to
  rank ours against PyTorch), torch.compile at the reduced size only.
  """
  if tiny:
    why = "--tiny"
    return {"tiny": Plan(batch=2, steps=1, repeats=1, small_peak=True, distinct=1, xla_count=False,
                         skip=tuple((v, why) for v in VARIANTS))}
  if accelerator:
    steps, repeats = (3, 2) if quick else (10, 3)
    return {"paper": Plan(32, steps, repeats, warmup=3), "reduced": Plan(32, steps, repeats, warmup=3)}
  no_gpu = ("torch_compile_bf16", "measured on a GPU only")
  if quick:
    return {"reduced": Plan(batch=2, steps=1, repeats=2, skip=(
                ("torch_compile", f"--quick: {COMPILE_ON_CPU}"), no_gpu)),
            "paper": "--quick skips the paper size on a CPU (a step takes seconds; run without --quick)"}
  return {"paper": Plan(batch=2, steps=2, repeats=3, skip=(
              ("torch_compile", f"{COMPILE_ON_CPU}; measured at the reduced size"), no_gpu,
              ("ours_bf16", "on a CPU at the reduced size only (another paper-size compilation)"))),
          "reduced": Plan(batch=8, steps=2, repeats=2, skip=(no_gpu,))}


def size_config(size: str):
  """The training config of a size ('paper' | 'reduced' | 'tiny')."""
  from vrn_jax.configs import default, vrn  # pylint: disable=g-import-not-at-top

  if size == "paper":
    return vrn.get_config()
  config = default.get_config("test" if size == "tiny" else None)
  # Side by side with PyTorch on the same network and loss: the default's width with the paper's stem,
  # hourglasses at 48x48 (depth 4 at the reduced size), the paper's head (logits upsampled x4, what the
  # PyTorch twin builds) and the loss on every voxel, no weight average (the CPU default trains with the
  # patchify stem, hourglasses at 24x24, a feature-upsampling head, loss_stride 4, weighted loss terms
  # and an average; its own training speed is the main job's, in the README).
  config.model.stem, config.model.body_stride, config.loss_stride, config.ema_decay = "conv7x7", 1, 1, 0.0
  config.model.head_upsample = "logits"
  config.thin_column_weight = config.relief_weight = 1.0  # the paper's loss, as the PyTorch step's
  config.iou_loss_weight = 0.0
  if size == "reduced":
    config.model.depth = 4
  return config


def describe(config) -> str:
  m = config.model
  return f"{m.topology} VRN, {m.num_hourglasses} HG x {m.features} features, depth {m.depth}"


# ---------------------------------------------------------------------------------------- inputs


def example_batch(batch: int, num_devices: int, distinct: int = 4) -> dict:
  """A training batch of compact examples, (num_devices, batch / num_devices, ...) NumPy arrays.

  `distinct` procedural faces (vrn_jax.data.build.synthetic_example, the synthetic set's recipe) are
  cycled; augmentation makes every example of a step different anyway.
  """
  from vrn_jax.data import build, pipeline  # pylint: disable=g-import-not-at-top

  faces = [build.synthetic_example(0, i)[1] for i in range(min(batch, distinct))]

  class Cycle:
    def __len__(self):
      return batch

    def __getitem__(self, i):
      return faces[i % len(faces)]

  return next(pipeline.host_batches(Cycle(), batch_size=batch, num_devices=num_devices, shuffle=False,
                                    num_threads=1))


def dense_inputs(host_batch: dict) -> tuple[np.ndarray, np.ndarray]:
  """(images (B, 192, 192, 3) float32, targets (B, 192, 192, 200) bool) of a batch, unaugmented, made by
  the training code's own target decoder (`augment.augment_example`)."""
  import jax  # pylint: disable=g-import-not-at-top

  from vrn_jax.data import augment  # pylint: disable=g-import-not-at-top

  flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in host_batch.items()}
  keys = jax.random.split(jax.random.key(0), flat["image"].shape[0])
  fn = jax.jit(jax.vmap(lambda k, e: augment.augment_example(k, e, None, train=False)[:2]))
  images, targets = fn(keys, flat)
  return np.asarray(images), np.asarray(targets)


# ------------------------------------------------------------------------------------------- ours


def ours_train_step(config, plan: Plan, host_batch: dict, dtype: str) -> Measured:
  """`steps.train_step` under pmap, as `loop.train_and_evaluate` builds it."""
  import functools  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  from flax import jax_utils  # pylint: disable=g-import-not-at-top

  from vrn_jax.training import loop, optimizers, steps  # pylint: disable=g-import-not-at-top

  config = config.copy_and_resolve_references()
  config.model.dtype = dtype
  config.global_batch_size = plan.batch
  schedule = optimizers.learning_rate_schedule(config, steps_per_epoch=1000)
  tx = optimizers.create_optimizer(config, schedule)
  state = loop.replicate(steps.create_train_state(config, jax.random.key(0), tx))
  rngs = loop.replicate(jax.random.key(1))
  batch = next(jax_utils.prefetch_to_device(iter([host_batch]), 1))
  p_step = jax.pmap(functools.partial(steps.train_step, config, steps.create_model(config), schedule),
                    axis_name=steps.AXIS, donate_argnums=(0,))
  return _time_steps(p_step, state, (batch, rngs), plan.batch, plan)


def ours_model_step(config, plan: Plan, images: np.ndarray, targets: np.ndarray) -> Measured:
  """Forward (train-mode BatchNorm) + volume loss + backward + RMSProp, jitted, on one device: the
  train step without augmentation and target decoding, its loss computed by the training code's own
  `steps.loss_and_outputs`."""
  import jax  # pylint: disable=g-import-not-at-top

  from vrn_jax.training import optimizers, steps  # pylint: disable=g-import-not-at-top

  schedule = optimizers.learning_rate_schedule(config, steps_per_epoch=1000)
  state = steps.create_train_state(config, jax.random.key(0), optimizers.create_optimizer(config, schedule))
  model = steps.create_model(config, axis_name=None)

  def step(state, images, targets):
    def loss_fn(params):
      variables = {"params": params, "batch_stats": state.batch_stats}
      loss, (_, _, new) = steps.loss_and_outputs(config, model, variables, images, targets, None, train=True)
      return loss, new

    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads, batch_stats=new["batch_stats"]), loss

  images, targets = jax.device_put(images), jax.device_put(targets)
  return _time_steps(jax.jit(step, donate_argnums=(0,)), state, (images, targets), images.shape[0], plan)


def _time_steps(step, state, args: tuple, examples: int, plan: Plan) -> Measured:
  """Compiles `step(state, *args) -> (state, out)` (jit or pmap, state donated), then times calls of
  `plan.steps` chained steps; examples/s from `examples` per step, first_s = compile + first call."""
  import time  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  t = time.perf_counter()
  compiled = step.lower(state, *args).compile()
  compile_s = time.perf_counter() - t
  holder = [state]

  def steps():
    out = None
    for _ in range(plan.steps):
      holder[0], out = compiled(holder[0], *args)
    return out

  first, best = common.timed(steps, jax.block_until_ready, plan.repeats, plan.warmup)
  return Measured(examples * plan.steps / best, compile_s + first)


# ---------------------------------------------------------------------------------------- PyTorch


def torch_step(config, plan: Plan, images: np.ndarray, targets: np.ndarray, compile: bool,  # pylint: disable=redefined-builtin
               bf16: bool) -> Measured:
  """`torch_reference.TrainStep` on the PyTorch twin of `config.model`, optionally compiled / autocast."""
  torch, device, _ = common.torch_setup()
  from vrn_jax.interop import torch_reference  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  net = torch_reference.build_torch_vrn(config.model).to(device)
  step = torch_reference.TrainStep(net, learning_rate=config.optim.learning_rate,
                                   alpha=config.optim.rmsprop_decay, eps=config.optim.eps,
                                   compile=compile)
  x = torch_reference.to_torch_images(images).to(device)
  y = torch_reference.to_torch_volume(targets).to(device)
  autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

  def steps():
    loss = None
    with autocast():
      for _ in range(plan.steps):
        loss = step(x, y)
    return loss

  sync = (lambda r: torch.cuda.synchronize()) if device.type == "cuda" else (lambda r: r.item())
  try:
    first, best = common.timed(steps, sync, plan.repeats, plan.warmup)
    if not np.isfinite(float(steps().item())):
      return Measured(None, why="the loss is not finite")
  finally:
    del step, net, x, y
    gc.collect()
    if device.type == "cuda":
      torch.cuda.empty_cache()
  return Measured(images.shape[0] * plan.steps / best, first)




# ------------------------------------------------------------------------------------------- rows


def _mfu(rate: float | None, flops_per_example: float | None, peak: float) -> float | None:
  if rate is None or flops_per_example is None:
    return None
  return 100.0 * rate * flops_per_example / peak


def size_rows(size: str, plan: Plan, device: str, torch_device: str | None, accelerator: bool) -> list[Row]:
  import jax  # pylint: disable=g-import-not-at-top

  config = size_config(size)
  m = config.model
  count = flops.vrn_flops(features=m.features, num_hourglasses=m.num_hourglasses, depth=m.depth,
                          topology=m.topology, volume_depth=m.volume_depth)
  exact = flops.vrn_flops(exact_borders=True, features=m.features, num_hourglasses=m.num_hourglasses,
                          depth=m.depth, topology=m.topology, volume_depth=m.volume_depth)
  bf16 = not all(plan.why_not(v) for v in ("ours_bf16", "torch_bf16", "torch_compile_bf16"))
  peak = {d: flops.peak_flops(d, accelerator, plan.small_peak)
          for d in (("float32", "bfloat16") if bf16 else ("float32",))}
  b = plan.batch - plan.batch % jax.local_device_count()
  plan = dataclasses.replace(plan, batch=b)
  host_batch = example_batch(b, jax.local_device_count(), plan.distinct)
  images, targets = dense_inputs(host_batch)
  what = f"{size} ({describe(config)})"

  torch_ok = torch_device is not None
  no_torch = Measured(None, why="PyTorch sees no CUDA device here (a CPU-only torch build)")
  baseline = (torch_step(config, plan, images, targets, compile=False, bf16=False) if torch_ok
              else no_torch)
  base_name = "PyTorch eager fp32"
  ours_fp32 = ours_train_step(config, plan, host_batch, "float32")
  # (variant or None, name, dtype, is ours, measure, has an MFU row)
  variants = [
      (None, "ours, train_step (pmap, on-device aug + targets)", "float32", True, lambda: ours_fp32, True),
      ("model_step", "ours, model step (jit fwd+bwd+RMSProp)", "float32", True,
       lambda: ours_model_step(config, plan, images, targets), False),
      ("ours_bf16", "ours, train_step, bf16 compute", "bfloat16", True,
       lambda: try_variant(ours_train_step, config, plan, host_batch, "bfloat16"), True),
      (None, "PyTorch eager (baseline)", "float32", False, lambda: baseline, False),
      ("torch_compile", "PyTorch torch.compile", "float32", False,
       lambda: try_variant(torch_step, config, plan, images, targets, compile=True, bf16=False), False),
      ("torch_bf16", "PyTorch eager, bf16 autocast", "bfloat16", False,
       lambda: try_variant(torch_step, config, plan, images, targets, compile=False, bf16=True), False),
      ("torch_compile_bf16", "PyTorch torch.compile, bf16 autocast", "bfloat16", False,
       lambda: try_variant(torch_step, config, plan, images, targets, compile=True, bf16=True), False),
  ]
  measured = []
  for variant, name, dtype, ours, measure, mfu_row in variants:
    dev = device if ours else (torch_device or device)
    why = plan.why_not(variant) if variant else ""
    if why:
      result = Measured(None, why=why)
    elif not ours and not torch_ok:
      result = no_torch
    else:
      result = measure()
    # As each is measured: a run stopped at a time limit (a lent GPU's) still leaves what it measured.
    print(f"# {what}: {name}, {dtype}: " + (f"{result.rate:.4g} examples/s" if result.rate is not None
                                           else f"not measured ({result.why})"), file=sys.stderr, flush=True)
    measured.append((name, dtype, dev, result, mfu_row))

  xla = (flops.xla_model_flops(True, features=m.features, num_hourglasses=m.num_hourglasses,
                               depth=m.depth, topology=m.topology, volume_depth=m.volume_depth)
         if plan.xla_count else None)
  rows = [Row(f"train FLOPs/example, {size}: analytic", count.train / GFLOP, "GFLOP", 1, "", device,
              "XLA cost analysis", None if xla is None else count.train / xla,
              f"forward + backward; forward {count.forward / GFLOP:.3g} GFLOP, {count.params:,} params; "
              f"analytic with exact borders {exact.train / GFLOP:.4g}; XLA "
              + ("n/a" if xla is None else f"{xla / GFLOP:.4g}")
              + " (model with the plain loss, batch 1)")]
  for name, dtype, dev, r, mfu_row in measured:
    label = f"train step, {what}: {name}"
    if r.rate is None:
      rows.append(common.not_measured(label, "examples/s", plan.batch, dtype, dev, r.why, base_name))
      continue
    mfu_a = _mfu(r.rate, count.train, peak[dtype])
    mfu_x = _mfu(r.rate, xla, peak[dtype])
    note = (f"{plan.steps} steps/call, best of {plan.repeats}; first call {r.first_s:.1f} s; "
            f"MFU {mfu_a:.1f}% (analytic)" + ("" if mfu_x is None else f", {mfu_x:.1f}% (XLA count)"))
    ratio = None if baseline.rate is None else r.rate / baseline.rate
    rows.append(Row(label, r.rate, "examples/s", plan.batch, dtype, dev, base_name, ratio, note))
    if mfu_row:
      rows.append(Row(f"  MFU, {name}", mfu_a, "% of peak", plan.batch, dtype, dev,
                      note=f"analytic model FLOPs / step time / peak {peak[dtype] / 1e12:.3g} TFLOP/s "
                      f"({dtype} matmul, this run)"))
  return rows


def peak_rows(accelerator: bool, device: str, dtypes=("float32", "bfloat16"),
              small: bool = False) -> list[Row]:
  rows = []
  for dtype in dtypes:
    p = flops.measured_peak(dtype, accelerator, small)
    parts = [f"jnp.dot {p['jax'] / 1e12:.3g}"]
    parts.append(f"torch.matmul {p['torch'] / 1e12:.3g}" if "torch" in p else
                 f"torch: {p.get('torch_error', 'n/a')}")
    rows.append(Row(f"peak matmul {p['n']}x{p['n']}", flops.peak_flops(dtype, accelerator, small) / 1e12,
                    "TFLOP/s", 1, dtype, device, note=f"best of: {', '.join(parts)} TFLOP/s"))
  return rows


def gpu_placeholders(why: str) -> list[Row]:
  """The accelerator rows of the issue (named as a GPU run names them), not measured without one."""
  gpu = "GPU: H200 (not in this run)"
  what = f"train step, paper ({describe(size_config('paper'))})"
  rows = []
  for dtype, name in (("float32", "ours, train_step (pmap, on-device aug + targets)"),
                      ("bfloat16", "ours, train_step, bf16 compute")):
    rows.append(common.not_measured(f"{what}: {name}", "examples/s", 32, dtype, gpu, why,
                                    "PyTorch eager fp32"))
    rows.append(common.not_measured(f"  MFU, {name}", "% of peak", 32, dtype, gpu, why))
  for name, dtype in (("PyTorch eager (baseline)", "float32"), ("PyTorch torch.compile", "float32"),
                      ("PyTorch eager, bf16 autocast", "bfloat16"),
                      ("PyTorch torch.compile, bf16 autocast", "bfloat16")):
    rows.append(common.not_measured(f"{what}: {name}", "examples/s", 32, dtype, gpu, why))
  return rows


def run(quick: bool, device: str, tiny: bool = False) -> list[Row]:
  accelerator, jax_device, torch_device = common.run_devices(device)
  selected = plans(quick, tiny, accelerator)
  bf16 = any(isinstance(p, Plan) and not all(p.why_not(v) for v in VARIANTS if "bf16" in v)
             for p in selected.values())
  rows = peak_rows(accelerator, jax_device, ("float32", "bfloat16") if bf16 else ("float32",),
                   small=tiny)
  for size, plan in selected.items():
    if isinstance(plan, str):
      rows.append(common.not_measured(f"train step, {size} ({describe(size_config(size))})",
                                      "examples/s", 0, "", jax_device, plan))
      continue
    rows += size_rows(size, plan, jax_device, torch_device, accelerator)
  if not accelerator and not tiny:
    rows += gpu_placeholders("no accelerator in this run; the same command measures these on a GPU")
  return rows
