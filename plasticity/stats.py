"""Representation and weight statistics of the plasticity probes; pure functions of arrays.

Activation statistics take one layer's array (`[N, units]` for dense layers,
`[N, H, W, C]` for conv layers, where a unit is a channel) or, in their
`network_*` form, the ordered mapping `networks.activations.hidden_preactivations`
returns (layer name -> pre-activation). Weight statistics take a Flax variables
tree (`{"params": {"torso": {"conv0": {"kernel", "bias"}, ...}, "head": ...}}`, the
leading `"params"` is optional) and name layers by their path without it
(`torso/conv0`, `torso/conv0_ln`, `head`).

Every function returns Python numbers (or dicts of them), ready for a JSON row.
"""

from __future__ import annotations

from typing import Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from networks.activations import dormant_scores, layer_outputs
from networks.torsos import LAYER_NORM_SUFFIX

PARAMS_COLLECTION = "params"


# ----------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------


def srank(features: chex.Array, delta: float = 0.01) -> int:
  """Effective rank of a feature matrix (Kumar et al. 2021, "Implicit Under-Parameterization Inhibits
  Data-Efficient Deep Reinforcement Learning").

  With singular values sigma_1 >= ... >= sigma_d of `features` [N, D]:
    srank_delta = min { k : sum_{i<=k} sigma_i / sum_i sigma_i >= 1 - delta }.
  Computed in float64 on the host. An all-zero matrix (every unit dead) has srank 0.
  """
  chex.assert_rank(features, 2)
  if not 0.0 <= delta < 1.0:
    raise ValueError(f"delta={delta} must be in [0, 1)")
  singular_values = np.linalg.svd(np.asarray(features, np.float64), compute_uv=False)
  total = singular_values.sum()
  if total <= 0.0:
    return 0
  cumulative = np.cumsum(singular_values) / total
  # As in the paper's code: the first index whose cumulative share reaches the threshold.
  return int(np.argmax(cumulative >= 1.0 - delta)) + 1


def effective_rank(features: chex.Array) -> float:
  """Effective rank of a feature matrix (Roy & Vetterli 2007, "The Effective Rank: a Measure of Effective
  Dimensionality"): exp of the Shannon entropy (natural log) of the normalised singular values.

  With singular values sigma_i of `features` [N, D] and p_i = sigma_i / sum_k sigma_k:
    erank = exp(-sum_i p_i log p_i), where 0 log 0 = 0.
  A real number in [1, min(N, D)]; computed in float64 on the host. An all-zero matrix has erank 0.
  """
  chex.assert_rank(features, 2)
  singular_values = np.linalg.svd(np.asarray(features, np.float64), compute_uv=False)
  total = singular_values.sum()
  if total <= 0.0:
    return 0.0
  p = singular_values[singular_values > 0.0] / total
  return float(np.exp(-np.sum(p * np.log(p))))


def feature_norm(features: chex.Array) -> float:
  """Mean over examples of the L2 norm of the feature vector: (1/N) sum_n ||phi(x_n)||_2, features [N, D]."""
  chex.assert_rank(features, 2)
  return float(jnp.mean(jnp.linalg.norm(jnp.asarray(features, jnp.float32), axis=-1)))


# ----------------------------------------------------------------------------------------------------------
# Activations: dormant and linearized units
# ----------------------------------------------------------------------------------------------------------


def dormant_fraction(activations: chex.Array, tau: float) -> float:
  """Fraction of tau-dormant units of one layer: score_i <= tau (see `dormant_scores`, Sokar et al. 2023).

  `activations` are post-ReLU, [N, C] or [N, H, W, C]. tau=0 counts units that are exactly 0 on every
  input (dead ReLUs); a layer whose units are all 0 is fully dormant.
  """
  return float(jnp.mean(dormant_scores(activations) <= tau))


def layer_dormant_fractions(preactivations: Mapping[str, chex.Array], tau: float,
                            activation: str = "relu") -> dict[str, float]:
  """Layer name -> tau-dormant fraction of the layer's outputs (Sokar et al. 2023; `layer_outputs`: relu of the
  pre-activation, or its Fourier features)."""
  return {name: dormant_fraction(layer_outputs(values, activation), tau) for name, values in preactivations.items()}


def network_dormant_fraction(preactivations: Mapping[str, chex.Array], tau: float, activation: str = "relu") -> float:
  """Fraction of tau-dormant units over all hidden units of all layers (Sokar et al. 2023).

  Takes pre-activations and applies the nonlinearity itself (`layer_outputs`). Scores are normalised within each layer, as in the
  paper; the fraction pools units over layers: sum_l dormant_l / sum_l units_l.
  """
  dormant = units = 0
  for values in preactivations.values():
    scores = dormant_scores(layer_outputs(values, activation))
    dormant += int(jnp.sum(scores <= tau))
    units += scores.shape[0]
  if units == 0:
    raise ValueError("no hidden layers")
  return dormant / units


def layer_mean_dormant_fraction(preactivations: Mapping[str, chex.Array], tau: float, activation: str = "relu") -> float:
  """Mean over hidden layers of each layer's tau-dormant fraction: Plasticine's convention
  (RLE-Foundation/Plasticine at aa00b4b, plasticine_metrics/units.py:compute_dormant_units, `torch.mean` of the
  per-layer ratios), where `network_dormant_fraction` pools the units. The two differ when layers differ in size:
  a 32-channel conv layer weighs as much here as a 512-unit dense one."""
  if not preactivations:
    raise ValueError("no hidden layers")
  return float(np.mean(list(layer_dormant_fractions(preactivations, tau, activation).values())))


def linearized_mask(preactivation: chex.Array) -> jax.Array:
  """bool[C]: units whose pre-activation is > 0 on every input, so their ReLU acts as the identity.

  For conv layers [N, H, W, C] a channel counts as linearized only when it is positive at every input
  and every spatial position (one negative position anywhere makes it non-linear on this batch).
  """
  if np.ndim(preactivation) < 2:
    raise ValueError(f"pre-activation must be [N, ..., C], got shape {np.shape(preactivation)}")
  values = jnp.asarray(preactivation)
  return jnp.all(values > 0, axis=tuple(range(values.ndim - 1)))


def linearized_fraction(preactivation: chex.Array) -> float:
  """Fraction of one layer's ReLU units that are always active on the batch (see `linearized_mask`).

  An always-active ReLU unit is linear in its input, so the layer loses non-linearity; Lyle et al. 2024
  ("Disentangling the Causes of Plasticity Loss in Neural Networks") track this "linearization"
  alongside dead units. Shape [N, units] or [N, H, W, C].
  """
  return float(jnp.mean(linearized_mask(preactivation)))


def network_linearized_fraction(preactivations: Mapping[str, chex.Array]) -> float:
  """Fraction of always-active units over all hidden units of all layers (pooled over layers)."""
  linear = units = 0
  for values in preactivations.values():
    mask = linearized_mask(values)
    linear += int(jnp.sum(mask))
    units += mask.shape[0]
  if units == 0:
    raise ValueError("no hidden layers")
  return linear / units


def preactivation_stats(preactivation: chex.Array) -> dict[str, float]:
  """Mean and standard deviation over every entry (examples, positions, units) of one layer's pre-activation.

  Lyle et al. 2024 relate growing pre-activation scale (and its drift) to plasticity loss.
  """
  values = jnp.asarray(preactivation, jnp.float32)
  return {"mean": float(jnp.mean(values)), "std": float(jnp.std(values))}


# ----------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------


def _layer_leaves(params: chex.ArrayTree) -> dict[str, dict[str, jax.Array]]:
  """'torso/conv0' -> {'kernel': ..., 'bias': ...}, in tree order; drops a leading 'params' collection."""
  flat = traverse_util.flatten_dict(dict(params))
  layers: dict[str, dict[str, jax.Array]] = {}
  for path, value in flat.items():
    path = tuple(str(part) for part in path)
    if path[0] == PARAMS_COLLECTION:
      path = path[1:]
    if len(path) < 2:
      raise ValueError(f"parameter {'/'.join(path)!r} is not inside a layer")
    layers.setdefault("/".join(path[:-1]), {})[path[-1]] = value
  return layers


def _sum_squares(arrays) -> float:
  return float(sum(jnp.sum(jnp.square(jnp.asarray(a, jnp.float32))) for a in arrays))


def param_norms(params: chex.ArrayTree) -> dict[str, float]:
  """L2 norms of the weights: `total` over every parameter, and one entry per layer (all its leaves, e.g.
  kernel and bias, or a LayerNorm's scale and bias, together) keyed by its path (`torso/conv0`, `head`)."""
  layers = _layer_leaves(params)
  norms = {"total": float(np.sqrt(_sum_squares(v for leaves in layers.values() for v in leaves.values())))}
  for name, leaves in layers.items():
    norms[name] = float(np.sqrt(_sum_squares(leaves.values())))
  return norms


def param_change_norms(params: chex.ArrayTree, previous_params: chex.ArrayTree) -> dict[str, float]:
  """||theta - theta_prev||_2 in total and per layer (same keys as `param_norms`); trees must match."""
  if jax.tree.structure(params) != jax.tree.structure(previous_params):
    raise ValueError("params and previous_params have different tree structures")
  difference = jax.tree.map(lambda a, b: jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32), params,
                            previous_params)
  return param_norms(difference)


def effective_learning_rates(params: chex.ArrayTree, learning_rate: float) -> dict[str, float]:
  """learning_rate / ||W||^2 for every conv/dense layer whose output goes straight into a LayerNorm.

  Such a layer is scale-invariant (LN(cW x + cb) = LN(W x + b)), so its gradient scales as 1/||W|| and a
  step of size lr moves its direction by about lr / ||W||^2: the effective learning rate (van Laarhoven
  2017, "L2 Regularization versus Batch and Weight Normalization"; Lyle et al. 2024). A layer
  qualifies when it has a kernel and a `<name>_ln` sibling in the tree (`networks.is_layer_norm_path`
  naming); ||W|| is the kernel's Frobenius norm (the invariance is joint in kernel and bias, but the
  bias is small next to the kernel and both papers use the weight norm). Keys are layer paths
  (`torso/conv0`); the dict is empty for a network without layer norm.
  """
  layers = _layer_leaves(params)
  rates = {}
  for name, leaves in layers.items():
    if name.endswith(LAYER_NORM_SUFFIX) or "kernel" not in leaves or name + LAYER_NORM_SUFFIX not in layers:
      continue
    rates[name] = float(learning_rate / _sum_squares([leaves["kernel"]]))
  return rates
