"""VRN at the paper's size: two hourglasses of 256 features, no intermediate supervision; RMSProp at
1e-4, 1e-5 after 40 epochs. `:release` uses the released model's hourglass topology."""

from vrn_jax.configs import default


def get_config(arg: str | None = None):
  config = default.get_config()
  config.model.variant = "vrn"
  config.model.features = 256
  config.model.depth = 4
  config.model.topology = "release" if arg == "release" else "standard"
  config.model.stem = "conv7x7"  # the paper's and the release's stem (the CPU default's is cheaper)
  config.model.body_stride = 1   # hourglasses at 48x48 (the CPU default runs them at 24x24)
  config.model.head_upsample = "logits"  # the paper's and the release's head (the CPU default's differs)
  config.loss_stride = 1         # the loss on every voxel of every example, as in the paper
  config.thin_column_weight = 1.0  # and every voxel weighted alike
  config.relief_weight = 1.0
  config.iou_loss_weight = 0.0     # nor the soft IoU beside it: the paper's loss alone
  config.smooth_z_voxels = 0.0     # meshes from the network's own soft volume, as the release's
  config.test_time_flip = False    # one forward pass per crop, as the release's
  config.ema_decay = 0.0         # the paper evaluates the trained weights themselves
  # The paper's optimisation and augmentation, whatever the CPU default uses (DESIGN.md section 1).
  config.optim.name = "rmsprop"
  config.optim.learning_rate = 1e-4
  config.optim.schedule = "step"
  config.optim.decay_epochs = (40.0,)
  config.optim.decay_factor = 0.1
  config.optim.momentum = 0.0
  config.augment.update(dict(enabled=True, rotation_deg=45.0, translation_px=15.0, scale_range=(0.85, 1.15),
                             flip_probability=0.2, colour_range=(0.6, 1.4), brightness=0.0,
                             contrast_range=(1.0, 1.0), saturation_range=(1.0, 1.0), blur_sigma_px=0.0,
                             noise_std=0.0, occlusion_probability=0.0))
  config.num_epochs = 50.0
  config.global_batch_size = 32
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.eval_examples = -1
  config.eval_batch_size = 32
  config.data.num_threads = 8
  if arg not in (None, "release"):
    raise ValueError(f"configs/vrn.py: unknown argument {arg!r}; expected nothing or 'release'.")
  return config
