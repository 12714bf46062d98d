"""A game in one of its ALE modes or difficulties, or with Dopamine's life-loss step, played as
`ale_py.AtariVectorEnv` plays the default one.

ale-py 0.12.1's vector environment (C++) takes no mode and no difficulty, so a task such as Breakout in mode 4
runs here: one `ale_py.ALEInterface` per game, set to the mode and difficulty after every ROM load, stepped by a
Python copy of the vector environment's loop. Every rule below is the C++ one, cited by file and line of
Farama-Foundation/Arcade-Learning-Environment at tag v0.12.1:

- `src/ale/vector/preprocessed_env.cpp` (`PreprocessedEnv`): reset (142-188: reseed and reload the ROM when a
  seed is given, `reset_game`, FIRE if asked and the game has it, uniform 0..noop_max-1 no-op frames less the
  FIRE one, a zeroed frame stack); step (190-226: the action repeated `frameskip` frames, stopping early at a
  game over or the frame cap, the last two frames kept for max-pooling, lives read after the repeat); the
  observation (281-302: max-pool, INTER_AREA resize, a circular stack, oldest first, 228-244).
- `src/ale/vector/env_vectorizer.cpp:272-300` (SameStep autoreset): a game whose episode is over this step
  reports its last observation as `final_obs`, is reset, and reports the new episode's observation, lives and
  frame numbers with the old episode's reward, terminated and truncated.

Resizing is OpenCV's INTER_AREA written as two matrix products (each output pixel the area-weighted mean of the
source pixels it covers), rounded half to even; the test holds it to ale_py's own frames. The one departure:
`episode_frame_number` counts from the end of `reset_game`, since ALE spends a few frames there selecting a
non-default mode (Breakout's mode 4: 4 frames), and `NoopStartVectorEnv` reads no-op counts off this number.

With `life_loss_ends_step` a step ends at the frame where a life is lost, as Dopamine's `AtariPreprocessing.step`
ends it (github.com/google/dopamine at 5873f54, dopamine/discrete_domains/atari_lib.py:305-331, :359-364): frame
t of the step (0-3) is kept for the max-pool when t >= 2, into buffer t - 2, before the stop, and the max is
written into buffer 0. So a life lost at frame 0 or 1 pools the step before's buffers again, and one lost at
frame 2 pools that frame with the step before's last. The C++ loop keeps frames 2 and 3 the other way round
(into buffers 1 and 0), which gives another max only for a step cut short (at the frame cap: the C++ way is kept
there); under `life_loss_ends_step` this loop keeps Dopamine's. The C++ environment cannot stop at a lost life:
its `episodic_life` stop resets the whole game.
"""

from typing import Optional

import numpy as np

from envs.ale import quiet_ale_interface, set_game_variant


def area_resize_matrix(source: int, target: int) -> np.ndarray:
  """float64[target, source]: row i averages source cells [i s, (i + 1) s), s = source / target, by overlap."""
  scale = source / target
  matrix = np.zeros((target, source))
  for i in range(target):
    start, stop = i * scale, (i + 1) * scale
    for j in range(int(np.floor(start)), min(int(np.ceil(stop)), source)):
      matrix[i, j] = min(stop, j + 1) - max(start, j)
  return matrix / scale


class _Game:
  """One `ALEInterface` and the state `PreprocessedEnv` keeps beside it."""

  def __init__(self, rom_path: str, mode: Optional[int], difficulty: Optional[int], *, seed: int, spec: dict):
    import ale_py  # the emulator loads on first use: configs and flags are checked without it


    self._ale_py = ale_py
    self._rom_path, self._mode, self._difficulty, self._spec = rom_path, mode, difficulty, spec
    self.ale = quiet_ale_interface()
    self.ale.setFloat("repeat_action_probability", spec["repeat_action_probability"])
    self._load(seed)
    self.actions = (self.ale.getLegalActionSet() if spec["full_action_space"] else self.ale.getMinimalActionSet())
    self._fire = spec["use_fire_reset"] and ale_py.Action.FIRE in self.actions
    height, width = self.ale.getScreenDims()
    channels = () if spec["grayscale"] else (3,)
    self._raw = [np.zeros((height, width, *channels), np.uint8) for _ in range(2)]
    out_height, out_width = spec["img_height"], spec["img_width"]
    self._resize = None if (out_height, out_width) == (height, width) else (
        area_resize_matrix(height, out_height), area_resize_matrix(width, out_width))
    self._stack = np.zeros((spec["stack_num"], out_height, out_width, *channels), np.uint8)
    self._stack_index = 0
    self.elapsed_frames = spec["max_num_frames_per_episode"] + 1
    self.game_over, self.lives, self.reward = False, 0, 0.0
    self._start_frame = 0

  def _load(self, seed: int) -> None:
    self.ale.setInt("random_seed", seed)
    self.ale.loadROM(self._rom_path)
    set_game_variant(self.ale, self._mode, self._difficulty)
    self._rng = np.random.default_rng(seed)

  def reset(self, seed: Optional[int]) -> None:
    if seed is not None and seed >= 0:
      self._load(seed)
    self.ale.reset_game()
    self._start_frame = self.ale.getEpisodeFrameNumber()
    if self._fire:
      self.ale.act(self._ale_py.Action.FIRE)
    noop_max = self._spec["noop_max"]
    noops = int(self._rng.integers(0, noop_max)) if noop_max > 0 else 0
    for _ in range(noops - int(self._fire)):
      self.ale.act(self._ale_py.Action.NOOP)
      if self.ale.game_over():
        self.ale.reset_game()
    self._stack[:] = 0
    self._stack_index = 0
    self._grab(self._raw[0])
    self._raw[1][:] = 0
    self._push_screen()
    self.elapsed_frames, self.reward, self.game_over = 0, 0.0, False
    self.lives = self.ale.lives()

  def step(self, action_index: int) -> None:
    if not 0 <= action_index < len(self.actions):
      raise IndexError(f"action {action_index} is not in this game's {len(self.actions)} actions")
    action, reward, cap = self.actions[action_index], 0.0, self._spec["max_num_frames_per_episode"]
    for skip in range(self._spec["frameskip"], 0, -1):
      reward += self.ale.act(action)
      self.game_over = self.ale.game_over()
      self.elapsed_frames += 1
      if self.game_over or self.elapsed_frames >= cap:
        break
      if skip <= 2:  # Dopamine's order or the C++ one (the module's docstring)
        self._grab(self._raw[2 - skip if self._spec["life_loss_ends_step"] else skip - 1])
      if self._spec["life_loss_ends_step"] and self.ale.lives() < self.lives:
        break
    self._push_screen()
    self.lives = self.ale.lives()
    self.reward = reward

  @property
  def episode_over(self) -> bool:
    return self.game_over or self.elapsed_frames >= self._spec["max_num_frames_per_episode"]

  @property
  def truncated(self) -> bool:
    return self.elapsed_frames >= self._spec["max_num_frames_per_episode"] and not self.game_over

  @property
  def episode_frame_number(self) -> int:
    return self.ale.getEpisodeFrameNumber() - self._start_frame

  def observation(self) -> np.ndarray:
    """The stack, oldest frame first."""
    return np.roll(self._stack, -self._stack_index, axis=0)

  def _grab(self, buffer: np.ndarray) -> None:
    if buffer.ndim == 2:
      self.ale.getScreenGrayscale(buffer)
    else:
      self.ale.getScreenRGB(buffer)

  def _push_screen(self) -> None:
    if self._spec["maxpool"]:
      np.maximum(self._raw[0], self._raw[1], out=self._raw[0])
    frame = self._raw[0]
    if self._resize is not None:
      rows, cols = self._resize
      pixels = frame.astype(np.float64)
      frame = (rows @ pixels @ cols.T if pixels.ndim == 2
               else np.stack([rows @ pixels[..., c] @ cols.T for c in range(pixels.shape[-1])], axis=-1))
      frame = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    self._stack[self._stack_index] = frame
    self._stack_index = (self._stack_index + 1) % len(self._stack)


class ModeVectorEnv:
  """`num_envs` copies of `game` in `mode` and `difficulty`, with `AtariVectorEnv`'s reset/step/close.

  Built as `ale_vector_env` builds `AtariVectorEnv` (same keyword arguments, autoreset "SameStep", no episodic
  life, no reward clipping); observations are uint8[N, stack, H, W] (grayscale) or [N, stack, H, W, 3].
  """

  def __init__(self, game: str, num_envs: int, *, mode: Optional[int], difficulty: Optional[int],
               life_loss_ends_step: bool = False, max_num_frames_per_episode: int, repeat_action_probability: float, full_action_space: bool,
               img_height: int, img_width: int, grayscale: bool, stack_num: int, frameskip: int, maxpool: bool,
               noop_max: int, use_fire_reset: bool):
    # the emulator loads on first use: configs and flags are checked without it
    from ale_py import roms
    from gymnasium.spaces import Discrete

    spec = dict(max_num_frames_per_episode=max_num_frames_per_episode,
                repeat_action_probability=repeat_action_probability, full_action_space=full_action_space,
                img_height=img_height, img_width=img_width, grayscale=grayscale, stack_num=stack_num,
                frameskip=frameskip, maxpool=maxpool, noop_max=noop_max, use_fire_reset=use_fire_reset,
                life_loss_ends_step=life_loss_ends_step)
    rom_path = roms.get_rom_path(game)
    self._games = [_Game(rom_path, mode, difficulty, seed=i, spec=spec) for i in range(num_envs)]
    self.num_envs = num_envs
    self.single_action_space = Discrete(len(self._games[0].actions))

  def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
    mask = np.ones(self.num_envs, bool) if not options or "reset_mask" not in options else options["reset_mask"]
    for k, i in enumerate(np.flatnonzero(mask)):
      self._games[i].reset(None if seed is None else seed + k)
    return self._observations(), self._info()

  def step(self, actions: np.ndarray):
    final_obs = np.zeros((self.num_envs, *self._games[0].observation().shape), np.uint8)
    reward = np.zeros(self.num_envs, np.int32)
    terminated = np.zeros(self.num_envs, bool)
    truncated = np.zeros(self.num_envs, bool)
    for i, (game, action) in enumerate(zip(self._games, np.asarray(actions))):
      game.step(int(action))
      reward[i], terminated[i], truncated[i] = game.reward, game.game_over, game.truncated
      if game.episode_over:  # final_obs is written only where an episode ended, as the C++ env writes it
        final_obs[i] = game.observation()
        game.reset(None)
    info = self._info()
    info["final_obs"] = final_obs
    return self._observations(), reward, terminated, truncated, info

  def _observations(self) -> np.ndarray:
    return np.stack([game.observation() for game in self._games])

  def _info(self) -> dict:
    return {"env_id": np.arange(self.num_envs, dtype=np.int32),
            "lives": np.array([game.lives for game in self._games], np.int32),
            "frame_number": np.array([game.ale.getFrameNumber() for game in self._games], np.int32),
            "episode_frame_number": np.array([game.episode_frame_number for game in self._games], np.int32)}

  def close(self) -> None:
    self._games = []
