"""Feature extractors (torsos) for Q-networks, Flax Linen.

With `layer_norm=True` a LayerNorm sits immediately before every hidden ReLU,
after each conv and dense layer, as Lyle et al. 2023 ("Understanding Plasticity
in Neural Networks", sec. 5) place it. On conv outputs it normalises over
height, width and channels together, with a learned scale and bias per channel.

Layer names are fixed (`conv0`, `conv0_ln`, `dense0`, ...) because probes,
weight-decay masks and tests address layers by name; a LayerNorm is always
named `<layer>_ln` (see `is_layer_norm_path`).

Every hidden ReLU input (after the LayerNorm, if any) is sown into the Flax
collection `"preactivations"` as `<layer>_preact` (`conv0_preact`, ...), for
the plasticity probes. Nothing is kept unless `apply(..., mutable=["preactivations"])` asks.

Every torso ends in one dense layer (its `last_dense()` gives the name and width; the MLP's is its last), and
`torso(obs, with_encoding=True)` returns (the input of that layer, the features): plasticity
injection's head in Nikishin et al.'s form is that layer and the output layer (networks/q_network.py).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from networks.options import ACTIVATIONS, CONV_PADDINGS, INITIALIZERS, TORSOS  # noqa: F401
from networks.spectral_norm import SNConv, SNDense

LAYER_NORM_SUFFIX = "_ln"
# Flax collection holding the input of every hidden ReLU (after its LayerNorm), as `<layer>_preact`:
# Flax forbids a variable named like a submodule of the same module (`conv0`), hence the suffix.
PREACTIVATIONS = "preactivations"
PREACTIVATION_SUFFIX = "_preact"


def is_layer_norm_path(path: Sequence[str]) -> bool:
  """True for a parameter path such as ('torso', 'conv0_ln', 'scale')."""
  return any(str(name).endswith(LAYER_NORM_SUFFIX) for name in path)


def layer_init(initializer: str, fan_in: int) -> dict:
  """`kernel_init` and `bias_init` of one conv or dense layer whose output units each see `fan_in` inputs.

  lecun_normal: Flax's default (truncated normal, variance 1/fan_in), zero biases.
  xavier_uniform: Dopamine's networks (dopamine/jax/networks.py: `nn.initializers.xavier_uniform()` on every
    conv and dense kernel of NatureDQNNetwork and FullRainbowNetwork), Flax's zero biases.
  dqn_zoo: DQN Zoo's `_dqn_default_initializer` (dqn_zoo/networks.py:58-79): weights *and* biases uniform
    on [-c, c], c = 1/sqrt(fan_in), fan_in = in_channels * kernel_h * kernel_w for a conv.
  """
  if initializer == "lecun_normal":
    return dict(kernel_init=nn.initializers.lecun_normal(), bias_init=nn.initializers.zeros)
  if initializer == "xavier_uniform":
    return dict(kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.zeros)
  if initializer == "dqn_zoo":
    bound = 1.0 / math.sqrt(fan_in)

    def uniform(key, shape, dtype=jnp.float32):
      return jax.random.uniform(key, shape, dtype, -bound, bound)

    return dict(kernel_init=uniform, bias_init=uniform)
  raise ValueError(f"initializer={initializer!r} is not one of {INITIALIZERS}")


def to_float(obs: jnp.ndarray) -> jnp.ndarray:
  """uint8 pixels -> [0, 1]; float inputs (vector observations) pass through."""
  if obs.dtype == jnp.uint8:
    return obs.astype(jnp.float32) / 255.0
  return obs.astype(jnp.float32)


def norm_relu(module: nn.Module, x, layer_norm: bool, name: str, conv: bool = False, activation: str = "relu",
              sow: bool = True):
  """Applies LayerNorm (named `<name>_ln`) then the nonlinearity, sharing naming with `is_layer_norm_path`.

  relu; crelu: concat(relu(x), relu(-x)) on the feature axis (Abbas et al. 2023), twice the outputs; or fourier:
  concat(sin(x), cos(x)) on the feature axis, deep Fourier features (Lewandowski et al. 2025, "Plastic Learning with
  Deep Fourier Features", ICLR; arXiv 2410.20634: "the concatenation of a sine and cosine in every layer"), twice the
  outputs, so the next layer's fan-in doubles as with crelu (Plasticine's DFF4Linear/DFF4Conv2d, plasticine/utils.py
  :31-52 at aa00b4b, the same; its cos(-x) is cos(x)). The value entering the nonlinearity is sown into the
  `PREACTIVATIONS` collection as `<name>_preact` (for crelu, concat(x, -x), so that relu of it is the layer's
  output; for fourier, x); it is only kept when `apply(..., mutable=[PREACTIVATIONS])` asks for it (see
  networks/activations.py: `layer_outputs` turns it into the layer's output). sow=False: not sown (the layers of
  plasticity injection's heads, which the probes do not read).
  """
  if layer_norm:
    axes = (-3, -2, -1) if conv else (-1,)
    x = nn.LayerNorm(reduction_axes=axes, feature_axes=-1, name=name + LAYER_NORM_SUFFIX)(x)
  if activation == "crelu":
    x = jnp.concatenate([x, -x], axis=-1)
  elif activation not in ("relu", "fourier"):
    raise ValueError(f"activation={activation!r} is not one of {ACTIVATIONS}")
  # Skipped at init, where every collection is mutable: the variables `init` returns stay {"params": ...}.
  if sow and not module.is_initializing():
    module.sow(PREACTIVATIONS, name + PREACTIVATION_SUFFIX, x)
  return fourier_features(x) if activation == "fourier" else nn.relu(x)


def fourier_features(x: jnp.ndarray) -> jnp.ndarray:
  """Deep Fourier features: concat(sin(x), cos(x)) on the last (feature) axis."""
  return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


def dense(features: int, name: str, inits: dict, spectral_norm_layers: Sequence[str] = ()) -> nn.Module:
  """nn.Dense, or its spectrally normalised twin when `name` is in `spectral_norm_layers`."""
  return (SNDense if name in spectral_norm_layers else nn.Dense)(features, name=name, **inits)


def conv(features: int, kernel: int, stride: int, padding: str, name: str, inits: dict,
         spectral_norm_layers: Sequence[str] = ()) -> nn.Module:
  """nn.Conv, or its spectrally normalised twin when `name` is in `spectral_norm_layers`."""
  cls = SNConv if name in spectral_norm_layers else nn.Conv
  return cls(features, (kernel, kernel), (stride, stride), padding=padding, name=name, **inits)


class NatureCNN(nn.Module):
  """Mnih et al. 2015 (Nature DQN): 32x8x8/4, 64x4x4/2, 64x3x3/1 convs, dense 512.

  padding VALID (DQN Zoo, dqn_zoo/networks.py:99) leaves 7x7x64 = 3,136 features on 84x84 inputs;
  SAME (Flax's default, which Dopamine's networks keep) leaves 11x11x64 = 7,744.
  """

  layer_norm: bool = False
  padding: str = "VALID"
  initializer: str = "lecun_normal"
  activation: str = "relu"
  spectral_norm_layers: Sequence[str] = ()

  @nn.nowrap
  def last_dense(self) -> tuple[str, int]:
    """The name and width of the torso's last (dense) layer."""
    return "dense0", 512

  @nn.compact
  def __call__(self, obs, with_encoding: bool = False):
    x = to_float(obs)
    sn = self.spectral_norm_layers
    for i, (features, kernel, stride) in enumerate(((32, 8, 4), (64, 4, 2), (64, 3, 1))):
      inits = layer_init(self.initializer, x.shape[-1] * kernel * kernel)
      x = conv(features, kernel, stride, self.padding, f"conv{i}", inits, sn)(x)
      x = norm_relu(self, x, self.layer_norm, f"conv{i}", conv=True, activation=self.activation)
    encoding = x.reshape(x.shape[:-3] + (-1,))
    x = dense(512, "dense0", layer_init(self.initializer, encoding.shape[-1]), sn)(encoding)
    x = norm_relu(self, x, self.layer_norm, "dense0", activation=self.activation)
    return (encoding, x) if with_encoding else x


class ImpalaResNet(nn.Module):
  """Espeholt et al. 2018 (IMPALA), the 15-layer residual torso.

  Three stages of (conv 3x3, max-pool 3x3/2, two residual blocks), then dense 256.
  """

  layer_norm: bool = False
  channels: Sequence[int] = (16, 32, 32)
  hidden_size: int = 256
  initializer: str = "lecun_normal"
  activation: str = "relu"
  spectral_norm_layers: Sequence[str] = ()

  @nn.nowrap
  def last_dense(self) -> tuple[str, int]:
    """The name and width of the torso's last (dense) layer."""
    return "dense0", self.hidden_size

  @nn.compact
  def __call__(self, obs, with_encoding: bool = False):
    x = to_float(obs)
    sn, act = self.spectral_norm_layers, self.activation

    def conv3(y, features, name):
      return conv(features, 3, 1, "SAME", name, layer_init(self.initializer, y.shape[-1] * 9), sn)(y)

    for s, features in enumerate(self.channels):
      x = conv3(x, features, f"stage{s}_conv")
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
      for b in range(2):
        block = f"stage{s}_block{b}"
        y = norm_relu(self, x, self.layer_norm, f"{block}_in", conv=True, activation=act)
        y = conv3(y, features, f"{block}_conv0")
        y = norm_relu(self, y, self.layer_norm, f"{block}_conv0", conv=True, activation=act)
        y = conv3(y, features, f"{block}_conv1")
        x = x + y
    x = norm_relu(self, x, self.layer_norm, "stages_out", conv=True, activation=act)
    encoding = x.reshape(x.shape[:-3] + (-1,))
    x = dense(self.hidden_size, "dense0", layer_init(self.initializer, encoding.shape[-1]), sn)(encoding)
    x = norm_relu(self, x, self.layer_norm, "dense0", activation=act)
    return (encoding, x) if with_encoding else x


class MLP(nn.Module):
  """A small fully connected torso for vector observations and tests; flattens [B, ...] to [B, D]."""

  layer_norm: bool = False
  hidden_sizes: Sequence[int] = (64, 64)
  initializer: str = "lecun_normal"
  activation: str = "relu"
  spectral_norm_layers: Sequence[str] = ()

  @nn.nowrap
  def last_dense(self) -> tuple[str, int]:
    """The name and width of the torso's last (dense) layer."""
    if not self.hidden_sizes:
      raise ValueError("an MLP with no hidden layers has no last dense layer")
    return f"dense{len(self.hidden_sizes) - 1}", self.hidden_sizes[-1]

  @nn.compact
  def __call__(self, obs, with_encoding: bool = False):
    x = to_float(obs)
    x = x.reshape(x.shape[0], -1)  # [B, ...] -> [B, features]
    encoding = x
    for i, size in enumerate(self.hidden_sizes):
      encoding = x
      x = dense(size, f"dense{i}", layer_init(self.initializer, x.shape[-1]), self.spectral_norm_layers)(x)
      x = norm_relu(self, x, self.layer_norm, f"dense{i}", activation=self.activation)
    return (encoding, x) if with_encoding else x
