import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from networks import QNetwork, categorical, is_layer_norm_path

NUM_ACTIONS = 5
OBS = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 84, 84, 4)), jnp.uint8)


def _init(**kwargs):
  net = QNetwork(NUM_ACTIONS, **kwargs)
  return net, net.init(jax.random.PRNGKey(0), OBS)


@pytest.mark.parametrize("torso,head,layer_norm", list(itertools.product(["nature", "impala", "mlp"], ["scalar", "two_hot"], [False, True])))
def test_output_shapes_for_every_torso_and_head(torso, head, layer_norm):
  net, params = _init(torso=torso, head=head, layer_norm=layer_norm, num_bins=21)
  out = net.apply(params, OBS)
  assert out.q_values.shape == (3, NUM_ACTIONS) and out.q_values.dtype == jnp.float32
  if head == "scalar":
    assert out.logits is None
  else:
    assert out.logits.shape == (3, NUM_ACTIONS, 21)
  assert np.isfinite(np.asarray(out.q_values)).all()


EXPECTED_LAYER_NORMS = {
    "nature": {"conv0_ln", "conv1_ln", "conv2_ln", "dense0_ln"},
    "mlp": {"dense0_ln", "dense1_ln"},
    "impala": {f"stage{s}_block{b}_{part}_ln" for s in range(3) for b in range(2) for part in ("in", "conv0")}
    | {"stages_out_ln", "dense0_ln"},
}
# Channels that each conv LayerNorm normalises over (its scale has one entry per channel).
EXPECTED_LN_WIDTH = {"conv0_ln": 32, "conv1_ln": 64, "conv2_ln": 64, "dense0_ln": 512}


@pytest.mark.parametrize("torso", ["nature", "impala", "mlp"])
def test_layer_norm_sits_exactly_before_each_hidden_relu(torso):
  _, params = _init(torso=torso, layer_norm=True)
  flat = traverse_util.flatten_dict(params["params"])
  norms = {path[1] for path in flat if is_layer_norm_path(path)}
  assert norms == EXPECTED_LAYER_NORMS[torso]
  assert all(path[0] == "torso" for path in flat if is_layer_norm_path(path)), "no LayerNorm in the head"
  if torso == "nature":
    for name, width in EXPECTED_LN_WIDTH.items():
      assert flat[("torso", name, "scale")].shape == (width,)
  _, plain = _init(torso=torso, layer_norm=False)
  assert not any(is_layer_norm_path(p) for p in traverse_util.flatten_dict(plain["params"]))
  # Everything else is the same network.
  with_ln = {p for p in flat if not is_layer_norm_path(p)}
  assert with_ln == set(traverse_util.flatten_dict(plain["params"]))


def test_conv_layer_norm_normalises_each_example_over_height_width_channels():
  net, params = _init(torso="nature", layer_norm=True)
  _, state = net.apply(params, OBS, capture_intermediates=True, mutable=["intermediates"])
  normed = np.asarray(state["intermediates"]["torso"]["conv1_ln"]["__call__"][0])  # scale 1, bias 0 at init
  assert normed.shape == (3, 9, 9, 64)
  np.testing.assert_allclose(normed.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
  np.testing.assert_allclose(normed.std(axis=(1, 2, 3)), 1.0, atol=1e-3)


@pytest.mark.parametrize("transform", ["identity", "signed_hyperbolic"])
def test_two_hot_q_values_are_the_inverse_transformed_mean(transform):
  net, params = _init(torso="mlp", head="two_hot", num_bins=11, value_min=-3.0, value_max=5.0, value_transform=transform)
  out = net.apply(params, OBS)
  probs = np.asarray(jax.nn.softmax(out.logits, axis=-1), np.float64)
  mean = (probs * np.linspace(-3.0, 5.0, 11)).sum(-1)
  _, inverse = categorical.value_transform_pair(transform)
  np.testing.assert_allclose(out.q_values, np.asarray(inverse(mean.astype(np.float32))), rtol=1e-5, atol=1e-5)


def test_pixels_are_scaled_and_vector_observations_are_not():
  net = QNetwork(2, torso="mlp", mlp_hidden_sizes=(4,))
  pixels = jnp.full((1, 3), 255, jnp.uint8)
  params = net.init(jax.random.PRNGKey(1), pixels)
  np.testing.assert_allclose(net.apply(params, pixels).q_values, net.apply(params, jnp.ones((1, 3), jnp.float32)).q_values, rtol=1e-6)


def test_unknown_torso_and_head_are_rejected():
  with pytest.raises(ValueError, match="torso"):
    QNetwork(2, torso="resnet50").init(jax.random.PRNGKey(0), OBS)
  with pytest.raises(ValueError, match="head"):
    QNetwork(2, head="c51").init(jax.random.PRNGKey(0), OBS)
