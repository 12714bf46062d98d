"""Network options: dueling and shared-bias heads, initializers, Nature CNN padding, and their config validation.

Every expectation is computed independently of the code under test: numpy on hand-set parameters, the
initializers' closed-form bounds, or a reference module built from Flax's default layers.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from agents.dqn import DQNConfig
from common.validation import ConfigError
from networks import NatureCNN, QNetwork
from networks.q_network import QHead
from networks.torsos import ImpalaResNet, layer_init

NUM_ACTIONS = 4
NUM_BINS = 5
FEATURES = np.array([[1.0, 2.0, -1.0], [0.5, -1.0, 3.0]], np.float32)  # [B=2, D=3]
PIXELS = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 84, 84, 4)), jnp.uint8)


def _head_network(head, **kwargs):
  """A QNetwork whose head reads D=3 features (MLP torso of width 3), with its params."""
  net = QNetwork(NUM_ACTIONS, torso="mlp", mlp_hidden_sizes=(3,), head=head, num_bins=NUM_BINS, **kwargs)
  params = net.init(jax.random.PRNGKey(0), np.zeros((1, 3), np.float32))
  return net, params


def _with_head(params, head_params):
  """`params` with the head's parameters replaced by `head_params` (a nested dict of numpy arrays)."""
  inner = dict(params["params"])
  inner["head"] = jax.tree.map(jnp.asarray, head_params)
  return {"params": inner}


def _head(net, params, features=FEATURES):
  return net.apply(params, jnp.asarray(features), method=QNetwork.head_from_features)


def _flat_head_shapes(params):
  flat = traverse_util.flatten_dict(params["params"]["head"])
  return {"/".join(k): v.shape for k, v in flat.items()}


# ----------------------------------------------------------------------------- dueling

def _dueling_params(outputs_per_action, rng):
  d = FEATURES.shape[1]
  return {
      "value": {"kernel": rng.normal(size=(d, outputs_per_action)).astype(np.float32),
                "bias": rng.normal(size=(outputs_per_action,)).astype(np.float32)},
      "advantage": {"kernel": rng.normal(size=(d, NUM_ACTIONS * outputs_per_action)).astype(np.float32),
                    "bias": rng.normal(size=(NUM_ACTIONS * outputs_per_action,)).astype(np.float32)},
  }


def _dueling_expectation(head_params, outputs_per_action):
  """Q (or logits) [B, A, K] = V + A - mean_a A, in float64 numpy (Wang et al. 2016, eq. 9)."""
  f = FEATURES.astype(np.float64)
  value = f @ head_params["value"]["kernel"] + head_params["value"]["bias"]  # [B, K]
  advantage = (f @ head_params["advantage"]["kernel"] + head_params["advantage"]["bias"]).reshape(
      len(f), NUM_ACTIONS, outputs_per_action)
  return value[:, None, :] + advantage - advantage.mean(axis=1, keepdims=True)


def test_dueling_param_names_are_head_value_and_head_advantage():
  _, scalar = _head_network("scalar", dueling=True)
  assert _flat_head_shapes(scalar) == {"value/kernel": (3, 1), "value/bias": (1,),
                                       "advantage/kernel": (3, NUM_ACTIONS), "advantage/bias": (NUM_ACTIONS,)}
  _, two_hot = _head_network("two_hot", dueling=True)
  assert _flat_head_shapes(two_hot) == {"value/kernel": (3, NUM_BINS), "value/bias": (NUM_BINS,),
                                        "advantage/kernel": (3, NUM_ACTIONS * NUM_BINS),
                                        "advantage/bias": (NUM_ACTIONS * NUM_BINS,)}


def test_dueling_scalar_head_is_value_plus_advantage_minus_mean_advantage():
  net, params = _head_network("scalar", dueling=True)
  head_params = _dueling_params(1, np.random.default_rng(1))
  out = _head(net, _with_head(params, head_params))
  assert out.logits is None
  np.testing.assert_allclose(out.q_values, _dueling_expectation(head_params, 1)[..., 0], rtol=1e-6, atol=1e-6)


def test_dueling_scalar_head_on_hand_picked_numbers():
  """One case small enough to check on paper: D=1, feature 2, V = 2*1 + 0.5 = 2.5,
  A = 2*[1, 2, 3, 6] + 0 = [2, 4, 6, 12], mean A = 6, so Q = 2.5 + [2, 4, 6, 12] - 6 = [-1.5, 0.5, 2.5, 8.5]."""
  net = QNetwork(NUM_ACTIONS, torso="mlp", mlp_hidden_sizes=(1,), dueling=True)
  params = net.init(jax.random.PRNGKey(0), np.zeros((1, 1), np.float32))
  head_params = {"value": {"kernel": np.array([[1.0]]), "bias": np.array([0.5])},
                 "advantage": {"kernel": np.array([[1.0, 2.0, 3.0, 6.0]]), "bias": np.zeros(4)}}
  out = _head(net, _with_head(params, head_params), np.array([[2.0]], np.float32))
  np.testing.assert_allclose(out.q_values, [[-1.5, 0.5, 2.5, 8.5]], rtol=1e-6)


def test_dueling_two_hot_head_applies_the_dueling_sum_per_bin_to_the_logits():
  net, params = _head_network("two_hot", dueling=True, value_min=-3.0, value_max=3.0)
  head_params = _dueling_params(NUM_BINS, np.random.default_rng(2))
  out = _head(net, _with_head(params, head_params))
  expected_logits = _dueling_expectation(head_params, NUM_BINS)
  np.testing.assert_allclose(out.logits, expected_logits, rtol=1e-5, atol=1e-5)
  # Q values are the expectation of the softmax over the support (identity value transform).
  probs = np.exp(expected_logits - expected_logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  np.testing.assert_allclose(out.q_values, probs @ np.linspace(-3.0, 3.0, NUM_BINS), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head,outputs_per_action", [("scalar", 1), ("two_hot", NUM_BINS)])
def test_dueling_head_is_invariant_to_a_constant_added_to_every_advantage_bias(head, outputs_per_action):
  net, params = _head_network(head, dueling=True)
  head_params = _dueling_params(outputs_per_action, np.random.default_rng(3))
  before = _head(net, _with_head(params, head_params))
  shifted = jax.tree.map(np.copy, head_params)
  shifted["advantage"]["bias"] += 7.0
  after = _head(net, _with_head(params, shifted))
  np.testing.assert_allclose(after.q_values, before.q_values, rtol=1e-5, atol=1e-5)
  if head == "two_hot":
    np.testing.assert_allclose(after.logits, before.logits, rtol=1e-5, atol=1e-5)
  # Control: a change to one output's advantage bias (action 0, bin 0) does move the Q values.
  one = jax.tree.map(np.copy, head_params)
  one["advantage"]["bias"][0] += 7.0
  assert np.abs(np.asarray(_head(net, _with_head(params, one)).q_values - before.q_values)).max() > 0.1


# ----------------------------------------------------------------------------- head bias

def test_default_head_is_a_plain_dense_layer_head_kernel_and_head_bias():
  _, scalar = _head_network("scalar")
  assert _flat_head_shapes(scalar) == {"kernel": (3, NUM_ACTIONS), "bias": (NUM_ACTIONS,)}
  _, two_hot = _head_network("two_hot")
  assert _flat_head_shapes(two_hot) == {"kernel": (3, NUM_ACTIONS * NUM_BINS), "bias": (NUM_ACTIONS * NUM_BINS,)}


def test_shared_bias_scalar_head_has_one_bias_broadcast_to_every_action():
  net, params = _head_network("scalar", head_bias="shared")
  assert _flat_head_shapes(params) == {"kernel": (3, NUM_ACTIONS), "bias": (1,)}
  rng = np.random.default_rng(4)
  kernel = rng.normal(size=(3, NUM_ACTIONS)).astype(np.float32)
  out = _head(net, _with_head(params, {"kernel": kernel, "bias": np.array([0.7], np.float32)}))
  np.testing.assert_allclose(out.q_values, FEATURES.astype(np.float64) @ kernel + 0.7, rtol=1e-6, atol=1e-6)


def test_shared_bias_two_hot_head_has_one_bias_per_bin_shared_by_every_action():
  net, params = _head_network("two_hot", head_bias="shared")
  assert _flat_head_shapes(params) == {"kernel": (3, NUM_ACTIONS * NUM_BINS), "bias": (NUM_BINS,)}
  rng = np.random.default_rng(5)
  kernel = rng.normal(size=(3, NUM_ACTIONS * NUM_BINS)).astype(np.float32)
  bias = np.array([-2.0, -1.0, 0.0, 1.5, 3.0], np.float32)  # distinct per bin: a wrong layout shows
  out = _head(net, _with_head(params, {"kernel": kernel, "bias": bias}))
  # Action-major layout: output a*K + k is action a, bin k, and gets bias[k].
  expected = (FEATURES.astype(np.float64) @ kernel).reshape(2, NUM_ACTIONS, NUM_BINS) + bias[None, None, :]
  np.testing.assert_allclose(out.logits, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("head,outputs", [("scalar", NUM_ACTIONS), ("two_hot", NUM_ACTIONS * NUM_BINS)])
def test_per_output_bias_adds_one_bias_to_each_output(head, outputs):
  net, params = _head_network(head, head_bias="per_output")
  rng = np.random.default_rng(6)
  kernel = rng.normal(size=(3, outputs)).astype(np.float32)
  bias = rng.normal(size=(outputs,)).astype(np.float32)
  out = _head(net, _with_head(params, {"kernel": kernel, "bias": bias}))
  expected = FEATURES.astype(np.float64) @ kernel + bias
  got = out.q_values if head == "scalar" else np.asarray(out.logits).reshape(2, outputs)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_dueling_head_refuses_a_shared_bias():
  with pytest.raises(ValueError, match="bias"):
    QHead(NUM_ACTIONS, dueling=True, bias="shared").init(jax.random.PRNGKey(0), FEATURES)


# ----------------------------------------------------------------------------- initializers

def _flat(params):
  return {"/".join(k): np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(params["params"]).items()}


def _assert_uniform(values, bound, name, std_rtol):
  """`values` lie in [-bound, bound], reach close to both ends, and have the U(-b, b) std b/sqrt(3)."""
  assert np.abs(values).max() <= bound * (1 + 1e-6), name
  if values.size >= 4096:  # a sample this big comes within 2% of both ends with probability ~1 - 1e-36
    assert values.max() > 0.98 * bound and values.min() < -0.98 * bound, name
  np.testing.assert_allclose(values.std(), bound / math.sqrt(3), rtol=std_rtol, err_msg=name)


# Nature CNN on 84x84x4 (VALID): kernel shape and fan_in = in_channels * kh * kw (DQN Zoo).
NATURE_FAN_IN = {"conv0": 4 * 8 * 8, "conv1": 32 * 4 * 4, "conv2": 64 * 3 * 3, "dense0": 7 * 7 * 64}
NATURE_FAN_OUT = {"conv0": 32 * 8 * 8, "conv1": 64 * 4 * 4, "conv2": 64 * 3 * 3, "dense0": 512}


def test_dqn_zoo_initializer_draws_kernels_and_biases_uniformly_on_one_over_sqrt_fan_in():
  params = _flat(NatureCNN(initializer="dqn_zoo").init(jax.random.PRNGKey(0), PIXELS))
  for layer, fan_in in NATURE_FAN_IN.items():
    bound = 1.0 / math.sqrt(fan_in)
    _assert_uniform(params[f"{layer}/kernel"], bound, f"{layer}/kernel", std_rtol=0.03)
    bias = params[f"{layer}/bias"]
    # Biases are uniform too (not Flax's zeros): 32 to 512 values, so a looser std tolerance.
    _assert_uniform(bias, bound, f"{layer}/bias", std_rtol=0.3 if bias.size < 100 else 0.1)
    assert np.abs(bias).max() > 0.5 * bound, layer


def test_dqn_zoo_initializer_uses_the_receptive_field_in_an_impala_conv_and_the_width_in_the_head():
  net = QNetwork(NUM_ACTIONS, torso="impala", initializer="dqn_zoo", head_bias="shared")
  params = _flat(net.init(jax.random.PRNGKey(1), PIXELS))
  _assert_uniform(params["torso/stage0_conv/kernel"], 1.0 / math.sqrt(4 * 3 * 3), "stage0_conv", std_rtol=0.1)
  _assert_uniform(params["torso/stage1_conv/kernel"], 1.0 / math.sqrt(16 * 3 * 3), "stage1_conv", std_rtol=0.03)
  _assert_uniform(params["head/kernel"], 1.0 / math.sqrt(256), "head/kernel", std_rtol=0.15)
  assert params["head/bias"].shape == (1,) and 0 < abs(params["head/bias"][0]) <= 1.0 / 16


def test_layer_init_dqn_zoo_on_a_large_dense_matrix():
  inits = layer_init("dqn_zoo", 100)
  kernel = np.asarray(inits["kernel_init"](jax.random.PRNGKey(0), (100, 2000)), np.float64)
  _assert_uniform(kernel, 0.1, "kernel", std_rtol=0.01)
  bias = np.asarray(inits["bias_init"](jax.random.PRNGKey(1), (20000,)), np.float64)
  _assert_uniform(bias, 0.1, "bias", std_rtol=0.02)


def test_xavier_uniform_initializer_bounds_include_the_receptive_field_and_biases_are_zero():
  params = _flat(NatureCNN(initializer="xavier_uniform").init(jax.random.PRNGKey(0), PIXELS))
  for layer, fan_in in NATURE_FAN_IN.items():
    bound = math.sqrt(6.0 / (fan_in + NATURE_FAN_OUT[layer]))
    _assert_uniform(params[f"{layer}/kernel"], bound, f"{layer}/kernel", std_rtol=0.03)
    np.testing.assert_array_equal(params[f"{layer}/bias"], 0.0)


class _FlaxDefaultNatureCNN(nn.Module):
  """The Nature CNN written with Flax's default initializers (what lecun_normal must reproduce)."""

  @nn.compact
  def __call__(self, obs):
    x = obs.astype(jnp.float32) / 255.0
    for i, (features, kernel, stride) in enumerate(((32, 8, 4), (64, 4, 2), (64, 3, 1))):
      x = nn.relu(nn.Conv(features, (kernel, kernel), (stride, stride), padding="VALID", name=f"conv{i}")(x))
    return nn.relu(nn.Dense(512, name="dense0")(x.reshape(x.shape[0], -1)))


class _FlaxDefaultQNetwork(nn.Module):
  num_actions: int

  def setup(self):
    self.torso_module = _FlaxDefaultNatureCNN(name="torso")
    self.head_module = nn.Dense(self.num_actions, name="head")

  def __call__(self, obs):
    return self.head_module(self.torso_module(obs))


def _assert_same_tree(a, b):
  flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg="/".join(key))


def test_lecun_normal_initializer_equals_flax_default_conv_and_dense_init():
  key = jax.random.PRNGKey(3)
  torso_params = NatureCNN(initializer="lecun_normal").init(key, PIXELS)
  _assert_same_tree(torso_params, _FlaxDefaultNatureCNN().init(key, PIXELS))
  _assert_same_tree(QNetwork(NUM_ACTIONS, initializer="lecun_normal").init(key, PIXELS),
                    _FlaxDefaultQNetwork(NUM_ACTIONS).init(key, PIXELS))
  features = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64)), jnp.float32)
  _assert_same_tree(QHead(NUM_ACTIONS * NUM_BINS, initializer="lecun_normal").init(key, features),
                    nn.Dense(NUM_ACTIONS * NUM_BINS).init(key, features))
  for layer in ("conv0", "dense0"):  # and the kernels are not trivially zero
    assert np.asarray(torso_params["params"][layer]["kernel"]).std() > 0


# ----------------------------------------------------------------------------- padding

@pytest.mark.parametrize("padding,spatial", [("VALID", (20, 9, 7)), ("SAME", (21, 11, 11))])
def test_nature_cnn_padding_sets_the_feature_count(padding, spatial):
  """84 -> 20 -> 9 -> 7 with VALID (floor((n - k) / s) + 1) and 84 -> 21 -> 11 -> 11 with SAME (ceil(n / s))."""
  net = QNetwork(NUM_ACTIONS, conv_padding=padding)
  params = net.init(jax.random.PRNGKey(0), PIXELS)
  width = {"VALID": 3_136, "SAME": 7_744}[padding]
  assert width == spatial[-1] ** 2 * 64
  assert params["params"]["torso"]["dense0"]["kernel"].shape == (width, 512)
  for i, (features, kernel, in_channels) in enumerate(((32, 8, 4), (64, 4, 32), (64, 3, 64))):
    assert params["params"]["torso"][f"conv{i}"]["kernel"].shape == (kernel, kernel, in_channels, features)
  features, state = net.apply(params, PIXELS, method=QNetwork.features, mutable=["preactivations"])
  assert features.shape == (2, 512)
  preacts = state["preactivations"]["torso"]
  for i, size in enumerate(spatial):  # the conv outputs, as sown before each ReLU
    assert preacts[f"conv{i}_preact"][0].shape == (2, size, size, (32, 64, 64)[i])


def test_config_conv_padding_same_gives_7744_features_into_dense0():
  for padding, width in (("VALID", 3_136), ("same", 7_744), ("SAME", 7_744)):
    net = DQNConfig(conv_padding=padding).make_network(NUM_ACTIONS)
    params = net.init(jax.random.PRNGKey(0), PIXELS)
    assert params["params"]["torso"]["dense0"]["kernel"].shape == (width, 512), padding


# ----------------------------------------------------------------------------- config

def test_config_passes_the_network_options_to_the_network():
  config = DQNConfig(dueling=True, head_bias="per_output", initializer="xavier_uniform", conv_padding="same")
  net = config.make_network(NUM_ACTIONS)
  options = (net.dueling, net.head_bias, net.initializer, net.conv_padding)
  assert options == (True, "per_output", "xavier_uniform", "SAME")


@pytest.mark.parametrize("head_bias", ["shared", None])
def test_config_rejects_dueling_with_a_shared_bias_naming_the_field(head_bias):
  kwargs = {} if head_bias is None else {"head_bias": head_bias}  # None: the default, which is shared
  with pytest.raises(ConfigError, match="head_bias"):
    DQNConfig(dueling=True, **kwargs)
  DQNConfig(dueling=True, head_bias="per_output")  # accepted


@pytest.mark.parametrize("field,value", [("initializer", "he_normal"), ("initializer", "LECUN_NORMAL"),
                                         ("conv_padding", "FULL"), ("conv_padding", "valid_"),
                                         ("head_bias", "per_action")])
def test_config_rejects_unknown_option_names_naming_the_field(field, value):
  with pytest.raises(ConfigError, match=field):
    DQNConfig(**{field: value})


def test_config_accepts_lowercase_padding_and_hyphenated_names():
  config = DQNConfig(conv_padding="same", initializer="xavier-uniform", head_bias="per-output")
  assert (config.conv_padding, config.initializer, config.head_bias) == ("SAME", "xavier_uniform", "per_output")
  assert DQNConfig(conv_padding="valid").conv_padding == "VALID"
  for name in ("lecun_normal", "xavier_uniform", "dqn_zoo"):
    assert DQNConfig(initializer=name).initializer == name
