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
