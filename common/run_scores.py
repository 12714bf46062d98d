"""A run's final score from its metrics streams, as compare.py and W&B tracking take it (reports/runs.py,
training/tracking.py): the last evaluation, else the mean of the last training episodes."""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from common.metrics import read_rows
from common.run_dir import RunDir
from common.validation import is_finite_number

LAST_EPISODES = 100  # training episodes averaged for the score of a run with no evaluation (compare.py --last-episodes)


def episode_returns(run_dir: str, task: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
  """(env_steps int64[E], return float64[E]) of the training episodes in metrics/episodes.jsonl, in file order;
  with `task`, only those of that game (a continual run's rows carry their task). A row whose return is not a
  finite number is left out (`rows_left_out` counts them for the report)."""
  rows = read_rows(RunDir(run_dir).stream_path("episodes"), keep=("env_steps", "return", "task"))
  rows = [row for row in rows if "env_steps" in row and is_finite_number(row.get("return"))
          and (task is None or row.get("task") == task)]
  return (np.array([row["env_steps"] for row in rows], np.int64), np.array([row["return"] for row in rows], float))


@dataclasses.dataclass(frozen=True)
class FinalScore:
  score: Optional[float]
  """Game score (None: the run has neither an evaluation nor a finished episode yet)."""
  source: str
  """`eval` (mean return of the last evaluation; on a budget of frames, DQN Zoo's `eval_episode_return`), `train`
  (mean of the last training episodes) or `none`."""
  env_steps: Optional[int]
  """Env steps at which the score was taken (the evaluation's, or the last episode's)."""
  episodes: int
  """Episodes averaged."""


def final_score(run_dir: str, last_episodes: int, task: Optional[str] = None) -> FinalScore:
  """The last evaluation's mean return when metrics/eval.jsonl has one (an evaluation on a budget of frames: DQN
  Zoo's score of it, reports/dqn_zoo.py), else the mean of the last `last_episodes` training episodes; with `task`
  (a continual run), those of that game only."""
  evals = [row for row in read_rows(RunDir(run_dir).stream_path("eval"))
           if is_finite_number(row.get("mean_return")) and (task is None or row.get("task") == task)]
  if evals:
    last = evals[-1]
    score = last["dqn_zoo_episode_return"] if is_finite_number(last.get("dqn_zoo_episode_return")) else last["mean_return"]
    return FinalScore(float(score), "eval", last.get("env_steps"), int(last.get("num_episodes", 0)))
  steps, returns = episode_returns(run_dir, task)
  if len(returns) == 0:
    return FinalScore(None, "none", None, 0)
  tail = returns[-last_episodes:]
  return FinalScore(float(tail.mean()), "train", int(steps[-1]), len(tail))
