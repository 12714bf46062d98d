"""Test helpers for replay: scripted environments with identifiable frames, and reading a table in order."""

from __future__ import annotations

import dataclasses

import numpy as np
import reverb

from envs import EnvStep, Episode
from agents.dqn.transition import reverb_signature
from replay.server import REPLAY_TABLE

STACK = 4
FRAME_SHAPE = (6, 6)
OBS_SHAPE = FRAME_SHAPE + (STACK,)


@dataclasses.dataclass
class ScriptedStep:
  reward: float
  discount: float = 1.0  # 0 at a terminal, or at a life loss that cuts bootstrapping
  end: str = ""  # "", "terminal" or "truncated"
  stack_reset: bool = False  # a life loss that restarts the frame stack (reset_stack_on_life_loss); needs discount 0

  def __post_init__(self):
    assert not self.stack_reset or (self.discount == 0.0 and not self.end), "a stack reset is a life-loss terminal"


class ScriptedEnvs:
  """Fake batched environments that play scripted steps. Every frame is filled with
  a unique id (1..255), so a stored stack tells exactly which observation it is.

  A stack reset ends a trajectory without ending the episode: the next one starts
  from the same newest frame, its older frames zero (as AtariEnv does)."""

  def __init__(self, scripts: list[list[ScriptedStep]], first_id: int = 1):
    assert len({len(s) for s in scripts}) == 1, "every environment is stepped together"
    self.scripts = scripts
    self.num_envs = len(scripts)
    self._next_id = first_id
    # Frame ids of obs_0..obs_L per trajectory: an episode, or its part between stack resets.
    self.episodes: list[list[list[int]]] = [[[]] for _ in scripts]

  def _new_frame(self, env: int) -> int:
    frame_id = self._next_id
    self._next_id += 1
    assert frame_id < 256
    self.episodes[env][-1].append(frame_id)
    return frame_id

  def _stack(self, ids: list[int]) -> np.ndarray:
    """The stacked observation whose newest frame is ids[-1] (zeros before the episode start)."""
    padded = [0] * STACK + ids
    return np.stack([np.full(FRAME_SHAPE, i, np.uint8) for i in padded[-STACK:]], axis=-1)

  def reset(self) -> np.ndarray:
    return np.stack([self._stack([self._new_frame(i)]) for i in range(self.num_envs)])

  def step(self, t: int) -> EnvStep:
    steps = [script[t] for script in self.scripts]
    obs, final_obs, episodes = [], [], []
    for i, step in enumerate(steps):
      self._new_frame(i)
      current = self.episodes[i][-1]
      final_obs.append(self._stack(current))
      if step.end:
        episodes.append(Episode(i, float("nan"), len(current) - 1, step.end == "truncated"))
        self.episodes[i].append([])
        self._new_frame(i)
        obs.append(self._stack(self.episodes[i][-1]))
      elif step.stack_reset:
        self.episodes[i].append([current[-1]])  # the newest frame starts the new stack
        obs.append(self._stack(self.episodes[i][-1]))
        final_obs[-1] = obs[-1]  # no episode ended: final_obs equals obs
      else:
        obs.append(final_obs[-1])
    return EnvStep(
        obs=np.stack(obs),
        reward=np.array([s.reward for s in steps], np.float32),
        terminated=np.array([s.end == "terminal" for s in steps]),
        truncated=np.array([s.end == "truncated" for s in steps]),
        life_lost=np.array([s.discount == 0.0 and not s.end for s in steps]),
        discount=np.array([s.discount for s in steps], np.float32),
        final_obs=np.stack(final_obs),
        stack_reset=np.array([s.stack_reset for s in steps]),
        episodes=tuple(episodes),
    )


def scripted_action(env: int, t: int) -> int:
  return (3 * env + t) % 5


def reference_transitions(envs: ScriptedEnvs, n: int, gamma: float, clip: bool) -> dict:
  """Every transition the writer should have stored, keyed by (obs_tm1 ids, obs_t ids).

  Written from the definitions, independently of the writer: a transition starts
  at every observation j of a trajectory (an episode, or its part between stack
  resets) and spans m = min(n, L - j) steps if the trajectory ended after L steps;
  in an unfinished one only full n-step windows exist.
  """
  expected = {}
  for env, script in enumerate(envs.scripts):
    t = 0
    for episode_ids in envs.episodes[env]:
      length = len(episode_ids) - 1  # steps taken in this trajectory
      if length <= 0:
        continue
      steps = script[t : t + length]
      ended = bool(steps[-1].end) or steps[-1].stack_reset
      for j in range(length):
        m = min(n, length - j) if ended else n
        if j + m > length:
          continue
        r_t, scale = 0.0, 1.0
        for k in range(m):
          reward = steps[j + k].reward
          r_t += scale * (np.clip(reward, -1, 1) if clip else reward)
          scale *= gamma * steps[j + k].discount
          if steps[j + k].discount == 0.0:
            break
        stack = lambda idx: tuple(([0] * STACK + episode_ids[: idx + 1])[-STACK:])
        expected[(stack(j), stack(j + m))] = (scripted_action(env, t + j), np.float32(r_t), np.float32(scale))
      t += length
  return expected


def read_items(data: dict) -> dict:
  """Sampled batch data (numpy, frames [B, H, W, S]) -> {(obs_tm1 ids, obs_t ids): (a, r, discount)}."""
  items = {}
  for b in range(len(data["a_tm1"])):
    key = (tuple(int(x) for x in data["obs_tm1"][b, 0, 0]), tuple(int(x) for x in data["obs_t"][b, 0, 0]))
    items[key] = (int(data["a_tm1"][b]), np.float32(data["r_t"][b]), np.float32(data["discount_t"][b]))
  return items


def fifo_server(obs_shape=OBS_SHAPE, max_size=100_000) -> reverb.Server:
  """A server whose `replay` table hands out every item exactly once, in insertion order."""
  table = reverb.Table(
      name=REPLAY_TABLE,
      sampler=reverb.selectors.Fifo(),
      remover=reverb.selectors.Fifo(),
      max_size=max_size,
      rate_limiter=reverb.rate_limiters.MinSize(1),
      max_times_sampled=1,
      signature=reverb_signature(obs_shape),
  )
  return reverb.Server([table])


def read_all_in_order(port: int, count: int) -> dict:
  """All `count` items of a `fifo_server`, in insertion order, frames channels-last: {name: array[count, ...]}."""
  dataset = reverb.TrajectoryDataset.from_table_signature(
      f"localhost:{port}", REPLAY_TABLE, max_in_flight_samples_per_worker=1, max_samples=count
  )
  samples = list(dataset.as_numpy_iterator())
  assert len(samples) == count
  data = {k: np.stack([s.data[k] for s in samples]) for k in samples[0].data}
  for key in ("obs_tm1", "obs_t"):
    data[key] = np.moveaxis(data[key], 1, -1)
  return data
