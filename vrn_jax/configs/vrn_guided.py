"""VRN-Guided at the paper's size: a stacked-hourglass landmark detector, and a volume network on RGB + 68
heatmaps; ground-truth landmarks when training, detected ones at test time."""

from vrn_jax.configs import vrn


def get_config(arg: str | None = None):
  config = vrn.get_config(arg)
  config.model.variant = "vrn_guided"
  config.model.num_detector_hourglasses = 2
  return config
