"""The default recipe, trained three times as long: 8,400 steps (16.8 epochs of the 4,000 synthetic
faces), the rate decayed x0.1 after 80% of them as in the default. `:multitask` as in configs/default.py.
Its figures (time on 2 CPU cores, held-out IoU, the real-photo measurements) are in BENCHMARKS.md."""

from vrn_jax.configs import default


def get_config(arg: str | None = None):
  config = default.get_config(arg)
  config.num_epochs = 16.8
  config.optim.decay_epochs = (13.44,)
  return config
