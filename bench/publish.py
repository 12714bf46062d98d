"""The learner loop's stall when it publishes its weights, before and after they went off the loop: one JSON object.

Each publication signs the weights (HMAC over every leaf) and inserts them into Reverb. Before (`inline`), the
loop itself copied them to the host, signed and inserted them (what training/learner_process.py did until the
weights publisher): the update after which it published took that much longer. After (`background`), the loop
hands the device arrays to the job channel (training/job_channel.py: WeightsPublisher) and goes on; the copy,
the MAC and the insert run on the channel's thread.

The loop here is the learner's own, without the sampler: jitted updates of the preset's agent on one batch
already on the device, each waited for (so every iteration's time is that update's, plus a publication when
one is due), with a publication every `publish_every_updates`, into a real Reverb server through the real job
channel. Reported per mode: the median update time, and for the updates that published, the longest and the
median, and the longest stall (longest minus the median update).

  python bench/publish.py                                  # atari100k's agent (Nature CNN, 16 MB of weights)
  python bench/publish.py --preset dqn_zoo --publications 20

Time: about 30 s on this project's 2-core CPU for atari100k (2 x 10 publications every 20 updates, 60 ms each,
plus compiling). Starts no processes; the Reverb server runs in this one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.process_setup import setup_process  # noqa: E402
setup_process("tool")  # before JAX, TensorFlow and Reverb load

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

from bench.learner import device_name, make_batch  # noqa: E402
from common.metrics import MetricsLog  # noqa: E402
from common.run_dir import RunDir  # noqa: E402
from replay.params import ParamsPublisher  # noqa: E402
from replay.server import ReplayServer  # noqa: E402
from training.config import PRESETS, make_learner  # noqa: E402
from training.job_channel import JobChannel  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args:
  preset: str = "atari100k"
  """Whose agent (network, batch size) updates and is published."""
  publish_every_updates: int = 20
  """Updates between publications (the presets publish every 50-100; the stall of one does not depend on it)."""
  publications: int = 10
  """Publications timed per mode."""
  seed: int = 0


def run_mode(mode: str, args: Args, learner, state, batch, channel, publisher) -> dict:
  counters = channel._counters  # the channel reads the update and env-step counts it publishes from here
  update_s, publishing_s = [], []
  for update in range(1, args.publish_every_updates * args.publications + 1):
    started = time.perf_counter()
    state, metrics = learner.update(state, batch)
    counters["updates"] = update
    if update % args.publish_every_updates == 0:
      if mode == "inline":
        publisher.publish(jax.device_get(state.params), update, 0)
      else:
        channel.publish(state.params, time.monotonic())
    metrics["loss"].block_until_ready()
    (publishing_s if update % args.publish_every_updates == 0 else update_s).append(time.perf_counter() - started)
  channel.flush()
  median = float(np.median(update_s))
  return {"median_update_s": round(median, 4), "publishing_update_max_s": round(max(publishing_s), 4),
          "publishing_update_median_s": round(float(np.median(publishing_s)), 4),
          "longest_stall_s": round(max(publishing_s) - median, 4), "publications": len(publishing_s)}


def main(args: Args) -> None:
  config = PRESETS[args.preset]
  learner, state = make_learner(config, args.seed)
  agent = config.agent
  batch = make_batch(np.random.default_rng(args.seed), agent.updates_per_call, agent.batch_size)
  batch = jax.device_put(batch._replace(a_tm1=batch.a_tm1 % learner.num_actions))
  params_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state.params))
  with tempfile.TemporaryDirectory() as run_dir, ReplayServer(config.replay, config.env.obs_shape) as server:
    metrics = MetricsLog(run_dir, tensorboard=False)
    counters = {"env_steps": 0, "updates": 0, "episodes": 0}
    channel = JobChannel(config, RunDir(run_dir), server, counters, metrics, learner.num_actions)
    publisher = ParamsPublisher(server.client(), RunDir(run_dir).job_secret())
    try:
      for _ in range(3):  # compiled, and the first publications made, before timing
        state, warm = learner.update(state, batch)
      warm["loss"].block_until_ready()
      modes = {mode: run_mode(mode, args, learner, state, batch, channel, publisher) for mode in ("inline", "background")}
    finally:
      channel.close()
      metrics.close()
  print(json.dumps({"device": device_name(), "jax": jax.__version__, "preset": args.preset, "torso": agent.torso,
                    "batch_size": agent.batch_size, "params_bytes": int(params_bytes),
                    "publish_every_updates": args.publish_every_updates, "modes": modes}, indent=1))


if __name__ == "__main__":
  main(tyro.cli(Args))
