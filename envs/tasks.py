"""Continual Atari: a run whose game changes on a schedule of env steps.

The task at job env step t is games[t // switch_every_env_steps], cycling through the list (or staying on
the last game once the list is done, without `cycle`). The schedule is a pure function of the job's env-step
counter, which checkpoints hold, so a resumed run is on the same task at the same step.

A sequence of different games needs the full 18-action space (`env.full_action_space`), so that one Q head
serves every game and action i means the same joystick input in all of them (Abbas et al. 2023 and
Lyle et al. 2023 build their Atari task sequences so). A task may also be one game in an ALE mode and
difficulty, `breakout:m4:d1` (`envs.atari.parse_game`): modes of one game share its minimal action set, and
they run on `envs.mode_env.ModeVectorEnv`, since ale-py 0.12's vector environment takes neither.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from common.validation import ConfigError, check_int
from envs.atari import check_game


@dataclasses.dataclass(frozen=True)
class TaskSchedule:
  """Games played in turn, each for `switch_every_env_steps` job env steps."""

  games: tuple[str, ...]
  switch_every_env_steps: int
  cycle: bool = True

  def __post_init__(self):
    if not self.games:
      raise ConfigError("a task schedule needs at least one game")
    for game in self.games:
      check_game(game)
    check_int("task_switch_every_env_steps", self.switch_every_env_steps, low=1)

  def index_at(self, env_steps: int) -> int:
    """Position in the list of the task played at job env step `env_steps`."""
    phase = int(env_steps) // self.switch_every_env_steps
    return phase % len(self.games) if self.cycle else min(phase, len(self.games) - 1)

  def game_at(self, env_steps: int) -> str:
    return self.games[self.index_at(env_steps)]

  def phase_at(self, env_steps: int) -> int:
    """How many switches have happened by `env_steps` (0 during the first task); without `cycle` it stops at
    the last game."""
    phase = int(env_steps) // self.switch_every_env_steps
    return phase if self.cycle else min(phase, len(self.games) - 1)

  def next_switch(self, env_steps: int) -> Optional[int]:
    """The job env step of the next switch after `env_steps`, or None when the game never changes again."""
    if not self.cycle and self.phase_at(env_steps) >= len(self.games) - 1:
      return None
    return (int(env_steps) // self.switch_every_env_steps + 1) * self.switch_every_env_steps

  @property
  def distinct_games(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(self.games))
