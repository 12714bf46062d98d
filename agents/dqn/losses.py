"""Double DQN losses for one transition; the learner batches them with `jax.vmap`.

Targets follow the batch contract of docs/design.md: `r_t` is already the n-step
discounted sum of (clipped) rewards and `discount_t` is gamma^n, zero at a true
terminal (see `agents.dqn.n_step`). Both losses return (loss, td_error), where
td_error = target - Q(s_tm1, a_tm1) in value space, used for priorities and metrics.
"""

from __future__ import annotations

from typing import Optional

import chex
import jax
import jax.numpy as jnp
import rlax

from networks import categorical


def double_q_target(r_t: chex.Array, discount_t: chex.Array, q_t_value: chex.Array, q_t_selector: chex.Array) -> chex.Array:
  """r_t + discount_t * q_t_value[argmax q_t_selector], without gradient (van Hasselt et al. 2016)."""
  chex.assert_rank([r_t, discount_t, q_t_value, q_t_selector], [0, 0, 1, 1])
  return jax.lax.stop_gradient(r_t + discount_t * q_t_value[jnp.argmax(q_t_selector)])


def scalar_double_q_loss(
    q_tm1: chex.Array,
    a_tm1: chex.Array,
    r_t: chex.Array,
    discount_t: chex.Array,
    q_t_value: chex.Array,
    q_t_selector: chex.Array,
    *,
    loss: str = "huber",
    huber_delta: float = 1.0,
    td_error_grad_clip: Optional[float] = None,
) -> tuple[chex.Array, chex.Array]:
  """Double DQN regression loss (van Hasselt et al. 2016) with a Huber or squared error.

  q_tm1, q_t_value (target network), q_t_selector (online network): float[A].
  With `td_error_grad_clip` c, the gradient reaching the TD error is clipped to [-c, c] first
  (`rlax.clip_gradient`): DQN Zoo's loss is this with loss mse and c = 1/32
  (dqn_zoo/double_q/agent.py:97-110). It clips the backward signal of the *batch* loss, w * td / B
  after the learner's mean, so its effect depends on the batch size; the loss value is unchanged.
  """
  chex.assert_rank([q_tm1, a_tm1], [1, 0])
  td_error = rlax.double_q_learning(q_tm1, a_tm1, r_t, discount_t, q_t_value, q_t_selector)
  clipped = td_error if td_error_grad_clip is None else rlax.clip_gradient(td_error, -td_error_grad_clip, td_error_grad_clip)
  if loss == "huber":
    value = rlax.huber_loss(clipped, huber_delta)
  elif loss == "mse":
    value = rlax.l2_loss(clipped)
  else:
    raise ValueError(f"loss={loss!r} is not one of ('huber', 'mse')")
  return value, td_error


def two_hot_double_q_loss(
    logits_tm1: chex.Array,
    q_tm1: chex.Array,
    a_tm1: chex.Array,
    r_t: chex.Array,
    discount_t: chex.Array,
    q_t_value: chex.Array,
    q_t_selector: chex.Array,
    *,
    value_min: float,
    value_max: float,
    value_transform: str = "identity",
    transform_eps: float = 1e-3,
) -> tuple[chex.Array, chex.Array]:
  """Cross-entropy between the predicted distribution of Q(s_tm1, a_tm1) and the
  two-hot projection of the transformed Double DQN target h(y).

  logits_tm1: float[A, num_bins]; q_tm1, q_t_value, q_t_selector: float[A] in value space.
  As in Schrittwieser et al. 2020 (MuZero) and Farebrother et al. 2024 ("Stop Regressing").
  """
  chex.assert_rank([logits_tm1, q_tm1, a_tm1], [2, 1, 0])
  transform, _ = categorical.value_transform_pair(value_transform, transform_eps)
  target = double_q_target(r_t, discount_t, q_t_value, q_t_selector)
  target_probs = categorical.two_hot(transform(target), value_min, value_max, logits_tm1.shape[-1])
  log_probs = jax.nn.log_softmax(logits_tm1[a_tm1])
  return -jnp.sum(target_probs * log_probs), target - q_tm1[a_tm1]
