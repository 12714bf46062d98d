"""Evaluations with the evaluation epsilon: a number of whole games, or DQN Zoo's budget of frames.

`evaluate` plays a fixed number of whole games in parallel, every environment exactly one, so no episode length
is favoured: the evaluator's default, eval.py's and the benchmarks'. `evaluate_for_frames` plays DQN Zoo's
evaluation (github.com/google-deepmind/dqn_zoo at 45061f4): games one after another in one environment until a
budget of frames is spent (dqn_zoo/double_q/run_atari.py:271-273: `itertools.islice` of `parts.run_loop`'s
timesteps), scored as dqn_zoo/parts.py:204-248 scores them.
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


class FramesEvaluation(NamedTuple):
  """What `evaluate_for_frames` played: the games that ended within the budget and the one it cut off."""

  episodes: list[EvalEpisode]  # the games that ended within the budget, in order (real scores)
  returns_without_noops: list[float]  # their returns less their no-op frames' points, as DQN Zoo counts them
  cut_off_return: float  # the game the budget cut off: its real score so far (0 if it had not started)
  cut_off_return_without_noops: float
  cut_off_steps: int
  budget_frames: int

  @property
  def dqn_zoo_episode_return(self) -> float:
    """DQN Zoo's `episode_return` (parts.py:225-237): the mean return of the games that ended, else the return so
    far of the one cut off; without the points of the no-op frames, which its RandomNoopsEnvironmentWrapper discards
    (gym_atari.py:148-164, 186-198; a game's whole score is `episodes`' real one)."""
    if self.returns_without_noops:
      return float(np.mean(self.returns_without_noops))
    return self.cut_off_return_without_noops


def evaluate_for_frames(
    agent: DQNConfig, params: Any, game: str, protocol: AtariProtocol, *, budget_frames: int, seed: int,
    epsilon: float | None = None,
) -> FramesEvaluation:
  """Plays games one after another in one environment with epsilon-greedy on `params` until `budget_frames` frames
  are spent, counted as DQN Zoo counts its evaluation's timesteps: each game 1 (its first timestep, after the no-op
  frames, which are not counted) plus frame_skip per agent step (a game-over step that emulated fewer frames
  counts frame_skip too: at most frame_skip - 1 frames over per game). A game ends within the budget if its last
  frame does; the game running when the budget runs out is cut off."""
  if epsilon is not None:
    agent = dataclasses.replace(agent, eval_epsilon=epsilon)
  episodes, without_noops, steps, frames = [], [], 0, 1  # the first game's first timestep
  with AtariEnv(game, 1, protocol, seed=seed, num_threads=1) as env:
    select_action = make_select_action(agent.make_network(env.num_actions), agent, evaluation=True)
    actor_state = init_actor_state(jax.random.PRNGKey(seed))
    obs = env.reset()
    step_points = 0.0  # the current game's points from its agent steps
    while frames + protocol.frame_skip <= budget_frames:
      actions, actor_state = select_action(params, obs, actor_state)
      step = env.step(np.asarray(actions))
      obs, frames, steps = step.obs, frames + protocol.frame_skip, steps + 1
      step_points += float(step.reward[0])
      if step.episodes:
        episode = step.episodes[0]
        episodes.append(EvalEpisode(episode.episode_return, episode.length_steps, episode.truncated))
        without_noops.append(step_points)
        step_points, steps = 0.0, 0
        if frames + 1 > budget_frames:  # the next game's first timestep is past the budget: it never started
          return FramesEvaluation(episodes, without_noops, 0.0, 0.0, 0, budget_frames)
        frames += 1
    cut_off_return = float(env.returns_so_far[0])
  return FramesEvaluation(episodes, without_noops, cut_off_return, step_points, steps, budget_frames)


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
