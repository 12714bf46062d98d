"""n-step target inputs from raw rewards: the one place rewards are clipped.

A transition (s_tm1, a_tm1, r_t, discount_t, s_t) with n-step bootstrapping has
  r_t        = sum_{k<m} gamma^k * clip(R_{k+1})
  discount_t = gamma^m if no terminal among the m steps, else 0
where m <= n is the number of steps taken (fewer at an episode end). Reward
clipping (Mnih et al. 2015) applies to each reward before the sum, so it is done
here, where the sum is formed (by the replay writer), and never to logged scores.
"""

from __future__ import annotations

import numpy as np


def clip_rewards(rewards: np.ndarray, max_abs_reward: float) -> np.ndarray:
  return np.clip(rewards, -max_abs_reward, max_abs_reward)


def n_step_return(
    rewards: np.ndarray,
    discounts: np.ndarray,
    gamma: float,
    *,
    clip: bool,
    max_abs_reward: float = 1.0,
) -> tuple[np.float32, np.float32]:
  """(r_t, discount_t) for one transition from its m <= n raw steps.

  rewards: float[m], the real game rewards of the steps after s_tm1.
  discounts: float[m], the environment's per-step discount (0 at a terminal, else 1).
  A zero discount ends the sum: no reward after a terminal belongs to the transition.
  """
  rewards = np.asarray(rewards, np.float64)
  discounts = np.asarray(discounts, np.float64)
  if rewards.shape != discounts.shape or rewards.ndim != 1 or rewards.size == 0:
    raise ValueError(f"rewards and discounts must be equal, non-empty vectors; got {rewards.shape}, {discounts.shape}")
  if clip:
    rewards = clip_rewards(rewards, max_abs_reward)
  total, scale = 0.0, 1.0
  for reward, discount in zip(rewards, discounts):
    total += scale * reward
    scale *= gamma * discount
    if discount == 0.0:
      break
  return np.float32(total), np.float32(scale)
