"""Double DQN losses against a plain-numpy reference, on hand-made batches."""

import jax
import numpy as np
import pytest

from agents.dqn import DQNConfig, DQNLearner, Transition, n_step_return
from agents.dqn import losses

GAMMA = 0.9


def np_huber(x, delta):
  return np.where(np.abs(x) <= delta, 0.5 * x**2, delta * (np.abs(x) - 0.5 * delta))


def np_scalar_loss(q_tm1, a, r, d, q_t_value, q_t_selector, loss, delta):
  target = r + d * q_t_value[np.arange(len(a)), q_t_selector.argmax(-1)]
  td = target - q_tm1[np.arange(len(a)), a]
  per_example = np_huber(td, delta) if loss == "huber" else 0.5 * td**2
  return per_example, td


def np_two_hot_loss(logits_tm1, q_tm1, a, r, d, q_t_value, q_t_selector, vmin, vmax, transform):
  target = r + d * q_t_value[np.arange(len(a)), q_t_selector.argmax(-1)]
  y = np.clip(transform(target), vmin, vmax)
  bins = np.linspace(vmin, vmax, logits_tm1.shape[-1])
  per_example = []
  for b in range(len(a)):
    i = min(np.searchsorted(bins, y[b], side="right") - 1, len(bins) - 2)
    p_upper = (y[b] - bins[i]) / (bins[i + 1] - bins[i])
    target_probs = np.zeros(len(bins))
    target_probs[i], target_probs[i + 1] = 1 - p_upper, p_upper
    z = logits_tm1[b, a[b]].astype(np.float64)
    log_softmax = z - z.max() - np.log(np.exp(z - z.max()).sum())
    per_example.append(-(target_probs * log_softmax).sum())
  return np.array(per_example), target - q_tm1[np.arange(len(a)), a]


# A hand-made batch: 4 transitions, 3 actions; the third is terminal (discount 0),
# the fourth has selector and value networks disagreeing (the point of Double DQN).
Q_TM1 = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0], [2.0, 2.0, 2.0], [0.0, 0.0, 10.0]], np.float32)
A_TM1 = np.array([2, 1, 0, 2], np.int32)
R_T = np.array([1.0, -0.5, 1.0, 0.0], np.float32)
DISCOUNT_T = np.array([0.9, 0.729, 0.0, 0.81], np.float32)
Q_T_VALUE = np.array([[4.0, 0.0, 1.0], [1.0, 2.0, 3.0], [100.0, 100.0, 100.0], [5.0, -5.0, 7.0]], np.float32)
Q_T_SELECTOR = np.array([[9.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("loss,delta", [("huber", 1.0), ("huber", 1.0 / 32), ("mse", 1.0)])
def test_scalar_loss_matches_numpy(loss, delta, jit):
  fn = jax.vmap(lambda *args: losses.scalar_double_q_loss(*args, loss=loss, huber_delta=delta))
  fn = jax.jit(fn) if jit else fn
  got, td = fn(Q_TM1, A_TM1, R_T, DISCOUNT_T, Q_T_VALUE, Q_T_SELECTOR)
  want, want_td = np_scalar_loss(Q_TM1, A_TM1, R_T, DISCOUNT_T, Q_T_VALUE, Q_T_SELECTOR, loss, delta)
  # By hand: targets 1+0.9*4=4.6, -0.5+0.729*3=1.687, 1 (terminal), 0.81*(-5)=-4.05.
  np.testing.assert_allclose(want_td, [4.6 - 3.0, 1.687 + 1.0, 1.0 - 2.0, -4.05 - 10.0], rtol=1e-6)
  np.testing.assert_allclose(td, want_td, rtol=1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("transform_name", ["identity", "signed_hyperbolic"])
def test_two_hot_loss_matches_numpy(transform_name, jit):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, 3, 7)).astype(np.float32)
  vmin, vmax = -3.0, 3.0
  if transform_name == "identity":
    transform = lambda x: x
  else:
    transform = lambda x: np.sign(x) * (np.sqrt(np.abs(x) + 1) - 1) + 1e-3 * x
  fn = jax.vmap(
      lambda *args: losses.two_hot_double_q_loss(*args, value_min=vmin, value_max=vmax, value_transform=transform_name)
  )
  fn = jax.jit(fn) if jit else fn
  got, td = fn(logits, Q_TM1, A_TM1, R_T, DISCOUNT_T, Q_T_VALUE, Q_T_SELECTOR)
  want, want_td = np_two_hot_loss(logits, Q_TM1, A_TM1, R_T, DISCOUNT_T, Q_T_VALUE, Q_T_SELECTOR, vmin, vmax, transform)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(td, want_td, rtol=1e-6)


# A raw 5-step episode ending in a terminal, real game rewards.
EPISODE_REWARDS = np.array([3.0, -2.0, 0.0, 5.0, 1.0])
EPISODE_DISCOUNTS = np.array([1.0, 1.0, 1.0, 1.0, 0.0])  # the last step is terminal


def test_n_step_return_by_hand():
  n = 3
  got = [n_step_return(EPISODE_REWARDS[t : t + n], EPISODE_DISCOUNTS[t : t + n], GAMMA, clip=True) for t in range(5)]
  # Clipped rewards 1, -1, 0, 1, 1.
  want = [(1 - 0.9 + 0.0, 0.729), (-1 + 0.0 + 0.81, 0.729), (0 + 0.9 + 0.81, 0.0), (1 + 0.9, 0.0), (1.0, 0.0)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  unclipped = n_step_return(EPISODE_REWARDS[:3], EPISODE_DISCOUNTS[:3], GAMMA, clip=False)
  np.testing.assert_allclose(unclipped, (3 - 1.8 + 0.0, 0.729), rtol=1e-6)


def test_n_step_return_stops_at_a_terminal_inside_the_window():
  # Rewards after a zero discount belong to the next episode and must not leak in.
  r, d = n_step_return(np.array([0.5, 1.0, 7.0]), np.array([1.0, 0.0, 1.0]), GAMMA, clip=False)
  assert (r, d) == (np.float32(0.5 + 0.9), np.float32(0.0))
  with pytest.raises(ValueError):
    n_step_return(np.array([]), np.array([]), GAMMA, clip=True)


@pytest.mark.parametrize("head", ["scalar", "two_hot"])
def test_learner_loss_on_an_n_step_batch_matches_numpy(head):
  """End to end: raw episode -> n=3 targets -> batch -> learner loss == numpy reference."""
  n, num_actions = 3, 3
  config = DQNConfig(torso="mlp", mlp_hidden_sizes=(16,), head=head, num_bins=9, value_min=-2.0, value_max=4.0, discount=GAMMA, n_step=n, loss="huber", huber_delta=1.0,
                     td_error_grad_clip=None)
  learner = DQNLearner(config, num_actions)
  obs = np.eye(6, dtype=np.float32)  # observation t is a one-hot of t; obs 5 is the final one
  starts = np.arange(5)
  pairs = [n_step_return(EPISODE_REWARDS[t : t + n], EPISODE_DISCOUNTS[t : t + n], GAMMA, clip=True) for t in starts]
  batch = Transition(
      obs_tm1=obs[starts],
      a_tm1=np.array([0, 1, 2, 1, 0], np.int32),
      r_t=np.array([p[0] for p in pairs], np.float32),
      discount_t=np.array([p[1] for p in pairs], np.float32),
      obs_t=obs[np.minimum(starts + n, 5)],
  )
  state = learner.init(jax.random.PRNGKey(0), batch.obs_tm1)
  # Make the target network differ from the online one.
  target_params = jax.tree.map(lambda x: x * 1.5, state.params)
  loss, (q_tm1, td) = jax.jit(learner.loss)(state.params, target_params, batch)

  online_tm1 = learner.network.apply(state.params, batch.obs_tm1)
  q_t_selector = np.asarray(learner.network.apply(state.params, batch.obs_t).q_values)
  q_t_value = np.asarray(learner.network.apply(target_params, batch.obs_t).q_values)
  q_np = np.asarray(online_tm1.q_values)
  if head == "scalar":
    want, want_td = np_scalar_loss(q_np, batch.a_tm1, batch.r_t, batch.discount_t, q_t_value, q_t_selector, "huber", 1.0)
  else:
    want, want_td = np_two_hot_loss(np.asarray(online_tm1.logits), q_np, batch.a_tm1, batch.r_t, batch.discount_t, q_t_value, q_t_selector, -2.0, 4.0, lambda x: x)
  np.testing.assert_allclose(loss, want.mean(), rtol=1e-5)
  np.testing.assert_allclose(td, want_td, rtol=1e-5, atol=1e-6)

  # Importance weights scale each example's loss.
  weights = np.array([2.0, 0.0, 0.0, 0.0, 0.0], np.float32)
  weighted, _ = learner.loss(state.params, target_params, batch._replace(weight=weights))
  np.testing.assert_allclose(weighted, 2.0 * want[0] / 5, rtol=1e-5)
