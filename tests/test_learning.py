"""The learner converges to Q* on a tiny MDP whose optimal values are known in closed form."""

import jax
import numpy as np
import pytest

from agents.dqn import DQNConfig, DQNLearner, Transition

NUM_STATES, GAMMA = 5, 0.9
LEFT, RIGHT = 0, 1


def chain_mdp():
  """States 0..4 in a line. RIGHT from state 4 ends the episode with reward 1;
  LEFT from state 0 stays put; every other move gives 0.
  Q*(s, RIGHT) = gamma^(4-s); Q*(s, LEFT) = gamma * V*(max(s-1, 0))."""
  v_star = GAMMA ** (NUM_STATES - 1 - np.arange(NUM_STATES))
  q_star = np.stack([GAMMA * v_star[np.maximum(np.arange(NUM_STATES) - 1, 0)], v_star], axis=1)
  obs_tm1, a_tm1, r_t, discount_t, obs_t = [], [], [], [], []
  eye = np.eye(NUM_STATES, dtype=np.float32)
  for s in range(NUM_STATES):
    for a in (LEFT, RIGHT):
      terminal = s == NUM_STATES - 1 and a == RIGHT
      s_next = max(s - 1, 0) if a == LEFT else min(s + 1, NUM_STATES - 1)
      obs_tm1.append(eye[s]); a_tm1.append(a); obs_t.append(eye[s_next])
      r_t.append(1.0 if terminal else 0.0); discount_t.append(0.0 if terminal else GAMMA)
  data = Transition(np.array(obs_tm1), np.array(a_tm1, np.int32), np.array(r_t, np.float32), np.array(discount_t, np.float32), np.array(obs_t))
  return data, q_star.astype(np.float32)


@pytest.mark.parametrize("head", ["scalar", "two_hot"])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_double_dqn_converges_to_q_star(head, layer_norm):
  data, q_star = chain_mdp()
  updates_per_call, batch_size, calls = 25, 32, 120
  config = DQNConfig(
      torso="mlp", mlp_hidden_sizes=(64, 64), layer_norm=layer_norm, head=head,
      num_bins=31, value_min=-0.5, value_max=1.5, discount=GAMMA, loss="mse",
      optimizer="adam", learning_rate=3e-3, target_update_period_updates=50,
      batch_size=batch_size, updates_per_call=updates_per_call,
  )
  learner = DQNLearner(config, num_actions=2)
  state = learner.init(jax.random.PRNGKey(0), data.obs_tm1)
  rng = np.random.default_rng(0)
  for _ in range(calls):
    idx = rng.integers(0, len(data.a_tm1), (updates_per_call, batch_size))
    state, _ = learner.update(state, jax.tree.map(lambda x: x[idx], data))
  q = np.asarray(learner.network.apply(state.params, np.eye(NUM_STATES, dtype=np.float32)).q_values)
  np.testing.assert_allclose(q, q_star, rtol=0.03)
  assert (q.argmax(-1) == RIGHT).all()
