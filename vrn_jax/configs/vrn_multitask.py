"""VRN-Multitask at the paper's size: three hourglasses, the first shared, feeding a 68-landmark heatmap
head and the volume head."""

from vrn_jax.configs import vrn


def get_config(arg: str | None = None):
  config = vrn.get_config(arg)
  config.model.variant = "vrn_multitask"
  config.model.num_shared_hourglasses = 1
  return config
