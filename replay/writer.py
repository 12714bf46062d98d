"""Actor-side writer: batched environment steps -> n-step transitions in Reverb, frames stored once.

Each environment has its own Reverb trajectory writer. Every agent step appends
one row holding only the newest 84x84 frame (7 KB before compression); when an
episode starts (or a stack reset restarts the agent's stack after a lost life),
the whole stack of its first observation is appended (the older frames are
zeros). An item then *references* the 2 x 4 frame cells of obs_tm1 and obs_t
plus three scalar cells (a_tm1, r_t, discount_t), so a transition costs a frame
plus a few bytes of item metadata instead of two stacked observations (2 x 28 KB).

The scalars of a transition go into the row of the step that completes it.
At an episode end several transitions complete at once (the last n-1 ones are
shorter); the extra ones get scalar-only rows. Frame references are tracked
here, per environment, so those rows never enter a frame stack.

n-step returns come from `agents.dqn.n_step.n_step_return` (the one place
rewards are clipped). A transition never crosses an episode end or a stack reset;
a truncation bootstraps from the final observation (discount gamma^m), a terminal
(or the life-loss terminal of a stack reset) does not.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Sequence

import numpy as np
import reverb

from agents.dqn import transition
from agents.dqn.n_step import n_step_return
from envs import EnvStep
from replay.server import REPLAY_TABLE


class WriterStopped(Exception):
  """`TransitionWriter.stop()` was called while the writer was blocked on the rate limiter."""


class _EnvTrack:
  """Per-environment state: the Reverb writer, recent frame refs, pending steps."""

  def __init__(self, writer: reverb.TrajectoryWriter, stack: int, n_step: int):
    self.writer = writer
    self.frames: collections.deque = collections.deque(maxlen=stack + n_step)
    self.pending: collections.deque = collections.deque()  # (action, reward, discount) of steps not yet emitted


class TransitionWriter:
  """Writes the transitions of `num_envs` environments that are stepped together."""

  def __init__(
      self,
      client: reverb.Client,
      num_envs: int,
      *,
      n_step: int,
      discount: float,
      clip_rewards: bool,
      max_abs_reward: float = 1.0,
      stack_frames: int = 4,
      priority: float = 1.0,
      max_in_flight_items: int = 16,
      table: str = REPLAY_TABLE,
      poll_interval_ms: int = 200,
  ):
    self._client = client
    self._stop = threading.Event()
    self._poll_interval_ms = poll_interval_ms
    self._n_step = n_step
    self._discount = discount
    self._clip_rewards = clip_rewards
    self._max_abs_reward = max_abs_reward
    self._stack = stack_frames
    self._priority = priority
    self._max_in_flight_items = max_in_flight_items
    self._table = table
    # Refs must outlive the longest window (stack + n frames) plus the scalar-only rows of an episode end.
    keep_alive = stack_frames + 2 * n_step + 2
    self._envs = [_EnvTrack(client.trajectory_writer(num_keep_alive_refs=keep_alive), stack_frames, n_step) for _ in range(num_envs)]
    self.items_written = 0
    self.blocked_s = 0.0  # time spent waiting on back-pressure (the rate limiter or a slow server)

  def reset(self, obs: np.ndarray) -> None:
    """Starts an episode in every environment from its first observations uint8[N, H, W, S]."""
    for env, first in zip(self._envs, obs):
      self._start_episode(env, first)

  def step(self, actions: np.ndarray, env_step: EnvStep) -> None:
    """Records `actions` taken at the previous observations and what the environments returned."""
    done = env_step.terminated | env_step.truncated
    # A stack reset (life loss under reset_stack_on_life_loss) ends the agent's trajectory like an episode end.
    boundary = done | env_step.stack_reset
    for i, env in enumerate(self._envs):
      env.pending.append((int(actions[i]), float(env_step.reward[i]), float(env_step.discount[i])))
      newest = env_step.final_obs[i] if done[i] else env_step.obs[i]
      complete = []
      if len(env.pending) == self._n_step:
        complete.append(list(env.pending))
        env.pending.popleft()
      if boundary[i]:
        while env.pending:
          complete.append(list(env.pending))
          env.pending.popleft()
      self._append_frame_and_items(env, newest[..., -1], complete)
      if boundary[i]:
        self._start_episode(env, env_step.obs[i])
      self._wait(env, self._max_in_flight_items)

  def flush(self) -> None:
    """Blocks until every created item has been inserted (the rate limiter may hold inserts back)."""
    for env in self._envs:
      self._wait(env, 0)

  def stop(self) -> None:
    """Makes a `step` or `flush` that is blocked on the rate limiter raise `WriterStopped` (any thread)."""
    self._stop.set()

  def close(self) -> None:
    for env in self._envs:
      env.writer.close()

  def _wait(self, env: _EnvTrack, max_pending_items: int) -> None:
    """Back-pressure: waits until at most `max_pending_items` items are unconfirmed.

    Waits in slices so that neither `stop()` nor a vanished server can leave the caller blocked.
    """
    started = None
    while True:
      try:
        env.writer.flush(block_until_num_items=max_pending_items, timeout_ms=self._poll_interval_ms)
        if started is not None:
          self.blocked_s += time.monotonic() - started
        return
      except reverb.errors.DeadlineExceededError:
        if started is None:
          started = time.monotonic() - self._poll_interval_ms / 1000

        if self._stop.is_set():
          raise WriterStopped("the replay writer was stopped while inserts were blocked") from None
        try:
          self._client.server_info(timeout=max(1, self._poll_interval_ms // 1000 + 1))
        except Exception as error:
          raise ConnectionError("the replay server stopped answering while inserts were blocked") from error

  def _start_episode(self, env: _EnvTrack, first_obs: np.ndarray) -> None:
    env.frames.clear()
    env.pending.clear()
    for k in range(self._stack):
      env.writer.append({"frame": first_obs[..., k]})
      env.frames.append(_last_ref(env.writer, "frame"))

  def _append_frame_and_items(self, env: _EnvTrack, frame: np.ndarray, complete: Sequence[list]) -> None:
    """Appends the new frame, then one item per completed window of (action, reward, discount) steps.

    Window j ends at the new observation and started len(window) steps before it.
    """
    rows = [self._scalars(window) for window in complete]
    env.writer.append({"frame": frame, **(rows[0] if rows else {})})
    env.frames.append(_last_ref(env.writer, "frame"))
    frames = list(env.frames)
    obs_t = frames[-self._stack :]
    for row_index, window in enumerate(complete):
      if row_index > 0:
        env.writer.append(rows[row_index])
      m = len(window)
      obs_tm1 = frames[len(frames) - self._stack - m : len(frames) - m]
      history = env.writer.history
      columns = {name: history[name][-1] for name in transition.SCALAR_FIELDS}
      columns.update(obs_tm1=reverb.TrajectoryColumn(obs_tm1), obs_t=reverb.TrajectoryColumn(obs_t))
      env.writer.create_item(self._table, self._priority, columns)
      self.items_written += 1

  def _scalars(self, window: list) -> dict:
    actions, rewards, discounts = zip(*window)
    r_t, discount_t = n_step_return(
        np.array(rewards), np.array(discounts), self._discount, clip=self._clip_rewards, max_abs_reward=self._max_abs_reward
    )
    return transition.scalars(actions[0], r_t, discount_t)


def _last_ref(writer: reverb.TrajectoryWriter, column: str):
  """The cell reference of the newest value in `column`."""
  (ref,) = writer.history[column][-1]
  return ref
