"""The dqn_zoo preset's loss has DQN Zoo's gradients, at every batch size.

DQN Zoo (github.com/google-deepmind/dqn_zoo at 45061f4, dqn_zoo/double_q/agent.py:85-111):

    td_errors = _batch_double_q_learning(q_tm1, a_tm1, r_t, discount_t, q_target_t, q_t)
    td_errors = rlax.clip_gradient(td_errors, -grad_error_bound, grad_error_bound)   # 1/32, run_atari.py:88
    losses = rlax.l2_loss(td_errors)                                                  # 0.5 td^2
    loss = jnp.mean(losses)

The clip acts on the gradient arriving at each TD error, d loss / d td_i = td_i / B, so it bounds |td_i| at
B/32: at batch 32 that is Huber with delta 1 (the gradient of each example is clip(td_i, -1, 1) / 32), at any
other batch size it is not. Huber with delta 1/32 on the TD error, which clips td_i itself at 1/32, is a
different loss. Below, that formula is written out twice, independently of agents/dqn/losses.py: once with a
`jax.custom_vjp` clip and once as the explicit gradient, and the project's learner must agree with both.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agents.dqn import DQNLearner, Transition
from training.config import PRESETS

NUM_ACTIONS = 4
OBS_DIM = 8
GRAD_ERROR_BOUND = 1.0 / 32  # dqn_zoo/double_q/run_atari.py:88


def dqn_zoo_config(**overrides):
  """The dqn_zoo preset's agent (loss, clip, discount, initializer, shared-bias head) on a tiny MLP torso."""
  return dataclasses.replace(PRESETS["dqn_zoo"].agent, torso="mlp", mlp_hidden_sizes=(16,), **overrides)


@jax.custom_vjp
def clip_gradient(x, bound):
  """Identity forward; the cotangent is clipped to [-bound, bound] (what rlax.clip_gradient does)."""
  return x


def _clip_gradient_fwd(x, bound):
  return x, bound


def _clip_gradient_bwd(bound, g):
  return jnp.clip(g, -bound, bound), None


clip_gradient.defvjp(_clip_gradient_fwd, _clip_gradient_bwd)


def td_errors(apply, online_params, target_params, batch):
  """float[B]: double Q-learning TD errors (van Hasselt et al. 2016), as rlax.double_q_learning computes them:
  the online network picks argmax_a Q(s_t, a), the target network values it, no gradient through the target."""
  q_tm1 = apply(online_params, batch.obs_tm1)
  q_t_selector = apply(online_params, batch.obs_t)
  q_t_value = apply(target_params, batch.obs_t)
  best = jnp.argmax(q_t_selector, axis=-1)
  target = batch.r_t + batch.discount_t * jnp.take_along_axis(q_t_value, best[:, None], axis=-1)[:, 0]
  return jax.lax.stop_gradient(target) - jnp.take_along_axis(q_tm1, batch.a_tm1[:, None], axis=-1)[:, 0]


def dqn_zoo_loss(apply, online_params, target_params, batch):
  """dqn_zoo/double_q/agent.py:97-110, transcribed: clip the TD errors' gradient, then mean(0.5 td^2)."""
  td = clip_gradient(td_errors(apply, online_params, target_params, batch), GRAD_ERROR_BOUND)
  return jnp.mean(0.5 * td**2)


def dqn_zoo_gradient_explicit(apply, online_params, target_params, batch):
  """The same gradient by hand: d loss / d td_i = clip(td_i / B, -1/32, 1/32) and d td_i / d Q(s_tm1, a_tm1) = -1,
  pulled back through the network with one VJP."""
  td = td_errors(apply, online_params, target_params, batch)
  d_td = jnp.clip(td / td.shape[0], -GRAD_ERROR_BOUND, GRAD_ERROR_BOUND)
  q_tm1, pullback = jax.vjp(lambda p: apply(p, batch.obs_tm1), online_params)
  d_q = -d_td[:, None] * jax.nn.one_hot(batch.a_tm1, q_tm1.shape[-1])
  return pullback(d_q)[0]


def make_batch(batch_size: int, seed: int = 0) -> Transition:
  rng = np.random.default_rng(seed)
  return Transition(
      obs_tm1=rng.normal(size=(batch_size, OBS_DIM)).astype(np.float32),
      a_tm1=rng.integers(0, NUM_ACTIONS, batch_size).astype(np.int32),
      # Large returns: most TD errors exceed 1 (the batch-32 clip point), some exceed 4 (the batch-128 one).
      r_t=(3.0 * rng.normal(size=batch_size)).astype(np.float32),
      discount_t=np.where(rng.random(batch_size) < 0.2, 0.0, 0.99).astype(np.float32),  # 0: a terminal
      obs_t=rng.normal(size=(batch_size, OBS_DIM)).astype(np.float32),
  )


def setup(config, batch_size):
  learner = DQNLearner(config, NUM_ACTIONS)
  obs = np.zeros((1, OBS_DIM), np.float32)
  online = learner.init(jax.random.PRNGKey(0), obs).params
  target = learner.init(jax.random.PRNGKey(1), obs).params  # a target that differs from the online network
  return learner, online, target, make_batch(batch_size)


def project_gradient(learner, online, target, batch):
  loss_fn = lambda p: learner.loss(p, target, batch)[0]
  return jax.jit(jax.value_and_grad(loss_fn))(online)


def assert_trees_close(a, b, **tolerance):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, **tolerance)


def global_norm_ratio(a, b) -> float:
  return float(optax.global_norm(a) / optax.global_norm(b))


@pytest.mark.parametrize("batch_size", [32, 128])
def test_dqn_zoo_loss_gradient_equals_dqn_zoos_formula(batch_size):
  config = dqn_zoo_config(batch_size=batch_size)
  # The preset's loss settings are kept: mse (0.5 td^2) with the TD-error gradient clipped at 1/32.
  assert (config.loss, config.td_error_grad_clip, config.discount) == ("mse", GRAD_ERROR_BOUND, 0.99)
  learner, online, target, batch = setup(config, batch_size)
  apply = lambda p, obs: learner.network.apply(p, obs).q_values

  td = np.asarray(td_errors(apply, online, target, batch))
  clipped = np.abs(td) / batch_size > GRAD_ERROR_BOUND
  assert clipped.any() and not clipped.all()  # the clip is active for some examples, not all
  if batch_size == 32:
    assert np.mean(np.abs(td) > 1.0) > 0.5  # at batch 32 the clip bounds |td| at 1: most examples are clipped

  loss, grads = project_gradient(learner, online, target, batch)
  reference = jax.grad(lambda p: dqn_zoo_loss(apply, p, target, batch))(online)
  explicit = dqn_zoo_gradient_explicit(apply, online, target, batch)
  assert_trees_close(reference, explicit, rtol=1e-5, atol=1e-8)  # the two transcriptions agree
  assert_trees_close(grads, reference, rtol=1e-5, atol=1e-8)
  # The clip changes only the backward pass: the loss is the plain mean of 0.5 td^2.
  np.testing.assert_allclose(loss, np.mean(0.5 * td**2), rtol=1e-5)
  # And the learner reports the unclipped TD errors.
  np.testing.assert_allclose(learner.loss(online, target, batch)[1][1], td, rtol=1e-5, atol=1e-6)


def test_huber_with_delta_one_over_32_is_not_dqn_zoos_loss():
  # The old setting clipped the TD error itself at 1/32 instead of its gradient: at batch 32 each clipped
  # example's gradient is 32x smaller than DQN Zoo's ((1/32)/32 against 1/32).
  learner, online, target, batch = setup(dqn_zoo_config(batch_size=32), 32)
  _, dqn_zoo_grads = project_gradient(learner, online, target, batch)
  huber_learner = DQNLearner(dqn_zoo_config(batch_size=32, loss="huber", huber_delta=1 / 32, td_error_grad_clip=None),
                             NUM_ACTIONS)
  _, huber_grads = project_gradient(huber_learner, online, target, batch)
  # Per example the ratio is min(|td|, 1) / min(|td|, 1/32), up to 32; the parameters' gradient sums examples
  # with different weights, so its norm ratio can land either side of 32 (32.8 on this batch; the issue saw ~29x).
  assert global_norm_ratio(dqn_zoo_grads, huber_grads) > 20.0


@pytest.mark.parametrize("batch_size, equal", [(32, True), (128, False)])
def test_dqn_zoo_loss_is_huber_delta_one_at_batch_32_only(batch_size, equal):
  learner, online, target, batch = setup(dqn_zoo_config(batch_size=batch_size), batch_size)
  _, dqn_zoo_grads = project_gradient(learner, online, target, batch)
  huber_learner = DQNLearner(dqn_zoo_config(batch_size=batch_size, loss="huber", huber_delta=1.0,
                                            td_error_grad_clip=None), NUM_ACTIONS)
  _, huber_grads = project_gradient(huber_learner, online, target, batch)
  if equal:
    # clip(td_i / 32, -1/32, 1/32) = clip(td_i, -1, 1) / 32: Huber(delta=1)'s gradient, batch-averaged.
    assert_trees_close(dqn_zoo_grads, huber_grads, rtol=1e-5, atol=1e-8)
  else:
    # At batch 128 the bound is |td| = 4: examples with 1 < |td| < 4 weigh more than under Huber(1).
    assert global_norm_ratio(dqn_zoo_grads, huber_grads) > 1.2
