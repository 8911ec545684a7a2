"""Analytic FLOP count of VRN (forward and training step), layer by layer, and XLA's own count.

The count is written from the architecture (DESIGN.md section 1), not from the Flax code, so that it
checks XLA's cost analysis independently. Conventions:

- A convolution costs 2 * H_out * W_out * C_in * C_out * k * k FLOPs (a multiply-add is 2) plus one add per
  output for the bias. With `exact_borders=True` only the kernel taps that fall inside the input count
  (what XLA's cost analysis counts); the nominal count also multiplies the zero padding (what an im2col
  GEMM executes). At 48x48 the two differ by 3% for a 3x3 conv; at the 3x3 bottom of a depth-4
  hourglass by 40%.
- Elementwise layers cost a fixed number of FLOPs per output element (constants below): a ReLU or a sum
  is 1; BatchNorm is 4 in eval mode ((x - mean) * rsqrt(var + eps) * scale + bias) and 7 in training
  (plus sum x and sum x^2 for the statistics); a 2x2 max pool is 3 compares per output; the separable
  bilinear x4 upsample 3 per output per axis (2 taps); the per-voxel loss 6 (max, mul, sub, abs, add,
  mean; exp and log1p are transcendentals, not FLOPs); the sigmoid of an inference output 3.
- Training (forward + backward): a convolution's backward is two convolutions of the forward's size (the
  gradient with respect to its input and to its weights), so 3x forward, except the stem's first conv,
  whose input (the image) needs no gradient. Elementwise layers are counted 3x their forward too, an
  estimate (XLA's BatchNorm backward costs more): it puts the count 2-3% under XLA's on a small model
  and 0.3% at the paper's size, where elementwise layers are ~1% of the work. The optimiser adds ~6
  FLOPs per parameter (RMSProp).

MFU uses the model FLOPs of the training step (forward + backward, no augmentation, no optimiser).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

BN_FLOPS = {False: 4, True: 7}  # per element: eval / train mode
RELU_FLOPS = 1
ADD_FLOPS = 1
MAXPOOL_FLOPS = 3  # 4 inputs per output, 3 compares
UPSAMPLE_FLOPS_PER_AXIS = 3  # 2 taps: 2 multiplies, 1 add
LOSS_FLOPS = 6
SIGMOID_FLOPS = 3  # 1 / (1 + exp(-x)): negate, add, divide (exp is a transcendental)
RMSPROP_FLOPS_PER_PARAM = 6  # m = a m + (1 - a) g^2 (4), x -= lr g / (sqrt(m) + eps) (~2 + sqrt, div)
BACKWARD_FACTOR = 2  # backward / forward, per layer


@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer's forward cost at batch 1. `first` marks the conv on the image (no input gradient)."""
  name: str
  kind: str  # 'conv' | 'elementwise'
  flops: float
  params: int = 0
  first: bool = False


def _valid_taps(size_in: int, size_out: int, k: int, stride: int, pad: int) -> int:
  """Sum over output positions of the kernel taps that land inside the input (one axis)."""
  total = 0
  for o in range(size_out):
    start = o * stride - pad
    total += sum(1 for t in range(k) if 0 <= start + t < size_in)
  return total


class Counter:
  """Collects the layers of one forward pass at batch 1."""

  def __init__(self, train: bool, exact_borders: bool):
    self.train = train
    self.exact_borders = exact_borders
    self.layers: list[Layer] = []

  def conv(self, name: str, hw: int, cin: int, cout: int, k: int = 1, stride: int = 1,
           first: bool = False) -> int:
    """A square k x k conv with 'same'-style padding (k // 2) on an hw x hw input; returns hw_out."""
    pad = k // 2
    out = (hw + 2 * pad - k) // stride + 1
    taps = (_valid_taps(hw, out, k, stride, pad) ** 2 if self.exact_borders else out * out * k * k)
    flops = 2.0 * taps * cin * cout + out * out * cout
    self.layers.append(Layer(name, "conv", flops, k * k * cin * cout + cout, first))
    return out

  def elementwise(self, name: str, elements: float, per_element: float, params: int = 0) -> None:
    self.layers.append(Layer(name, "elementwise", float(elements) * per_element, params))

  def bn_relu(self, name: str, hw: int, c: int) -> None:
    self.elementwise(f"{name}/bn", hw * hw * c, BN_FLOPS[self.train], 2 * c)
    self.elementwise(f"{name}/relu", hw * hw * c, RELU_FLOPS)

  def residual(self, name: str, hw: int, cin: int, f: int) -> None:
    """Pre-activation bottleneck: BN-ReLU-conv1x1(f/2)-BN-ReLU-conv3x3-BN-ReLU-conv1x1(f) + skip."""
    half = f // 2
    self.bn_relu(f"{name}/1", hw, cin)
    self.conv(f"{name}/conv1", hw, cin, half, 1)
    self.bn_relu(f"{name}/2", hw, half)
    self.conv(f"{name}/conv2", hw, half, half, 3)
    self.bn_relu(f"{name}/3", hw, half)
    self.conv(f"{name}/conv3", hw, half, f, 1)
    if cin != f:
      self.conv(f"{name}/skip", hw, cin, f, 1)
    self.elementwise(f"{name}/add", hw * hw * f, ADD_FLOPS)

  def level_sum(self, name: str, hw: int, f: int) -> None:
    # upper + nearest-upsample(lower): the upsample is a copy, the sum one add.
    self.elementwise(f"{name}/sum", hw * hw * f, ADD_FLOPS)

  def standard_level(self, name: str, depth: int, hw: int, f: int) -> None:
    """Newell's level(n): Res(x) + up(Res(level(n-1) or Res)(Res(pool(x))))."""
    self.residual(f"{name}/upper", hw, f, f)
    self.elementwise(f"{name}/pool", (hw // 2) ** 2 * f, MAXPOOL_FLOPS)
    low = hw // 2
    self.residual(f"{name}/lower_in", low, f, f)
    if depth > 1:
      self.standard_level(f"{name}/inner", depth - 1, low, f)
    else:
      self.residual(f"{name}/inner", low, f, f)
    self.residual(f"{name}/lower_out", low, f, f)
    self.level_sum(name, hw, f)

  def release_level(self, name: str, depth: int, hw: int, f: int) -> None:
    """The release's level(n): [3 Res, level(n-1), Res] + up([pool, 6 Res (9 at n = 1)])."""
    for j in range(3):
      self.residual(f"{name}/upper_{j}", hw, f, f)
    if depth > 1:
      self.release_level(f"{name}/inner", depth - 1, hw, f)
      self.residual(f"{name}/inner_res", hw, f, f)
    self.elementwise(f"{name}/pool", (hw // 2) ** 2 * f, MAXPOOL_FLOPS)
    for j in range(6 if depth > 1 else 9):
      self.residual(f"{name}/lower_{j}", hw // 2, f, f)
    self.level_sum(name, hw, f)


def vrn_layers(features: int = 256, num_hourglasses: int = 2, depth: int = 4, topology: str = "standard",
               volume_depth: int = 200, image_size: int = 192, in_channels: int = 3,
               train: bool = False, exact_borders: bool = False, loss: bool = False,
               sigmoid: bool = False) -> list[Layer]:
  """VRN's layers for one image (DESIGN.md section 1): stem, `num_hourglasses` x (x + HG(x)), head.

  Args:
    train: BatchNorm with batch statistics (its forward costs more).
    loss: append the per-voxel sigmoid cross-entropy on the (image_size^2 x volume_depth) output.
    sigmoid: append the output sigmoid (inference).
  """
  c = Counter(train, exact_borders)
  f = features
  hw = c.conv("stem/conv7x7", image_size, in_channels, f // 4, 7, 2, first=True)
  c.bn_relu("stem", hw, f // 4)
  c.residual("stem/res_0", hw, f // 4, f // 2)
  c.elementwise("stem/pool", (hw // 2) ** 2 * (f // 2), MAXPOOL_FLOPS)
  hw //= 2
  c.residual("stem/res_1", hw, f // 2, f // 2)
  c.residual("stem/res_2", hw, f // 2, f)
  level = {"standard": c.standard_level, "release": c.release_level}[topology]
  for i in range(num_hourglasses):
    name = f"hourglass_{i}"
    level(f"{name}/level", depth, hw, f)
    c.residual(f"{name}/res", hw, f, f)
    for post in ("post_a", "post_b"):
      c.conv(f"{name}/{post}", hw, f, f, 1)
      c.bn_relu(f"{name}/{post}", hw, f)
    c.elementwise(f"{name}/skip_add", hw * hw * f, ADD_FLOPS)
  c.conv("head/hidden", hw, f, f, 1)
  c.bn_relu("head/hidden", hw, f)
  c.conv("head/out", hw, f, volume_depth, 1)
  up = 4 * hw
  # Separable: first along y (4hw x hw outputs), then along x (4hw x 4hw).
  c.elementwise("head/upsample", (up * hw + up * up) * volume_depth, UPSAMPLE_FLOPS_PER_AXIS)
  if loss:
    c.elementwise("loss", up * up * volume_depth, LOSS_FLOPS)
  if sigmoid:
    c.elementwise("sigmoid", up * up * volume_depth, SIGMOID_FLOPS)
  return c.layers


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """FLOPs per image. forward: inference; train: forward + backward (model FLOPs, for MFU)."""
  forward: float
  train: float
  conv_forward: float
  params: int
  layers: tuple[Layer, ...]

  def train_step(self, batch: int) -> float:
    """Model FLOPs of one training step at `batch`, plus RMSProp's update."""
    return self.train * batch + RMSPROP_FLOPS_PER_PARAM * self.params


def count(train_mode_layers: Iterable[Layer], eval_layers: Iterable[Layer]) -> FlopCount:
  """Totals per image from the layers of a train-mode forward (with the loss) and of an eval forward."""
  train_layers = list(train_mode_layers)
  eval_layers = list(eval_layers)
  forward = sum(l.flops for l in eval_layers)
  train_forward = sum(l.flops for l in train_layers)
  # Backward: 2x forward per layer, but the first conv computes only its weight gradient (1x).
  backward = sum(l.flops * (1 if l.first else BACKWARD_FACTOR) for l in train_layers)
  return FlopCount(forward=forward, train=train_forward + backward,
                   conv_forward=sum(l.flops for l in eval_layers if l.kind == "conv"),
                   params=sum(l.params for l in train_layers), layers=tuple(eval_layers))


def vrn_flops(exact_borders: bool = False, sigmoid: bool = False, **model) -> FlopCount:
  """`FlopCount` of a VRN (keyword arguments of `vrn_layers`, e.g. features=256, depth=4).

  `sigmoid`: the forward count includes the output sigmoid (what inference runs).
  """
  return count(vrn_layers(train=True, exact_borders=exact_borders, loss=True, **model),
               vrn_layers(train=False, exact_borders=exact_borders, sigmoid=sigmoid, **model))


def compiled_flops(compiled) -> float | None:
  """FLOPs of a compiled JAX program (`jax.jit(f).lower(...).compile()`, or pmap's) by XLA's cost
  analysis, for one call on one device; None where the backend gives none."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  return float(analysis["flops"])


def xla_flops(fn: Callable, *args) -> float | None:
  """FLOPs of `jax.jit(fn)(*args)` by XLA's cost analysis of the compiled program (None if unavailable).

  Arguments may be arrays or `jax.ShapeDtypeStruct`s (nothing runs).
  """
  import jax  # pylint: disable=g-import-not-at-top

  return compiled_flops(jax.jit(fn).lower(*args).compile())


def xla_model_flops(train: bool, image_size: int = 192, **model) -> float | None:
  """XLA's count, per image, of a loop-free reference program of the model (lowered and compiled at
  batch 1, not run): forward + backward with the plain per-voxel loss and train-mode BatchNorm
  (`train`), or the eval-mode forward.

  The training step itself is not counted this way: XLA's cost analysis counts a loop's body once, and
  the step's fused loss and per-example target decoding are loops.

  Args:
    **model: fields of `vrn_jax.models.get_model` (features, depth, topology, volume_depth, ...).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from vrn_jax import models  # pylint: disable=g-import-not-at-top

  net = models.get_model(**model)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  variables = net.lazy_init(jax.random.key(0), images)
  if not train:
    return xla_flops(lambda v, x: net.apply(v, x), variables, images)
  depth = model.get("volume_depth", models.default_model_config().volume_depth)
  targets = jax.ShapeDtypeStruct((1, image_size, image_size, depth), jnp.bool_)

  def loss(params, batch_stats, x, t):
    logits, _ = net.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                          mutable=["batch_stats"])
    return models.volume_loss(logits, t)

  return xla_flops(jax.grad(loss), variables["params"], variables["batch_stats"], images, targets)


# ------------------------------------------------------------------------------ the device's peak

_PEAKS: dict = {}


def measured_peak(dtype: str, accelerator: bool, small: bool = False) -> dict[str, float]:
  """FLOP/s of a large square matmul in `dtype` ('float32' | 'bfloat16') by JAX and by PyTorch.

  Measured once per run and dtype (cached): the denominator of every MFU in the run is the best of the
  two. Default precisions: on a GPU, JAX's float32 dot and convolution may use TF32, as the models do.
  n = 8192 on an accelerator (1.1 TFLOP per product, 8 products per timed call), 2048 on a CPU (4
  products); best of 5 timed calls. `small`: n = 512, for smoke tests (not a peak). On a busy machine
  the peak comes out low, and an MFU can then exceed 100%.

  Returns:
    {'jax': FLOP/s, 'torch': FLOP/s (absent if torch cannot), 'n': n}.
  """
  key = (dtype, accelerator, small)
  if key in _PEAKS:
    return _PEAKS[key]
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from benchmarks import common  # pylint: disable=g-import-not-at-top

  n, count = (512, 2) if small else (8192, 8) if accelerator else (2048, 4)
  repeats = 2 if small else 5
  flops = 2.0 * n**3 * count
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)

  @jax.jit
  def products(a, b):
    # A chain, so that XLA cannot drop or merge the products; the scaling keeps values finite.
    x = a
    for _ in range(count):
      x = jnp.dot(x, b) * jnp.asarray(1.0 / n, dtype)
    return x

  _, best = common.timed(lambda: products(a, b), lambda r: r.block_until_ready(), repeats)
  out = {"jax": flops / best, "n": n}
  try:
    torch, device, _ = common.torch_setup()
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    ta = torch.randn(n, n, device=device).to(tdtype)
    tb = torch.randn(n, n, device=device).to(tdtype)

    def torch_products():
      with torch.no_grad():
        x = ta
        for _ in range(count):
          x = torch.matmul(x, tb) * (1.0 / n)
        return x

    sync = (lambda r: torch.cuda.synchronize()) if device.type == "cuda" else (lambda r: None)
    _, best = common.timed(torch_products, sync, repeats)
    out["torch"] = flops / best
  except (ImportError, RuntimeError) as e:  # a torch without this dtype on this device
    out["torch_error"] = f"{type(e).__name__}: {e}"[:200]
  _PEAKS[key] = out
  return out


def peak_flops(dtype: str, accelerator: bool, small: bool = False) -> float:
  """The device's measured peak FLOP/s in `dtype`: the better of JAX's and PyTorch's matmul."""
  p = measured_peak(dtype, accelerator, small)
  return max(v for k, v in p.items() if k in ("jax", "torch"))
