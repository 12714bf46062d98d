"""The plasticity probe set on one checkpoint: wall time and peak memory, as one JSON object.

The probes the worker runs on every probed checkpoint (plasticity/probes.py: probe_checkpoint), at the sizes
the backend gets by default (plasticity/config.py: 10 targets x 2,000 steps on a GPU, 2 x 100 on a CPU), on a
freshly initialised network of the preset and `probe.inputs` random transitions. Run twice: the first run
compiles, the second is the one a run pays at every probed checkpoint after its first.

Peak memory: on a GPU the device's own peak (`memory_stats()["peak_bytes_in_use"]`, which includes whatever
the process held before the probes, here only the network); on a CPU the process's peak resident set.

  python bench/probes.py                      # atari100k's network (Nature CNN), the backend's probe sizes
  python bench/probes.py --preset dqn_zoo

Time: on this project's 2-core CPU beside the test suite, 5 minutes (2 x 2.4 min at the CPU sizes, 2.5 GB
peak; bench/probes.py as committed in c611a6c). Starts no processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.process_setup import setup_process  # noqa: E402
setup_process("tool")  # before JAX loads

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

from agents.dqn import transition  # noqa: E402
from bench.learner import device_name  # noqa: E402
from plasticity.probes import probe_checkpoint  # noqa: E402
from training.config import PRESETS, make_learner  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args:
  preset: str = "atari100k"
  """Whose network and probe settings (sizes left at None are the backend's)."""
  seed: int = 0


def random_inputs(rng: np.random.Generator, count: int, obs_shape, num_actions: int) -> dict:
  """`count` transitions as a checkpoint stores its probe inputs (transition.STORED_FIELDS, frames stacked last)."""
  obs = lambda: rng.integers(0, 256, (count, *obs_shape), dtype=np.uint8)
  fields = {"obs_tm1": obs(), "a_tm1": rng.integers(0, num_actions, count).astype(np.int32),
            "r_t": rng.uniform(-1, 1, count).astype(np.float32), "discount_t": np.full(count, 0.99, np.float32),
            "obs_t": obs()}
  return {name: fields[name] for name in transition.STORED_FIELDS}


def peak_memory_bytes() -> int:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main(args: Args) -> None:
  config = PRESETS[args.preset]
  learner, state = make_learner(config, args.seed)
  probe_config = config.probe.resolved(jax.default_backend())
  inputs = random_inputs(np.random.default_rng(args.seed), probe_config.inputs, config.env.obs_shape,
                         learner.num_actions)
  wall_s = []
  for _ in range(2):
    started = time.perf_counter()
    row = probe_checkpoint(learner, state, inputs, state.params, probe_config, step=1)
    wall_s.append(time.perf_counter() - started)
  print(json.dumps({"device": device_name(), "jax": jax.__version__, "preset": args.preset,
                    "torso": config.agent.torso, "probe_sizes": probe_config.sizes(),
                    "first_wall_s": round(wall_s[0], 2), "wall_s": round(wall_s[1], 2),
                    "peak_memory_bytes": peak_memory_bytes(),
                    "srank": row["srank"], "target_fit_loss": row.get("target_fit_final_loss")}, indent=1))


if __name__ == "__main__":
  main(tyro.cli(Args))
