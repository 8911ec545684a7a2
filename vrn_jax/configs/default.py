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

  # A reduced VRN: two standard hourglasses of 64 features, depth 3, run at 24x24 (`body_stride` 2: the
  # stem's 48x48 features rejoin them before the head). The output is always the full 192x192x200
  # volume. Measured on a 2-core CPU (held-out IoU after 300 steps of batch 8, lr 2e-3,
  # earlier sessions): 32 features 0.63, 64 features 0.66 at 0.85x the speed; 128 features barely better
  # per step at half the speed; one hourglass 1.3x faster, 0.64 against 0.65 (the VRN's two are kept);
  # depth 4 against 3 (batch 4, 600 steps): 0.685 against 0.673 at the same speed.
  # Two departures from the paper buy steps (2026-11-29, held-out IoU of ~6-minute runs, batch 8): the
  # patchify stem (`models.vrn.PatchifyStem`; the paper's 7x7 stem at 96x96 was a third of the
  # network's CPU time) and the loss on every 4th row and column of each volume, at random offsets
  # (`loss_stride`: an unbiased estimate of the paper's full-volume loss; its targets are decoded only
  # there). Step time 550 -> 367 ms (stride 2) -> 322 ms (stride 4); paper stem and loss, 500 steps:
  # 0.702 (a run on a shared machine); patchify + stride 2, 740 steps in 352 s: 0.766; + stride 4, 800
  # steps: 0.777. (At stride 2: batch 4 for 1,300 steps 0.747, lr 4e-3 0.757.)
  # A third: the hourglasses at 24x24 (body_stride 2, depth 3) instead of 48x48 (depth 4): step 339 ->
  # 225 ms; 1,200 steps in 356 s: 0.796 (against 0.777 in 360 s). A wider head (256 hidden) 0.801 in 433
  # s; re-estimating the BatchNorm statistics over 50 batches after training: no gain (0.795).
  # Tried and not kept (1,200-step races against 0.798, 2026-11-29, evening): batch 16 for the same
  # examples (600 steps; 9% more examples/s) 0.779; a pooled whole-image feature added after the
  # hourglasses 0.803, but with seed 1 0.7923 against 0.7922: the seed alone moves a race by 0.005;
  # the cosine schedule (2e-3 down to 2e-4 over the run) 0.784. (2026-11-30) Intermediate supervision (a
  # volume head after the first hourglass, its loss added): 0.7925 in 406 s, slower and no better; 48
  # features for the same time (1,490 steps, 383 s; 24% more examples/s): 0.790.
  # (2026-11-30, second session; 1,200-step races as above) Kept: no augmentation 0.807 (against 0.798)
  # and then loss_stride 8 0.814 (see below); at 2,800 steps those two made 0.820 -> 0.845 (first 64 test
  # faces; 0.837 on the first 256), and 0.840 (0.834) in the main job after the loss change. Not kept
  # (with the augmentation, against 0.798): a head whose logits are s * min(front - z, z - back) from 3
  # outputs per pixel (the targets' per-column hull has IoU 0.999 with them) 0.780; Adam (lr 1e-3)
  # 0.754; the 48x48 merge module replaced by a 1x1 projection (1.3x faster step; 1,575 steps in the
  # same time) 0.796. And 3,200 steps instead of 2,800: 0.837 (0.835 on 256 faces), no better. A sharp
  # 0/1 volume sampled at 48x48 and upsampled as the head's logits are has IoU 0.95 with the target: the
  # 48x48 head is not what limits the model (its own prediction is closer to the target than that).
  config.model = default_model_config()
  config.model.features = 64
  config.model.depth = 3
  config.model.stem = "patchify"
  config.model.body_stride = 2

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

  # Off: in a run of 5.6 epochs the model underfits rather than overfits (2,800 steps with the mild
  # ranges below: held-out IoU 0.825, training faces 0.836), and the augmented images are resampled
  # (blurred) where the test images are not. 1,200-step races: 0.807 off against 0.798 on (2026-11-30).
  # The ranges, milder than the paper's (+-45 deg, +-15 px, 0.85-1.15, colour 0.6-1.4; configs/vrn.py
  # keeps those), apply with `--config.augment.enabled=True`; short runs with them earlier: the paper's
  # ranges 0.56 against 0.57 (32 features, lr 1e-3, 300 steps).
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

  # RMSProp as in the paper (lr 1e-4, x0.1 after 40 epochs). Torch7's optim.rmsprop defaults: alpha
  # (decay) 0.99, epsilon 1e-8 added *outside* the square root. The small CPU model uses a larger rate
  # (32 features, 300 steps: 1e-3 0.57, 2e-3 0.63, 4e-3 0.64) and decays after 80% of its run. Neither
  # momentum 0.9 (lr 5e-4) nor the cosine schedule did better (0.64-0.65 against 0.65); at batch 4,
  # depth 3, 600 steps: lr 3e-3 0.677 and bias correction 0.663 (lr 2e-3) / 0.684 (lr 4e-3) against
  # 0.673 -- one run each, differences of about 0.01 that they cannot tell from run-to-run variation,
  # so lr 2e-3 and the Torch7 rule stay for everything but the convolution kernels.
  # Those take Muon's step (`optimizers.create_optimizer`: each kernel's momentum orthogonalised as a
  # (kh*kw*cin, cout) matrix), here all but the patchify stem's first. 1,200-step races (2026-11-30,
  # third session; seed 0, first 64 test faces) against 0.814 with RMSProp alone: Muon rate 0.05 / 0.02
  # / 0.01 with the stem's and the head's last kernels on RMSProp 0.822 / 0.828 / 0.833; with only the
  # stem's 0.834 (0.02) / 0.833 (0.01); with none 0.830 (0.01). The same examples/s as RMSProp.
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

  config.heatmap_loss_weight = 1.0  # VRN-Multitask / VRN-Guided landmark heads
  # The loss on rows oy + 8i and columns ox + 8j of each example's volume, (oy, ox) uniform: 1/64 of the
  # voxels, every voxel equally likely (1 = all of them, the paper's; configs/vrn*.py). Stride 8 against
  # 4 (no augmentation, 1,200 steps): 0.814 against 0.807, and a step 193 -> 171 ms.
  config.loss_stride = 8
  # > 0: evaluate (and save) an exponential moving average of the weights. Same 1,200-step run: 0.7977
  # with the average at 0.995, 0.7959 with the weights themselves.
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
    config.model.features = 8
    config.model.depth = 2
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
  elif arg:
    raise ValueError(f"configs/default.py: unknown argument {arg!r}; expected nothing, 'test' or "
                     "'multitask'.")
  return config
