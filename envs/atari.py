"""Batched Atari games on `ale_py.AtariVectorEnv` (C++ threads), one protocol config.

The default protocol is the one Machado et al. 2018 ("Revisiting the Arcade
Learning Environment") recommend: sticky actions 0.25, the minimal action set,
no terminal on life loss, no no-op starts, episodes capped at 108,000 frames.
`PROTOCOLS["dqn_zoo"]` is the setup of DQN Zoo (Quan & Ostrovski 2020), which
Lyle et al. 2023 build on: no sticky actions, 1-30 no-op frames at the start of
every episode, a life loss cuts bootstrapping.

Rewards and episode returns are always the game's real scores: reward clipping
is a learning-target choice (`DQNConfig.clip_rewards`), never an environment one,
so that nothing logged or reported can be a clipped score.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Literal, NamedTuple, Optional

import numpy as np

from common.validation import ConfigError, check_in, check_int, check_range, check_finite_fields
from envs.ale import NATIVE_HEIGHT, NATIVE_WIDTH, all_games, game_variants, quiet_ale_interface, set_game_variant
from envs.frames import FRAME_PROCESSINGS, LuminanceBilinearVectorEnv
from envs.mode_env import ModeVectorEnv

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
  frame_processing: Literal["greyscale_area", "luminance_bilinear"] = "greyscale_area"
  """How the max-pooled frame becomes the agent's: greyscale_area (ale_py's: the palette's greyscale, OpenCV
  INTER_AREA; gymnasium's and Dopamine's) or luminance_bilinear (DQN Zoo's: RGB max-pool, luminance Y, PIL
  bilinear); envs/frames.py."""
  stack_frames: int = 4
  """Frames stacked into one observation (channels-last)."""
  noop_min: int = 0
  """Fewest no-ops at the start of an episode; see noop_max."""
  noop_max: int = 0
  """Every episode (also one after a game over) starts with n no-ops, n uniform over [noop_min, noop_max]
  inclusive, each noop_frames_each raw emulator frames of NOOP, before the agent's first observation;
  (0, 0) = none. They are not agent steps and do not count toward max_episode_frames (as in DQN Zoo);
  their score counts in the episode return."""
  noop_frames_each: int = 1
  """Frames one no-op lasts: 1 (DQN Zoo's raw-frame no-ops) or 4 (Dopamine's Atari 100k runner, whose
  no-ops are agent steps of NOOP; with no sticky actions 4 NOOP frames are one such step)."""
  fire_reset: bool = False
  """Press FIRE after a reset in games that need it to start."""
  terminal_on_life_loss: bool = False
  """A lost life cuts bootstrapping (discount 0) without ending the game or its score."""
  life_loss_ends_step: bool = False
  """A lost life ends the agent step at its frame (the rest of the frame skip is not emulated), as Dopamine's
  AtariPreprocessing does; needs terminal_on_life_loss; played by the Python game loop (envs/mode_env.py)."""
  reset_stack_on_life_loss: bool = False
  """After a lost life the agent's frame stack starts afresh (older frames zero), as Dopamine's runner
  restarts its agent at every life-loss terminal; needs terminal_on_life_loss."""
  max_episode_frames: int = 108_000
  """Episode cap in emulator frames (30 minutes of play); reaching it truncates (bootstrapped), unless cap_is_terminal."""
  cap_is_terminal: bool = False
  """Reaching max_episode_frames is a terminal (discount 0), as in Dopamine's current Atari set-up (ALE v5's
  frame cap is a game over there); False: a truncation, bootstrapped through (Pardo et al. 2018)."""

  def __post_init__(self):
    check_finite_fields(self)
    check_range("sticky_action_prob", self.sticky_action_prob, low=0.0, high=1.0)
    check_int("frame_skip", self.frame_skip, low=1)
    check_int("obs_size", self.obs_size, low=8, high=210)
    check_in("frame_processing", self.frame_processing, FRAME_PROCESSINGS)
    check_int("stack_frames", self.stack_frames, low=1)
    check_int("noop_min", self.noop_min, low=0)
    check_int("noop_max", self.noop_max, low=self.noop_min)
    check_int("noop_frames_each", self.noop_frames_each, low=1)
    if self.fire_reset and self.noop_max > 0:
      # ale_py presses FIRE in place of the first no-op frame (preprocessed_env.cpp, reset()).
      raise ConfigError("fire_reset=True with no-op starts (noop_max > 0) is not supported: ale_py would press "
                        "FIRE in place of the first no-op frame; set noop_min=noop_max=0 or fire_reset=False")
    check_int("max_episode_frames", self.max_episode_frames, low=self.frame_skip)
    if self.reset_stack_on_life_loss and self.frame_processing != "greyscale_area":
      raise ConfigError("reset_stack_on_life_loss=True needs frame_processing='greyscale_area' (Dopamine's runner, "
                        "which restarts the stack, processes frames so)")
    if self.life_loss_ends_step and not self.terminal_on_life_loss:
      raise ConfigError("life_loss_ends_step=True needs terminal_on_life_loss=True (Dopamine ends the step at the "
                        "life-loss terminal)")
    if self.reset_stack_on_life_loss and not self.terminal_on_life_loss:
      raise ConfigError("reset_stack_on_life_loss=True needs terminal_on_life_loss=True (the stack restarts at "
                        "the life-loss terminal, as in Dopamine's runner)")

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
    # DQN Zoo `double_q/run_atari.py`: no sticky actions, `RandomNoopsEnvironmentWrapper(min_noop_steps=1,
    # max_noop_steps=30)` on the frame-level env (`gym_atari.py`: randint(1, 30 + 1) raw NOOP frames),
    # `zero_discount_on_life_loss=True`, 108,000-frame episodes.
    # Frames as DQN Zoo's processors.atari makes them (envs/frames.py).
    "dqn_zoo": AtariProtocol(sticky_action_prob=0.0, noop_min=1, noop_max=30, terminal_on_life_loss=True,
                             frame_processing="luminance_bilinear"),
    # The Atari 100k benchmark as Dopamine's `labs/atari_100k` configs run it (Kaiser et al. 2020;
    # Agarwal et al. 2021): no sticky actions, 0-29 no-op agent steps at every game start
    # (DataEfficientAtariRunner: max_noops=30, randint(0, 30)), terminal on life loss, episodes ended as a
    # terminal at 100,000 frames (atari_lib.py: ALE v5's max_num_frames_per_episode, a game over there),
    # the agent's frame stack restarted at every life-loss terminal (see training/config.py for lines), and a
    # step cut short at the frame that loses a life (dopamine/discrete_domains/atari_lib.py:305-331 at 5873f54).
    "atari100k": AtariProtocol(sticky_action_prob=0.0, noop_min=0, noop_max=29, noop_frames_each=4,
                               terminal_on_life_loss=True, life_loss_ends_step=True, reset_stack_on_life_loss=True,
                               max_episode_frames=100_000, cap_is_terminal=True),
}


class UnknownGameError(ConfigError):
  """The game name is not an ale-py ROM id."""


class GameTask(NamedTuple):
  """A game id split up: `breakout`, or `breakout:m4:d1` for ALE mode 4 at difficulty 1 (either part optional)."""

  game: str
  mode: Optional[int] = None
  difficulty: Optional[int] = None

  @property
  def default_variant(self) -> bool:
    """No mode and no difficulty asked for: the game as ale_py.AtariVectorEnv plays it."""
    return self.mode is None and self.difficulty is None


def parse_game(game: str) -> GameTask:
  """Splits a game id `rom[:m<mode>][:d<difficulty>]`; the parts are not checked against the ROM here."""
  rom, *parts = game.split(":")
  fields: dict[str, int] = {}
  for part in parts:
    key = {"m": "mode", "d": "difficulty"}.get(part[:1])
    if key is None or key in fields or not part[1:].isdigit():
      raise UnknownGameError(f"bad game id {game!r}: write ROM[:m<mode>][:d<difficulty>], e.g. breakout:m4:d1")
    fields[key] = int(part[1:])
  return GameTask(rom, **fields)


def check_game(game: str) -> str:
  """Returns `game` if it is an ale-py ROM id, optionally with a mode and difficulty the ROM offers
  (`breakout:m4:d1`, see `parse_game`), else raises with the close matches or the offered values."""
  task = parse_game(game)
  games = all_games()
  if task.game not in games:
    normalised = "".join("_" + c.lower() if c.isupper() else c for c in task.game).strip("_").replace("-", "_")
    close = difflib.get_close_matches(normalised, games, n=5, cutoff=0.6)
    hint = (f"; did you mean {', '.join(close)}?" if close
            else "; game names are ale-py ROM ids such as pong, breakout, ms_pacman")
    raise UnknownGameError(f"unknown game {task.game!r}{hint}")
  modes, difficulties = game_variants(task.game)
  for name, value, offered in (("mode", task.mode, modes), ("difficulty", task.difficulty, difficulties)):
    if value is not None and value not in offered:
      raise UnknownGameError(f"unknown {name} {value} of {task.game} in {game!r}: its {name} values are "
                             f"{', '.join(map(str, offered))}")
  return game


class Episode(NamedTuple):
  """One finished episode of one environment, in real game score.

  `episode_return` is the sum of the steps' rewards plus whatever the episode's no-op frames scored (they
  come before the first agent step, so no step's reward holds them; 0 in nearly every game, but e.g. the
  Skiing clock already runs). `length_steps` counts agent steps only.
  """

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
  stack_reset: np.ndarray  # bool[N], `obs` starts a fresh frame stack without an episode end (a life loss
  #                          under reset_stack_on_life_loss): older frames are zero, as after a reset
  episodes: tuple[Episode, ...]  # episodes that finished this step


def agent_vector_env(game: str, num_envs: int, protocol: AtariProtocol, *, num_threads: int) -> "NoopStartVectorEnv":
  """`ale_vector_env` giving the agent's frames: uint8[N, stack_frames, obs_size, obs_size] made as
  `protocol.frame_processing` says (envs/frames.py)."""
  size, stack = protocol.obs_size, protocol.stack_frames
  if protocol.frame_processing == "greyscale_area":
    return ale_vector_env(game, num_envs, protocol, num_threads=num_threads, height=size, width=size, grayscale=True,
                          stack_num=stack)
  return ale_vector_env(game, num_envs, protocol, num_threads=num_threads, height=NATIVE_HEIGHT, width=NATIVE_WIDTH,
                        grayscale=False, stack_num=1,
                        frames=lambda env: LuminanceBilinearVectorEnv(env, size=size, stack_num=stack))


def ale_vector_env(game: str, num_envs: int, protocol: AtariProtocol, *, num_threads: int, height: int, width: int,
                   grayscale: bool, stack_num: int, frames=None) -> "NoopStartVectorEnv":
  """`ale_py.AtariVectorEnv` playing `game` under `protocol`; only the observation's form is chosen here.

  A game id with a mode or difficulty (`breakout:m4`), and any game under `life_loss_ends_step`, is played by
  `envs.mode_env.ModeVectorEnv`, the vector env's loop in Python, since ale-py 0.12's vector env takes no mode
  or difficulty, and its only stop at a lost life (`episodic_life`) resets the whole game.

  Every default of AtariVectorEnv that differs from our protocol is set explicitly: it defaults to
  no sticky actions, clipped rewards, 30 no-ops and FIRE on reset. `AtariEnv` and the RGB copy that
  eval.py films (training/video.py) both build their games here, so they play the same game, with
  the same no-op starts. `frames`, if given, wraps the emulator's vector env before the no-op starts do (a
  start redrawn there is redrawn through it).
  """
  settings = dict(
      max_num_frames_per_episode=protocol.max_episode_frames,
      repeat_action_probability=protocol.sticky_action_prob,
      full_action_space=protocol.full_action_space,
      img_height=height,
      img_width=width,
      grayscale=grayscale,
      stack_num=stack_num,
      frameskip=protocol.frame_skip,
      maxpool=protocol.max_pool,
      # ale_py draws uniform 0..noop_max-1 frames; asking for one more makes it 0..noop_max, and
      # NoopStartVectorEnv rejects the draws below noop_min.
      noop_max=protocol.noop_max * protocol.noop_frames_each + 1 if protocol.noop_max else 0,
      use_fire_reset=protocol.fire_reset,
  )
  task = parse_game(game)  # checked by the callers (AtariEnv, and the config behind training/video.py)
  if task.default_variant and not protocol.life_loss_ends_step:
    from ale_py.vector_env import AtariVectorEnv  # the emulator loads on first use: configs and flags are checked without it

    env = AtariVectorEnv(task.game, num_envs, num_threads=num_threads, autoreset_mode="SameStep",
                         episodic_life=False, life_loss_info=False, reward_clipping=False, **settings)
  else:  # the vector env takes no mode or difficulty and never ends a step at a lost life: the same loop in Python
    env = ModeVectorEnv(task.game, num_envs, mode=task.mode, difficulty=task.difficulty,
                        life_loss_ends_step=protocol.life_loss_ends_step, **settings)
  if frames is not None:
    env = frames(env)
  return NoopStartVectorEnv(env, game, protocol.noop_min, protocol.noop_max, protocol.noop_frames_each)


class NoopStartVectorEnv:
  """An `AtariVectorEnv` (same reset/step/close) whose episodes start with uniform [noop_min, noop_max] no-op frames.

  ale_py 0.12.1 draws the no-op count itself, as `std::uniform_int_distribution<>(0, noop_max - 1)`
  (src/ale/vector/preprocessed_env.cpp, constructor and `reset()`), then emulates that many raw NOOP
  frames: it has no minimum and stops one short of noop_max. `ale_vector_env` asks it for 0..noop_max;
  any game whose draw fell below noop_min is reset again, read off `info["episode_frame_number"]` (ALE's
  count of frames emulated since `reset_game`, which is exactly the no-op frames at that point). Rejection
  sampling leaves the accepted draws uniform over [noop_min, noop_max]; for DQN Zoo's 1..30 one start in 31
  is redrawn. A redrawn start is never observed.

  `noop_frames` int[N] and `noop_reward` float[N] describe the no-op start of each game's current episode.
  ale_py drops the rewards of no-op frames (as does DQN Zoo's wrapper); since `reset_game` is deterministic
  and resets the sticky-action memory to NOOP, `noop_reward` is read from a table of the game's score after
  n no-op frames, played once here on a plain ALE.
  """

  def __init__(self, env, game: str, noop_min: int, noop_max: int, frames_each: int = 1):
    self._env = env
    self._noop_min = noop_min
    self._frames_each = frames_each
    self.num_envs = env.num_envs
    self.single_action_space = env.single_action_space
    self._noop_score = _noop_score_table(game, noop_max * frames_each)
    self.noop_frames = np.zeros(self.num_envs, np.int64)
    self.noop_reward = np.zeros(self.num_envs, np.float64)

  def reset(self, *, seed: int | None = None):
    obs, info = self._env.reset(seed=seed)
    return obs, self._redraw_short_starts(obs, info, np.ones(self.num_envs, bool))

  def step(self, actions: np.ndarray):
    obs, reward, terminated, truncated, info = self._env.step(actions)
    return obs, reward, terminated, truncated, self._redraw_short_starts(obs, info, terminated | truncated)

  def _redraw_short_starts(self, obs: np.ndarray, info: dict, started: np.ndarray) -> dict:
    """Resets again, in place in `obs` and `info`, the games in `started` whose no-op start is below noop_min."""
    short = started & self._rejected(info["episode_frame_number"])
    while short.any():
      again_obs, again_info = self._env.reset(options={"reset_mask": short})
      obs[short] = again_obs[short]
      for key in ("lives", "frame_number", "episode_frame_number"):
        info[key][short] = again_info[key][short]
      short &= self._rejected(info["episode_frame_number"])
    self.noop_frames[started] = info["episode_frame_number"][started]
    self.noop_reward[started] = self._noop_score[self.noop_frames[started]]
    return info

  def _rejected(self, frames: np.ndarray) -> np.ndarray:
    """Draws that are not a whole number (>= noop_min) of no-ops of frames_each frames."""
    return (frames % self._frames_each != 0) | (frames < self._noop_min * self._frames_each)

  def close(self) -> None:
    self._env.close()


def _noop_score_table(game: str, noop_max: int) -> np.ndarray:
  """float64[noop_max + 1]: the game's score after n = 0..noop_max NOOP frames from ALE's `reset_game` (in the
  game id's mode and difficulty)."""
  table = np.zeros(noop_max + 1, np.float64)
  if noop_max == 0:
    return table
  # the emulator loads on first use: configs and flags are checked without it
  import ale_py
  from ale_py import roms

  task = parse_game(game)
  ale = quiet_ale_interface()
  ale.setFloat("repeat_action_probability", 0.0)  # irrelevant to NOOPs after a reset; set for clarity
  ale.loadROM(roms.get_rom_path(task.game))
  set_game_variant(ale, task.mode, task.difficulty)
  ale.reset_game()
  for n in range(1, noop_max + 1):
    table[n] = table[n - 1] + ale.act(ale_py.Action.NOOP)
    if ale.game_over():
      raise ConfigError(f"noop_max={noop_max} is too many for {game}: its game ends after {n} no-op frames")
  return table


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
    self._env = agent_vector_env(game, num_envs, protocol, num_threads=num_threads)
    self.num_actions = int(self._env.single_action_space.n)
    self._returns = np.zeros(num_envs, np.float64)
    self._lengths = np.zeros(num_envs, np.int64)
    self._lives = np.zeros(num_envs, np.int32)
    # Agent steps since each game's frame stack last started afresh, capped at stack_frames (= nothing to hide).
    self._stack_age = np.full(num_envs, protocol.stack_frames, np.int64)

  @property
  def obs_shape(self) -> tuple[int, int, int]:
    return self.protocol.obs_shape

  @property
  def returns_so_far(self) -> np.ndarray:
    """float64[num_envs]: each game's current episode's score so far (its no-op frames' points included)."""
    return self._returns.copy()

  def reset(self) -> np.ndarray:
    """Resets every environment (seeds `seed .. seed + num_envs - 1`); returns obs."""
    obs, info = self._env.reset(seed=self._seed)
    self._returns[:] = self._env.noop_reward
    self._lengths[:] = 0
    self._lives[:] = info["lives"]
    self._stack_age[:] = self.protocol.stack_frames
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
    if self.protocol.cap_is_terminal:
      terminated, truncated = terminated | truncated, np.zeros_like(truncated)
    done = terminated | truncated
    obs = _channels_last(obs)
    lives = info["lives"]
    # At an episode end `lives` already belongs to the new episode.
    life_lost = (lives < self._lives) & ~done
    self._lives = lives.copy()
    final_obs = _channels_last(info["final_obs"]) if done.any() else obs
    stack_reset = life_lost & self.protocol.reset_stack_on_life_loss
    self._hide_frames_before_stack_reset(obs, final_obs, stack_reset, done)
    if done.any() and not done.all():
      final_obs = np.where(done[:, None, None, None], final_obs, obs)

    cut = terminated | (life_lost & self.protocol.terminal_on_life_loss)
    discount = np.where(cut, 0.0, 1.0).astype(np.float32)

    self._returns += reward
    self._lengths += 1
    episodes = tuple(
        Episode(int(i), float(self._returns[i]), int(self._lengths[i]), bool(truncated[i]))
        for i in np.flatnonzero(done)
    )
    self._returns[done] = self._env.noop_reward[done]
    self._lengths[done] = 0
    return EnvStep(obs, reward, terminated, truncated, life_lost, discount, final_obs, stack_reset, episodes)

  def _hide_frames_before_stack_reset(self, obs, final_obs, stack_reset, done) -> None:
    """Zeroes, in place, the frames older than the last stack reset: [0, 0, 0, f1], then [0, 0, f1, f2], ...

    ale_py's own stack runs on through a life loss, so the zeroing goes on for stack_frames - 1 steps, in
    `final_obs` too where an episode ends meanwhile (at a reset ale_py's stack starts from zeros itself).
    """
    stack = self.protocol.stack_frames
    age = np.minimum(self._stack_age + 1, stack)
    age[stack_reset] = 1  # the newest frame stays: the agent's state after Dopamine's begin_episode
    for i in np.flatnonzero(age < stack):
      (final_obs if done[i] else obs)[i, ..., :stack - age[i]] = 0
    age[done] = stack
    self._stack_age = age

  def close(self) -> None:
    self._env.close()

  def __enter__(self) -> "AtariEnv":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _channels_last(obs: np.ndarray) -> np.ndarray:
  """ALE gives [N, stack, H, W]; the networks and replay use [N, H, W, stack]."""
  return np.ascontiguousarray(np.moveaxis(obs, 1, -1))
