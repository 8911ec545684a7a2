"""Default config: a small VRN that trains on a laptop/CI CPU in minutes (`python run_train.py`).

`--config=configs/default.py:test` shrinks everything to a few seconds (smoke tests); `:multitask` is the
same recipe for VRN-Multitask. Paper-size variants:
configs/vrn.py, configs/vrn_multitask.py, configs/vrn_guided.py. Any field can be overridden on the command
line, e.g. `--config.optim.learning_rate=3e-4`.
"""

import os

import ml_collections

from vrn_jax.models import default_model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # A reduced VRN (the paper's is configs/vrn.py): two standard hourglasses of 64 features, depth 3, run
  # at 24x24 (`body_stride` 2: the stem's 48x48 features rejoin them through one residual module before
  # the head), behind the patchify stem (`models.vrn.PatchifyStem`: the paper's 7x7 stem at 96x96 was a
  # third of the CPU step). The output is always the full 192x192x200 volume. Each choice was raced on a
  # 2-core CPU: docs/experiments.md, "Races behind configs/default.py".
  config.model = default_model_config()
  config.model.features = 64
  config.model.depth = 3
  config.model.stem = "patchify"
  config.model.body_stride = 2
  # The head upsamples its features and regresses every pixel at 192x192 (`FeatureUpsampledHead`): no
  # 4-pixel terraces from upsampled logits, and a cheaper training step than the paper's head with this
  # loss. It upsamples them with the cubic B-spline: linear interpolation left a 4-pixel grid on the
  # surface (`photo_metrics.surface_grid` 2.4-2.7 against 1.2; docs/experiments.md has the races).
  config.model.head_upsample = "features_bspline"

  config.data = ml_collections.ConfigDict(dict(
      # tfds' own convention: $TFDS_DATA_DIR where set.
      data_dir=os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"),
      config="synthetic",      # vrn_faces config: 'synthetic' | '300w_lp' (train) / 'aflw2000_3d' (eval)
      train_split="train",
      eval_config="synthetic",
      eval_split="test",
      build_if_missing=True,   # build the synthetic set (no download) when it is not there yet
      num_threads=2,           # host reader threads
  ))

  # The paper's joint augmentation at milder ranges (configs/vrn.py keeps the paper's +-45 deg, +-15 px,
  # 0.85-1.15, colour 0.6-1.4), then photometric ones on the image alone.
  config.augment = ml_collections.ConfigDict(dict(
      enabled=False,
      rotation_deg=15.0,
      translation_px=5.0,
      scale_range=(0.95, 1.05),
      flip_probability=0.2,
      colour_range=(0.8, 1.2),
      # Photometric, image only (`augment.AugmentConfig`): 0 / (1, 1) leave the image as it is.
      brightness=0.0,
      contrast_range=(1.0, 1.0),
      saturation_range=(1.0, 1.0),
      blur_sigma_px=0.0,
      noise_std=0.0,
      occlusion_probability=0.0,
  ))

  # The paper's RMSProp (Torch7's rule: decay 0.99, epsilon outside the square root; lr 1e-4 there) at a
  # larger rate for the small model, decayed x0.1 after 80% of the run, for BatchNorm parameters,
  # biases and the stem's first kernel; the other convolution kernels take Muon's step (each kernel's
  # momentum orthogonalised as a (kh*kw*cin, cout) matrix; `optimizers.create_optimizer`).
  config.optim = ml_collections.ConfigDict(dict(
      name="muon",             # 'rmsprop' (the paper's, configs/vrn*.py) or 'muon' (above)
      muon_learning_rate=0.01,
      muon_beta=0.95,          # Muon's Nesterov momentum
      muon_exclude=("stem/conv",),  # kernels kept on RMSProp (module paths)
      learning_rate=2e-3,
      schedule="step",         # 'step': x decay_factor after each of decay_epochs; 'cosine': to
      decay_epochs=(4.48,),    #   learning_rate * decay_factor over the run
      decay_factor=0.1,
      momentum=0.0,            # Torch7's rmsprop has none
      rmsprop_decay=0.99,
      eps=1e-8,
      eps_in_sqrt=False,       # Torch7: g / (sqrt(ms) + eps)
      # Torch7's initialMean (default 0). With 0 the first steps are ~ +-10 lr sign(g) whatever |g|, so
      # gradient components that are pure rounding noise (biases of convolutions followed by BatchNorm)
      # take full-size random steps.
      initial_mean_square=0.0,
  ))

  # VRN-Multitask's landmark head and VRN-Guided's detector: the weight of their heatmap loss (mean
  # squared error over all pixels) beside the volume's, and the sigma of the Gaussians they regress, in
  # 192 crop pixels: 1 px at their 48x48 grid (Newell et al.). At the paper's 1 px guidance sigma they
  # learnt to draw nothing, at weight 1 or 100; at 4 px weight 10 trained as weight 1 does (Muon sets
  # the landmark branch's step sizes whatever the loss's scale): docs/experiments.md.
  config.heatmap_loss_weight = 1.0
  config.heatmap_sigma_px = 4.0
  # The loss on rows oy + 4i and columns ox + 4j of each example's volume, (oy, ox) uniform: 1/16 of the
  # voxels, every voxel equally likely, an unbiased estimate of the paper's loss (1 = all of them, the
  # paper's; configs/vrn*.py); the targets are decoded only there. Stride 8 (1/64) steps faster but left
  # the real photos' outline narrower (docs/experiments.md, "Two levers, each on two seeds").
  config.loss_stride = 4
  # The filled voxels of thin target columns (1 to thin_column_voxels filled: the face's edge) weighted
  # this much in the loss (`models.weighted_volume_loss`; 1 = the paper's loss): where the network is
  # unsure of the depth there, the 0.5 isosurface otherwise loses those columns and the silhouette
  # shrinks, on real photos most (docs/experiments.md, "Why the silhouettes come out narrow").
  config.thin_column_weight = 3.0
  config.thin_column_voxels = 40
  # The voxels between the front surface and its local mean over relief_window_px crop pixels (the
  # nose in front of it, the eye sockets behind it) weighted this much in the loss
  # (`models.weighted_volume_loss`; 1 = off): a network unsure of where a small feature lies otherwise
  # blurs it away (docs/experiments.md, "The nose and the hollows").
  config.relief_weight = 3.0
  config.relief_window_px = 40
  # The soft IoU of the sampled voxels (`models.soft_iou_loss`, per example) added to the loss at this
  # weight (0 = off, the paper's loss): the figure the held-out evaluation reports, which the per-voxel
  # loss reaches only through each voxel's own error. Weight 1 against 0: held-out IoU +0.007 / +0.008
  # on two seeds, the photos' figures level; weight 3 narrowed the photos' outline (docs/experiments.md,
  # "A soft IoU beside the per-voxel loss"). Needs a 'features' head.
  config.iou_loss_weight = 1.0
  # Inference smooths the volume logits along z by a Gaussian of this many voxels, folded into the
  # head's output layer as the weights are loaded (`inference.fold_z_smoothing`: free; 0 = the network's
  # own): the head's 200 depth channels otherwise leave rings of equal depth across the face. Not a
  # training change: the IoU the training prints is the network's own.
  config.smooth_z_voxels = 2.0
  # Inference averages each soft volume (and VRN-Multitask's / VRN-Guided's landmark heatmaps) with its
  # mirror image's, mirrored back (`inference.Predictor`; two forward passes per crop): held-out IoU
  # +0.010, the photos' worst hull coverage and landmark NME better too (docs/experiments.md, "Test-time
  # flip"). Not a training change either.
  config.test_time_flip = True
  # > 0: evaluate (and save) an exponential moving average of the weights.
  config.ema_decay = 0.995
  config.global_batch_size = 8
  config.num_epochs = 5.6            # 2,800 steps on the 4,000 synthetic training examples
  config.num_train_steps = -1       # > 0: overrides num_epochs
  config.log_every_steps = 25
  config.checkpoint_every_steps = 250
  config.keep_checkpoints = 3
  # Steps with a non-finite loss, gradient or new weight are skipped on the device (the weights stay as
  # they were); this many are tolerated in a run, the next one stops it (0: stop at the first).
  config.max_nonfinite_steps = 0
  config.eval_examples = 64         # held-out examples for the IoU printed at the end (-1: all)
  config.eval_batch_size = 8
  config.seed = 0
  config.distributed = False        # call jax.distributed.initialize() (multi-host)

  if arg == "test":
    # On: the smoke config runs the on-device augmentation (the exact-resume and 1-vs-4-device tests
    # then cover its per-example keys).
    config.augment.update(dict(enabled=True, brightness=0.1, contrast_range=(0.7, 1.3),
                               saturation_range=(0.5, 1.5), blur_sigma_px=1.5, noise_std=0.05,
                               occlusion_probability=0.5))
    # One hourglass of depth 1: the suite trains this config in dozens of runs, and tracing and
    # compiling the step is most of each run's time (two of depth 2 took half as long again).
    config.model.features = 8
    config.model.num_hourglasses = 1
    config.model.depth = 1
    config.loss_stride = 8  # the cheapest step of the same code path
    config.global_batch_size = 4
    config.num_train_steps = 3
    config.log_every_steps = 1
    config.checkpoint_every_steps = 3
    config.eval_examples = 4
    config.eval_batch_size = 4
  elif arg == "multitask":
    # The same CPU-sized recipe for VRN-Multitask: a shared hourglass, then one per task (the paper's
    # three), all at 24x24; its landmark head's heatmaps give the network's own 68 landmarks.
    config.model.variant = "vrn_multitask"
    config.model.num_shared_hourglasses = 1
    # Its figures were measured at loss stride 8; one run at stride 4 scored a little better on IoU and
    # photo hull, level on landmark NME (docs/experiments.md, row mt_stride4): not adopted on one seed.
    config.loss_stride = 8
    # And without the soft IoU, the recipe its figures were measured with (one run with it: IoU +0.008,
    # photo landmark NME 0.072 against 0.075, inside the seeds' spread; docs/experiments.md).
    config.iou_loss_weight = 0.0
  elif arg:
    raise ValueError(f"configs/default.py: unknown argument {arg!r}; expected nothing, 'test' or "
                     "'multitask'.")
  return config
