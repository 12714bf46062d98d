"""Videos of evaluation games: the native 210x160 RGB screen of one game the agent plays, as an H.264 MP4.

The agent plays on `AtariEnv` (grayscale, 84x84, stacked frames), which gives no
RGB screen. The screen comes from a second, one-game `ale_py.AtariVectorEnv` with
the same game, seed and protocol (sticky actions, no-op starts, frame skip,
frame cap) at native size in RGB, stepped in lockstep with the actions the agent
chose for that game: the emulator and its sticky-action and no-op RNGs are
seeded alike, so it replays the same game. Every step checks that it does (same
reward, terminal, truncation and life loss); a divergence raises `LockstepError`
rather than record another game.

One video frame per agent step: the screen after the step (max-pooled over the
step's last two emulator frames when the protocol max-pools, as the agent's
observation is), so an episode of L agent steps gives L frames, the last one the
game's final screen. Played at 60 / frame_skip frames per second (ALE's NTSC
60 Hz), i.e. real time.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from agents.dqn import DQNConfig
from envs import AtariProtocol, EnvStep
from envs.ale import NATIVE_HEIGHT, NATIVE_WIDTH
from envs.atari import ale_vector_env
from training.evaluation import EvalEpisode, evaluate

EMULATOR_FRAMES_PER_S = 60  # NTSC
MP4_CRF = 18  # libx264 constant rate factor: visually lossless for the flat colours of Atari screens


class LockstepError(RuntimeError):
  """The RGB copy of a game diverged from the game the agent plays."""


class RecordedEpisode(NamedTuple):
  """The episode as the RGB copy of the game saw it (compare with the played `EvalEpisode`)."""

  env_index: int
  episode_return: float  # real game score, summed from the copy's own rewards
  length_steps: int
  num_frames: int  # one per agent step


def frames_per_s(protocol: AtariProtocol) -> float:
  """Video frame rate that plays one frame per agent step in real time."""
  return EMULATOR_FRAMES_PER_S / protocol.frame_skip


class ScreenFollower:
  """The native RGB screen of one game of an `AtariEnv`, from a 1-env copy stepped with the same actions.

  Build it with the seed that `AtariEnv` gives the followed game (`AtariEnv(seed=s)` seeds game i with s + i).
  """

  def __init__(self, game: str, protocol: AtariProtocol, seed: int):
    self._seed = seed
    # The game AtariEnv plays, with another observation: RGB at native size, one frame, no stack.
    self._env = ale_vector_env(game, 1, protocol, num_threads=1, height=NATIVE_HEIGHT, width=NATIVE_WIDTH,
                               grayscale=False, stack_num=1)
    self._lives = 0
    self.episode_return = 0.0
    self.length_steps = 0

  def reset(self) -> np.ndarray:
    """Starts the game; returns its first screen, uint8[210, 160, 3]."""
    obs, info = self._env.reset(seed=self._seed)
    self._lives = int(info["lives"][0])
    self.episode_return, self.length_steps = float(self._env.noop_reward[0]), 0  # what the no-op start scored
    return obs[0, -1]

  def step(self, action: int, played: EnvStep, env_index: int) -> tuple[np.ndarray, bool]:
    """Plays `action`, checks the outcome against game `env_index` of `played`; returns (screen, episode over).

    The screen is uint8[210, 160, 3], after the step; at the end of the episode it is the final screen.
    """
    obs, reward, terminated, truncated, info = self._env.step(np.array([action], np.int32))
    terminated_now = bool(terminated[0])
    truncated_now = bool(truncated[0]) and not terminated_now  # as AtariEnv: the frame cap on a game over is a terminal
    done = terminated_now or truncated_now
    lives = int(info["lives"][0])
    life_lost = lives < self._lives and not done
    self._lives = lives
    self.episode_return += float(reward[0])
    self.length_steps += 1
    ours = (float(reward[0]), terminated_now, truncated_now, life_lost)
    theirs = (float(played.reward[env_index]), bool(played.terminated[env_index]),
              bool(played.truncated[env_index]), bool(played.life_lost[env_index]))
    if ours != theirs:
      raise LockstepError(
          f"the RGB copy of game {env_index} diverged at agent step {self.length_steps}: "
          f"(reward, terminated, truncated, life lost) {ours} in the copy, {theirs} as played")
    screen = info["final_obs"][0, -1] if done else obs[0, -1]
    return np.ascontiguousarray(screen), done

  def close(self) -> None:
    self._env.close()


class Mp4Writer:
  """H.264 MP4 (yuv420p, plays in browsers) from uint8[H, W, 3] RGB frames, written to `path` only when complete.

  Frames are streamed to the ffmpeg binary that the `imageio-ffmpeg` wheel bundles; nothing is resized.
  """

  def __init__(self, path: str, *, width: int, height: int, fps: float):
    import imageio_ffmpeg  # an optional package: only eval.py --video needs it

    if width % 2 or height % 2:
      raise ValueError(f"yuv420p needs even frame sizes, got {width}x{height}")
    self.path = path
    self.num_frames = 0
    self._shape = (height, width, 3)
    self._partial_path = path + ".partial"
    self._writer = imageio_ffmpeg.write_frames(
        self._partial_path, (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        quality=None, macro_block_size=2, ffmpeg_log_level="error",
        # -f: the partial file's name does not say mp4; faststart: the index first, so browsers start at once.
        output_params=["-crf", str(MP4_CRF), "-movflags", "+faststart", "-f", "mp4"],
    )
    with warnings.catch_warnings():
      # ffmpeg starts with fork + exec, which runs no Python in the child: JAX's threads are no hazard here.
      warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
      self._writer.send(None)

  def write(self, frame: np.ndarray) -> None:
    if frame.shape != self._shape or frame.dtype != np.uint8:
      raise ValueError(f"frames must be uint8{list(self._shape)}, got {frame.dtype}{list(frame.shape)}")
    self._writer.send(np.ascontiguousarray(frame))
    self.num_frames += 1

  def close(self) -> None:
    """Finishes the file and moves it to `path`."""
    self._writer.close()
    os.replace(self._partial_path, self.path)

  def abort(self) -> None:
    """Stops ffmpeg and removes the unfinished file."""
    try:
      self._writer.close()
    finally:
      if os.path.exists(self._partial_path):
        os.remove(self._partial_path)

  def __enter__(self) -> "Mp4Writer":
    return self

  def __exit__(self, exc_type, *exc) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def evaluate_and_record(
    agent: DQNConfig, params: Any, game: str, protocol: AtariProtocol, *,
    num_episodes: int, seed: int, on_frame: Callable[[np.ndarray], None], epsilon: Optional[float] = None,
) -> tuple[list[EvalEpisode], RecordedEpisode]:
  """`training.evaluation.evaluate`, step for step, plus the RGB screen of episode 0 given to `on_frame`.

  The episodes equal those `evaluate` returns for the same arguments (same environments, seeds and
  policy RNG); `on_frame` gets one uint8[210, 160, 3] screen per agent step of episode 0.
  """
  recorded_index = 0
  follower = ScreenFollower(game, protocol, seed + recorded_index)
  recording, num_frames = True, 0

  def record(actions: np.ndarray, step) -> None:
    nonlocal recording, num_frames
    if recording:
      screen, done = follower.step(int(actions[recorded_index]), step, recorded_index)
      on_frame(screen)
      num_frames += 1
      recording = not done

  try:
    follower.reset()
    episodes = evaluate(agent, params, game, protocol, num_episodes=num_episodes, seed=seed, epsilon=epsilon,
                        on_step=record)
  finally:
    follower.close()
  return episodes, RecordedEpisode(recorded_index, follower.episode_return, follower.length_steps, num_frames)
