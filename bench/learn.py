"""Learning benchmark: the full `atari100k` protocol (DrQ(epsilon) as Dopamine runs it) on a few games.

For each game and seed it runs `python train.py --preset atari100k` for 100k agent steps
(resuming an interrupted run, reusing a finished one), then evaluates the final checkpoint
with the preset's evaluation epsilon (0.001) on the preset's 100 whole games, writes
`<out_dir>/<game>-seed<seed>/result.json`, and prints one JSON object with every result
next to the random, human and published DrQ(epsilon) scores. It also draws the learning
curves (training episode returns against agent steps). About 2 hours per game and seed on
2 CPU cores, most of it training; the 100 evaluation games take minutes.

Before training it says how long the budget left will take at the rate measured here (the rate the runs in
out_dir kept, else the atari100k learner timed alone for a few seconds), and every `progress_every_s` while a
run trains it prints one line (to stderr, beside train.py's own) with the agent steps done, the rate kept over
the last ten minutes and the ETA of this run and of all runs left.

  python bench/learn.py --games breakout pong boxing --seeds 0
  python bench/learn.py --games pong --total-env-steps 50000   # a shorter budget, said so in the JSON
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import textwrap
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common.process_setup import setup_process  # noqa: E402
setup_process("tool")  # before JAX, TensorFlow and Reverb load

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

from agents.dqn import DQNLearner  # noqa: E402
from bench.learner import NUM_ACTIONS, device_name, make_batch  # noqa: E402
from common import processes  # noqa: E402
from common.files import write_json_atomically  # noqa: E402
from common.metrics import read_rows  # noqa: E402
from common.run_dir import RunDir  # noqa: E402
from envs.scores import human_normalized_score, published_scores, reference_scores  # noqa: E402
from reports.runs import checkpoint_progress  # noqa: E402
from training.config import PRESETS, load_config  # noqa: E402
from training.evaluation import evaluate  # noqa: E402
from training.progress import duration  # noqa: E402
from training.saved_run import open_run  # noqa: E402

RATE_WINDOW_S = 600.0  # the progress line's rate: agent steps per second of training over this much of it


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
  """More train.py flags as one string, e.g. --extra-flags="--agent.layer-norm" (with `=`: the value starts with --)."""
  progress_every_s: float = 300.0
  """Seconds between this script's progress lines while a run trains."""
  results: tuple[str, ...] = ()
  """Only draw the figure and print the table of these result.json files (e.g. the ones committed in
  docs/results/atari100k/): no training, no evaluation, no run directory needed."""


def budget_env_steps(args: Args) -> int:
  return args.total_env_steps or PRESETS["atari100k"].total_env_steps


def trained_rows(run_dir: str) -> list[dict]:
  """train.jsonl rows written once learning had started (the warm-up fills the replay at the actors' speed)."""
  rows = read_rows(RunDir(run_dir).stream_path("train"), keep=("env_steps", "step", "train_time_s"))
  return [row for row in rows if row.get("step", 0) > 0 and "train_time_s" in row]


def kept_rate(rows: list[dict], window_s: Optional[float] = None) -> Optional[float]:
  """Agent steps per second of training between the first and the last row (of the last `window_s` seconds of
  training when given); None with fewer than two rows."""
  if window_s is not None and rows:
    rows = [row for row in rows if row["train_time_s"] >= rows[-1]["train_time_s"] - window_s]
  if len(rows) < 2 or rows[-1]["train_time_s"] <= rows[0]["train_time_s"]:
    return None
  return (rows[-1]["env_steps"] - rows[0]["env_steps"]) / (rows[-1]["train_time_s"] - rows[0]["train_time_s"])


def learner_only_rate(min_duration_s: float = 3.0) -> float:
  """Agent steps per second that the atari100k learner alone allows here (batch already on the device): its
  updates/s times the agent steps per update. The job's actors and replay share the machine, so it is a ceiling."""
  preset = PRESETS["atari100k"]
  learner = DQNLearner(preset.agent, NUM_ACTIONS)
  batch = jax.device_put(make_batch(np.random.default_rng(0), 1, preset.agent.batch_size))
  state = learner.init(jax.random.PRNGKey(0), batch.obs_tm1)
  state, _ = jax.block_until_ready(learner.update(state, batch))  # compiles
  updates, started = 0, time.perf_counter()
  while updates < 5 or time.perf_counter() - started < min_duration_s:
    state, _ = jax.block_until_ready(learner.update(state, batch))
    updates += 1
  updates_per_s = updates / (time.perf_counter() - started)
  return updates_per_s * preset.agent.batch_size / preset.replay.samples_per_insert


class Schedule:
  """The runs of one call, the agent steps each has left, and the rate they are planned at: the plan printed
  before training and the progress lines during it."""

  def __init__(self, args: Args, run_dirs: list[str]):
    budget = budget_env_steps(args)
    self.run_dirs = run_dirs
    self.left = {run_dir: max(0, budget - (checkpoint_progress(run_dir).env_steps or 0)) for run_dir in run_dirs}
    self.budget = budget
    self.rate, self.rate_source = self._measured_rate(args.train)

  def _measured_rate(self, training: bool) -> tuple[Optional[float], str]:
    rates = {run_dir: kept_rate(trained_rows(run_dir)) for run_dir in self.run_dirs}
    rates = {run_dir: rate for run_dir, rate in rates.items() if rate}
    if rates:
      return float(np.mean(list(rates.values()))), "kept by " + ", ".join(os.path.basename(r) for r in rates)
    if not training or not sum(self.left.values()):
      return None, "nothing to train"
    return learner_only_rate(), "the atari100k learner alone, timed here just now: a ceiling"

  def plan(self) -> str:
    total = sum(self.left.values())
    runs = ", ".join(f"{os.path.basename(r)} {left:,}" for r, left in self.left.items())
    line = f"bench/learn.py: {total:,} agent steps left to train ({runs}; budget {self.budget:,} each)"
    if total and self.rate:
      line += f"; at {self.rate:.1f} agent steps/s ({self.rate_source}) about {duration(total / self.rate)} of training"
    return line + ", then the evaluation games of each run"

  def progress(self, run_dir: str) -> str:
    rows = trained_rows(run_dir)
    done = rows[-1]["env_steps"] if rows else self.budget - self.left[run_dir]
    rate = kept_rate(rows, RATE_WINDOW_S) or self.rate
    later = self.run_dirs[self.run_dirs.index(run_dir) + 1:]
    this_s = max(0, self.budget - done) / rate if rate else None
    all_s = this_s + sum(self.left[r] for r in later) / rate if rate else None
    eta = "-" if this_s is None else f"{duration(this_s)} (all runs: {duration(all_s)})"
    rate_text = "-" if not rate else f"{rate:.1f}"
    return (f"bench/learn.py: {os.path.basename(run_dir)} {done:,}/{self.budget:,} agent steps "
            f"({100 * done / self.budget:.1f}%) | {rate_text} agent steps/s over the last "
            f"{RATE_WINDOW_S / 60:.0f} min | ETA {eta}")


def train(args: Args, game: str, seed: int, run_dir: str, schedule: Schedule) -> float:
  """Runs (or resumes) the training, printing `schedule`'s progress line every `progress_every_s`; returns its
  wall-clock seconds (0 if it had finished before)."""
  progress = checkpoint_progress(run_dir)
  if progress.finished and progress.env_steps >= budget_env_steps(args):
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
  with processes.running(command, cwd=ROOT, stdout=sys.stderr, stop_timeout_s=120.0) as process:
    while True:
      try:
        process.wait(timeout=args.progress_every_s)
        break
      except subprocess.TimeoutExpired:
        print(schedule.progress(run_dir), file=sys.stderr, flush=True)
  if process.returncode:
    raise subprocess.CalledProcessError(process.returncode, command)
  return time.monotonic() - started


def final_score(run_dir: str, eval_episodes: Optional[int], seed: int) -> dict:
  with open_run(run_dir) as run:
    config = run.config
    state, meta, step = run.restore()
  eval_episodes = eval_episodes or config.eval_episodes
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


def earlier_score(run_dir: str, eval_episodes: Optional[int]) -> Optional[dict]:
  """The evaluation in the run's result.json when it scored the newest checkpoint with as many games as asked
  (evaluation is seeded, so playing them again would give the same returns); None otherwise."""
  path = RunDir(run_dir).bench_result_path
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as handle:
    earlier = json.load(handle)
  steps = checkpoint_progress(run_dir).checkpoint_steps
  wanted = eval_episodes or load_config(run_dir).eval_episodes
  if not steps or earlier.get("step") != steps[-1] or earlier.get("eval_episodes") != wanted:
    return None
  keys = ("step", "env_steps", "train_time_s", "eval_epsilon", "eval_episodes", "eval_mean_return",
          "eval_stderr_return", "eval_returns", "eval_wall_s")
  return {key: earlier[key] for key in keys}


def train_episodes(run_dir: str) -> dict:
  """The training episodes' agent steps and returns (real game scores), in the order they finished."""
  rows = read_rows(RunDir(run_dir).stream_path("episodes"), keep=("env_steps", "return"))
  rows = [row for row in rows if "env_steps" in row and "return" in row]
  return {"env_steps": [row["env_steps"] for row in rows], "returns": [row["return"] for row in rows]}


def curve(result: dict, window: int = 20) -> tuple[np.ndarray, np.ndarray]:
  """Training returns against agent steps, each point the mean of the last `window` episodes; from the
  result's own copy of the episodes (a result.json older than that copy reads its run directory)."""
  episodes = result.get("train_episodes") or train_episodes(result["run_dir"])
  steps, returns = np.array(episodes["env_steps"], float), np.array(episodes["returns"], float)
  if len(returns) >= window:
    kernel = np.ones(window) / window
    return steps[window - 1:], np.convolve(returns, kernel, mode="valid")
  return steps, returns


def plot(results: list[dict], path: str, title: str) -> None:
  import matplotlib  # only with --plot

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # after the backend is chosen

  games = sorted({r["game"] for r in results})
  fig, axes = plt.subplots(1, len(games), figsize=(5 * len(games), 3.6), squeeze=False)
  for ax, game in zip(axes[0], games):
    for result in (r for r in results if r["game"] == game):
      steps, returns = curve(result)
      ax.plot(steps, returns, label=f"seed {result['seed']} (train, mean of 20 episodes)")
      ax.axhline(result["eval_mean_return"], linestyle="--", color="black", linewidth=1, label="final eval (eps 0.001)")
    random_score, human_score = reference_scores()[game]
    ax.axhline(random_score, color="grey", linestyle=":", linewidth=1, label="random")
    published = published_scores().get(game)
    if published:
      ax.axhline(published["score"], color="tab:red", linestyle="-.", linewidth=1, label="DrQ(eps) published (mean of 100 runs)")
      ax.axhspan(published["score"] - published["spread"], published["score"] + published["spread"], color="tab:red",
                 alpha=0.08, linewidth=0, label="± 1 s.d. over the published runs")
    ax.set_title(game)
    ax.set_xlabel("agent steps")
    ax.set_ylabel("episode return (game score)")
    ax.legend(fontsize=7)
  fig.suptitle(textwrap.fill(title, width=60 * len(games)), fontsize=9)  # about 60 characters fit one panel
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
  if args.results:
    return report_only(args)
  runs = [(game, seed, os.path.join(args.out_dir, f"{game}-seed{seed}")) for game in args.games for seed in args.seeds]
  schedule = Schedule(args, [run_dir for _, _, run_dir in runs])
  if args.train:
    print(schedule.plan(), file=sys.stderr, flush=True)
  machine = device_name()
  results = []
  for game, seed, run_dir in runs:
    wall_s = train(args, game, seed, run_dir, schedule) if args.train else 0.0
    results.append(scored_run(args, game, seed, run_dir, wall_s, machine))
  if args.plot:
    trained = ", ".join(f"{r['game']} {r['env_steps']:,}" for r in results)
    plot(results, args.plot, f"atari100k preset, agent steps trained: {trained}; {machine}")
  print(json.dumps({"preset": "atari100k", "total_env_steps": budget_env_steps(args), "machine": machine,
                    "results": results}, indent=2))
  print(markdown_table(results), file=sys.stderr)


def report_only(args: Args) -> None:
  results = []
  for path in args.results:
    with open(path, encoding="utf-8") as handle:
      results.append(json.load(handle))
  machines = sorted({r.get("machine", "machine not recorded") for r in results})
  if args.plot:
    trained = ", ".join(f"{r['game']} {r['env_steps']:,}" for r in results)
    plot(results, args.plot, f"atari100k preset, agent steps trained: {trained}; {'; '.join(machines)}")
  print(json.dumps({"preset": "atari100k", "machine": machines, "results": results}, indent=2))
  print(markdown_table(results), file=sys.stderr)


def scored_run(args: Args, game: str, seed: int, run_dir: str, wall_s: float, machine: str) -> dict:
  """Evaluates the run's final checkpoint and writes its result.json beside the run: the score next to the
  reference and published ones, and what the training cost."""
  score = earlier_score(run_dir, args.eval_episodes) or final_score(run_dir, args.eval_episodes, seed)
  random_score, human_score = reference_scores()[game]
  result = {
      "game": game, "seed": seed, "run_dir": run_dir, "train_wall_s_this_call": wall_s, **score,
      "agent_steps_per_s_kept": kept_rate(trained_rows(run_dir)), "machine": machine,
      "train_episodes": train_episodes(run_dir),
      "random_score": random_score, "human_score": human_score,
      "human_normalized_score": human_normalized_score(game, score["eval_mean_return"]),
      "published": published_scores().get(game),
  }
  write_json_atomically(RunDir(run_dir).bench_result_path, result)
  return result


def markdown_table(results: list[dict]) -> str:
  """The results page's per-game table: final score +- standard error next to the reference and published
  scores, and what the training took."""
  lines = ["| game | seed | agent steps | updates | final score ± s.e. (episodes) | random | human | human-normalised | "
           "DrQ(ε) published (mean ± s.d. over runs) | training time | agent steps/s kept |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    published = r["published"]
    cited = f"{published['score']:.1f} ± {published['spread']:.1f} ({published['runs']} runs)" if published else "n/a"
    stderr = r["eval_stderr_return"] or 0.0
    rate = "-" if r.get("agent_steps_per_s_kept") is None else f"{r['agent_steps_per_s_kept']:.1f}"
    lines.append(f"| {r['game']} | {r['seed']} | {r['env_steps']:,} | {r['step']:,} | {r['eval_mean_return']:.1f} ± "
                 f"{stderr:.1f} ({r['eval_episodes']}) | {r['random_score']:.1f} | {r['human_score']:.1f} | "
                 f"{r['human_normalized_score']:.3f} | {cited} | {duration(r['train_time_s'])} | {rate} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
