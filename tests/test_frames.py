"""DQN Zoo's frame processing (envs/frames.py): on real frames of three games, the agent's frames equal those that
DQN Zoo's processors.atari makes of the same emulator frames, written here again from its source
(github.com/google-deepmind/dqn_zoo at 45061f4, dqn_zoo/processors.py:367-387, :491-496)."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from common.validation import ConfigError
from envs import PROTOCOLS, AtariEnv, AtariProtocol
from training.config import PRESETS


def _rgb2y(array: np.ndarray) -> np.ndarray:
  output = np.tensordot(array, [0.299, 0.587, 1 - (0.299 + 0.587)], (-1, 0))
  return output.astype(np.uint8)


def _resize(array: np.ndarray, size: int) -> np.ndarray:
  return np.array(Image.fromarray(array).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


class _DqnZooFrames:
  """One game on a bare ALEInterface, four frames an action, each step's frame made as DQN Zoo makes it: the
  max of the step's last two RGB frames (of the frame after the reset and zeros at an episode's start), its
  luminance, a bilinear resize; stacked newest last, zeros before the episode's first frame."""

  def __init__(self, game: str, seed: int, protocol: AtariProtocol):
    import ale_py
    from ale_py import roms

    self._noop = ale_py.Action.NOOP
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    self.ale = ale_py.ALEInterface()
    self.ale.setInt("random_seed", seed)
    self.ale.setFloat("repeat_action_probability", 0.0)
    self.ale.loadROM(roms.get_rom_path(game))
    self.actions = self.ale.getMinimalActionSet()
    self._size, self._stack_frames = protocol.obs_size, protocol.stack_frames

  def reset(self, noop_frames: int) -> np.ndarray:
    self.ale.reset_game()
    for _ in range(noop_frames):
      self.ale.act(self._noop)
    self.stack = [np.zeros((self._size, self._size), np.uint8)] * self._stack_frames
    return self._push([np.zeros_like(self.ale.getScreenRGB()), self.ale.getScreenRGB()])

  def step(self, action: int) -> np.ndarray:
    screens = []
    for _ in range(4):
      self.ale.act(self.actions[action])
      screens.append(self.ale.getScreenRGB())
      if self.ale.game_over():
        break
    return self._push(screens)

  def _push(self, screens: list) -> np.ndarray:
    pooled = np.max(np.stack(screens[-2:], axis=0), axis=0)
    self.stack = self.stack[1:] + [_resize(_rgb2y(pooled), self._size)]
    return np.stack(self.stack, axis=-1)


@pytest.mark.parametrize("game", ["pong", "breakout", "ms_pacman"])
def test_dqn_zoo_frames_equal_dqn_zoos_processing_of_the_same_emulator_frames(game):
  # Two games of DQN Zoo's protocol, 100-step episodes: starts, life losses, ends and the resets after them.
  protocol = dataclasses.replace(PRESETS["dqn_zoo"].env, max_episode_frames=400)
  assert protocol.frame_processing == "luminance_bilinear"
  greyscale = dataclasses.replace(protocol, frame_processing="greyscale_area")
  rng = np.random.default_rng(0)
  with AtariEnv(game, 2, protocol, seed=7, num_threads=1) as env, \
       AtariEnv(game, 2, greyscale, seed=7, num_threads=1) as other:
    other.reset()
    references = [_DqnZooFrames(game, 7 + i, protocol) for i in range(2)]
    obs = env.reset()
    for i, reference in enumerate(references):
      expected = reference.reset(int(env._env.noop_frames[i]))
      assert np.array_equal(obs[i], expected) and not expected[..., :-1].any()
    ends = lives_lost = 0
    greyscale_differs = []
    for _ in range(150):
      actions = rng.integers(0, env.num_actions, 2)
      step, other_step = env.step(actions), other.step(actions)
      for i, reference in enumerate(references):
        expected = reference.step(int(actions[i]))
        if i in [e.env_index for e in step.episodes]:
          ends += 1
          expected = reference.reset(int(env._env.noop_frames[i]))
        assert np.array_equal(step.obs[i], expected), f"env {i}: off by up to " \
            f"{np.abs(step.obs[i].astype(int) - expected).max()} grey levels"
        greyscale_differs.append(not np.array_equal(step.obs[i, ..., -1], other_step.obs[i, ..., -1]))
      lives_lost += int(step.life_lost.sum())
  print(f"{game}: {ends} episode ends, {lives_lost} lives lost")
  assert ends >= 2 and np.mean(greyscale_differs) > 0.5  # the other processing gives other frames, mostly
  assert lives_lost >= 1 or game != "breakout"


def test_the_presets_that_name_dqn_zoo_process_frames_as_it_does_and_atari100k_as_dopamine():
  for name in ("dqn_zoo", "lyle2023", "lyle2024"):
    assert PRESETS[name].env.frame_processing == "luminance_bilinear", name
  # Dopamine's AtariPreprocessing: the palette greyscale, max-pool, cv2.INTER_AREA (atari_lib.py at 5873f54).
  assert PRESETS["atari100k"].env.frame_processing == "greyscale_area"
  assert PROTOCOLS["machado2018"].frame_processing == "greyscale_area"
  with pytest.raises(ConfigError, match="frame_processing='bilinear' is not one of"):
    AtariProtocol(frame_processing="bilinear")
  with pytest.raises(ConfigError, match="reset_stack_on_life_loss=True needs frame_processing='greyscale_area'"):
    dataclasses.replace(PRESETS["atari100k"].env, frame_processing="luminance_bilinear")
