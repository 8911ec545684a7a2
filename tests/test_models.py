"""VRN networks: paper-size parameter counts and forwards, the release topology against the released
state dict's layout, hourglass resolutions, BatchNorm modes, bf16, the align_corners upsample, losses and
heatmaps against float64 NumPy references.

Paper-size networks are slow on a 2-core CPU, so: shapes and counts come from `jax.eval_shape`, variables
from `lazy_init`, and only VRN (both topologies) runs a real 192x192 forward; the other variants run at a
reduced width. `pytest -s` prints counts and times.
"""

import ast
import os
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vrn_jax import models
from vrn_jax.models import count_parameters, get_model, release_param_paths
from vrn_jax.models import layers
from vrn_jax.models.layers import Residual, conv_factory, norm_factory, upsample_bilinear

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TSV = os.path.join(REPO, "..", "shared", "reference", "vrn_unguided_torch_state_dict.tsv")
RELEASE_PARAMS = 19_184_968  # the released vrn-unguided model (PyTorch port's parameters())
# Our designs at the paper's size (features 256, depth 4), pinned so a topology change is noticed.
STANDARD_PARAMS = {"vrn": 6_742_344, "vrn_multitask": 9_962_124, "vrn_guided": 13_698_640}
RELEASE_TOPOLOGY_PARAMS = {"vrn": RELEASE_PARAMS, "vrn_multitask": 28_626_060, "vrn_guided": 26_141_264}
SMALL = dict(features=16, depth=2)  # a CPU-sized network; input stays 192x192

IMAGE = jax.ShapeDtypeStruct((1, 192, 192, 3), jnp.float32)


def _images(batch=1, size=192, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(batch, size, size, 3)), jnp.float32)


def _shapes(tree):
  return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


@pytest.fixture(scope="module")
def release_vrn():
  """Paper-size release VRN: (model, variables, jitted eval apply)."""
  model = get_model(variant="vrn", topology="release")
  start = time.perf_counter()
  variables = model.lazy_init(jax.random.key(0), IMAGE)
  print(f"\n[release VRN] lazy_init {time.perf_counter() - start:.1f} s")
  return model, variables, jax.jit(model.apply)


def _timed_forward(name, apply, variables, images):
  start = time.perf_counter()
  out = jax.block_until_ready(apply(variables, images))
  first = time.perf_counter() - start
  start = time.perf_counter()
  out = jax.block_until_ready(apply(variables, images))
  print(f"[{name}] CPU forward, batch {images.shape[0]}, {images.shape[1]}x{images.shape[2]}, float32: "
        f"compile+run {first:.1f} s, run {time.perf_counter() - start:.2f} s")
  return out


# --- paper size -------------------------------------------------------------------------------------


def test_release_vrn_paper_size_forward(release_vrn):
  model, variables, apply = release_vrn
  n = count_parameters(variables["params"])
  print(f"[release VRN] {n:,} parameters")
  assert n == RELEASE_PARAMS
  logits = _timed_forward("release VRN", apply, variables, _images())
  assert logits.shape == (1, 192, 192, 200) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()


def test_standard_vrn_paper_size_forward():
  model = get_model(variant="vrn", topology="standard")
  variables = model.lazy_init(jax.random.key(0), IMAGE)
  n = count_parameters(variables["params"])
  print(f"\n[standard VRN] {n:,} parameters")
  assert n == STANDARD_PARAMS["vrn"]
  logits = _timed_forward("standard VRN", jax.jit(model.apply), variables, _images())
  assert logits.shape == (1, 192, 192, 200) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("variant", ["vrn", "vrn_multitask", "vrn_guided"])
@pytest.mark.parametrize("topology", ["standard", "release"])
def test_paper_size_counts_and_output_shapes(variant, topology):
  model = get_model(variant=variant, topology=topology)
  # One trace (the paper-size release topology takes seconds to trace): init's forward gives the output.
  out, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), IMAGE)
  out = _shapes(out)
  n = count_parameters(variables["params"])
  print(f"\n[{variant}, {topology}] {n:,} parameters, outputs {out}")
  assert n == (STANDARD_PARAMS if topology == "standard" else RELEASE_TOPOLOGY_PARAMS)[variant]
  volume = out if variant == "vrn" else out["volume"]
  assert volume == (1, 192, 192, 200)
  if variant == "vrn_multitask":
    assert out["heatmaps"] == (1, 192, 192, 68)
  if variant == "vrn_guided":
    assert out["heatmaps"] == [(1, 192, 192, 68)] * 2


# --- the released weights' layout ------------------------------------------------------------------


def _read_tsv():
  if not os.path.exists(TSV):
    if os.environ.get("CI"):
      pytest.fail(f"{TSV} is missing; CI needs shared/ beside the checkout.")
    pytest.skip(f"{TSV} not found (shared/reference/ beside the checkout); set CI to make this fatal")
  shapes = {}
  with open(TSV) as f:
    for line in f:
      if line.startswith("#") or not line.strip():
        continue
      key, shape = line.rstrip("\n").split("\t")
      shapes[key] = tuple(ast.literal_eval(shape))
  return shapes


def test_release_param_paths_cover_the_released_state_dict(release_vrn):
  torch_shapes = _read_tsv()
  expected = {k: s for k, s in torch_shapes.items() if not k.endswith("num_batches_tracked")}
  paths = release_param_paths()
  assert sorted(paths) == sorted(expected), "mapping keys differ from the state dict's"
  targets = [(t.collection,) + t.path for t in paths.values()]
  assert len(set(targets)) == len(targets), "two state-dict tensors map to the same variable"

  _, variables, _ = release_vrn
  ours = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  assert set(ours) == set(targets), "some of our variables have no state-dict tensor"
  for key, target in paths.items():
    shape = expected[key]
    if target.transpose is not None:
      shape = tuple(shape[i] for i in target.transpose)
    assert ours[(target.collection,) + target.path].shape == shape, key

  # PyTorch counts weights and biases only: the TSV's own count agrees with ours.
  n = sum(int(np.prod(s)) for k, s in expected.items() if not k.endswith(("running_mean", "running_var")))
  assert n == RELEASE_PARAMS


def test_released_layout_converts_and_runs(release_vrn):
  """Random tensors in the state dict's layout, converted by the mapping, run through the network."""
  torch_shapes = _read_tsv()
  model, variables, apply = release_vrn
  rng = np.random.default_rng(0)
  flat = {}
  for key, target in release_param_paths().items():
    shape = torch_shapes[key]
    if key.endswith("running_var"):
      value = rng.uniform(0.5, 2.0, shape)
    elif len(shape) == 4:  # conv weight, PyTorch's default scale
      value = rng.uniform(-1, 1, shape) / np.sqrt(np.prod(shape[1:]))
    else:
      value = rng.normal(0.0, 0.1, shape) + (1.0 if key.endswith("weight") else 0.0)
    if target.transpose is not None:
      value = np.transpose(value, target.transpose)
    flat[(target.collection,) + target.path] = jnp.asarray(value, jnp.float32)
  converted = flax.traverse_util.unflatten_dict(flat)
  assert _shapes(converted) == _shapes(flax.core.unfreeze(variables))
  logits = apply(converted, _images())  # same shapes: reuses the compiled forward
  assert logits.shape == (1, 192, 192, 200) and np.isfinite(np.asarray(logits)).all()


# --- units at a small size -------------------------------------------------------------------------


def _hourglass_min_size(variant_kwargs):
  model = get_model(**variant_kwargs)
  # Shapes only: traced, never compiled or run (compiling the full-size model took half a minute).
  # One trace: initialising runs the forward, and capture_intermediates keeps every module's output.
  variables = jax.eval_shape(lambda k, x: model.init(k, x, capture_intermediates=True),
                             jax.random.key(0), IMAGE)
  # Every module's output inside the hourglass blocks (the stem and head excluded).
  sizes = [leaf.shape[1:3] for name, outputs in variables["intermediates"].items()
           if name.startswith("hourglass_") for leaf in jax.tree_util.tree_leaves(outputs)]
  return min(sizes), max(sizes)


def test_hourglass_lowest_resolution():
  # The stem takes 192 to 48. The release pools once per branch: 24x24 at any depth; Newell's
  # hourglass halves per level: 48 / 2**4 = 3.
  assert _hourglass_min_size(dict(features=16, depth=4, topology="release")) == ((24, 24), (48, 48))
  assert _hourglass_min_size(dict(features=16, depth=4, topology="standard")) == ((3, 3), (48, 48))


def test_residual_skip_is_identity_or_conv():
  conv, norm = conv_factory(), norm_factory(train=False)
  x = _images(size=8)[..., :2].repeat(4, axis=-1)  # 8 channels
  same = Residual(8, conv, norm)
  v = same.init(jax.random.key(0), x)
  assert "skip" not in v["params"]
  # Zero the last conv: only the skip is left, and it must be the identity.
  v = jax.tree_util.tree_map_with_path(
      lambda p, a: jnp.zeros_like(a) if "conv3" in jax.tree_util.keystr(p) else a, v)
  np.testing.assert_array_equal(same.apply(v, x), x)
  wider = Residual(16, conv, norm)
  v = wider.init(jax.random.key(0), x)
  assert v["params"]["skip"]["kernel"].shape == (1, 1, 8, 16)
  assert v["params"]["conv2"]["kernel"].shape == (3, 3, 8, 8)  # bottleneck width f/2
  assert all("bias" in m for name, m in v["params"].items() if name.startswith(("conv", "skip")))


def test_batch_stats_update_only_in_train_mode():
  model = get_model(**SMALL)
  images = _images(batch=2)
  variables = model.init(jax.random.key(0), images[:, :64, :64])
  train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["batch_stats"]))

  _, updated = train(variables, images)
  updated = {"params": variables["params"], "batch_stats": updated["batch_stats"]}
  changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                                   updated["batch_stats"])
  assert all(jax.tree_util.tree_leaves(changed))

  out, unchanged = evaluate(updated, images)
  jax.tree_util.tree_map(np.testing.assert_array_equal, unchanged["batch_stats"], updated["batch_stats"])
  # Running statistics: each example's output is independent of the rest of the batch.
  single, _ = evaluate(updated, images[:1])
  np.testing.assert_allclose(single[0], out[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("train", [False, True])
def test_bfloat16_compute_close_to_float32(train):
  images = _images(batch=2)
  f32, bf16 = get_model(**SMALL), get_model(**SMALL, dtype="bfloat16")
  variables = f32.init(jax.random.key(0), images[:, :64, :64])
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a: a.dtype == jnp.float32,
                                                       bf16.init(jax.random.key(0), images[:, :64, :64])))
  run = lambda m: jax.jit(lambda v, x: m.apply(v, x, train=train, mutable=["batch_stats"])[0])
  reference, low = run(f32)(variables, images), run(bf16)(variables, images)
  assert low.dtype == jnp.float32
  rel = float(jnp.linalg.norm(low - reference) / jnp.linalg.norm(reference))
  print(f"\n[bf16 vs f32, train={train}] relative L2 error {rel:.4f}")
  # bf16 keeps 8 mantissa bits (4e-3 relative per rounding). With running statistics (identity at init)
  # ~30 layers accumulate ~1%: tolerance 3%. In train mode, batch normalisation of a randomly initialised
  # net amplifies any perturbation layer by layer (Yang et al., ICLR 2019), and un-centred ReLU sums lose
  # relative precision when BN subtracts their mean: ~6% measured (features 16), tolerance 10%.
  assert rel < (0.1 if train else 0.03)


def test_landmark_heads_can_draw_the_heatmaps_they_are_trained_on():
  """VRN-Multitask's landmark head and VRN-Guided's detector predict heatmaps at 48x48 and upsample them
  x4 (bilinear). The best such drawing (least squares over every 48x48 grid) of the configs' training
  Gaussian is within 10% of it, and its peak within 0.25 px of the landmark; of the paper's 1 px
  guidance Gaussian it misses at least 45%: a head trained on those learnt to draw nothing."""
  from vrn_jax.configs import default

  # The upsample as a matrix: its columns are the upsampled unit rows of a 48x48 grid.
  basis = np.zeros((48, 48, 48, 1), np.float32)
  basis[np.arange(48), np.arange(48)] = 1.0
  up = np.asarray(models.upsample_bilinear(jnp.asarray(basis), models.OUTPUT_STRIDE))[:, :, 0, 0].T
  project = up @ np.linalg.pinv(up)  # (192, 192): onto what the head can draw, along one axis
  points = np.random.default_rng(0).uniform(20, 170, (1, 8, 2)).astype(np.float32)
  for sigma, residual in ((default.get_config().heatmap_sigma_px, (0.0, 0.1)), (models.SIGMA_PX, (0.45, 1.0))):
    target = np.asarray(models.render_heatmaps(points, sigma=sigma))[0].transpose(2, 0, 1)  # (8, 192, 192)
    drawn = project @ target @ project.T  # the Gaussians are separable: the best fit is separable too
    rel = np.linalg.norm(drawn - target, axis=(1, 2)) / np.linalg.norm(target, axis=(1, 2))
    assert np.all((residual[0] <= rel) & (rel <= residual[1])), (sigma, rel)
    if sigma > models.SIGMA_PX:
      peaks = np.asarray(models.heatmap_peaks(drawn.transpose(1, 2, 0)[None]))
      np.testing.assert_allclose(peaks, points, atol=0.25)


def test_small_variants_forward():
  images = _images(batch=2)
  landmarks = np.random.default_rng(1).uniform(20, 170, size=(2, 68, 2))
  heatmaps = models.render_heatmaps(landmarks)

  multitask = get_model(variant="vrn_multitask", **SMALL)
  variables = multitask.init(jax.random.key(0), images[:1, :64, :64])
  out = jax.jit(multitask.apply)(variables, images)
  assert out["volume"].shape == (2, 192, 192, 200) and out["heatmaps"].shape == (2, 192, 192, 68)
  assert all(np.isfinite(np.asarray(a)).all() for a in out.values())

  guided = get_model(variant="vrn_guided", **SMALL)
  variables = guided.init(jax.random.key(0), images[:1, :64, :64])
  apply = jax.jit(guided.apply)
  with_truth, detected = apply(variables, images, heatmaps), apply(variables, images)
  for out in (with_truth, detected):
    assert out["volume"].shape == (2, 192, 192, 200) and out["volume"].dtype == jnp.float32
    assert [h.shape for h in out["heatmaps"]] == [(2, 192, 192, 68)] * 2
    assert np.isfinite(np.asarray(out["volume"])).all()
  # The detector runs either way; the volume net sees ground truth or the detector's landmarks, drawn
  # as the ground truth is.
  np.testing.assert_array_equal(with_truth["heatmaps"][-1], detected["heatmaps"][-1])
  assert not np.allclose(with_truth["volume"], detected["volume"])
  redrawn = models.render_heatmaps(models.heatmap_peaks(detected["heatmaps"][-1]))
  np.testing.assert_allclose(apply(variables, images, redrawn)["volume"], detected["volume"],
                             rtol=1e-5, atol=1e-5)
  # Guidance enters the volume net's stem as 3 + 68 channels.
  assert variables["params"]["volume_net"]["stem"]["conv"]["kernel"].shape[2] == 3 + 68


def test_patchify_stem_is_a_stride_4_convolution():
  """The CPU default's stem: its first layer is a 4x4 stride-4 convolution of the image (space-to-depth
  then conv1x1), on the same 48x48 grid as the paper's stem; unknown stems are errors."""
  images = _images(batch=2)
  model = get_model(stem="patchify", **SMALL)
  variables = model.init(jax.random.key(0), images[:1])
  out = model.apply(variables, images, upsample_volume=False)
  assert out.shape == (2, 48, 48, 200) and np.isfinite(np.asarray(out)).all()
  kernel = variables["params"]["stem"]["conv"]["kernel"]
  assert kernel.shape == (1, 1, 4 * 4 * 3, SMALL["features"] // 2)
  # The first layer's output, against lax's stride-4 4x4 convolution with the same weights (HWIO).
  _, state = model.apply(variables, images, capture_intermediates=True, mutable=["intermediates"])
  first = state["intermediates"]["stem"]["conv"]["__call__"][0]
  conv = jax.lax.conv_general_dilated(
      images, kernel.reshape(4, 4, 3, -1), (4, 4), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + variables["params"]["stem"]["conv"]["bias"]
  np.testing.assert_allclose(np.asarray(first), np.asarray(conv), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="stem 'resnet'"):
    get_model(stem="resnet", **SMALL)


def test_body_stride_runs_the_hourglasses_at_half_resolution():
  """body_stride 2 (the CPU default's): the hourglasses see 24x24, the head still 48x48 plus the stem's
  features through the merge module; the output volume is unchanged in size. Misuse is an error."""
  images = _images(batch=2)
  model = get_model(stem="patchify", body_stride=2, **SMALL)
  variables = model.init(jax.random.key(0), images[:1])
  out, state = model.apply(variables, images, upsample_volume=False, capture_intermediates=True,
                           mutable=["intermediates"])
  assert out.shape == (2, 48, 48, 200) and np.isfinite(np.asarray(out)).all()
  inter = state["intermediates"]
  assert inter["stem"]["__call__"][0].shape == (2, 48, 48, SMALL["features"])
  assert inter["hourglass_1"]["__call__"][0].shape == (2, 24, 24, SMALL["features"])
  assert inter["merge"]["__call__"][0].shape == (2, 48, 48, SMALL["features"])
  assert model.apply(variables, images).shape == (2, 192, 192, 200)
  # The stem's features reach the head through the merge, not only through the hourglasses.
  plain = get_model(stem="patchify", **SMALL).init(jax.random.key(0), images[:1])
  assert "merge" in variables["params"] and "merge" not in plain["params"]
  with pytest.raises(ValueError, match="body_stride 3"):
    get_model(body_stride=3, **SMALL)
  with pytest.raises(ValueError, match="variants 'vrn' and 'vrn_multitask'"):
    get_model(variant="vrn_guided", body_stride=2, **SMALL)
  # VRN-Multitask: every hourglass at 24x24, each task's output merged with the stem's at 48x48.
  multitask = get_model(variant="vrn_multitask", stem="patchify", body_stride=2, **SMALL)
  mvars = multitask.init(jax.random.key(0), images[:1])
  out, state = multitask.apply(mvars, images, upsample_volume=False, capture_intermediates=True,
                               mutable=["intermediates"])
  assert out["volume"].shape == (2, 48, 48, 200) and out["heatmaps"].shape == (2, 192, 192, 68)
  inter = state["intermediates"]
  for name in ("hourglass_0", "volume_hourglass", "landmark_hourglass"):
    assert inter[name]["__call__"][0].shape == (2, 24, 24, SMALL["features"])
  for name in ("volume_merge", "landmark_merge"):
    assert inter[name]["__call__"][0].shape == (2, 48, 48, SMALL["features"])
  with pytest.raises(ValueError, match="hourglass depth is too large"):
    get_model(stem="patchify", body_stride=2, features=16, depth=4).init(jax.random.key(0), images[:1])


def test_get_model_config():
  config = models.default_model_config()
  config.variant, config.features, config.depth = "vrn_multitask", 16, 2
  model = get_model(config, dtype="bfloat16")
  assert isinstance(model, models.VRNMultitask) and model.dtype == jnp.bfloat16
  assert model.param_dtype == jnp.float32 and model.features == 16
  assert isinstance(get_model(ml_collections.ConfigDict({"topology": "release"})), models.VRN)
  with pytest.raises(ValueError, match="unknown model config fields"):
    get_model(num_stacks=3)
  with pytest.raises(ValueError, match="topology"):
    get_model(topology="newell")
  with pytest.raises(ValueError, match="variant"):
    get_model(variant="vrn_unguided")


# --- numerics against float64 NumPy references -----------------------------------------------------


def _bilinear_reference(x, factor):
  """align_corners=True bilinear, one output pixel at a time, float64."""
  b, h, w, c = x.shape
  out = np.zeros((b, h * factor, w * factor, c))
  for i in range(h * factor):
    sy = i * (h - 1) / (h * factor - 1)
    y0 = min(int(np.floor(sy)), h - 2)
    fy = sy - y0
    for j in range(w * factor):
      sx = j * (w - 1) / (w * factor - 1)
      x0 = min(int(np.floor(sx)), w - 2)
      fx = sx - x0
      out[:, i, j] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx * x[:, y0, x0 + 1]
                      + fy * (1 - fx) * x[:, y0 + 1, x0] + fy * fx * x[:, y0 + 1, x0 + 1])
  return out


@pytest.mark.parametrize("shape", [(2, 48, 48, 3), (1, 12, 7, 5)])
def test_upsample_bilinear_align_corners(shape):
  x = np.random.default_rng(0).normal(size=shape)
  ours = jax.jit(upsample_bilinear)(jnp.asarray(x, jnp.float32))
  reference = _bilinear_reference(x, 4)
  assert ours.shape == reference.shape and ours.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(ours), reference, atol=1e-5)
  # Corners coincide with the input's.
  np.testing.assert_allclose(np.asarray(ours)[:, [0, -1]][:, :, [0, -1]], x[:, [0, -1]][:, :, [0, -1]],
                             atol=1e-6)


def test_volume_loss_matches_float64_reference():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 5, size=(2, 6, 6, 10))
  logits[0, 0, 0, :6] = [1e4, -1e4, 200.0, -200.0, 88.0, -88.0]  # exp overflows float32 here
  target = rng.uniform(size=logits.shape) < 0.5
  target[0, 0, 0, :6] = [0, 1, 0, 1, 1, 0]  # the worst cases: confidently wrong
  x = logits
  reference = np.mean(np.logaddexp(0.0, x) - x * target)  # -t log s(x) - (1-t) log(1-s(x))
  ours = jax.jit(models.volume_loss)(jnp.asarray(logits, jnp.float32), jnp.asarray(target, jnp.uint8))
  assert ours.dtype == jnp.float32 and np.isfinite(float(ours))
  np.testing.assert_allclose(float(ours), reference, rtol=1e-6)
  # Confident and right costs ~nothing, stably.
  assert float(models.volume_loss(jnp.full((4,), 1e4), jnp.ones((4,)))) == 0.0


def test_thin_column_loss_against_float64_and_its_minimiser():
  """Weight 1 is the paper's loss. Otherwise: against a float64 reference, and for one logit shared by
  a column's voxels, the loss is smallest at p = w q / (w q + 1 - q) (q its filled share) in a thin
  column, and at q in a thick one."""
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 4, (2, 3, 5, 60)).astype(np.float32)
  target = np.zeros((2, 3, 5, 60), bool)
  lengths = rng.integers(0, 60, (2, 3, 5))
  for idx in np.ndindex(lengths.shape):
    target[idx][10: 10 + lengths[idx]] = True
  x, t = jnp.asarray(logits), jnp.asarray(target)
  np.testing.assert_allclose(float(models.weighted_volume_loss(x, t, 1.0, 40)),
                             float(models.volume_loss(x, t)), rtol=1e-6)
  x64, t64 = logits.astype(np.float64), target.astype(np.float64)
  w = np.where((lengths > 0) & (lengths <= 40), 3.0, 1.0)[..., None]
  want = np.mean(t64 * w * np.logaddexp(0, -x64) + (1 - t64) * np.logaddexp(0, x64))
  np.testing.assert_allclose(float(models.weighted_volume_loss(x, t, 3.0, 40)), want, rtol=1e-5)

  def best_p(filled, size=100):
    column = jnp.arange(size) < filled
    grid = jnp.linspace(-6.0, 6.0, 4801)
    losses = jax.vmap(lambda v: models.weighted_volume_loss(jnp.full((size,), v), column, 3.0, 40))(grid)
    return float(jax.nn.sigmoid(grid[jnp.argmin(losses)]))

  assert abs(best_p(25) - 3 * 0.25 / (3 * 0.25 + 0.75)) < 2e-3  # thin: 0.5 where q is 0.25
  assert abs(best_p(60) - 0.6) < 2e-3  # thick: the filled share itself


def test_soft_iou_loss_against_float64_and_the_volume_iou():
  """`models.soft_iou_loss` and its gradient against float64 NumPy (the gradient written out by hand:
  d(1 - I/U)/dp = -(t U - I (1 - t)) / U^2, times p (1 - p)); with saturated logits it is exactly
  1 - `models.volume_iou` of the thresholded volume."""
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 3, (3, 4, 5, 30)).astype(np.float32)
  target = rng.random((3, 4, 5, 30)) < 0.3
  x64, t64 = logits.astype(np.float64), target.astype(np.float64)
  p = 1 / (1 + np.exp(-x64))
  inter = (p * t64).sum(axis=(1, 2, 3), keepdims=True)
  union = (p + t64 - p * t64).sum(axis=(1, 2, 3), keepdims=True)
  want = np.mean(1 - inter / union)
  want_grad = -(t64 * union - inter * (1 - t64)) / union ** 2 * p * (1 - p) / len(x64)
  value, grad = jax.value_and_grad(models.soft_iou_loss)(jnp.asarray(logits), jnp.asarray(target))
  np.testing.assert_allclose(float(value), want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-9)
  # Saturated: p is 0 or 1, the soft IoU the hard one.
  sharp = jnp.where(jnp.asarray(logits) > 0, 40.0, -40.0)
  hard = np.asarray(models.volume_iou(jnp.asarray(logits) > 0, jnp.asarray(target)))
  np.testing.assert_allclose(float(models.soft_iou_loss(sharp, jnp.asarray(target))), 1 - hard.mean(),
                             rtol=1e-6)


def _relief_reference(target, window):
  """`models.relief_voxels` by loops in float64: each column's front surface against the mean of the
  filled columns' front surfaces in the window (clipped at the edges)."""
  *lead, h, w, depth = target.shape
  bump, hollow = np.zeros(target.shape, bool), np.zeros(target.shape, bool)
  r = window // 2
  for idx in np.ndindex(*lead):
    occupied = target[idx]
    filled = occupied.any(-1)
    front = np.where(filled, depth - 1 - np.argmax(occupied[..., ::-1], axis=-1), -1).astype(np.float64)
    for y, x in np.ndindex(h, w):
      if not filled[y, x]:
        continue
      around = filled[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1]
      mean = front[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1][around].mean()
      for z in range(depth):
        if occupied[y, x, z]:
          bump[idx][y, x, z] = z > mean
        else:
          hollow[idx][y, x, z] = front[y, x] < z <= mean
  return bump, hollow


def test_relief_voxels_and_their_weight_against_float64():
  """The relief (voxels between the front surface and its local mean) against loops in float64; the
  loss with it weighted against a float64 reference; and on a column of the relief the minimiser of a
  shared logit moves as the thin columns' does."""
  rng = np.random.default_rng(1)
  heights = rng.integers(0, 30, (2, 9, 11))
  heights[rng.uniform(size=heights.shape) < 0.2] = 0  # some empty columns
  starts = rng.integers(0, 10, heights.shape)
  z = np.arange(40)
  target = (z >= starts[..., None]) & (z < (starts + heights)[..., None])
  for window in (3, 5):
    bump, hollow = models.relief_voxels(jnp.asarray(target), window)
    want_bump, want_hollow = _relief_reference(target, window)
    np.testing.assert_array_equal(np.asarray(bump), want_bump)
    np.testing.assert_array_equal(np.asarray(hollow), want_hollow)
    assert want_bump.any() and want_hollow.any()
  logits = rng.normal(0, 4, target.shape).astype(np.float32)
  x64, t64 = logits.astype(np.float64), target.astype(np.float64)
  filled = target.sum(-1, keepdims=True)
  w_filled = np.where((filled > 0) & (filled <= 20), 3.0, 1.0) * np.where(want_bump, 2.0, 1.0)
  w_empty = np.where(want_hollow, 2.0, 1.0)
  want = np.mean(t64 * w_filled * np.logaddexp(0, -x64) + (1 - t64) * w_empty * np.logaddexp(0, x64))
  ours = models.weighted_volume_loss(jnp.asarray(logits), jnp.asarray(target), 3.0, 20, 2.0, 5)
  np.testing.assert_allclose(float(ours), want, rtol=1e-5)
  # A raised 3x3 patch (height 30) on a plane of height 10, weight 3: the patch's voxels above the
  # local mean (bump) are kept where a shared logit gives them a quarter.
  plane = np.full((1, 7, 7), 10)
  plane[0, 2:5, 2:5] = 30
  volume = np.arange(60) < plane[..., None]
  bump, _ = models.relief_voxels(jnp.asarray(volume), 7)
  grid = jnp.linspace(-6.0, 6.0, 4801)
  # One logit shared by the centre column's voxels from z = 25 up (all above the mean, 12.7), a quarter
  # of them filled; every other voxel confidently right (costs ~0).
  column = jnp.asarray(volume[0, 3, 3, 25:45])
  assert bool(jnp.all(bump[0, 3, 3, 25:30]))
  confident = jnp.where(jnp.asarray(volume), 30.0, -30.0)
  weights = jax.vmap(lambda v: models.weighted_volume_loss(
      confident.at[0, 3, 3, 25:45].set(v), jnp.asarray(volume), 1.0, 1, 3.0, 7))
  best = float(jax.nn.sigmoid(grid[jnp.argmin(weights(grid))]))
  assert column.mean() == 0.25 and abs(best - 0.5) < 2e-3



@pytest.mark.parametrize("target_dtype", [np.bool_, np.uint8, np.float32])
def test_upsampled_volume_loss_is_the_loss_of_the_upsampled_volume(target_dtype):
  """The fused loss (blocks of upsampled rows, never the whole volume) against float64 NumPy: the loss
  of the align_corners x4 upsample and its gradient M_y^T M_x^T (sigmoid(u) - t) / n. Tolerances: float32
  rounding of sums over 6e4 voxels (value) and of a few terms per gradient entry."""
  from vrn_jax.models.layers import bilinear_matrix

  rng = np.random.default_rng(4)
  logits = rng.normal(0, 4, size=(2, 12, 7, 5))
  logits[0, 0, 0, :2] = [300.0, -300.0]  # exp overflows float32 here
  upsampled = _bilinear_reference(logits, 4)
  target = rng.uniform(size=upsampled.shape)
  target = (target < 0.4) if target_dtype != np.float32 else target  # soft labels as well
  n = upsampled.size
  value = np.mean(np.logaddexp(0.0, upsampled) - upsampled * target)
  grad = np.einsum("Yy,Xx,bYXc->byxc", bilinear_matrix(12, 48), bilinear_matrix(7, 28),
                   (1 / (1 + np.exp(-upsampled)) - target) / n)
  x, t = jnp.asarray(logits, jnp.float32), jnp.asarray(target.astype(target_dtype))
  for rows in (None, 4, 8, 48):  # None: the platform's choice; 48: one block per example
    loss, g = jax.jit(jax.value_and_grad(
        lambda x, t: models.upsampled_volume_loss(x, t, 4, rows)))(x, t)
    np.testing.assert_allclose(float(loss), value, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g), grad, rtol=1e-4, atol=1e-6 * np.abs(grad).max())
    # It agrees with the unfused pair to float32 rounding.
    unfused = models.volume_loss(upsample_bilinear(x, 4), t)
    np.testing.assert_allclose(float(loss), float(unfused), rtol=1e-6)
  with pytest.raises(ValueError, match="x4 upsample"):
    models.upsampled_volume_loss(x, t[:, :40])
  with pytest.raises(ValueError, match="blocks of 5"):
    models.upsampled_volume_loss(x, t, 4, 5)


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_strided_volume_loss_is_the_loss_on_the_sampled_voxels(stride):
  """loss_stride > 1: the fused loss on rows oy + s i and columns ox + s j of the upsampled volume, each
  example with its own offsets, against float64 NumPy on the same voxels (value and gradient, the
  tolerances of the full-volume test); and averaged over all s^2 offsets it is the full-volume loss."""
  from vrn_jax.models.layers import bilinear_matrix

  rng = np.random.default_rng(5)
  logits = rng.normal(0, 4, size=(3, 8, 6, 5))
  upsampled = _bilinear_reference(logits, 4)
  full_target = rng.uniform(size=upsampled.shape) < 0.4
  offsets = rng.integers(0, stride, size=(3, 2))
  target = np.stack([full_target[e, oy::stride, ox::stride] for e, (oy, ox) in enumerate(offsets)])
  sampled = np.stack([upsampled[e, oy::stride, ox::stride] for e, (oy, ox) in enumerate(offsets)])
  n = sampled.size
  value = np.mean(np.logaddexp(0.0, sampled) - sampled * target)
  residual = (1 / (1 + np.exp(-sampled)) - target) / n
  grad = np.stack([np.einsum("Yy,Xx,YXc->yxc", bilinear_matrix(8, 32)[oy::stride],
                             bilinear_matrix(6, 24)[ox::stride], residual[e])
                   for e, (oy, ox) in enumerate(offsets)])
  x, t = jnp.asarray(logits, jnp.float32), jnp.asarray(target)
  for rows in (None, 2, 32 // stride):
    loss, g = jax.jit(jax.value_and_grad(lambda x, t, o: models.upsampled_volume_loss(
        x, t, 4, rows, stride=stride, offsets=o)))(x, t, jnp.asarray(offsets))
    np.testing.assert_allclose(float(loss), value, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g), grad, rtol=1e-4, atol=1e-6 * np.abs(grad).max())
  # Unbiased: the mean over every offset pair (the same for all examples) is the full-volume loss.
  full = np.mean(np.logaddexp(0.0, upsampled) - upsampled * full_target)
  every = [float(models.upsampled_volume_loss(
      x, jnp.asarray(full_target[:, oy::stride, ox::stride]), 4, stride=stride,
      offsets=jnp.tile(jnp.array([oy, ox]), (3, 1)))) for oy in range(stride) for ox in range(stride)]
  np.testing.assert_allclose(np.mean(every), full, rtol=1e-5)
  with pytest.raises(ValueError, match="offsets"):
    models.upsampled_volume_loss(x, t, 4, stride=stride)
  with pytest.raises(ValueError, match=f"sampled every {stride}"):
    models.upsampled_volume_loss(x, t[:, :-1], 4, stride=stride, offsets=jnp.asarray(offsets))


def test_volume_logits_before_the_upsample():
  """upsample_volume=False hands out the head's logits; upsampled, they are the network's output."""
  model = get_model(**SMALL)
  images = _images(batch=2)
  variables = model.init(jax.random.key(0), images[:, :64, :64])
  full = jax.jit(lambda v, x: model.apply(v, x))(variables, images)
  low = jax.jit(lambda v, x: model.apply(v, x, upsample_volume=False))(variables, images)
  assert low.shape == (2, 48, 48, 200) and low.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(upsample_bilinear(low, 4)), np.asarray(full), rtol=1e-6,
                             atol=1e-6)


def _bilinear_reference(x: np.ndarray, factor: int) -> np.ndarray:
  """float64 align_corners=True bilinear upsample, written from its definition (sample i of the output
  sits at input coordinate i * (n - 1) / (factor * n - 1)), one output pixel at a time."""
  b, h, w, c = x.shape
  out = np.zeros((b, factor * h, factor * w, c))
  for i in range(factor * h):
    y = i * (h - 1) / (factor * h - 1)
    y0 = min(int(np.floor(y)), h - 2)
    for j in range(factor * w):
      u = j * (w - 1) / (factor * w - 1)
      x0 = min(int(np.floor(u)), w - 2)
      fy, fx = y - y0, u - x0
      out[:, i, j] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx * x[:, y0, x0 + 1]
                      + fy * (1 - fx) * x[:, y0 + 1, x0] + fy * fx * x[:, y0 + 1, x0 + 1])
  return out


def _bspline_reference(x: np.ndarray, factor: int) -> np.ndarray:
  """float64 reference of the B-spline upsample along axes 1 and 2: sum_k c_k B(u - k) at the
  align_corners positions u, B scipy's cardinal cubic B-spline (knots -2..2), the samples as control
  points c_0..c_{n-1} extended by their end values (c_-1 = c_0, c_n = c_{n-1})."""
  from scipy.interpolate import BSpline

  basis = BSpline.basis_element(np.arange(-2.0, 3.0), extrapolate=False)

  def along(a, axis):
    n = a.shape[axis]
    u = np.arange(factor * n) * (n - 1) / (factor * n - 1)
    k = np.arange(-1, n + 1)
    w = np.nan_to_num(basis(u[:, None] - k[None, :]))  # (n_out, n + 2); 0 outside the support
    ext = np.take(a, np.clip(k, 0, n - 1), axis=axis)
    return np.moveaxis(np.tensordot(w, np.moveaxis(ext, axis, 0), axes=1), 0, axis)

  return along(along(x, 1), 2)


def test_bspline_upsample_matches_scipy_and_is_smooth_at_the_samples():
  """kind='bspline': the cubic B-spline against scipy's (float64); a constant stays constant; and where
  linear interpolation bends (its second difference spikes every `factor` outputs), the B-spline's
  curvature runs on without a jump."""
  x = np.random.default_rng(0).normal(size=(2, 12, 7, 3))
  ours = np.asarray(jax.jit(lambda a: upsample_bilinear(a, 4, "bspline"))(jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(ours, _bspline_reference(x, 4), atol=1e-5)
  ones = np.asarray(upsample_bilinear(jnp.ones((1, 5, 6, 2)), 4, "bspline"))
  np.testing.assert_allclose(ones, 1.0, atol=1e-6)
  # A ramp with one bend at sample 5, upsampled x8: linear's second difference is one spike (two outputs
  # about the bend), the B-spline's a hat over the 4 samples about it (measured: 0.19 and 0.026 peaks).
  ramp = np.abs(np.arange(12.0) - 5)[None, :, None, None] * np.ones((1, 1, 2, 1))
  d2 = lambda kind: np.abs(np.diff(np.asarray(upsample_bilinear(jnp.asarray(ramp, jnp.float32), 8,
                                                                kind))[0, :, 0, 0], 2))
  assert d2("linear").max() > 0.15 and np.count_nonzero(d2("linear") > 1e-4) <= 2
  assert d2("bspline").max() < 0.2 * d2("linear").max()
  assert np.count_nonzero(d2("bspline") > 1e-4) >= 24


def test_sample_bilinear_is_the_upsample_at_the_chosen_pixels():
  """Per-example rows and columns of the x4 upsample, against a float64 reference."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 6, 5, 3))
  rows = np.array([[0, 3, 23], [7, 7, 12]])
  cols = np.array([[19, 0], [5, 11]])
  for kind, ref in [("linear", _bilinear_reference(x, 4)), ("bspline", _bspline_reference(x, 4))]:
    got = np.asarray(layers.sample_bilinear(jnp.asarray(x, jnp.float32), jnp.asarray(rows),
                                            jnp.asarray(cols), kind=kind))
    want = np.stack([ref[b][np.ix_(rows[b], cols[b])] for b in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=kind)


@pytest.mark.parametrize("variant,head", [("vrn", "features"), ("vrn_multitask", "features"),
                                          ("vrn_guided", "features"), ("vrn", "features_bspline")])
def test_feature_upsampled_head_at_chosen_pixels_is_its_full_output_there(variant, head):
  """head_upsample='features' / 'features_bspline': the logits at volume_at's rows and columns
  (training's sampled loss) are the full-resolution output's there; the output is not a bilinear
  upsample of a 48x48 grid of logits (a per-pixel layer follows the interpolation), and the 'logits'
  head refuses volume_at."""
  model = get_model(variant=variant, head_upsample=head, **SMALL)
  images = _images(batch=2)
  variables = model.init(jax.random.key(0), images[:, :64, :64])
  # Non-trivial BatchNorm statistics: means moved, variances scaled.
  stats = flax.traverse_util.flatten_dict(variables["batch_stats"])
  rng = np.random.default_rng(1)
  stats = {k: v + 0.1 * rng.normal(size=v.shape) if k[-1] == "mean" else v * rng.uniform(0.5, 2, v.shape)
           for k, v in stats.items()}
  variables = {**variables, "batch_stats": flax.traverse_util.unflatten_dict(stats)}
  volume = lambda out: out["volume"] if isinstance(out, dict) else out
  full = volume(jax.jit(lambda v, x: model.apply(v, x))(variables, images))
  assert full.shape == (2, 192, 192, 200) and full.dtype == jnp.float32
  rows = jnp.array([[0, 8, 16, 191], [5, 13, 21, 189]])
  cols = jnp.array([[3, 11, 180], [0, 1, 2]])
  at = volume(jax.jit(lambda v, x: model.apply(v, x, volume_at=(rows, cols)))(variables, images))
  assert at.shape == (2, 4, 3, 200)
  want = np.stack([np.asarray(full)[b][np.ix_(np.asarray(rows[b]), np.asarray(cols[b]))] for b in range(2)])
  np.testing.assert_allclose(np.asarray(at), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  # Not an interpolation of its own 48x48 grid: between grid points the output leaves the bilinear line.
  grid = np.asarray(full)[:, ::4, ::4][:, :47, :47]
  midway = np.asarray(full)[:, 2::4, 2::4][:, :47, :47]
  corners = (grid + np.roll(grid, -1, 1) + np.roll(grid, -1, 2) + np.roll(np.roll(grid, -1, 1), -1, 2))
  # (the upsample's grid: output 4k sits at input 4k * 47 / 191, close to but not on input k)
  assert np.max(np.abs(midway[:, :46, :46] - corners[:, :46, :46] / 4)) > 1e-2
  if variant == "vrn":
    with pytest.raises(ValueError, match="volume_at is for head_upsample='features'"):
      get_model(**SMALL).apply(get_model(**SMALL).init(jax.random.key(0), images[:1, :64, :64]),
                               images[:1], volume_at=(rows[:1], cols[:1]))


def test_heatmap_loss():
  rng = np.random.default_rng(0)
  target = rng.uniform(size=(2, 8, 8, 68))
  stacks = [rng.uniform(size=target.shape) for _ in range(2)]
  per_stack = [np.mean((s - target) ** 2) for s in stacks]
  np.testing.assert_allclose(float(models.heatmap_loss(jnp.asarray(stacks[0]), jnp.asarray(target))),
                             per_stack[0], rtol=1e-5)
  np.testing.assert_allclose(float(models.heatmap_loss([jnp.asarray(s) for s in stacks],
                                                       jnp.asarray(target))), sum(per_stack), rtol=1e-5)


def _heatmaps_reference(landmarks, resolution, sigma=1.0, source=192):
  scale = (resolution - 1) / (source - 1)
  yy, xx = np.mgrid[:resolution, :resolution].astype(np.float64)
  out = np.zeros((landmarks.shape[0], resolution, resolution, landmarks.shape[1]))
  for b in range(landmarks.shape[0]):
    for k in range(landmarks.shape[1]):
      cx, cy = landmarks[b, k] * scale
      out[b, :, :, k] = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (sigma * scale) ** 2))
  return out


@pytest.mark.parametrize("resolution", [192, 48])
def test_heatmaps_match_numpy(resolution):
  landmarks = np.random.default_rng(0).uniform(-5, 197, size=(2, 68, 2))
  landmarks[0, 0] = [10.0, 150.0]  # on a pixel centre at 192
  render = jax.jit(models.render_heatmaps, static_argnums=(1,))
  ours = render(jnp.asarray(landmarks, jnp.float32), resolution)
  assert ours.shape == (2, resolution, resolution, 68) and ours.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(ours), _heatmaps_reference(landmarks, resolution), atol=1e-5)
  if resolution == 192:
    assert float(ours[0, 150, 10, 0]) == pytest.approx(1.0)  # (y, x) indexing: row 150, column 10
    assert float(ours[0, 150, 11, 0]) == pytest.approx(np.exp(-0.5))  # sigma = 1 px


@pytest.mark.parametrize("kind", ["linear", "bspline"])
def test_upsample_gradient_is_the_transposed_interpolation(kind):
  """The custom backward pass of the tap-based upsample is M^T g, against float64 NumPy."""
  from vrn_jax.models.layers import interpolation_matrix, upsample_bilinear

  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 5, 7, 3)), jnp.float32)
  g = rng.normal(size=(2, 20, 28, 3))
  _, vjp = jax.vjp(lambda a: upsample_bilinear(a, 4, kind), x)
  (grad,) = vjp(jnp.asarray(g, jnp.float32))
  my, mx = interpolation_matrix(5, 20, kind), interpolation_matrix(7, 28, kind)
  expected = np.einsum("Yy,Xx,bYXc->byxc", my, mx, g)
  np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-5)


def test_max_pool2_matches_flax_max_pool_with_ties():
  """The reshape-and-max pool and its elementwise backward equal autodiff of `nn.max_pool`: values, and
  gradients on inputs with many ties (quantised values, flat zero regions) where the window's first
  maximum in row-major order takes the gradient (XLA's rule, and PyTorch's)."""
  import flax.linen as nn

  from vrn_jax.models.layers import max_pool2

  rng = np.random.default_rng(7)
  for x in (rng.normal(size=(2, 8, 6, 3)), np.round(rng.normal(size=(2, 8, 6, 3))),
            np.zeros((1, 4, 4, 2))):
    x = jnp.asarray(x, jnp.float32)
    g = jnp.asarray(rng.normal(size=(x.shape[0], x.shape[1] // 2, x.shape[2] // 2, x.shape[3])),
                    jnp.float32)
    ours, ours_vjp = jax.vjp(max_pool2, x)
    ref, ref_vjp = jax.vjp(lambda v: nn.max_pool(v, (2, 2), strides=(2, 2)), x)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(ours_vjp(g)[0]), np.asarray(ref_vjp(g)[0]))
  with pytest.raises(ValueError, match="even spatial sizes"):
    max_pool2(jnp.zeros((1, 5, 4, 1)))


def test_conv_factory_one_by_one_is_the_convolution():
  """On a CPU the factory's 1x1 convolutions are matmuls over channels: same parameters (nn.Conv's
  names, shapes and initialisation) and the same values and gradients as `nn.Conv`'s convolution."""
  import flax.linen as nn

  x = _images(batch=2, size=12)
  x = jnp.concatenate([x, x[..., :1] * 2], axis=-1)  # 4 channels
  for kernel, padding in (((1, 1), 0), ((3, 3), 1)):
    ours = conv_factory()(5, kernel, padding=padding)
    ref = nn.Conv(5, kernel, padding=padding, use_bias=True)
    v = ours.init(jax.random.key(1), x)
    assert _shapes(v) == _shapes(ref.init(jax.random.key(1), x))
    np.testing.assert_array_equal(np.asarray(v["params"]["kernel"]),
                                  np.asarray(ref.init(jax.random.key(1), x)["params"]["kernel"]))
    loss = lambda m: (lambda v, x: jnp.sum(jnp.sin(m.apply(v, x))))
    for a, b in zip(jax.tree_util.tree_leaves(jax.grad(loss(ours), argnums=(0, 1))(v, x)),
                    jax.tree_util.tree_leaves(jax.grad(loss(ref), argnums=(0, 1))(v, x))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.apply(v, x)), np.asarray(ref.apply(v, x)), rtol=1e-5,
                               atol=1e-6)
