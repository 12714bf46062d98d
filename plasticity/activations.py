"""Hidden-layer pre-activations of a Q-network, read from the `"preactivations"` collection.

Every torso in `networks/torsos.py` sows the value entering each hidden ReLU
(after its LayerNorm, when there is one) as `<layer>_preact`: layers `conv0`..`conv2`,
`dense0` (Nature CNN); `stage{s}_block{b}_in`, `stage{s}_block{b}_conv0`,
`stages_out`, `dense0` (IMPALA); `dense{i}` (MLP). The last one feeds the head:
its ReLU is the penultimate-layer features `QNetwork.features` returns.
"""

from __future__ import annotations

from typing import Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from networks.torsos import PREACTIVATION_SUFFIX, PREACTIVATIONS


def hidden_preactivations(network: nn.Module, params: chex.ArrayTree, obs: chex.Array) -> dict[str, jax.Array]:
  """Layer name -> pre-activation float32[N, ..., units], in the order the network computes them.

  Args:
    network: a `QNetwork` (or a bare torso) whose hidden ReLUs sow into `"preactivations"`.
    params: its variables, `{"params": ...}`, as `network.init` returns them.
    obs: a batch of observations [N, ...] (uint8 pixels or float vectors).

  Returns:
    [N, H, W, C] for conv layers, [N, units] for dense layers; names relative to the torso
    (`conv0`, not `torso/conv0`). Called outside `jax.jit` on purpose: a jitted function
    returns dicts with sorted keys, which would lose the layer order.
  """
  _, state = network.apply(params, obs, mutable=[PREACTIVATIONS])
  recorded = traverse_util.flatten_dict(dict(state[PREACTIVATIONS]))
  preactivations = {}
  for path, values in recorded.items():
    if len(values) != 1:  # sow appends one entry per call; the torso runs once per apply
      raise ValueError(f"layer {'/'.join(path)} was recorded {len(values)} times in one apply")
    path = path[1:] if path[0] == "torso" else path
    name = "/".join(path)
    preactivations[name.removesuffix(PREACTIVATION_SUFFIX)] = values[0]
  return preactivations


def penultimate_layer_name(preactivations: Mapping[str, chex.Array]) -> str:
  """The name of the last hidden layer (the one the head reads), e.g. `dense0` for Nature/IMPALA."""
  if not preactivations:
    raise ValueError("no pre-activations were recorded")
  return list(preactivations)[-1]


def penultimate_features(preactivations: Mapping[str, chex.Array]) -> jax.Array:
  """relu of the last hidden pre-activation: float32[N, D], equal to `QNetwork.features(obs)`."""
  return jnp.maximum(preactivations[penultimate_layer_name(preactivations)], 0.0)
