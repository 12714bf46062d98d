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
from networks.options import HEAD_BIASES, HEADS

# Plasticity injection's heads and flag (a collection of its own, which no optimizer moves).
INJECTED_HEAD, INJECTED_HEAD_FROZEN, INJECTION = "injected_head", "injected_head_frozen", "injection"
INJECTION_HEADS = ("dense", "output")


def params_at(tree, path: Sequence[str]):
  """tree[path[0]][path[1]]...: the parameters of the layer at `path` (as `QNetwork.injection_layers` names it)."""
  for key in path:
    tree = tree[key]
  return tree


def apply_frozen(unbound: nn.Module, params, x: jnp.ndarray) -> jnp.ndarray:
  """An unbound module's output on x with `params` behind stop_gradient: x still gets a gradient through it."""
  return unbound.apply({"params": jax.tree.map(jax.lax.stop_gradient, params)}, x)


def with_frozen_params(module: nn.Module, x: jnp.ndarray) -> jnp.ndarray:
  """A bound module's output on x with its parameters behind stop_gradient (`apply_frozen`). At init, the module's
  own call (which makes its parameters)."""
  if module.is_initializing():
    return module(x)
  return apply_frozen(module.clone(parent=None), module.variables["params"], x)


class InjectedHead(nn.Module):
  """Plasticity injection's head (Nikishin et al. 2023): a dense layer of `hidden_size` units with the torso's
  LayerNorm and activation (`dense0`, `dense0_ln`; not sown for the probes), then a `QHead` (`out`); or the
  `QHead` alone when hidden_size is 0."""

  hidden_size: int
  layer_norm: bool
  activation: str
  initializer: str
  head_args: tuple

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.hidden_size:
      x = torsos.dense(self.hidden_size, "dense0", torsos.layer_init(self.initializer, x.shape[-1]))(x)
      x = torsos.norm_relu(self, x, self.layer_norm, "dense0", activation=self.activation, sow=False)
    return QHead(*self.head_args, name="out")(x)


class QHead(nn.Module):
  """The last layer: features float32[B, D] -> float32[B, num_actions * outputs_per_action], action-major.

  bias per_output: one bias per output (Flax, Dopamine). shared: one bias shared by all actions (per bin of a
  two-hot head), DQN Zoo's
  `linear_with_shared_bias` (dqn_zoo/networks.py:120-134, used by `double_dqn_atari_network`, :338-349).
  dueling (Wang et al. 2016, as Dopamine's FullRainbowNetwork, dopamine/jax/networks.py:592-597): a value
  layer V [B, K] and an advantage layer A [B, A, K] on the same features; out = V + A - mean_a A.
  """

  num_actions: int
  outputs_per_action: int = 1
  dueling: bool = False
  bias: str = "per_output"
  initializer: str = "lecun_normal"

  @nn.compact
  def __call__(self, features: jnp.ndarray) -> jnp.ndarray:
    inits = torsos.layer_init(self.initializer, features.shape[-1])
    outputs = self.num_actions * self.outputs_per_action
    if self.dueling:
      if self.bias != "per_output":
        raise ValueError("a dueling head has one bias per output (a bias shared by the advantages cancels)")
      advantage = nn.Dense(outputs, name="advantage", **inits)(features)
      advantage = advantage.reshape(advantage.shape[:-1] + (self.num_actions, self.outputs_per_action))
      value = nn.Dense(self.outputs_per_action, name="value", **inits)(features)[..., None, :]
      out = value + advantage - jnp.mean(advantage, axis=-2, keepdims=True)
      return out.reshape(out.shape[:-2] + (outputs,))
    kernel = self.param("kernel", inits["kernel_init"], (features.shape[-1], outputs))
    if self.bias == "per_output":
      return features @ kernel + self.param("bias", inits["bias_init"], (outputs,))
    bias = self.param("bias", inits["bias_init"], (self.outputs_per_action,))
    return features @ kernel + jnp.tile(bias, self.num_actions)


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
  initializer: str = "lecun_normal"
  conv_padding: str = "VALID"
  head_bias: str = "per_output"
  dueling: bool = False
  activation: str = "relu"
  spectral_norm_layers: Sequence[str] = ()
  plasticity_injection: bool = False
  """Two more heads, `injected_head` and `injected_head_frozen` (`InjectedHead`s), and a flag `injection/active`:
  once it is set (agents/dqn/remedies.py: plasticity injection), the output is h_sg(theta)(e) + h_theta'(e) -
  h_sg(theta'_0)(e) (Nikishin et al. 2023, their expression (1)), e the encoder's output and h_theta the network's
  own head on it: the old head's and the frozen copy's parameters take no gradient, the encoder still does through
  all three; before, the network's own output alone."""
  injection_head: str = "dense"
  """What plasticity injection's head is. dense: the torso's last (dense) layer and the output layer, on the encoder
  below them (Nikishin et al.: the fully connected layers after the convolutions). output: the output layer alone,
  on the features (Plasticine's); with a linear output layer that changes no prediction an SGD step makes (each
  head's gradient is the features, whatever its weights), only the fresh optimizer moments differ."""

  @nn.nowrap
  def make_torso(self, **where) -> nn.Module:
    """The torso module (a subclass may build another; bench/plasticity_study.py does). `where`: name="torso" in
    setup, parent=None for an unbound copy (for its `last_dense()`)."""
    options = dict(initializer=self.initializer, activation=self.activation,
                   spectral_norm_layers=tuple(self.spectral_norm_layers), **where)
    if self.torso == "nature":
      return torsos.NatureCNN(self.layer_norm, self.conv_padding, **options)
    if self.torso == "impala":
      return torsos.ImpalaResNet(self.layer_norm, **options)
    if self.torso == "mlp":
      return torsos.MLP(self.layer_norm, tuple(self.mlp_hidden_sizes), **options)
    raise ValueError(f"torso={self.torso!r} is not one of {torsos.TORSOS}")

  @nn.nowrap
  def head_args(self) -> tuple:
    return (self.num_actions, self.num_bins if self.head == "two_hot" else 1, self.dueling, self.head_bias,
            self.initializer)

  @nn.nowrap
  def injection_layers(self) -> dict[str, tuple[str, ...]]:
    """Plasticity injection's head, as each `InjectedHead` layer -> the path under `params` of the network's layer
    it stands for (`{"dense0": ("torso", "dense0"), "dense0_ln": ..., "out": ("head",)}`)."""
    layers = {"out": ("head",)}
    if self.injection_head == "dense":
      name, _ = self.make_torso(parent=None).last_dense()
      norm = {"dense0" + torsos.LAYER_NORM_SUFFIX: ("torso", name + torsos.LAYER_NORM_SUFFIX)} if self.layer_norm else {}
      layers = {"dense0": ("torso", name), **norm, **layers}
    return layers

  @nn.nowrap
  def make_injected_head(self, **where) -> "InjectedHead":
    """An `InjectedHead` shaped as the layers `injection_layers()` names; `where` as in `make_torso`."""
    hidden_size = self.make_torso(parent=None).last_dense()[1] if self.injection_head == "dense" else 0
    return InjectedHead(hidden_size, self.layer_norm, self.activation, self.initializer, self.head_args(), **where)

  def setup(self):
    self.torso_module = self.make_torso(name="torso")
    if self.head not in HEADS:
      raise ValueError(f"head={self.head!r} is not one of {HEADS}")
    self.head_module = QHead(*self.head_args(), name="head")
    if self.plasticity_injection:
      if self.injection_head not in INJECTION_HEADS:
        raise ValueError(f"injection_head={self.injection_head!r} is not one of {INJECTION_HEADS}")
      self.injected_head = self.make_injected_head(name=INJECTED_HEAD)
      self.injected_head_frozen = self.make_injected_head(name=INJECTED_HEAD_FROZEN)
      self.injection_active = self.variable(INJECTION, "active", lambda: jnp.zeros((), jnp.float32))

  def __call__(self, obs: jnp.ndarray) -> QOutput:
    if not self.plasticity_injection:
      return self.head_from_features(self.torso_module(obs))
    if self.injection_head == "dense":
      encoding, features = self.torso_module(obs, with_encoding=True)
    else:
      encoding = features = self.torso_module(obs)
    out = self.head_module(features)
    injected = (self.own_head_frozen(encoding) + self.injected_head(encoding)
                - with_frozen_params(self.injected_head_frozen, encoding))
    return self.output(jnp.where(self.injection_active.value > 0, injected, out))

  def own_head_frozen(self, encoding: jnp.ndarray) -> jnp.ndarray:
    """The network's own head (the layers `injection_layers()` names) on the encoder's output, its parameters
    behind stop_gradient."""
    own = {layer: params_at(self.variables["params"], path) for layer, path in self.injection_layers().items()}
    return apply_frozen(self.make_injected_head(parent=None), own, encoding)

  def features(self, obs: jnp.ndarray) -> jnp.ndarray:
    """The penultimate-layer features float32[B, D] (what the network's own head reads)."""
    return self.torso_module(obs)

  def head_from_features(self, features: jnp.ndarray) -> QOutput:
    """The network's own head on the torso's features (not once plasticity injection is part of the network)."""
    if self.plasticity_injection:
      raise ValueError("a network with plasticity injection computes its output from the encoder: call it on obs")
    return self.output(self.head_module(features))

  def output(self, out: jnp.ndarray) -> QOutput:
    """The head's raw outputs float32[B, A * outputs per action] as `QOutput`."""
    if self.head == "scalar":
      return QOutput(q_values=out, logits=None)
    logits = out.reshape(out.shape[:-1] + (self.num_actions, self.num_bins))
    return QOutput(q_values=self.q_from_logits(logits), logits=logits)

  def q_from_logits(self, logits: jnp.ndarray) -> jnp.ndarray:
    """h^-1(E[z]) of the categorical over the support: float32[..., A]."""
    _, inverse = categorical.value_transform_pair(self.value_transform, self.transform_eps)
    probs = jax.nn.softmax(logits, axis=-1)
    return inverse(categorical.expected_value(probs, self.value_min, self.value_max))
