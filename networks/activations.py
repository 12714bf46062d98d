"""Hidden-layer pre-activations of a Q-network, read from the `"preactivations"` collection, and the dormancy
score of a layer's units: what the plasticity probes measure and the ReDo remedy acts on.

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
import numpy as np
from flax import traverse_util

from networks.torsos import PREACTIVATION_SUFFIX, PREACTIVATIONS, fourier_features

# Sokar et al.'s reference code (google/dopamine, labs/redo) adds this to the layer mean before dividing.
_DORMANT_EPS = 1e-9


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


def layer_outputs(preactivation: chex.Array, activation: str = "relu") -> jax.Array:
  """A hidden layer's output from its sown value (networks/torsos.py: norm_relu): relu of it for relu and crelu
  (crelu's sown value is concat(x, -x)), concat(sin, cos) of it for fourier; [N, ..., units]."""
  if activation == "fourier":
    return fourier_features(jnp.asarray(preactivation))
  return jnp.maximum(preactivation, 0.0)


def penultimate_features(preactivations: Mapping[str, chex.Array], activation: str = "relu") -> jax.Array:
  """The last hidden layer's output: float32[N, D], equal to `QNetwork.features(obs)`."""
  return layer_outputs(preactivations[penultimate_layer_name(preactivations)], activation)


def _unit_mean(values: jax.Array) -> jax.Array:
  """[N, ..., C] -> [C]: mean over the batch and (conv) spatial positions."""
  return jnp.mean(values, axis=tuple(range(values.ndim - 1)))


def dormant_scores(activations: chex.Array) -> jax.Array:
  """Per-unit dormancy scores float32[C] (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep
  Reinforcement Learning", definition 3.1).

  score_i = E_x |h_i(x)| / ((1/H) sum_k E_x |h_k(x)| + 1e-9) over the H units of the layer, where E_x
  averages over the batch and, for conv layers [N, H, W, C], over spatial positions (a unit is a channel).
  `activations` are a layer's outputs (`layer_outputs`), shape [N, C] or [N, H, W, C]; their absolute values
  are scored, which for ReLU outputs is the outputs themselves and for Fourier features Plasticine's |sin|, |cos|
  (plasticine_metrics/units.py:60-61 at aa00b4b).
  """
  if np.ndim(activations) < 2:
    raise ValueError(f"activations must be [N, ..., C], got shape {np.shape(activations)}")
  per_unit = _unit_mean(jnp.abs(jnp.asarray(activations, jnp.float32)))
  return per_unit / (jnp.mean(per_unit) + _DORMANT_EPS)
