"""The target-fitting probe (Lyle et al. 2023) against hand-computed targets, losses and minibatches."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from common.validation import ConfigError
from networks import QNetwork
from plasticity import target_fit
from plasticity.target_fit import TargetFitConfig, make_targets, target_fit_probe, target_fit_probe_fresh

NUM_ACTIONS = 3
NET = QNetwork(NUM_ACTIONS, torso="mlp", mlp_hidden_sizes=(32, 32))
OBS = np.random.default_rng(0).normal(size=(24, 5)).astype(np.float32)
# Shared module-level optimizers, so tests reuse the probe's compiled code (cached per optimizer object).
FROZEN = optax.sgd(0.0)  # learning rate 0: every loss is the loss of the initial parameters
ADAM = optax.adam(3e-3)


def _q(network, params, obs):
  out = network.apply(params, obs)
  return np.asarray(getattr(out, "q_values", out), np.float64)


def _hand_targets(network, params, obs, rng, num_targets, sin_scale):
  """The documented derivation: target_rng = split(rng)[0]; w0_k = init(split(target_rng, K)[k], obs[:1])."""
  target_rng = jax.random.split(rng)[0]
  offset = _q(network, params, obs).mean(axis=0)
  keys = jax.random.split(target_rng, num_targets)
  return np.stack([offset + np.sin(sin_scale * _q(network, network.init(k, obs[:1]), obs)) for k in keys])


def test_targets_are_mean_prediction_plus_sine_of_a_fresh_network():
  params = NET.init(jax.random.PRNGKey(1), OBS)
  target_rng = jax.random.PRNGKey(7)
  mean_prediction = _q(NET, params, OBS).mean(axis=0)
  keys = jax.random.split(target_rng, 3)
  f0 = np.stack([_q(NET, NET.init(key, OBS[:1]), OBS) for key in keys])  # [K, N, A]
  assert np.abs(f0).max() > 1e-2 and not np.allclose(f0[0], f0[1])  # a fresh, distinct w0 per target
  # A low frequency checks the form exactly: targets - a is the sine of the fresh network's outputs.
  low = np.asarray(make_targets(NET, params, OBS, target_rng, 3, 10.0))
  assert low.shape == (3, 24, NUM_ACTIONS)
  np.testing.assert_allclose(low - np.sin(10.0 * f0), np.broadcast_to(mean_prediction, f0.shape), atol=1e-5)
  # At 1e5 the sine amplifies float32 rounding of f0 (one ulp of |f0| ~ 1 moves the argument by ~0.01),
  # so a jitted forward pass and this eager one agree only up to that, on most entries exactly.
  high = np.asarray(make_targets(NET, params, OBS, target_rng, 3, 1e5))
  difference = np.abs(high - (mean_prediction + np.sin(1e5 * f0)))
  assert np.median(difference) < 1e-3 and difference.max() < 0.1
  # High frequency: the targets look like noise of variance ~1/2 around the mean prediction.
  np.testing.assert_allclose(high.mean(axis=(0, 1)), mean_prediction, atol=0.25)
  assert 0.3 < high.var(axis=1).mean() < 0.7


def test_baseline_losses_and_minibatches_match_hand_computation():
  params = NET.init(jax.random.PRNGKey(2), OBS)
  rng = jax.random.PRNGKey(3)
  # A low sin_scale, so that float32 rounding cannot move the hand-computed targets (see the test above).
  config = TargetFitConfig(num_targets=2, probe_steps=4, batch_size=10, sin_scale=10.0)
  result = target_fit_probe(NET, FROZEN, params, OBS, rng, config)
  targets = _hand_targets(NET, params, OBS, rng, 2, sin_scale=10.0)
  baseline = np.mean(np.mean((targets - targets.mean(axis=1, keepdims=True)) ** 2, axis=(1, 2)))
  np.testing.assert_allclose(result.baseline, baseline, rtol=1e-4)
  # Learning rate 0: the final loss is the full-input MSE of the initial parameters against each target.
  sq_error = (_q(NET, params, OBS)[None] - targets) ** 2  # [K, N, A]
  np.testing.assert_allclose(result.final_loss, sq_error.mean(), rtol=1e-4)
  np.testing.assert_allclose(result.normalized_final_loss, result.final_loss / result.baseline, rtol=1e-6)
  # Step t of target k trains on 10 of the 24 inputs drawn without replacement from fold_in(batch_key_k, t).
  assert result.loss_curve.shape == (2, 4) and result.loss_curve.dtype == np.float32
  batch_keys = jax.random.split(jax.random.split(rng)[1], 2)
  for k in range(2):
    for t in range(4):
      idx = np.asarray(jax.random.choice(jax.random.fold_in(batch_keys[k], t), 24, (10,), replace=False))
      assert len(set(idx.tolist())) == 10
      np.testing.assert_allclose(result.loss_curve[k, t], sq_error[k, idx].mean(), rtol=1e-4)
  assert np.ptp(result.loss_curve) > 0  # different minibatches really were drawn
  np.testing.assert_allclose(result.loss_auc, result.loss_curve.mean(), rtol=1e-6)


def test_the_cross_entropy_probe_of_a_two_hot_head_minimises_its_own_loss_and_reports_the_value_mse():
  """loss=cross_entropy: the curve is the cross-entropy to the two-hot projection of h(g) (numpy, by hand), the
  final loss still the value outputs' MSE; a scalar head is refused."""
  net = QNetwork(NUM_ACTIONS, torso="mlp", mlp_hidden_sizes=(32,), head="two_hot", num_bins=11, value_min=-3.0,
                 value_max=3.0, value_transform="signed_hyperbolic")
  params = net.init(jax.random.PRNGKey(5), OBS)
  rng = jax.random.PRNGKey(6)
  config = TargetFitConfig(num_targets=2, probe_steps=2, sin_scale=10.0, loss="cross_entropy")  # full batch
  result = target_fit_probe(net, FROZEN, params, OBS, rng, config)
  targets = _hand_targets(net, params, OBS, rng, 2, sin_scale=10.0)  # [K, N, A]
  h = np.sign(targets) * (np.sqrt(np.abs(targets) + 1) - 1) + 1e-3 * targets
  centres = np.linspace(-3.0, 3.0, 11)
  probs = np.maximum(0.0, 1.0 - np.abs(np.clip(h, -3.0, 3.0)[..., None] - centres) / 0.6)  # two-hot weights
  logits = np.asarray(net.apply(params, OBS).logits, np.float64)  # [N, A, bins]
  log_softmax = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
  cross_entropy = -(probs * log_softmax[None]).sum(axis=-1).mean(axis=(1, 2))  # per target
  np.testing.assert_allclose(result.loss_curve, np.repeat(cross_entropy[:, None], 2, axis=1), rtol=1e-4)
  np.testing.assert_allclose(result.final_loss, ((_q(net, params, OBS)[None] - targets) ** 2).mean(), rtol=1e-4)
  trained = target_fit_probe(net, ADAM, params, OBS, rng, dataclasses.replace(config, probe_steps=30))
  assert trained.loss_curve[:, -1].mean() < trained.loss_curve[:, 0].mean()  # it descends its own loss
  with pytest.raises(ValueError, match="two-hot head"):
    target_fit_probe(NET, FROZEN, NET.init(jax.random.PRNGKey(0), OBS), OBS, rng, config)
  with pytest.raises(ConfigError, match="loss"):
    TargetFitConfig(loss="huber")


def test_full_batch_when_inputs_fit_and_plain_array_outputs():
  """A plain Flax module returning float32[N, A] (no .q_values); batch_size >= N trains on every input each step."""
  linear = nn.Dense(2)
  params = linear.init(jax.random.PRNGKey(0), OBS[:1])
  rng = jax.random.PRNGKey(4)
  config = TargetFitConfig(num_targets=2, probe_steps=3, sin_scale=10.0)
  result = target_fit_probe(linear, FROZEN, params, OBS, rng, config)
  targets = _hand_targets(linear, params, OBS, rng, 2, sin_scale=10.0)
  per_target = ((_q(linear, params, OBS)[None] - targets) ** 2).mean(axis=(1, 2))
  np.testing.assert_allclose(result.loss_curve, np.repeat(per_target[:, None], 3, axis=1), rtol=1e-4)
  np.testing.assert_allclose(result.final_loss, per_target.mean(), rtol=1e-4)


def test_deterministic_given_rng_and_the_same_across_execution_modes():
  config = TargetFitConfig(num_targets=2, probe_steps=10, batch_size=8)
  run = lambda seed, **kwargs: target_fit_probe_fresh(NET, ADAM, OBS, jax.random.PRNGKey(seed), config, **kwargs)
  first, again, other = run(0), run(0), run(1)
  np.testing.assert_array_equal(first.loss_curve, again.loss_curve)
  assert first.final_loss == again.final_loss and first.baseline == again.baseline
  assert not np.allclose(first.loss_curve, other.loss_curve)
  # One target at a time, and unrolled chunks (4 + 4 + a shorter last 2), run the same steps on the same minibatches.
  for kwargs in (dict(vmap_targets=False), dict(unroll=True, chunk_steps=4)):
    mode = run(0, **kwargs)
    np.testing.assert_allclose(mode.loss_curve, first.loss_curve, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mode.final_loss, first.final_loss, rtol=1e-4)


class TinyConvNet(nn.Module):
  @nn.compact
  def __call__(self, obs):
    x = nn.relu(nn.Conv(4, (3, 3))(obs.astype(np.float32) / 255.0))
    return nn.Dense(2)(x.reshape(x.shape[0], -1))


def test_conv_networks_take_the_unrolled_path_on_cpu_with_the_same_result(monkeypatch):
  net = TinyConvNet()
  obs = np.random.default_rng(2).integers(0, 256, (8, 5, 5, 2)).astype(np.uint8)
  params = net.init(jax.random.PRNGKey(0), obs[:1])
  assert target_fit._has_conv(params) and not target_fit._has_conv(NET.init(jax.random.PRNGKey(0), OBS[:1]))
  modes = []
  real_fit = target_fit._fit
  monkeypatch.setattr(target_fit, "_fit", lambda *args, **kwargs: modes.append(kwargs) or real_fit(*args, **kwargs))
  config = TargetFitConfig(num_targets=2, probe_steps=6)
  auto = target_fit_probe(net, ADAM, params, obs, jax.random.PRNGKey(1), config, chunk_steps=4)
  if jax.default_backend() == "cpu":  # unrolled chunks (4 + 2), one target after another
    assert [(m["unroll"], m["vmap_targets"], m["chunk_steps"]) for m in modes] == [(True, False, 4)] * 2
  scanned = target_fit_probe(net, ADAM, params, obs, jax.random.PRNGKey(1), config, unroll=False)
  assert [(m["unroll"], m["vmap_targets"]) for m in modes[-1:]] == [(False, True)]  # one vmapped scan
  np.testing.assert_allclose(auto.loss_curve, scanned.loss_curve, rtol=1e-4, atol=1e-6)
  assert auto.loss_curve[:, -1].mean() < auto.loss_curve[:, 0].mean()


def test_fresh_probe_is_the_probe_of_network_init():
  config = TargetFitConfig(num_targets=2, probe_steps=10, batch_size=8)  # as above: reuses the compiled fit
  rng = jax.random.PRNGKey(5)
  fresh = target_fit_probe_fresh(NET, ADAM, OBS, rng, config)
  init_rng, probe_rng = jax.random.split(rng)
  direct = target_fit_probe(NET, ADAM, NET.init(init_rng, OBS[:1]), OBS, probe_rng, config)
  np.testing.assert_array_equal(fresh.loss_curve, direct.loss_curve)


def _kill_every_unit(params, bias=-100.0):
  """A large negative bias on every hidden layer: all ReLUs output 0 on these inputs, so only the head bias learns."""
  torso = {name: {**layer, "bias": layer["bias"] + bias} for name, layer in params["params"]["torso"].items()}
  return {"params": {**params["params"], "torso": torso}}


def test_fresh_network_fits_targets_and_a_dead_one_cannot():
  obs = np.random.default_rng(1).integers(0, 256, (32, 4, 4, 2)).astype(np.uint8)  # small frames, MLP torso
  config = TargetFitConfig(num_targets=2, probe_steps=300, batch_size=16)
  rng = jax.random.PRNGKey(6)
  fresh_params = NET.init(jax.random.PRNGKey(0), obs[:1])
  dead_params = _kill_every_unit(fresh_params)
  assert np.all(np.asarray(NET.apply(dead_params, obs, method=QNetwork.features)) == 0.0)
  fresh = target_fit_probe(NET, ADAM, fresh_params, obs, rng, config)
  dead = target_fit_probe(NET, ADAM, dead_params, obs, rng, config)
  # The sine part of the targets depends only on rng, so both fit targets of the same variance.
  np.testing.assert_allclose(fresh.baseline, dead.baseline, rtol=1e-5)
  # A dead network outputs one constant per action: the best it can do is the mean, i.e. the baseline.
  assert 0.95 < dead.normalized_final_loss < 1.05
  # 32 inputs, 2x32 units: the fresh network memorises the targets (measured: 6e-5 of the baseline).
  assert fresh.normalized_final_loss < 0.01
  # The fresh network's training loss goes down: the last 30 steps far below the first 30.
  curve = fresh.loss_curve.mean(axis=0)
  assert curve[-30:].mean() < 0.01 * curve[:30].mean()
  assert fresh.loss_auc < dead.loss_auc


def test_two_hot_head_is_fitted_through_its_q_values():
  net = QNetwork(2, torso="mlp", mlp_hidden_sizes=(32,), head="two_hot", num_bins=11)
  config = TargetFitConfig(num_targets=1, probe_steps=200, batch_size=16)
  result = target_fit_probe_fresh(net, ADAM, OBS, jax.random.PRNGKey(8), config)
  curve = result.loss_curve[0]
  assert np.isfinite(curve).all()
  assert curve[-20:].mean() < 0.1 * curve[:20].mean()  # measured: 0.60 -> 0.011


@pytest.mark.parametrize(
    "field,value",
    [("num_targets", 0), ("num_targets", 2.5), ("probe_steps", 0), ("batch_size", 0), ("batch_size", True),
     ("sin_scale", 0.0), ("sin_scale", -1.0), ("sin_scale", "big")],
)
def test_bad_config_values_name_the_field(field, value):
  with pytest.raises(ConfigError, match=f"^{field}="):
    dataclasses.replace(TargetFitConfig(), **{field: value})
