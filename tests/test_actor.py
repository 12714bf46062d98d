import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.dqn import DQNConfig, epsilon_greedy, epsilon_schedule, init_actor_state, make_select_action

CONFIG = DQNConfig(torso="mlp", mlp_hidden_sizes=(8,), epsilon_begin=1.0, epsilon_end=0.1, epsilon_decay_begin_steps=100, epsilon_decay_steps=1000, eval_epsilon=0.0)


def test_epsilon_schedule_is_flat_then_linear_then_flat():
  schedule = epsilon_schedule(CONFIG)
  for steps, expected in [(0, 1.0), (100, 1.0), (600, 0.55), (1100, 0.1), (10**6, 0.1)]:
    assert float(schedule(steps)) == pytest.approx(expected)


def test_epsilon_greedy_is_greedy_at_zero_and_uniform_at_one():
  q = jnp.asarray(np.random.default_rng(0).normal(size=(4096, 4)), jnp.float32)
  greedy = epsilon_greedy(jax.random.PRNGKey(0), q, 0.0)
  np.testing.assert_array_equal(greedy, np.argmax(q, -1))
  uniform = np.asarray(epsilon_greedy(jax.random.PRNGKey(1), q, 1.0))
  np.testing.assert_allclose(np.bincount(uniform, minlength=4) / len(uniform), 0.25, atol=0.03)
  half = np.asarray(epsilon_greedy(jax.random.PRNGKey(2), q, 0.5))
  # Greedy with prob 0.5 + 0.5/4.
  assert np.mean(half == np.argmax(q, -1)) == pytest.approx(0.625, abs=0.03)


def test_select_action_counts_steps_and_is_reproducible():
  network = CONFIG.make_network(3)
  obs = jnp.asarray(np.random.default_rng(0).normal(size=(16, 5)), jnp.float32)
  params = network.init(jax.random.PRNGKey(0), obs)
  select = make_select_action(network, CONFIG)
  state = init_actor_state(jax.random.PRNGKey(7))
  a1, state1 = select(params, obs, state)
  a1_again, _ = select(params, obs, state)
  np.testing.assert_array_equal(a1, a1_again)
  assert a1.dtype == jnp.int32 and a1.shape == (16,)
  assert int(state1.env_steps) == 16
  _, state2 = select(params, obs, state1)
  assert int(state2.env_steps) == 32
  assert not np.array_equal(state1.rng, state2.rng)


def test_training_and_evaluation_policies_use_their_own_epsilon():
  network = CONFIG.make_network(3)
  obs = jnp.asarray(np.random.default_rng(0).normal(size=(2048, 5)), jnp.float32)
  params = network.init(jax.random.PRNGKey(0), obs)
  greedy = np.argmax(network.apply(params, obs).q_values, -1)
  train_actions, _ = make_select_action(network, CONFIG)(params, obs, init_actor_state(jax.random.PRNGKey(0)))
  eval_actions, _ = make_select_action(network, CONFIG, evaluation=True)(params, obs, init_actor_state(jax.random.PRNGKey(0)))
  assert np.mean(np.asarray(train_actions) == greedy) == pytest.approx(1 / 3, abs=0.05)  # epsilon 1 at step 0
  np.testing.assert_array_equal(eval_actions, greedy)  # eval_epsilon 0
  late = init_actor_state(jax.random.PRNGKey(0), env_steps=10**6)
  late_actions, _ = make_select_action(network, CONFIG)(params, obs, late)
  assert np.mean(np.asarray(late_actions) == greedy) == pytest.approx(0.9 + 0.1 / 3, abs=0.03)
