"""Learner-only throughput: jitted Double DQN updates per second, printed as one JSON object.

The batch is already on the device, so this is the ceiling the replay pipeline
has to feed. Grid: head (scalar, two_hot) x layer norm (off, on) x batch size x
updates per call, for one torso (Nature CNN by default), on whatever device JAX
picks (the GPU when there is one).

  python bench/learner.py                      # the grid of docs/benchmarks.md
  python bench/learner.py --batch-sizes 32 --min-duration-s 2

Time: 16 configurations, each compiled (a few seconds; K = 4 about twice as long) and then timed
for at least `min_duration_s` and 3 calls: an estimated 3 minutes on this project's 2-core CPU when
it is otherwise idle (4 of the configurations used 38 s of CPU time). With other jobs on the machine
it takes far longer: those 4 took 2 min 15 s at a load average of 9. It starts no processes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.process_setup import setup_process  # noqa: E402
setup_process("tool")  # before JAX, TensorFlow and Reverb load

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

from agents.dqn import DQNConfig, DQNLearner, Transition  # noqa: E402

NUM_ACTIONS = 18  # the full action set: the largest head any game needs


@dataclasses.dataclass(frozen=True)
class Args:
  torso: str = "nature"
  """Torso to benchmark."""
  heads: tuple[str, ...] = ("scalar", "two_hot")
  layer_norms: tuple[bool, ...] = (False, True)
  batch_sizes: tuple[int, ...] = (32, 256)
  updates_per_calls: tuple[int, ...] = (1, 4)
  min_duration_s: float = 5.0
  """Time each configuration for at least this long, after compiling."""
  seed: int = 0


def device_name() -> str:
  device = jax.devices()[0]
  if device.platform == "cpu":
    model = platform.processor() or "cpu"
    try:
      with open("/proc/cpuinfo") as f:
        model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
      pass
    return f"cpu: {model} ({os.cpu_count()} cores)"
  return f"{device.platform}: {device.device_kind}"


def make_batch(rng: np.random.Generator, updates_per_call: int, batch_size: int) -> Transition:
  lead = (updates_per_call,) if updates_per_call > 1 else ()
  shape = lead + (batch_size,)
  return Transition(
      obs_tm1=rng.integers(0, 256, shape + (84, 84, 4), dtype=np.uint8),
      a_tm1=rng.integers(0, NUM_ACTIONS, shape).astype(np.int32),
      r_t=rng.uniform(-1, 1, shape).astype(np.float32),
      discount_t=np.full(shape, 0.99, np.float32),
      obs_t=rng.integers(0, 256, shape + (84, 84, 4), dtype=np.uint8),
  )


def measure(args: Args, head: str, layer_norm: bool, batch_size: int, updates_per_call: int) -> dict:
  config = DQNConfig(torso=args.torso, head=head, layer_norm=layer_norm, batch_size=batch_size, updates_per_call=updates_per_call)
  learner = DQNLearner(config, NUM_ACTIONS)
  batch = jax.device_put(make_batch(np.random.default_rng(args.seed), updates_per_call, batch_size))
  first_obs = batch.obs_tm1[0] if updates_per_call > 1 else batch.obs_tm1
  state = learner.init(jax.random.PRNGKey(args.seed), first_obs)
  start = time.perf_counter()
  state, metrics = learner.update(state, batch)
  jax.block_until_ready((state, metrics))
  compile_s = time.perf_counter() - start
  calls, start = 0, time.perf_counter()
  while True:
    state, metrics = learner.update(state, batch)
    calls += 1
    if calls % 4 == 0 or calls == 1:
      jax.block_until_ready((state, metrics))
      elapsed = time.perf_counter() - start
      if elapsed >= args.min_duration_s and calls >= 3:
        break
  jax.block_until_ready((state, metrics))
  elapsed = time.perf_counter() - start
  return {
      "torso": args.torso,
      "head": head,
      "layer_norm": layer_norm,
      "batch_size": batch_size,
      "updates_per_call": updates_per_call,
      "updates_per_s": round(calls * updates_per_call / elapsed, 2),
      "compile_s": round(compile_s, 2),
  }


def main(args: Args) -> None:
  results = []
  for head, layer_norm, batch_size, k in itertools.product(args.heads, args.layer_norms, args.batch_sizes, args.updates_per_calls):
    results.append(measure(args, head, layer_norm, batch_size, k))
    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
  print(json.dumps({"device": device_name(), "jax": jax.__version__, "results": results}, indent=1))


if __name__ == "__main__":
  main(tyro.cli(Args))
