"""training/job_channel.py: weights published from a background thread, and the guard beside it (issue 24)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from common.metrics import MetricsLog, read_rows
from common.run_dir import RunDir
from replay.params import ParamsPublisher, fetch_params
from replay.server import ReplayServer
from tests.replay_helpers import OBS_SHAPE
from training.config import PRESETS
from training.job_channel import JobChannel


def test_weights_go_out_from_a_thread_newest_first_and_the_guard_tells_ours_from_a_strangers(tmp_path):
  """200 publications as fast as the loop makes them, with the guard looking between them: no false alarm, the
  newest weights are the ones published. Then one stranger's item: found once, and the newest weights again."""
  config = PRESETS["smoke"]
  run_dir = str(tmp_path / "run")
  counters = {"env_steps": 0, "updates": 0, "episodes": 0}
  template = {"w": np.zeros(50_000, np.float32), "b": np.zeros(3, np.float32)}
  with ReplayServer(config.replay, OBS_SHAPE) as server:
    metrics = MetricsLog(run_dir, tensorboard=False)
    channel = JobChannel(config, RunDir(run_dir), server, counters, metrics, num_actions=3)
    try:
      now_s = 0.0
      for update in range(1, 201):
        counters["updates"], counters["env_steps"] = update, 4 * update
        channel.publish({"w": jnp.full(50_000, float(update)), "b": jnp.arange(3.0) + update}, now_s)
        if update % 10 == 0:
          now_s += 1.0  # the guard looks once a second
          channel.guard(now_s)
      channel.flush()
      channel.guard(now_s + 1.0)
      rejected = lambda: read_rows(RunDir(run_dir).stream_path("rejected"))
      assert rejected() == []
      key = RunDir(run_dir).job_secret()
      weights = fetch_params(server.client(), template, key)
      assert (weights.version, weights.env_steps) == (200, 800)
      np.testing.assert_array_equal(weights.params["b"], np.arange(3.0) + 200)

      ParamsPublisher(server.client(), b"a stranger's key" * 2).publish(template, version=10**6, env_steps=10**9)
      channel.guard(now_s + 2.0)
      channel.flush()
      assert [row["reason"] for row in rejected()] == [
          "1 item(s) in table params not inserted by the learner (published again)"]
      assert fetch_params(server.client(), template, key).version == 200
      channel.guard(now_s + 3.0)
      assert len(rejected()) == 1  # counted once
    finally:
      channel.close()
      metrics.close()
