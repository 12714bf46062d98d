"""training/updates.py: the learner's updates read nothing from the device, on any path (issue 24)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from agents.dqn import DQNLearner
from replay.sampler import Sampler
from replay.server import REPLAY_TABLE, ReplayServer
from tests.replay_helpers import OBS_SHAPE
from tests.test_replay import write_script
from training.config import PRESETS
from training.updates import Updates

NUM_ACTIONS = 3


def test_updates_with_remedies_and_prioritized_replay_read_nothing_from_the_device(monkeypatch):
  """10 updates with a periodic remedy (checked at each update, due at update 8) and prioritized replay read
  nothing from the device on the main thread, and the priorities still reach the server, from the background
  thread. On a GPU JAX's transfer guard (thread-local) refuses any device-to-host transfer. On the CPU an array's
  memory is the host's and the guard lets reads through, so the test also counts, on the main thread, every read
  of an array's value (`ArrayImpl._value`: int(), float(), bool(), jax.device_get) and checks that the |TD
  errors| handed to the priority thread are still device arrays (NumPy would read a CPU array's buffer
  directly)."""
  import threading

  from jax._src import array as jax_array

  from replay.sampler import PriorityUpdater

  value = jax_array.ArrayImpl._value
  reads = []

  def counted(array):
    if threading.current_thread() is threading.main_thread():
      reads.append(array.shape)
    return value.fget(array)

  handed = []
  put = PriorityUpdater.put
  monkeypatch.setattr(PriorityUpdater, "put", lambda self, keys, errors: (handed.append(type(errors)),
                                                                          put(self, keys, errors)))
  smoke = PRESETS["smoke"]
  agent = dataclasses.replace(smoke.agent, torso="mlp", mlp_hidden_sizes=(8,), batch_size=4,
                              reset_period_updates=8, reset_layers="head")
  replay = dataclasses.replace(smoke.replay, max_size=100, min_replay_size=4, samples_per_insert=1.0,
                               samples_per_insert_tolerance=1e6, prioritized=True)
  config = dataclasses.replace(smoke, agent=agent, replay=replay, checkpoint_every_updates=8)
  learner = DQNLearner(agent, NUM_ACTIONS)
  state = learner.init(jax.random.PRNGKey(0), np.zeros((1, *OBS_SHAPE), np.uint8))
  counters = {"updates": 0}
  with ReplayServer(replay, OBS_SHAPE) as server:
    write_script(server.client(), 1)  # 27 one-step transitions, all at priority 1
    sampler = Sampler(server.address, replay, batch_size=agent.batch_size)
    updates = Updates(config, learner, state, counters, server)
    try:
      batches = [next(sampler) for _ in range(12)]
      for batch in batches[:2]:  # compiled outside the guard (compiling reads constants back)
        updates.update(batch, checkpoint=lambda: None)
      events = []
      handed.clear()
      monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(counted))
      with jax.transfer_guard_device_to_host("disallow_explicit"):
        for batch in batches[2:]:
          events += updates.update(batch, checkpoint=lambda: None)
      monkeypatch.setattr(jax_array.ArrayImpl, "_value", value)
      assert reads == []
      assert handed == [type(batches[0].transitions.r_t)] * 10  # device arrays, read on the thread
      assert [event.step for event in events] == [8]  # the remedy ran, at the step counted on the host
      updates.settle()
      sampled = {int(key) for batch in batches for key in np.ravel(batch.keys)}
      priorities = {int(s.info.key): float(s.info.priority)
                    for s in server.client().sample(REPLAY_TABLE, num_samples=300, emit_timesteps=False)}
      changed = {key for key, priority in priorities.items() if priority != 1.0}
      assert changed and changed <= sampled  # |TD error| + eps replaced the initial 1 of sampled items only
    finally:
      updates.close()
      sampler.close()
