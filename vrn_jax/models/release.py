"""The released VRN's hourglass (`ReleaseLevel`) and the map from the released weights to ours.

The quirk. Newell et al.'s hourglass, which the paper cites, recurses in the *lower* branch: every level
pools once more, so depth 4 on a 48x48 input reaches 3x3. The released vrn-unguided model recurses in
the *upper* branch instead:

  level(n) = upper + lower,
    upper = Res, Res, Res, then (n > 1) level(n-1), Res          -- all at the input resolution
    lower = maxpool2, 6 Res (9 at n = 1), nearest upsample x2      -- one pooling only

so every lower branch sits at half the hourglass input (24x24 for the 48x48 stem output) and the
multi-scale pyramid the paper describes never forms. It is also much heavier (42 residual modules in
level(4) instead of Newell's 13; 19,184,968 parameters, ~49 GFLOP per 192x192 image). We keep it only to
load the released weights; `topology='standard'` is the default for training.

Mapping rule from our Flax names to the state-dict keys of the public PyTorch port
(`shared/reference/vrn_unguided_torch_state_dict.tsv`; that port keeps torch7's nn.Sequential nesting,
so a key is a path of child indices; parameter-free layers (ReLU, pool, CAddTable, upsample) still take
an index):

  VRN                        top-level Sequential
    stem/conv, stem/bn         0, 1                (2: ReLU)
    stem/res_0, res_1, res_2   3, 5, 6             (4: maxpool)
    hourglass_i                {7 + 2i}.1          ({7+2i} = ConcatTable(Identity, HG), {8+2i} = CAddTable)
    head/hidden_conv, _bn      11.0.0.0, 11.0.0.1  (11.0.0.2: ReLU)
    head/out                   11.0.1              (11.1: bilinear upsample)
  HourglassBlock at H
    level                      H.0                 (H.1: the level's CAddTable)
    res                        H.2
    post_a_conv, post_a_bn     H.3.0, H.3.1        (H.3.2: ReLU)
    post_b_conv, post_b_bn     H.4.0, H.4.1
  ReleaseLevel at L           L = ConcatTable(upper Sequential L.0, lower Sequential L.1)
    upper_j (j = 0, 1, 2)      L.0.j
    inner (level n-1)          L.0.3.0             (L.0.3 = Sequential(level, CAddTable, Res))
    inner_res                  L.0.3.2
    lower_j                    L.1.{j + 1}         (L.1.0: maxpool; last: upsample)
  Residual at R               R.0 = ConcatTable(main Sequential R.0.0, skip Sequential R.0.1); R.1 = CAddTable
    bn1, conv1                 R.0.0.0, R.0.0.2    (ReLUs at R.0.0.1, .4, .7)
    bn2, conv2                 R.0.0.3, R.0.0.5
    bn3, conv3                 R.0.0.6, R.0.0.8
    skip                       R.0.1.0             (only where channels change; identity skips have none)
  Leaves: conv weight (O, I, kh, kw) -> params/.../kernel (kh, kw, I, O), transpose (2, 3, 1, 0);
          conv bias -> params/.../bias; BN weight -> params/.../scale, bias -> params/.../bias,
          running_mean -> batch_stats/.../mean, running_var -> batch_stats/.../var;
          num_batches_tracked has no counterpart.
"""

from typing import NamedTuple

import flax.linen as nn
import jax

from vrn_jax.models.layers import ModuleDef, Residual, max_pool2, upsample_nearest2

UPPER_BLOCKS = 3  # Res modules before the recursion in the upper branch
LOWER_BLOCKS = 6  # Res modules in the lower branch...
LOWER_BLOCKS_INNERMOST = 9  # ...and at level 1, where no recursion follows


class ReleaseLevel(nn.Module):
  """The released VRN's hourglass level(n): recursion in the upper branch (see the module docstring).

  Attributes:
    depth: n >= 1 (4 in the release).
    features: channels (256 in the release).
  """
  depth: int
  features: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, features) -> (B, H, W, features); H, W even. The lowest resolution is H/2."""
    res = lambda name: Residual(self.features, self.conv, self.norm, name=name)
    upper = x
    for j in range(UPPER_BLOCKS):
      upper = res(f"upper_{j}")(upper)
    if self.depth > 1:
      upper = ReleaseLevel(self.depth - 1, self.features, self.conv, self.norm, name="inner")(upper)
      upper = res("inner_res")(upper)
    lower = max_pool2(x)
    for j in range(LOWER_BLOCKS if self.depth > 1 else LOWER_BLOCKS_INNERMOST):
      lower = res(f"lower_{j}")(lower)
    return upper + upsample_nearest2(lower)


class ParamTarget(NamedTuple):
  """Where one tensor of the released state dict goes in our variables.

  collection: 'params' or 'batch_stats'.
  path: key path inside that collection, e.g. ('stem', 'conv', 'kernel').
  transpose: axes permutation turning the PyTorch array into ours ((2, 3, 1, 0): OIHW -> HWIO), or None.
  """
  collection: str
  path: tuple[str, ...]
  transpose: tuple[int, ...] | None


_OIHW_TO_HWIO = (2, 3, 1, 0)


def conv_targets(key: str, path: tuple[str, ...]) -> dict[str, ParamTarget]:
  return {f"{key}.weight": ParamTarget("params", path + ("kernel",), _OIHW_TO_HWIO),
          f"{key}.bias": ParamTarget("params", path + ("bias",), None)}


def bn_targets(key: str, path: tuple[str, ...]) -> dict[str, ParamTarget]:
  return {f"{key}.weight": ParamTarget("params", path + ("scale",), None),
          f"{key}.bias": ParamTarget("params", path + ("bias",), None),
          f"{key}.running_mean": ParamTarget("batch_stats", path + ("mean",), None),
          f"{key}.running_var": ParamTarget("batch_stats", path + ("var",), None)}


def _residual(key: str, path: tuple[str, ...], has_skip: bool) -> dict[str, ParamTarget]:
  out = {}
  for bn, conv, index in (("bn1", "conv1", 0), ("bn2", "conv2", 3), ("bn3", "conv3", 6)):
    out |= bn_targets(f"{key}.0.0.{index}", path + (bn,))
    out |= conv_targets(f"{key}.0.0.{index + 2}", path + (conv,))
  if has_skip:
    out |= conv_targets(f"{key}.0.1.0", path + ("skip",))
  return out


def _level(key: str, path: tuple[str, ...], depth: int) -> dict[str, ParamTarget]:
  out = {}
  for j in range(UPPER_BLOCKS):
    out |= _residual(f"{key}.0.{j}", path + (f"upper_{j}",), False)
  if depth > 1:
    out |= _level(f"{key}.0.3.0", path + ("inner",), depth - 1)
    out |= _residual(f"{key}.0.3.2", path + ("inner_res",), False)
  for j in range(LOWER_BLOCKS if depth > 1 else LOWER_BLOCKS_INNERMOST):
    out |= _residual(f"{key}.1.{j + 1}", path + (f"lower_{j}",), False)
  return out


def release_param_paths(num_hourglasses: int = 2, depth: int = 4) -> dict[str, ParamTarget]:
  """Every tensor of the released vrn-unguided state dict (PyTorch port) -> where it goes in `VRN`.

  For `VRN(topology='release', features=256, num_hourglasses=2, depth=4)`, the default arguments cover
  every key of `vrn_unguided_torch_state_dict.tsv` except the `num_batches_tracked` counters, each once.
  Apply as `np.transpose(torch_array, t.transpose)` when `t.transpose` is not None.

  Returns:
    {torch key: ParamTarget(collection, path, transpose)}, in state-dict order.
  """
  out = conv_targets("0", ("stem", "conv")) | bn_targets("1", ("stem", "bn"))
  out |= _residual("3", ("stem", "res_0"), True)   # 64 -> 128
  out |= _residual("5", ("stem", "res_1"), False)  # 128 -> 128, after the maxpool at 4
  out |= _residual("6", ("stem", "res_2"), True)   # 128 -> 256
  for i in range(num_hourglasses):
    key, path = f"{7 + 2 * i}.1", (f"hourglass_{i}",)
    out |= _level(f"{key}.0", path + ("level",), depth)
    out |= _residual(f"{key}.2", path + ("res",), False)
    out |= conv_targets(f"{key}.3.0", path + ("post_a_conv",)) | bn_targets(f"{key}.3.1", path + ("post_a_bn",))
    out |= conv_targets(f"{key}.4.0", path + ("post_b_conv",)) | bn_targets(f"{key}.4.1", path + ("post_b_bn",))
  head = str(7 + 2 * num_hourglasses)
  out |= conv_targets(f"{head}.0.0.0", ("head", "hidden_conv")) | bn_targets(f"{head}.0.0.1", ("head", "hidden_bn"))
  out |= conv_targets(f"{head}.0.1", ("head", "out"))
  return out
