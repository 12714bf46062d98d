"""Batched Atari games on `ale_py.AtariVectorEnv` (C++ threads), one protocol config.

The default protocol is the one Machado et al. 2018 ("Revisiting the Arcade
Learning Environment") recommend: sticky actions 0.25, the minimal action set,
no terminal on life loss, no no-op starts, episodes capped at 108,000 frames.
`PROTOCOLS["dqn_zoo"]` is the setup of DQN Zoo (Quan & Ostrovski 2020), which
Lyle et al. 2023 build on: no sticky actions, 1-30 no-op starts, a life loss
cuts bootstrapping.

Rewards and episode returns are always the game's real scores: reward clipping
is a learning-target choice (`DQNConfig.clip_rewards`), never an environment one,
so that nothing logged or reported can be a clipped score.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import NamedTuple

import numpy as np

from common.validation import ConfigError, check_int, check_range

@dataclasses.dataclass(frozen=True)
class AtariProtocol:
  """How a game is played and observed. Defaults: Machado et al. 2018."""

  sticky_action_prob: float = 0.25
  """Probability that the emulator repeats the previous action instead of the chosen one, per frame."""
  full_action_space: bool = False
  """Use all 18 joystick actions instead of the game's minimal action set."""
  frame_skip: int = 4
  """Emulator frames per agent step (the chosen action is repeated)."""
  max_pool: bool = True
  """Max-pool the last two frames of each step (removes sprite flicker)."""
  obs_size: int = 84
  """Height and width of the resized grayscale frame."""
  stack_frames: int = 4
  """Frames stacked into one observation (channels-last)."""
  noop_max: int = 0
  """Up to this many no-op actions at the start of every episode (0 = none)."""
  fire_reset: bool = False
  """Press FIRE after a reset in games that need it to start."""
  terminal_on_life_loss: bool = False
  """A lost life cuts bootstrapping (discount 0) without ending the game or its score."""
  max_episode_frames: int = 108_000
  """Episode cap in emulator frames (30 minutes of play); reaching it truncates, it is not a terminal."""

  def __post_init__(self):
    check_range("sticky_action_prob", self.sticky_action_prob, low=0.0, high=1.0)
    check_int("frame_skip", self.frame_skip, low=1)
    check_int("obs_size", self.obs_size, low=8, high=210)
    check_int("stack_frames", self.stack_frames, low=1)
    check_int("noop_max", self.noop_max, low=0)
    check_int("max_episode_frames", self.max_episode_frames, low=self.frame_skip)

  @property
  def max_episode_steps(self) -> int:
    return self.max_episode_frames // self.frame_skip

  @property
  def obs_shape(self) -> tuple[int, int, int]:
    """(height, width, stacked frames) of an observation."""
    return (self.obs_size, self.obs_size, self.stack_frames)


PROTOCOLS: dict[str, AtariProtocol] = {
    # Machado et al. 2018, "Revisiting the Arcade Learning Environment", sec. 5.
    "machado2018": AtariProtocol(),
    # DQN Zoo `double_q/run_atari.py`: no sticky actions, 1-30 no-op starts,
    # `zero_discount_on_life_loss=True`, 108,000-frame episodes.
    "dqn_zoo": AtariProtocol(sticky_action_prob=0.0, noop_max=30, terminal_on_life_loss=True),
    # The Atari 100k benchmark as Dopamine's `labs/atari_100k` configs run it (Kaiser et al. 2020;
    # Agarwal et al. 2021): no sticky actions, no no-ops, terminal on life loss, 27,000-step episodes.
    "atari100k": AtariProtocol(sticky_action_prob=0.0, terminal_on_life_loss=True),
}


class UnknownGameError(ConfigError):
  """The game name is not an ale-py ROM id."""


@functools.cache
def all_games() -> tuple[str, ...]:
  """Every ROM id that ale-py ships (`pong`, `space_invaders`, ...)."""
  from ale_py import roms

  return tuple(sorted(roms.get_all_rom_ids()))


def check_game(game: str) -> str:
  """Returns `game` if it is an ale-py ROM id, else raises with the close matches."""
  games = all_games()
  if game in games:
    return game
  normalised = "".join("_" + c.lower() if c.isupper() else c for c in game).strip("_").replace("-", "_")
  close = difflib.get_close_matches(normalised, games, n=5, cutoff=0.6)
  hint = f"; did you mean {', '.join(close)}?" if close else "; game names are ale-py ROM ids such as pong, breakout, ms_pacman"
  raise UnknownGameError(f"unknown game {game!r}{hint}")


class Episode(NamedTuple):
  """One finished episode of one environment, in real game score."""

  env_index: int
  episode_return: float
  length_steps: int
  truncated: bool


class EnvStep(NamedTuple):
  """The result of one batched step. Arrays have a leading [num_envs] axis.

  `obs` is what the agent acts on next: where an episode ended this step it is
  already the first observation of the new episode, and the last observation
  of the finished one is in `final_obs`.
  """

  obs: np.ndarray  # uint8[N, H, W, C]
  reward: np.ndarray  # float32[N], real (unclipped) game reward
  terminated: np.ndarray  # bool[N], game over
  truncated: np.ndarray  # bool[N], frame cap reached (not a terminal)
  life_lost: np.ndarray  # bool[N]
  discount: np.ndarray  # float32[N], 0 at a terminal (or a life loss if the protocol says so), else 1
  final_obs: np.ndarray  # uint8[N, H, W, C]; equals `obs` where no episode ended
  episodes: tuple[Episode, ...]  # episodes that finished this step


def ale_vector_env(game: str, num_envs: int, protocol: AtariProtocol, *, num_threads: int, height: int, width: int,
                   grayscale: bool, stack_num: int):
  """`ale_py.AtariVectorEnv` playing `game` under `protocol`; only the observation's form is chosen here.

  Every default of AtariVectorEnv that differs from our protocol is set explicitly: it defaults to
  no sticky actions, clipped rewards, 30 no-ops and FIRE on reset. `AtariEnv` and the RGB copy that
  eval.py films (training/video.py) both build their games here, so they play the same game.
  """
  from ale_py.vector_env import AtariVectorEnv

  return AtariVectorEnv(
      game,
      num_envs,
      num_threads=num_threads,
      max_num_frames_per_episode=protocol.max_episode_frames,
      repeat_action_probability=protocol.sticky_action_prob,
      full_action_space=protocol.full_action_space,
      autoreset_mode="SameStep",
      img_height=height,
      img_width=width,
      grayscale=grayscale,
      stack_num=stack_num,
      frameskip=protocol.frame_skip,
      maxpool=protocol.max_pool,
      noop_max=protocol.noop_max,
      episodic_life=False,
      life_loss_info=False,
      reward_clipping=False,
      use_fire_reset=protocol.fire_reset,
  )


class AtariEnv:
  """`num_envs` copies of one game stepped together, under one `AtariProtocol`.

  Observations are `uint8[num_envs, obs_size, obs_size, stack_frames]`, newest
  frame last. Episodes reset automatically in the same step they end.
  """

  def __init__(
      self,
      game: str,
      num_envs: int,
      protocol: AtariProtocol = AtariProtocol(),
      *,
      seed: int = 0,
      num_threads: int = 0,
  ):
    check_game(game)
    check_int("num_envs", num_envs, low=1)
    self.game = game
    self.num_envs = num_envs
    self.protocol = protocol
    self._seed = seed
    self._env = ale_vector_env(game, num_envs, protocol, num_threads=num_threads, height=protocol.obs_size,
                               width=protocol.obs_size, grayscale=True, stack_num=protocol.stack_frames)
    self.num_actions = int(self._env.single_action_space.n)
    self._returns = np.zeros(num_envs, np.float64)
    self._lengths = np.zeros(num_envs, np.int64)
    self._lives = np.zeros(num_envs, np.int32)

  @property
  def obs_shape(self) -> tuple[int, int, int]:
    return self.protocol.obs_shape

  def reset(self) -> np.ndarray:
    """Resets every environment (seeds `seed .. seed + num_envs - 1`); returns obs."""
    obs, info = self._env.reset(seed=self._seed)
    self._returns[:] = 0.0
    self._lengths[:] = 0
    self._lives[:] = info["lives"]
    return _channels_last(obs)

  def step(self, actions: np.ndarray) -> EnvStep:
    """Steps every environment with `actions` int[num_envs] (indices into the action set)."""
    actions = np.asarray(actions, dtype=np.int32)
    if actions.shape != (self.num_envs,):
      raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
    obs, reward, terminated, truncated, info = self._env.step(actions)
    reward = reward.astype(np.float32)
    terminated = terminated.astype(bool)
    # A game that ends on the frame cap is a terminal, not a truncation.
    truncated = truncated.astype(bool) & ~terminated
    done = terminated | truncated
    obs = _channels_last(obs)
    final_obs = _channels_last(info["final_obs"]) if done.any() else obs
    if done.any() and not done.all():
      final_obs = np.where(done[:, None, None, None], final_obs, obs)

    lives = info["lives"]
    # At an episode end `lives` already belongs to the new episode.
    life_lost = (lives < self._lives) & ~done
    self._lives = lives.copy()
    cut = terminated | (life_lost & self.protocol.terminal_on_life_loss)
    discount = np.where(cut, 0.0, 1.0).astype(np.float32)

    self._returns += reward
    self._lengths += 1
    episodes = tuple(
        Episode(int(i), float(self._returns[i]), int(self._lengths[i]), bool(truncated[i]))
        for i in np.flatnonzero(done)
    )
    self._returns[done] = 0.0
    self._lengths[done] = 0
    return EnvStep(obs, reward, terminated, truncated, life_lost, discount, final_obs, episodes)

  def close(self) -> None:
    self._env.close()

  def __enter__(self) -> "AtariEnv":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _channels_last(obs: np.ndarray) -> np.ndarray:
  """ALE gives [N, stack, H, W]; the networks and replay use [N, H, W, stack]."""
  return np.ascontiguousarray(np.moveaxis(obs, 1, -1))
