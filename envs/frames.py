"""DQN Zoo's frame processing on a vector env: RGB max-pool, luminance Y, PIL bilinear resize.

`AtariProtocol.frame_processing` chooses how an emulator frame becomes an agent's frame:

- "greyscale_area" (the default, and `atari100k`'s): ale_py's C++ pipeline, which is gymnasium's
  `AtariPreprocessing` and Dopamine's `AtariPreprocessing` too: the ALE palette's greyscale of each of the last
  two frames of a step, their max, OpenCV's INTER_AREA resize.
- "luminance_bilinear" (`dqn_zoo`, `lyle2023`, `lyle2024`): DQN Zoo's `processors.atari` (github.com/google-deepmind/
  dqn_zoo at 45061f4, dqn_zoo/processors.py): the max of the last two RGB frames of a step (:491-492), their
  luminance Y = 0.299 R + 0.587 G + (1 - (0.299 + 0.587)) B truncated to uint8 (`rgb2y`, :367-371, applied at :495), a PIL
  bilinear resize (`resize`, :374-387, at :496).

The emulator's side (the action repeat, the two frames kept for the max, the no-op starts) stays ale_py's: this
module asks it for native-size RGB frames, one at a time, and keeps the frame stack itself, as ale_py keeps its
own: newest frame last, zeros before an episode's first frame.

Two things of DQN Zoo's are not reproduced. Its stack fills from the front at an episode start (A000, AB00,
ABC0, then ABCD: `Deque` and `trailing_zero_pad`, :497-503), where ours is 000A, 00AB, 0ABC: the same frames in another
channel order for an episode's first three steps, kept because the replay stores each frame once and rebuilds
every stack as consecutive frames, newest last (replay/writer.py). And at a game over, where ale_py stops
emulating before it keeps the last frame, the final observation is the max of the frames kept before; it is
never bootstrapped from (discount 0).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

FRAME_PROCESSINGS = ("greyscale_area", "luminance_bilinear")
# DQN Zoo's rgb2y weights, written as it writes them (the third is 0.114 up to float rounding).
LUMINANCE_WEIGHTS = (0.299, 0.587, 1 - (0.299 + 0.587))


def luminance_bilinear(rgb: np.ndarray, size: int) -> np.ndarray:
  """uint8[N, H, W, 3] RGB frames -> uint8[N, size, size]: DQN Zoo's `rgb2y` then its PIL bilinear `resize`."""
  from PIL import Image  # a dependency of this pipeline only

  luminance = np.tensordot(rgb, LUMINANCE_WEIGHTS, (-1, 0)).astype(np.uint8)
  out = np.empty((len(rgb), size, size), np.uint8)
  for i, frame in enumerate(luminance):
    out[i] = np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BILINEAR))
  return out


class LuminanceBilinearVectorEnv:
  """A vector env giving native-size RGB frames (stack 1) turned into stacked luminance frames of `size`.

  Same reset/step/close as `ale_py.AtariVectorEnv` in SameStep autoreset: observations uint8[N, stack, size,
  size], oldest frame first; `info["final_obs"]` the finished episode's last stack where one ended.
  """

  def __init__(self, env, *, size: int, stack_num: int):
    self._env = env
    self._size = size
    self.num_envs = env.num_envs
    self.single_action_space = env.single_action_space
    self._stack = np.zeros((self.num_envs, stack_num, size, size), np.uint8)

  def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
    obs, info = self._env.reset(seed=seed, options=options)
    mask = np.ones(self.num_envs, bool) if not options or "reset_mask" not in options else options["reset_mask"]
    self._stack[mask] = 0
    self._stack[mask, -1] = luminance_bilinear(obs[mask, 0], self._size)
    return self._stack.copy(), info

  def step(self, actions: np.ndarray):
    obs, reward, terminated, truncated, info = self._env.step(actions)
    done = np.asarray(terminated | truncated, bool)
    newest = luminance_bilinear(obs[:, 0], self._size)
    if done.any():
      final = np.zeros_like(self._stack)  # written only where an episode ended, as the C++ env writes it
      final[done, :-1] = self._stack[done, 1:]
      final[done, -1] = luminance_bilinear(info["final_obs"][done, 0], self._size)
      info["final_obs"] = final
    self._stack[:, :-1] = self._stack[:, 1:]
    self._stack[:, -1] = newest
    self._stack[done, :-1] = 0
    return self._stack.copy(), reward, terminated, truncated, info

  def close(self) -> None:
    self._env.close()
