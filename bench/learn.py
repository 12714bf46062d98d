"""Learning benchmark: the full `atari100k` protocol (DrQ(epsilon) as Dopamine runs it) on a few games.

For each game and seed it runs `python train.py --preset atari100k` for 100k agent steps
(resuming an interrupted run, reusing a finished one), then evaluates the final checkpoint
with the preset's evaluation epsilon (0.001) on the preset's 100 whole games, writes
`<out_dir>/<game>-seed<seed>/result.json`, and prints one JSON object with every result
next to the random, human and published DrQ(epsilon) scores. It also draws the learning
curves (training episode returns against agent steps). About 2 hours per game and seed on
2 CPU cores, most of it training; the 100 evaluation games take minutes.

  python bench/learn.py --games breakout pong boxing --seeds 0
  python bench/learn.py --games pong --total-env-steps 50000   # a shorter budget, said so in the JSON
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import tyro  # noqa: E402

from bench.learner import device_name  # noqa: E402
from common import processes  # noqa: E402
from common.checkpoints import CheckpointStore  # noqa: E402
from common.metrics import read_rows  # noqa: E402
from common.run_dir import RunDir  # noqa: E402
from envs.scores import human_normalized_score, published_scores, reference_scores  # noqa: E402
from reports.runs import checkpoint_progress  # noqa: E402
from training.config import PRESETS, load_config, make_learner  # noqa: E402
from training.evaluation import evaluate  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args:
  games: tuple[str, ...] = ("breakout",)
  """Games to train on (Atari 100k names, snake_case)."""
  seeds: tuple[int, ...] = (0,)
  total_env_steps: Optional[int] = None
  """Override the preset's 100k agent steps (reported in the JSON)."""
  eval_episodes: Optional[int] = None
  """Whole games played by the final policy; default the preset's (100, Dopamine's protocol)."""
  out_dir: str = "bench/out/learn"
  """Run directories go here (one per game and seed)."""
  plot: Optional[str] = "bench/out/learn/curves.png"
  """Learning-curve figure; None skips it."""
  train: bool = True
  """False: only score and plot the runs already in out_dir (interrupted ones as they stand)."""
  extra_flags: str = ""
  """More train.py flags as one string, e.g. --extra-flags "--agent.layer-norm"."""


def train(args: Args, game: str, seed: int, run_dir: str) -> float:
  """Runs (or resumes) the training; returns its wall-clock seconds (0 if it had finished before)."""
  progress = checkpoint_progress(run_dir)
  if progress.finished and progress.env_steps >= (args.total_env_steps or PRESETS["atari100k"].total_env_steps):
    return 0.0  # trained to this budget before
  command = [sys.executable, "train.py", "--preset", "atari100k", "--game", game, "--seed", str(seed), "--run-dir", run_dir]
  if progress.checkpoint_steps:
    command = [sys.executable, "train.py", "--run-dir", run_dir, "--resume"]
  if args.total_env_steps:
    command += ["--total-env-steps", str(args.total_env_steps)]
  command += shlex.split(args.extra_flags)
  started = time.monotonic()
  # stdout is for the JSON. Stopped (Ctrl-C, SIGTERM, an error), the training gets SIGTERM and writes its final
  # checkpoint; the next call resumes it.
  processes.run(command, cwd=ROOT, stdout=sys.stderr, stop_timeout_s=120.0)
  return time.monotonic() - started


def final_score(run_dir: str, eval_episodes: Optional[int], seed: int) -> dict:
  config = load_config(run_dir)
  eval_episodes = eval_episodes or config.eval_episodes
  _, template = make_learner(config)
  store = CheckpointStore(RunDir(run_dir).checkpoints_dir, read_only=True)
  state, meta, step = store.restore(template)
  started = time.monotonic()
  episodes = evaluate(config.agent, state.params, config.game, config.env, num_episodes=eval_episodes, seed=10_000 + seed)
  returns = np.array([e.episode_return for e in episodes])
  return {
      "step": step,
      "env_steps": meta["env_steps"],
      "train_time_s": meta["train_time_s"],
      "eval_epsilon": config.agent.eval_epsilon,
      "eval_episodes": len(returns),
      "eval_mean_return": float(returns.mean()),
      "eval_stderr_return": float(returns.std(ddof=1) / np.sqrt(len(returns))) if len(returns) > 1 else None,
      "eval_returns": returns.tolist(),
      "eval_wall_s": time.monotonic() - started,
  }


def curve(run_dir: str, window: int = 20) -> tuple[np.ndarray, np.ndarray]:
  rows = read_rows(RunDir(run_dir).stream_path("episodes"))
  steps = np.array([row["env_steps"] for row in rows], float)
  returns = np.array([row["return"] for row in rows], float)
  if len(returns) >= window:
    kernel = np.ones(window) / window
    return steps[window - 1:], np.convolve(returns, kernel, mode="valid")
  return steps, returns


def plot(results: list[dict], path: str, title: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  games = sorted({r["game"] for r in results})
  fig, axes = plt.subplots(1, len(games), figsize=(5 * len(games), 3.6), squeeze=False)
  for ax, game in zip(axes[0], games):
    for result in (r for r in results if r["game"] == game):
      steps, returns = curve(result["run_dir"])
      ax.plot(steps, returns, label=f"seed {result['seed']} (train, mean of 20 episodes)")
      ax.axhline(result["eval_mean_return"], linestyle="--", color="black", linewidth=1, label="final eval (eps 0.001)")
    random_score, human_score = reference_scores()[game]
    ax.axhline(random_score, color="grey", linestyle=":", linewidth=1, label="random")
    published = published_scores().get(game)
    if published:
      ax.axhline(published["score"], color="tab:red", linestyle="-.", linewidth=1, label="DrQ(eps) published (mean of 100 runs)")
    ax.set_title(game)
    ax.set_xlabel("agent steps")
    ax.set_ylabel("episode return (game score)")
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)


def main() -> None:
  args = tyro.cli(Args)
  try:
    with processes.signals_raise():
      run(args)
  except processes.Interrupted as stopped:
    print(f"bench/learn.py: stopped by {stopped.signal_name}; the training wrote a final checkpoint, and the "
          "same command resumes it", file=sys.stderr)
    sys.exit(processes.EXIT_INTERRUPTED)


def run(args: Args) -> None:
  results = []
  for game in args.games:
    for seed in args.seeds:
      run_dir = os.path.join(args.out_dir, f"{game}-seed{seed}")
      wall_s = train(args, game, seed, run_dir) if args.train else 0.0
      score = final_score(run_dir, args.eval_episodes, seed)
      random_score, human_score = reference_scores()[game]
      result = {
          "game": game, "seed": seed, "run_dir": run_dir, "train_wall_s_this_call": wall_s, **score,
          "random_score": random_score, "human_score": human_score,
          "human_normalized_score": human_normalized_score(game, score["eval_mean_return"]),
          "published": published_scores().get(game),
      }
      with open(RunDir(run_dir).bench_result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
      results.append(result)
  machine = device_name()
  if args.plot:
    trained = ", ".join(f"{r['game']} {r['env_steps']:,}" for r in results)
    plot(results, args.plot, f"atari100k preset, agent steps trained: {trained}; {machine}")
  print(json.dumps({"preset": "atari100k", "total_env_steps": args.total_env_steps or 100_000, "machine": machine,
                    "results": results}, indent=2))
  print(markdown_table(results), file=sys.stderr)


def markdown_table(results: list[dict]) -> str:
  """The README's per-game table: final score +- standard error next to the reference and published scores."""
  lines = ["| game | seed | agent steps | final score ± s.e. (episodes) | random | human | human-normalised | "
           "DrQ(ε) published (mean ± s.d. over runs) |", "|---|---|---|---|---|---|---|---|"]
  for r in results:
    published = r["published"]
    cited = f"{published['score']:.1f} ± {published['spread']:.1f} ({published['runs']} runs)" if published else "n/a"
    stderr = r["eval_stderr_return"] or 0.0
    lines.append(f"| {r['game']} | {r['seed']} | {r['env_steps']:,} | {r['eval_mean_return']:.1f} ± {stderr:.1f} "
                 f"({r['eval_episodes']}) | {r['random_score']:.1f} | {r['human_score']:.1f} | "
                 f"{r['human_normalized_score']:.3f} | {cited} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
