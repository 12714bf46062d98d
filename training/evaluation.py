"""Evaluation episodes: a fixed number of whole games played with the evaluation epsilon.

Used by the evaluator process during training and by the benchmarks; every
environment plays exactly one episode, so no episode length is favoured.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np

from agents.dqn import DQNConfig, init_actor_state, make_select_action
from envs import AtariEnv, AtariProtocol, EnvStep


class EvalEpisode(NamedTuple):
  episode_return: float  # real, unclipped game score
  length_steps: int
  truncated: bool


def evaluate(
    agent: DQNConfig, params: Any, game: str, protocol: AtariProtocol, *,
    num_episodes: int, seed: int, epsilon: float | None = None,
    on_step: Optional[Callable[[np.ndarray, EnvStep], None]] = None,
) -> list[EvalEpisode]:
  """Plays `num_episodes` games in parallel with epsilon-greedy on `params` (default: agent.eval_epsilon).

  `on_step(actions int[N], step)` sees every vector step as played (eval.py records a video with it).
  """
  if epsilon is not None:
    agent = dataclasses.replace(agent, eval_epsilon=epsilon)
  with AtariEnv(game, num_episodes, protocol, seed=seed, num_threads=1) as env:
    select_action = make_select_action(agent.make_network(env.num_actions), agent, evaluation=True)
    actor_state = init_actor_state(jax.random.PRNGKey(seed))
    obs = env.reset()
    finished: dict[int, EvalEpisode] = {}
    while len(finished) < num_episodes:
      actions, actor_state = select_action(params, obs, actor_state)
      actions = np.asarray(actions)
      step = env.step(actions)
      if on_step is not None:
        on_step(actions, step)
      obs = step.obs
      for episode in step.episodes:
        finished.setdefault(episode.env_index, EvalEpisode(episode.episode_return, episode.length_steps, episode.truncated))
  return [finished[i] for i in range(num_episodes)]
