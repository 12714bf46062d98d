import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from agents.dqn import DQNConfig, DQNLearner, Transition, make_optimizer
from networks import is_layer_norm_path

NUM_ACTIONS = 3


def random_batch(rng, lead=(), batch_size=8, obs_shape=(5,)):
  def observations():
    if len(obs_shape) == 3:  # pixels
      return rng.integers(0, 256, lead + (batch_size,) + obs_shape).astype(np.uint8)
    return rng.normal(size=lead + (batch_size,) + obs_shape).astype(np.float32)

  return Transition(
      obs_tm1=observations(),
      a_tm1=rng.integers(0, NUM_ACTIONS, lead + (batch_size,)).astype(np.int32),
      r_t=rng.normal(size=lead + (batch_size,)).astype(np.float32),
      discount_t=(rng.random(lead + (batch_size,)) > 0.2).astype(np.float32) * 0.99,
      obs_t=observations(),
  )


def small_config(**kwargs):
  base = dict(torso="mlp", mlp_hidden_sizes=(16, 16), optimizer="adam", learning_rate=1e-3, loss="huber", huber_delta=1.0,
              td_error_grad_clip=None, initializer="lecun_normal", head_bias="per_output")
  return DQNConfig(**{**base, **kwargs})


@pytest.mark.parametrize(
    "head,torso,obs_shape", [("scalar", "mlp", (5,)), ("two_hot", "mlp", (5,)), ("scalar", "nature", (36, 36, 2))]
)
def test_k_updates_per_call_equal_k_single_updates(head, torso, obs_shape):
  k = 4
  rng = np.random.default_rng(0)
  batches = random_batch(rng, lead=(k,), obs_shape=obs_shape)
  single = DQNLearner(small_config(head=head, torso=torso, target_update_period_updates=2), NUM_ACTIONS)
  fused = DQNLearner(small_config(head=head, torso=torso, target_update_period_updates=2, updates_per_call=k), NUM_ACTIONS)
  # Convolutional torsos take the unrolled path on CPU, the MLP the lax.scan path: both are covered.
  assert fused._unroll_updates == (jax.default_backend() == "cpu" and torso != "mlp")
  state_single = state_fused = single.init(jax.random.PRNGKey(0), batches.obs_tm1[0])
  losses = []
  for i in range(k):
    state_single, m = single.update(state_single, jax.tree.map(lambda x: x[i], batches))
    losses.append(float(m["loss"]))
  state_fused, fused_metrics = fused.update(state_fused, batches)
  assert int(state_fused.step) == int(state_single.step) == k
  for a, b in zip(jax.tree.leaves(state_single.params), jax.tree.leaves(state_fused.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(state_single.target_params), jax.tree.leaves(state_fused.target_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(fused_metrics["loss"], np.mean(losses), rtol=1e-5)
  assert fused_metrics["abs_td_error"].shape == (k, 8)


def test_target_network_is_copied_exactly_every_period():
  period = 3
  learner = DQNLearner(small_config(target_update_period_updates=period), NUM_ACTIONS)
  rng = np.random.default_rng(1)
  state = learner.init(jax.random.PRNGKey(0), random_batch(rng).obs_tm1)
  initial = state.params
  for step in range(1, 2 * period + 1):
    previous_target = state.target_params
    state, _ = learner.update(state, random_batch(rng))
    expected = state.params if step % period == 0 else previous_target
    for a, b in zip(jax.tree.leaves(state.target_params), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(a, b)
    if step < period:
      for a, b in zip(jax.tree.leaves(state.target_params), jax.tree.leaves(initial)):
        np.testing.assert_array_equal(a, b)


def test_update_reports_finite_metrics_and_learns_a_fixed_batch():
  learner = DQNLearner(small_config(target_update_period_updates=1000), NUM_ACTIONS)
  rng = np.random.default_rng(2)
  batch = random_batch(rng)
  state = learner.init(jax.random.PRNGKey(0), batch.obs_tm1)
  state, first = learner.update(state, batch)
  for _ in range(200):
    state, metrics = learner.update(state, batch)
  expected = {"loss", "q_mean", "q_max", "td_error_mean", "td_error_abs_mean", "td_error_std", "grad_norm", "param_norm", "abs_td_error"}
  assert set(metrics) == expected
  assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())
  assert metrics["abs_td_error"].shape == (8,)
  assert float(metrics["loss"]) < 0.2 * float(first["loss"])
  np.testing.assert_allclose(metrics["param_norm"], optax.global_norm(state.params), rtol=1e-6)


@pytest.mark.parametrize("decay_layer_norm_params", [True, False])
def test_decoupled_weight_decay_and_its_layer_norm_mask(decay_layer_norm_params):
  lr, wd = 0.1, 0.5
  config = small_config(layer_norm=True, learning_rate=lr, weight_decay=wd, decay_layer_norm_params=decay_layer_norm_params)
  params = config.make_network(NUM_ACTIONS).init(jax.random.PRNGKey(0), jnp.ones((1, 5)))
  params = jax.tree.map(lambda x: x + 1.0, params)  # LayerNorm biases start at 0; make every leaf non-zero
  optimizer = make_optimizer(config)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
  flat_updates = traverse_util.flatten_dict(updates)
  flat_params = traverse_util.flatten_dict(params)
  saw_layer_norm = False
  for path, update in flat_updates.items():
    decayed = decay_layer_norm_params or not is_layer_norm_path(path)
    saw_layer_norm |= is_layer_norm_path(path)
    expected = -lr * wd * flat_params[path] if decayed else jnp.zeros_like(update)
    np.testing.assert_allclose(update, expected, rtol=1e-6, err_msg=str(path))
  assert saw_layer_norm


@pytest.mark.parametrize("decay_layer_norm_params", [True, False])
def test_l2_weight_decay_joins_the_loss_gradient_before_adam(decay_layer_norm_params):
  # The l2 form is the penalty wd * ||w||^2 in the loss: Adam sees g + 2 wd w. Adam's first step, by hand
  # (Kingma & Ba 2015, Alg. 1, bias-corrected moments at t = 1): -lr * g / (|g| + eps).
  lr, wd, eps = 0.1, 0.5, 1e-3
  config = small_config(layer_norm=True, learning_rate=lr, optimizer_eps=eps, weight_decay=wd, weight_decay_form="l2",
                        decay_layer_norm_params=decay_layer_norm_params)
  params = config.make_network(NUM_ACTIONS).init(jax.random.PRNGKey(0), jnp.ones((1, 5)))
  params = jax.tree.map(lambda x: x + 1.0, params)  # every leaf non-zero
  loss_grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3), params)
  optimizer = make_optimizer(config)
  updates, _ = optimizer.update(loss_grads, optimizer.init(params), params)
  flat_params = traverse_util.flatten_dict(params)
  for path, update in traverse_util.flatten_dict(updates).items():
    decayed = decay_layer_norm_params or not is_layer_norm_path(path)
    grad = 0.3 + (2.0 * wd * np.asarray(flat_params[path]) if decayed else 0.0)
    np.testing.assert_allclose(update, -lr * grad / (np.abs(grad) + eps), rtol=1e-5, err_msg=str(path))
  # Decoupled, the same decay is not scaled by Adam: -lr * (g / (|g| + eps) + wd * w).
  decoupled = make_optimizer(dataclasses.replace(config, weight_decay_form="decoupled"))
  updates, _ = decoupled.update(loss_grads, decoupled.init(params), params)
  for path, update in traverse_util.flatten_dict(updates).items():
    decay = wd * np.asarray(flat_params[path]) if decay_layer_norm_params or not is_layer_norm_path(path) else 0.0
    np.testing.assert_allclose(update, -lr * (0.3 / (0.3 + eps) + decay), rtol=1e-5, err_msg=str(path))


def test_global_norm_clipping_bounds_the_gradient():
  # With a huge RMSProp epsilon the update is -lr * g / sqrt(eps): linear in g, so clipping shows.
  params = {"w": jnp.zeros(4)}
  grads = {"w": jnp.full(4, 50.0)}  # global norm 100
  for max_norm, expected_norm in [(None, 100.0), (1.0, 1.0)]:
    config = small_config(optimizer="rmsprop", learning_rate=1.0, optimizer_eps=1e8, max_grad_norm=max_norm)
    optimizer = make_optimizer(config)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    np.testing.assert_allclose(optax.global_norm(updates) * 1e4, expected_norm, rtol=1e-3)


def _hand_loss(loss, huber_delta, td):
  if loss == "mse":
    return 0.5 * td**2
  quadratic = np.minimum(np.abs(td), huber_delta)
  return 0.5 * quadratic**2 + huber_delta * (np.abs(td) - quadratic)


@pytest.mark.parametrize("loss,huber_delta", [("mse", 1.0), ("huber", 0.5)])
def test_loss_is_double_dqn_online_selects_target_evaluates(loss, huber_delta):
  """Online and target networks that disagree on argmax at s_t tell Double DQN from plain DQN."""
  batch_size = 8
  learner = DQNLearner(small_config(mlp_hidden_sizes=(8,), loss=loss, huber_delta=huber_delta), NUM_ACTIONS)
  rng = np.random.default_rng(3)
  obs_example = np.zeros((1, 5), np.float32)
  params = learner.init(jax.random.PRNGKey(0), obs_example).params
  target_params = learner.init(jax.random.PRNGKey(1), obs_example).params
  q = lambda p, obs: np.asarray(learner.network.apply(p, obs).q_values, np.float64)

  # Keep only next observations where the two networks pick different greedy actions.
  candidates = rng.normal(size=(256, 5)).astype(np.float32)
  disagree = np.argmax(q(params, candidates), -1) != np.argmax(q(target_params, candidates), -1)
  assert disagree.sum() >= batch_size
  obs_t = candidates[disagree][:batch_size]
  batch = Transition(
      obs_tm1=rng.normal(size=(batch_size, 5)).astype(np.float32),
      a_tm1=rng.integers(0, NUM_ACTIONS, batch_size).astype(np.int32),
      r_t=rng.normal(size=batch_size).astype(np.float32),
      discount_t=np.full(batch_size, 0.99, np.float32),  # no terminals: every target bootstraps
      obs_t=obs_t,
  )

  q_online_t, q_target_t = q(params, batch.obs_t), q(target_params, batch.obs_t)
  a_online_t, a_target_t = np.argmax(q_online_t, -1), np.argmax(q_target_t, -1)
  assert np.all(a_online_t != a_target_t)  # precondition: the selector matters on every example
  rows = np.arange(batch_size)
  q_tm1 = q(params, batch.obs_tm1)[rows, batch.a_tm1]

  def expected(selector_actions):
    target = batch.r_t + batch.discount_t * q_target_t[rows, selector_actions]
    td = target - q_tm1
    return np.mean(_hand_loss(loss, huber_delta, td)), td

  double_loss, double_td = expected(a_online_t)
  plain_loss, _ = expected(a_target_t)  # plain DQN: max_a Q_target(s_t, a)
  assert abs(plain_loss - double_loss) > 0.05 * double_loss
  if loss == "huber":  # both branches of the Huber loss are exercised
    assert np.any(np.abs(double_td) < huber_delta) and np.any(np.abs(double_td) > huber_delta)

  loss_value, (q_values_tm1, td_error) = learner.loss(params, target_params, batch)
  np.testing.assert_allclose(loss_value, double_loss, rtol=1e-5, err_msg=f"plain DQN would give {plain_loss}")
  np.testing.assert_allclose(td_error, double_td, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(q_values_tm1, q(params, batch.obs_tm1), rtol=1e-5, atol=1e-6)

  state = learner.init(jax.random.PRNGKey(2), obs_example)._replace(params=params, target_params=target_params)
  _, metrics = learner.update(state, batch)
  np.testing.assert_allclose(metrics["loss"], double_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["abs_td_error"], np.abs(double_td), rtol=1e-5, atol=1e-6)


def test_target_period_one_update_equals_the_update_with_an_explicit_target_copy():
  """With period 1 the update evaluates s_t once; the result must equal the two-network computation."""
  rng = np.random.default_rng(3)
  batch = random_batch(rng)
  fast = DQNLearner(small_config(target_update_period_updates=1), NUM_ACTIONS)
  state = fast.init(jax.random.PRNGKey(0), batch.obs_tm1)
  for _ in range(3):
    previous = state
    state, metrics = fast.update(state, batch)
    # The same step computed with both networks spelled out: the target is a copy of the online parameters.
    (loss, _), grads = jax.value_and_grad(fast.loss, has_aux=True)(previous.params, previous.target_params, batch)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], optax.global_norm(grads), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.target_params)):
      np.testing.assert_array_equal(a, b)
