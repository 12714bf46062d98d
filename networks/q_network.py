"""Q-networks: a torso and a scalar or two-hot (categorical) Q head.

Both heads return `QOutput` with `q_values float32[B, A]` in the environment's
value scale, so a policy never needs to know which head it is using. The
two-hot head also returns its `logits float32[B, A, num_bins]` for the
cross-entropy loss; the scalar head returns `logits=None`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from networks import categorical, torsos

HEADS = ("scalar", "two_hot")


class QOutput(NamedTuple):
  q_values: jnp.ndarray  # float32[B, A]
  logits: Optional[jnp.ndarray]  # float32[B, A, num_bins] for the two-hot head, else None


class QNetwork(nn.Module):
  """torso -> head. Parameters live under `torso/...` and `head/...`."""

  num_actions: int
  torso: str = "nature"
  layer_norm: bool = False
  mlp_hidden_sizes: Sequence[int] = (64, 64)
  head: str = "scalar"
  num_bins: int = 51
  value_min: float = -10.0
  value_max: float = 10.0
  value_transform: str = "identity"
  transform_eps: float = 1e-3

  def setup(self):
    if self.torso == "nature":
      self.torso_module = torsos.NatureCNN(self.layer_norm, name="torso")
    elif self.torso == "impala":
      self.torso_module = torsos.ImpalaResNet(self.layer_norm, name="torso")
    elif self.torso == "mlp":
      self.torso_module = torsos.MLP(self.layer_norm, tuple(self.mlp_hidden_sizes), name="torso")
    else:
      raise ValueError(f"torso={self.torso!r} is not one of {torsos.TORSOS}")
    if self.head == "scalar":
      self.head_module = nn.Dense(self.num_actions, name="head")
    elif self.head == "two_hot":
      self.head_module = nn.Dense(self.num_actions * self.num_bins, name="head")
    else:
      raise ValueError(f"head={self.head!r} is not one of {HEADS}")

  def __call__(self, obs: jnp.ndarray) -> QOutput:
    features = self.torso_module(obs)
    return self.head_from_features(features)

  def features(self, obs: jnp.ndarray) -> jnp.ndarray:
    """The penultimate-layer features float32[B, D] (what the head reads)."""
    return self.torso_module(obs)

  def head_from_features(self, features: jnp.ndarray) -> QOutput:
    out = self.head_module(features)
    if self.head == "scalar":
      return QOutput(q_values=out, logits=None)
    logits = out.reshape(out.shape[:-1] + (self.num_actions, self.num_bins))
    return QOutput(q_values=self.q_from_logits(logits), logits=logits)

  def q_from_logits(self, logits: jnp.ndarray) -> jnp.ndarray:
    """h^-1(E[z]) of the categorical over the support: float32[..., A]."""
    _, inverse = categorical.value_transform_pair(self.value_transform, self.transform_eps)
    probs = jax.nn.softmax(logits, axis=-1)
    return inverse(categorical.expected_value(probs, self.value_min, self.value_max))
