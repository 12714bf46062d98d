"""Evaluate a saved policy: whole games with epsilon-greedy, a table of scores, JSON, and optionally an MP4.

  python eval.py runs/pong-ln --episodes 30                              # newest checkpoint that loads
  python eval.py runs/pong-ln --step 250000 --epsilon 0 --video pong.mp4
  python eval.py runs/pong-ln/checkpoints/250000 --json pong.json        # a checkpoint directory works too

The run's own config.json decides the game, the network and the environment
protocol (sticky actions included); `--episodes` games are played in parallel
with the agent's evaluation epsilon (or `--epsilon`), each to its end
(`training.evaluation.evaluate`). Returns are real game scores; lengths are in
agent steps (4 frames each by default). The human-normalised score is
(mean - random) / (human - random) with the reference scores in envs/reference/.
JSON goes to `--json`, by default RUN_DIR/eval/step<STEP>.json (a later evaluation
of the same step replaces it). A read-only run directory is evaluated all the same:
the table is printed, and one line says the default JSON could not be saved (exit 0;
an explicit `--json` that cannot be written exits 1). `--video` records episode 0 of the table at the
native 210x160 RGB resolution, one frame per agent step, in real time
(training/video.py). Runs on the CPU whatever device trained the checkpoint;
set JAX_PLATFORMS (e.g. cuda) to choose another. A bad path, a run without
checkpoints, an unknown step, a config.json whose network does not match the
checkpoint, or a bad value: one `error: ...` line and exit code 2.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from typing import Annotated, Any, Optional

from common.process_setup import setup_process  # noqa: E402

setup_process("eval")  # JAX on the CPU (common/process_setup.py says why), before it loads

import numpy as np  # noqa: E402
import tyro  # noqa: E402

from common.files import write_json_atomically  # noqa: E402
from common.run_dir import CONFIG_FILE, RunDir  # noqa: E402
from common.validation import ConfigError, check_int, check_range  # noqa: E402
from envs import PROTOCOLS  # noqa: E402
from envs.scores import human_normalized_score, reference_scores  # noqa: E402

EXIT_WRITE_FAILED = 1
EXIT_USAGE = 2


@dataclasses.dataclass(frozen=True)
class EvalArgs:
  """Evaluate a saved policy of a training run."""

  run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
  """A run directory (config.json + checkpoints/), or one of its checkpoint directories (RUN_DIR/checkpoints/<step>)."""
  step: Optional[int] = None
  """Checkpoint step (learner updates); default: the newest checkpoint that loads."""
  episodes: int = 30
  """Whole games to play, in parallel, one per environment."""
  epsilon: Optional[float] = None
  """Probability of a uniformly random action; default: the agent's eval_epsilon from config.json."""
  seed: int = 0
  """Seeds the games (game i gets seed + i) and the epsilon-greedy RNG."""
  json: Optional[str] = None
  """Where the JSON results go; default: RUN_DIR/eval/step<STEP>.json."""
  video: Optional[str] = None
  """Record episode 0 as an H.264 MP4 here (210x160 RGB, one frame per agent step)."""

  def __post_init__(self):
    if self.step is not None:
      check_int("step", self.step, low=0)
    check_int("episodes", self.episodes, low=1)
    if self.epsilon is not None:
      check_range("epsilon", self.epsilon, low=0.0, high=1.0)
    check_int("seed", self.seed, low=0)
    for field in ("json", "video"):
      path = getattr(self, field)
      if path is not None:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
          raise ConfigError(f"{field}={path!r}: directory {folder} does not exist")
        if os.path.isdir(path):
          raise ConfigError(f"{field}={path!r} is a directory; give a file name")


@dataclasses.dataclass(frozen=True)
class RunPaths:
  run_dir: str
  checkpoints_dir: str
  step: Optional[int]  # the step named by a checkpoint-directory path


def resolve_paths(path: str, step: Optional[int]) -> RunPaths:
  """The run directory and the step from RUN_DIR or RUN_DIR/checkpoints/<step>; ConfigError if it is neither."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise ConfigError(f"{path} is not a directory (expected a run directory or RUN_DIR/checkpoints/<step>)")
  if RunDir(path).is_run():
    return RunPaths(path, RunDir(path).checkpoints_dir, step)
  run = RunDir(os.path.dirname(os.path.dirname(path)))
  name = os.path.basename(path)
  if name.isdigit() and run.is_run() and os.path.dirname(path) == run.checkpoints_dir:
    if step is not None and step != int(name):
      raise ConfigError(f"step={step} contradicts the checkpoint directory {path} (step {int(name)})")
    return RunPaths(run.path, run.checkpoints_dir, int(name))
  raise ConfigError(f"{path} is neither a run directory (with {CONFIG_FILE}) nor a checkpoint directory "
                    "(RUN_DIR/checkpoints/<step>)")


def summarize(game: str, returns: list[float]) -> dict:
  """Mean, median, standard error of the mean, min, max of the returns, and the human-normalised mean."""
  values = np.asarray(returns, np.float64)
  mean = float(values.mean())
  summary = {
      "mean_return": mean,
      "median_return": float(np.median(values)),
      "stderr_return": float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None,
      "min_return": float(values.min()),
      "max_return": float(values.max()),
      "random_score": None,
      "human_score": None,
      "human_normalized_score": None,  # games outside the Atari 57 table have no reference
  }
  if game in reference_scores():
    summary["random_score"], summary["human_score"] = reference_scores()[game]
    summary["human_normalized_score"] = human_normalized_score(game, mean)
  return summary


def protocol_name(protocol: Any) -> Optional[str]:
  return next((name for name, known in PROTOCOLS.items() if known == protocol), None)


def format_table(result: dict) -> str:
  def number(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"

  lines = [
      f"{result['game']}: checkpoint {result['step']:,} ({result['env_steps']:,} env steps), epsilon {result['epsilon']:g}, "
      f"seed {result['seed']}, protocol {result['protocol_name'] or 'custom'}, {len(result['episodes'])} episodes",
      f"{'episode':>7}  {'return':>9}  {'length (agent steps)':>20}",
  ]
  for index, episode in enumerate(result["episodes"]):
    note = "  truncated (frame cap)" if episode["truncated"] else ""
    lines.append(f"{index:>7}  {episode['return']:>9g}  {episode['length_steps']:>20,}{note}")
  reference = ("" if result["random_score"] is None
               else f" (random {result['random_score']:g}, human {result['human_score']:g})")
  lines.append(f"mean {number(result['mean_return'], 4)}  median {number(result['median_return'], 4)}  "
               f"stderr {number(result['stderr_return'])}  human-normalised {number(result['human_normalized_score'])}"
               f"{reference}")
  return "\n".join(lines)


def write_json(result: dict, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  write_json_atomically(path, result)


def evaluate_checkpoint(args: EvalArgs) -> dict:
  """Restores the checkpoint, plays the games (recording episode 0 if asked) and returns the results dict."""
  # JAX, Orbax: once the flags and the paths are checked, so that a mistake is one line at once
  import jax

  from common.checkpoints import NoCheckpointError
  from training.evaluation import evaluate
  from training.saved_run import open_run

  paths = resolve_paths(args.run_dir, args.step)
  with open_run(paths.run_dir, host_template=True) as run:
    config = run.config
    run.steps(paths.step)  # before the slower set-up below
    if args.video is not None:
      try:
        import imageio_ffmpeg  # noqa: F401  (only --video needs it: an optional package)
      except ImportError:
        raise ConfigError("--video needs the imageio-ffmpeg package (pip install imageio-ffmpeg==0.8.1)") from None
    try:
      state, metadata, step = run.restore(paths.step)
    except (NoCheckpointError, FileNotFoundError) as error:  # gone since it was listed
      raise ConfigError(str(error)) from None
  params = state.params

  epsilon = config.agent.eval_epsilon if args.epsilon is None else args.epsilon
  started = time.monotonic()
  video = None
  if args.video is None:
    episodes = evaluate(config.agent, params, config.game, config.env, num_episodes=args.episodes, seed=args.seed,
                        epsilon=epsilon)
  else:
    from training.video import NATIVE_HEIGHT, NATIVE_WIDTH, Mp4Writer, evaluate_and_record, frames_per_s  # --video only

    fps = frames_per_s(config.env)
    with Mp4Writer(args.video, width=NATIVE_WIDTH, height=NATIVE_HEIGHT, fps=fps) as writer:
      episodes, recorded = evaluate_and_record(config.agent, params, config.game, config.env,
                                               num_episodes=args.episodes, seed=args.seed, epsilon=epsilon,
                                               on_frame=writer.write)
    video = {"path": os.path.abspath(args.video), "episode": recorded.env_index, "frames": writer.num_frames,
             "frame_per": "agent_step", "fps": fps, "width": NATIVE_WIDTH, "height": NATIVE_HEIGHT,
             "return": recorded.episode_return, "length_steps": recorded.length_steps, "codec": "h264", "pix_fmt": "yuv420p"}
  eval_wall_s = time.monotonic() - started

  returns = [episode.episode_return for episode in episodes]
  return {
      "game": config.game,
      "step": step,
      "env_steps": metadata.get("env_steps"),
      "epsilon": epsilon,
      "seed": args.seed,
      "num_episodes": len(episodes),
      "episodes": [{"return": e.episode_return, "length": e.length_steps, "length_steps": e.length_steps,
                    "truncated": e.truncated} for e in episodes],
      **summarize(config.game, returns),
      "protocol_name": protocol_name(config.env),
      "protocol": dataclasses.asdict(config.env),
      "run_dir": paths.run_dir,
      "checkpoint": os.path.join(paths.checkpoints_dir, str(step)),
      "video": video,
      "jax_backend": jax.default_backend(),
      "eval_wall_s": eval_wall_s,
      "time": time.time(),
  }


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's notes on read-only checkpoint managers
  try:
    args = tyro.cli(EvalArgs, args=argv, description=__doc__)
    result = evaluate_checkpoint(args)
  except ConfigError as error:
    print(f"error: {error}", file=sys.stderr)
    return EXIT_USAGE
  print(format_table(result))
  if result["video"] is not None:
    print(f"video of episode 0 ({result['video']['frames']:,} frames at {result['video']['fps']:g} fps): {args.video}")
  json_path = args.json or RunDir(result["run_dir"]).eval_json_path(result["step"])
  try:
    write_json(result, json_path)
  except OSError as error:  # a read-only run directory: the results above stand, only their file is missing
    if args.json is not None:
      print(f"error: cannot write {json_path}: {error.strerror}", file=sys.stderr)
      return EXIT_WRITE_FAILED
    print(f"results not saved: {os.path.dirname(json_path)} is not writable ({error.strerror}); "
          "--json PATH saves them elsewhere", file=sys.stderr)
    return 0
  print(f"results: {json_path}")
  return 0

if __name__ == "__main__":
  from common.processes import exit_now

  exit_now(main())
