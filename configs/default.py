"""Default config: a small VRN that trains on a laptop/CI CPU in minutes (`python run_train.py`).

`--config=configs/default.py:test` shrinks everything to a few seconds (smoke tests). Paper-size variants:
configs/vrn.py, configs/vrn_multitask.py, configs/vrn_guided.py. Any field can be overridden on the command
line, e.g. `--config.optim.learning_rate=3e-4`.
"""

import ml_collections

from vrn_jax.models import default_model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # A reduced VRN: two standard hourglasses of 32 features, depth 3. The output is always the full
  # 192x192x200 volume and the loss is taken on all of it.
  config.model = default_model_config()
  config.model.features = 32
  config.model.depth = 3

  config.data = ml_collections.ConfigDict(dict(
      data_dir="~/tensorflow_datasets",
      config="synthetic",      # vrn_faces config: 'synthetic' | '300w_lp' (train) / 'aflw2000_3d' (eval)
      train_split="train",
      eval_config="synthetic",
      eval_split="test",
      build_if_missing=True,   # build the synthetic set (no download) when it is not there yet
      num_threads=2,           # host reader threads
  ))

  config.augment = ml_collections.ConfigDict(dict(
      enabled=True,
      rotation_deg=45.0,
      translation_px=15.0,
      scale_range=(0.85, 1.15),
      flip_probability=0.2,
      colour_range=(0.6, 1.4),
  ))

  # RMSProp as in the paper (lr 1e-4, x0.1 after 40 epochs). Torch7's optim.rmsprop defaults: alpha
  # (decay) 0.99, epsilon 1e-8 added *outside* the square root. The small CPU model uses a larger rate and
  # decays after most of its short run.
  config.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-3,
      decay_epochs=(0.8,),     # epochs after which the rate is multiplied by decay_factor
      decay_factor=0.1,
      rmsprop_decay=0.99,
      eps=1e-8,
      eps_in_sqrt=False,       # Torch7: g / (sqrt(ms) + eps)
      # Torch7's initialMean (default 0). With 0 the first steps are ~ +-10 lr sign(g) whatever |g|, so
      # gradient components that are pure rounding noise (biases of convolutions followed by BatchNorm)
      # take full-size random steps.
      initial_mean_square=0.0,
  ))

  config.heatmap_loss_weight = 1.0  # VRN-Multitask / VRN-Guided landmark heads
  config.global_batch_size = 8
  config.num_epochs = 1.0
  config.num_train_steps = -1       # > 0: overrides num_epochs
  config.log_every_steps = 25
  config.checkpoint_every_steps = 250
  config.keep_checkpoints = 3
  config.eval_examples = 64         # held-out examples for the IoU printed at the end (-1: all)
  config.eval_batch_size = 8
  config.seed = 0
  config.distributed = False        # call jax.distributed.initialize() (multi-host)

  if arg == "test":
    config.model.features = 8
    config.model.depth = 2
    config.global_batch_size = 4
    config.num_train_steps = 3
    config.log_every_steps = 1
    config.checkpoint_every_steps = 3
    config.eval_examples = 4
    config.eval_batch_size = 4
  elif arg:
    raise ValueError(f"configs/default.py: unknown argument {arg!r}; expected nothing or 'test'.")
  return config
