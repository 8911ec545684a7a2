"""Optimisers and learning-rate schedules: Torch7's RMSProp (the paper's) and Muon for the convolution
kernels (the CPU default), the step and cosine schedules, and the weights' moving average decay."""

from __future__ import annotations

import math

import flax
import jax
import optax

from vrn_jax.errors import InputError


def schedule_kind(config) -> str:
  """config.optim.schedule, checked: 'step' or 'cosine' (InputError otherwise)."""
  # .get: configs saved before these fields existed (an older workdir's config.json) mean the defaults.
  kind = config.optim.get("schedule", "step")
  if kind not in ("step", "cosine"):
    raise InputError(f"config optim.schedule {kind!r}: expected 'step' or 'cosine'.")
  return kind


def learning_rate_schedule(config, steps_per_epoch: int, num_steps: int | None = None):
  """optim.schedule 'step' (the paper's: x decay_factor after each of decay_epochs) or 'cosine' (from
  learning_rate down to learning_rate * decay_factor over the run's num_steps)."""
  kind = schedule_kind(config)
  if kind == "cosine":
    if not num_steps:
      raise ValueError("the cosine schedule needs the run's number of steps")
    return optax.cosine_decay_schedule(config.optim.learning_rate, num_steps,
                                       alpha=config.optim.decay_factor)
  boundaries = {int(round(e * steps_per_epoch)): config.optim.decay_factor
                for e in config.optim.decay_epochs}
  return optax.piecewise_constant_schedule(config.optim.learning_rate, boundaries)


OPTIMIZERS = ("rmsprop", "muon")


def optimizer_name(config) -> str:
  """config.optim.name, checked: 'rmsprop' (the paper's) or 'muon' (InputError otherwise)."""
  # .get: a workdir's config.json from before the field existed means RMSProp, the only one then.
  name = config.optim.get("name", "rmsprop")
  if name not in OPTIMIZERS:
    raise InputError(f"config optim.name {name!r}: expected one of {', '.join(OPTIMIZERS)}.")
  return name


def create_optimizer(config, schedule) -> optax.GradientTransformation:
  """optim.name 'rmsprop': Torch7's rmsprop (the paper's); 'muon': Muon for the convolution kernels,
  RMSProp for everything else."""
  # optax.rmsprop with eps outside the root and decay 0.99 is Torch7's optim.rmsprop:
  #   m = alpha m + (1 - alpha) g^2;  x -= lr g / (sqrt(m) + eps).
  # momentum > 0 adds heavy-ball momentum on the scaled step (PyTorch's RMSprop(momentum=...)).
  rmsprop = optax.rmsprop(schedule, decay=config.optim.rmsprop_decay, eps=config.optim.eps,
                          eps_in_sqrt=config.optim.eps_in_sqrt,
                          initial_scale=config.optim.initial_mean_square,
                          momentum=config.optim.get("momentum", 0.0) or None)
  if optimizer_name(config) == "rmsprop":
    return rmsprop
  # Muon (K. Jordan et al., 2024; optax.contrib): a kernel's Nesterov momentum, viewed as a
  # (kh * kw * cin, cout) matrix, is replaced by its nearest semi-orthogonal matrix (5 Newton-Schulz
  # iterations), scaled by sqrt(max(1, cout / (kh * kw * cin))) and the Muon rate, which follows the
  # same schedule (learning_rate_schedule * muon_learning_rate / learning_rate). BatchNorm parameters,
  # biases and the kernels named in optim.muon_exclude take the RMSProp step (Muon's authors keep the
  # first and the last layer off it; the CPU default keeps only the first: configs/default.py has the
  # races).
  ratio = config.optim.muon_learning_rate / config.optim.learning_rate
  exclude = tuple(config.optim.muon_exclude)

  def labels(params):
    flat = flax.traverse_util.flatten_dict(params)
    kernels = {"/".join(k[:-1]) for k, v in flat.items() if v.ndim == 4}
    if missing := sorted(set(exclude) - kernels):
      raise InputError(f"config optim.muon_exclude: {missing} is not a convolution of this model; "
                       f"its convolutions are e.g. {sorted(kernels)[:3]}.")
    return flax.traverse_util.unflatten_dict(
        {k: "muon" if v.ndim == 4 and "/".join(k[:-1]) not in exclude else "rmsprop"
         for k, v in flat.items()})

  kernel = optax.contrib.MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=(3,))
  # Called with the Muon part of the tree only (the rest is masked out): every leaf there is a kernel.
  dimension_numbers = lambda tree: jax.tree.map(lambda _: kernel, tree)

  # optax.contrib.muon's own width scaling (`_muon.scale_by_shape`) is not exported by optax 0.2.8.
  def width_scale(updates, params=None):
    del params
    return jax.tree.map(lambda u: u * max(1.0, u.shape[3] / math.prod(u.shape[:3])) ** 0.5, updates)

  muon = optax.chain(
      optax.contrib.scale_by_muon(beta=config.optim.muon_beta, nesterov=True,
                                  weight_dimension_numbers=dimension_numbers),
      optax.stateless(width_scale),
      optax.scale_by_learning_rate(lambda step: schedule(step) * ratio))
  return optax.partition({"muon": muon, "rmsprop": rmsprop}, labels)


def ema_decay(config) -> float:
  """config.ema_decay (0 when absent: configs saved before it existed), checked: 0 (off) or in (0, 1)."""
  decay = config.get("ema_decay", 0.0)
  if not 0.0 <= decay < 1.0:
    raise InputError(f"config ema_decay {decay!r}: expected 0 (no average) or a decay in (0, 1).")
  return decay

