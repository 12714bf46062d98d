"""Batched epsilon-greedy policy, pure: `select_action(params, obs, actor_state) -> (actions, actor_state)`.

The RNG and the count of agent steps taken (which drives the epsilon schedule)
live in `ActorState`, so the policy is reproducible and checkpointable.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from agents.dqn.config import DQNConfig
from networks import QNetwork


class ActorState(NamedTuple):
  rng: chex.PRNGKey
  env_steps: chex.Array  # int32[], agent steps taken so far (summed over the batch of environments)


def init_actor_state(rng: chex.PRNGKey, env_steps: int = 0) -> ActorState:
  return ActorState(rng=rng, env_steps=jnp.asarray(env_steps, jnp.int32))


def epsilon_schedule(config: DQNConfig) -> optax.Schedule:
  """Epsilon as a function of agent steps: constant, then linear decay, then constant."""
  return optax.linear_schedule(
      init_value=config.epsilon_begin,
      end_value=config.epsilon_end,
      transition_steps=config.epsilon_decay_steps,
      transition_begin=config.epsilon_decay_begin_steps,
  )


def epsilon_greedy(rng: chex.PRNGKey, q_values: chex.Array, epsilon: chex.Numeric) -> chex.Array:
  """int32[B] actions: argmax of q_values float[B, A], or uniform with probability epsilon."""
  chex.assert_rank(q_values, 2)
  explore_rng, action_rng = jax.random.split(rng)
  batch, num_actions = q_values.shape
  greedy = jnp.argmax(q_values, axis=-1).astype(jnp.int32)
  uniform = jax.random.randint(action_rng, (batch,), 0, num_actions, dtype=jnp.int32)
  explore = jax.random.uniform(explore_rng, (batch,)) < epsilon
  return jnp.where(explore, uniform, greedy)


def make_select_action(
    network: QNetwork, config: DQNConfig, *, evaluation: bool = False
) -> Callable[[chex.ArrayTree, chex.Array, ActorState], tuple[chex.Array, ActorState]]:
  """The jitted policy. Training follows `epsilon_schedule`; evaluation uses `eval_epsilon`."""
  schedule = (lambda steps: config.eval_epsilon) if evaluation else epsilon_schedule(config)

  @jax.jit
  def select_action(params, obs, actor_state: ActorState):
    rng, step_rng = jax.random.split(actor_state.rng)
    q_values = network.apply(params, obs).q_values
    actions = epsilon_greedy(step_rng, q_values, schedule(actor_state.env_steps))
    return actions, ActorState(rng=rng, env_steps=actor_state.env_steps + obs.shape[0])

  return select_action
