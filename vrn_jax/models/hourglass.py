"""Hourglass modules: Newell et al.'s recursive hourglass (the paper's reference) and the block around it.

`HourglassBlock` is what VRN stacks (`x + HourglassBlock(x)`): one hourglass level with its sum, one
residual module and two conv1x1-BN-ReLU, exactly the released model's block. The level inside is either
`StandardLevel` (default, for training) or `release.ReleaseLevel` (the released weights' topology).
"""

import flax.linen as nn
import jax

from vrn_jax.models.layers import ModuleDef, Residual, conv_bn_relu, max_pool2, upsample_nearest2
from vrn_jax.models.release import ReleaseLevel

TOPOLOGIES = ("standard", "release")


class StandardLevel(nn.Module):
  """Newell et al.'s hourglass level(n), recursion in the lower branch.

  upper = Res(x); lower = upsample2(Res(level(n-1) or Res)(Res(maxpool2(x)))); out = upper + lower.
  Depth 4 on the 48x48 stem output reaches 3x3.

  Attributes:
    depth: n >= 1.
    features: channels (kept throughout).
  """
  depth: int
  features: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, features) -> (B, H, W, features); H, W divisible by 2**depth."""
    res = lambda name: Residual(self.features, self.conv, self.norm, name=name)
    upper = res("upper")(x)
    lower = res("lower_in")(max_pool2(x))
    if self.depth > 1:
      lower = StandardLevel(self.depth - 1, self.features, self.conv, self.norm, name="inner")(lower)
    else:
      lower = res("inner")(lower)
    lower = res("lower_out")(lower)
    return upper + upsample_nearest2(lower)


class HourglassBlock(nn.Module):
  """level(depth) with its sum, Res, conv1x1-BN-ReLU, conv1x1-BN-ReLU (the released block, minus `x +`).

  Attributes:
    topology: 'standard' (Newell) or 'release' (the released VRN's upper-branch recursion).
    depth: hourglass recursion depth (4 in the paper and the release).
    features: channels.
  """
  topology: str
  depth: int
  features: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, features) -> (B, H, W, features), non-negative (ends in ReLU)."""
    if self.topology == "standard":
      level = StandardLevel(self.depth, self.features, self.conv, self.norm, name="level")
    elif self.topology == "release":
      level = ReleaseLevel(self.depth, self.features, self.conv, self.norm, name="level")
    else:
      raise ValueError(f"unknown hourglass topology {self.topology!r}; expected one of {TOPOLOGIES}")
    x = level(x)
    x = Residual(self.features, self.conv, self.norm, name="res")(x)
    x = conv_bn_relu(x, self.features, self.conv, self.norm, name="post_a")
    return conv_bn_relu(x, self.features, self.conv, self.norm, name="post_b")
