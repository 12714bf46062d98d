"""The transition contract (docs/design.md, "Data contracts"): what one n-step transition is, how the replay
stores it and how the learner sees it. The writer, the server, the sampler, the probe inputs and the learner all
take their field names and layouts from here.

Stored (one Reverb item of the `replay` table): frames stacked on the leading axis, `uint8[S, H, W]`, because the
writer references S single-frame cells per observation. On the device (the learner's `Transition`): channels-last
`uint8[..., H, W, S]`, as the networks and `AtariEnv` use them. The sampler moves the axis on the device, after the
copy (`to_device_layout`).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

import chex
import jax.numpy as jnp
import numpy as np


class Transition(NamedTuple):
  """A batch of n-step transitions, leading axis [B] (or [K, B] with updates_per_call = K)."""

  obs_tm1: chex.Array  # uint8[B, 84, 84, 4] (or float[B, D] for vector observations)
  a_tm1: chex.Array  # int32[B]
  r_t: chex.Array  # float32[B], n-step discounted sum of clipped rewards
  discount_t: chex.Array  # float32[B], gamma^n, 0 at a terminal
  obs_t: chex.Array  # same as obs_tm1
  weight: Optional[chex.Array] = None  # float32[B] importance weights (prioritized replay); None = 1


OBSERVATION_FIELDS = ("obs_tm1", "obs_t")
"""The fields that hold a stacked observation."""
SCALAR_FIELDS = ("a_tm1", "r_t", "discount_t")
"""The fields that hold one number per transition, in the order `scalars` takes them."""
STORED_FIELDS = Transition._fields[:5]
"""The fields one replay item holds; `weight` is not stored (the sampler computes it from the sampling
probabilities)."""
SCALAR_DTYPES = {"a_tm1": np.int32, "r_t": np.float32, "discount_t": np.float32}


class Bounds(NamedTuple):
  """What one transition of a job can hold: |r_t| <= max_abs_return (inf when rewards are not clipped),
  0 <= discount_t <= 1, 0 <= a_tm1 < num_actions."""

  max_abs_return: float
  num_actions: int


def bounds(n_step: int, discount: float, clip_rewards: bool, max_abs_reward: float, num_actions: int) -> Bounds:
  """The bounds of a job's transitions: with clipped rewards, r_t = sum_{k<m} gamma^k clip(R) (agents/dqn/n_step.py)
  is at most max_abs_reward * sum_{k<n} gamma^k in size."""
  max_abs_return = max_abs_reward * sum(discount**k for k in range(n_step)) if clip_rewards else float("inf")
  return Bounds(max_abs_return, num_actions)


def clamp_to_bounds(data: dict[str, np.ndarray], limits: Bounds) -> int:
  """Clamps the scalar fields of sampled stored items (`data`, field -> array [..., B]) into `limits`, in place of
  the arrays; returns how many transitions were outside. Anyone who reaches the replay port can insert an item
  (docs/run_directory.md, "Who can reach a job"): this keeps one from steering the loss beyond what the job's own
  transitions can. Inside the bounds nothing changes; NaN counts as outside and becomes 0."""
  rewards = data["r_t"].astype(np.float64)
  discounts = data["discount_t"].astype(np.float64)
  actions = data["a_tm1"]
  slack = 1.0 + 1e-6  # r_t is the float32 of a float64 sum
  outside = ~(np.abs(rewards) <= limits.max_abs_return * slack) | ~((discounts >= 0) & (discounts <= 1)) | (
      (actions < 0) | (actions >= limits.num_actions))
  count = int(outside.sum())
  if count:
    limit = limits.max_abs_return
    data["r_t"] = np.clip(np.nan_to_num(rewards, nan=0.0), -limit, limit).astype(np.float32)
    data["discount_t"] = np.clip(np.nan_to_num(discounts, nan=0.0), 0.0, 1.0).astype(np.float32)
    data["a_tm1"] = np.clip(actions, 0, limits.num_actions - 1).astype(actions.dtype)
  return count


def scalars(action: int, r_t: float, discount_t: float) -> dict[str, Any]:
  """The scalar fields of one transition as the writer appends them: {a_tm1, r_t, discount_t}, typed."""
  return {name: SCALAR_DTYPES[name](value) for name, value in zip(SCALAR_FIELDS, (action, r_t, discount_t))}


def stored_shapes(obs_shape: tuple[int, int, int]) -> dict[str, tuple[tuple[int, ...], type]]:
  """Field -> (shape, dtype) of one stored item for observations `obs_shape` = (height, width, stack)."""
  height, width, stack = obs_shape
  frames = ((stack, height, width), np.uint8)
  return {name: frames if name in OBSERVATION_FIELDS else ((), SCALAR_DTYPES[name]) for name in STORED_FIELDS}


def reverb_signature(obs_shape: tuple[int, int, int]) -> dict:
  """The `replay` table's signature: `stored_shapes` as TensorSpecs."""
  import tensorflow as tf  # only the replay server needs TensorFlow; the agent imports without it

  return {name: tf.TensorSpec(shape, tf.as_dtype(dtype)) for name, (shape, dtype) in stored_shapes(obs_shape).items()}


def from_stored(data: Mapping[str, Any], weight: Optional[Any] = None) -> Transition:
  """A `Transition` of stored fields (frames still [..., S, H, W]), with the importance weights if any."""
  return Transition(**{name: data[name] for name in STORED_FIELDS}, weight=weight)


def to_device_layout(transition: Transition) -> Transition:
  """Stored frames [..., S, H, W] -> channels-last [..., H, W, S], as the networks expect; jit it on the device."""
  return transition._replace(**{name: jnp.moveaxis(getattr(transition, name), -3, -1) for name in OBSERVATION_FIELDS})


def host_fields(transition: Transition) -> dict[str, Any]:
  """The stored fields of a (device) transition by name, as the probe inputs keep them."""
  return {name: getattr(transition, name) for name in STORED_FIELDS}
