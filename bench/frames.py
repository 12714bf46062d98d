"""What each frame processing costs an actor: agent steps per second of one `AtariEnv`, one JSON object.

`AtariProtocol.frame_processing` (envs/frames.py): greyscale_area is ale_py's C++ pipeline end to end;
luminance_bilinear (DQN Zoo's, chosen by the dqn_zoo and lyle presets) has ale_py hand over native-size RGB frames
and converts them in Python (numpy's luminance, PIL's bilinear resize, one frame per game per step). Both play the
same game with the same random actions; only the environment is timed, no policy.

  python bench/frames.py                      # breakout, 8 games (an actor's default), 1,000 steps each way, twice
  python bench/frames.py --game pong --num-envs 1

Time: about 50 s on this project's 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tyro  # noqa: E402

from envs import PROTOCOLS, AtariEnv  # noqa: E402
from envs.frames import FRAME_PROCESSINGS  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args:
  game: str = "breakout"
  num_envs: int = 8
  """Games stepped together (an actor's num_envs_per_actor)."""
  steps: int = 1_000
  """Timed vector steps per processing, after 100 untimed ones."""
  repeats: int = 2
  """Timings per processing; the best is reported (the least disturbed by the rest of the machine)."""


def steps_per_s(args: Args, processing: str) -> float:
  protocol = dataclasses.replace(PROTOCOLS["dqn_zoo"], frame_processing=processing)
  rng = np.random.default_rng(0)
  best = 0.0
  with AtariEnv(args.game, args.num_envs, protocol, seed=0, num_threads=1) as env:
    env.reset()
    actions = rng.integers(0, env.num_actions, (args.steps + 100, args.num_envs))
    for row in actions[:100]:
      env.step(row)
    for _ in range(args.repeats):
      started = time.perf_counter()
      for row in actions[100:]:
        env.step(row)
      best = max(best, args.steps * args.num_envs / (time.perf_counter() - started))
  return best


def main(args: Args) -> dict:
  rates = {processing: steps_per_s(args, processing) for processing in FRAME_PROCESSINGS}
  return {
      "bench": "frames", "game": args.game, "num_envs": args.num_envs, "steps": args.steps,
      "agent_steps_per_s": {name: round(rate, 1) for name, rate in rates.items()},
      "luminance_bilinear_relative": round(rates["luminance_bilinear"] / rates["greyscale_area"], 3),
      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
  }


if __name__ == "__main__":
  print(json.dumps(main(tyro.cli(Args)), indent=1))
