"""A run's evaluations as DQN Zoo tabulates its own: one row per iteration, the columns of its results.csv.

DQN Zoo (github.com/google-deepmind/dqn_zoo at 45061f4) evaluates after every iteration of 1M training frames,
iteration 0 before any training, for 500,000 frames at epsilon 0.01 (dqn_zoo/double_q/run_atari.py:94-99,
:265-289), and writes one row per iteration (:282-299): `eval_episode_return` (parts.py:204-248, EpisodeTracker.get: the
mean return of the games that ended within the 500,000 frames, or the one cut off if none did), its human-normalized
score (atari_data.py:get_human_normalized_score), that capped at 1, and `human_gap` = 1 - the capped score. Its
published results.csv adds `environment_name` and `seed` (README.md), and its plots smooth the scores with a moving
average over 10 iterations (README.md). A run evaluated so (`RunConfig.eval_frames`, the `dqn_zoo` preset) gets the
same rows here, from metrics/eval.jsonl; its iteration is its evaluated weights' env steps over
`eval_every_env_steps` (the evaluator takes the first weights published at or after each iteration's end).
"""

from __future__ import annotations

import csv
import os
from typing import Optional

import numpy as np

from common.metrics import read_rows
from common.run_dir import RunDir
from common.validation import is_finite_number
from envs.scores import human_normalized_score, reference_scores

SMOOTHING_ITERATIONS = 10  # DQN Zoo's plots: "a moving average with window size 10"
COLUMNS = ("environment_name", "seed", "iteration", "frame", "eval_episode_return", "eval_num_episodes",
           "normalized_return", "capped_normalized_return", "human_gap")


def iteration_rows(run) -> list[dict]:
  """The run's DQN Zoo rows, one per iteration in order (the first evaluation of each), [] for a run whose
  evaluations have no frame budget (or a continual run's, which evaluate several games)."""
  config = run.config
  if not config.eval_frames or not config.eval_every_env_steps or config.task_schedule is not None:
    return []
  frames_per_iteration = config.eval_every_env_steps * config.env.frame_skip
  by_iteration: dict[int, dict] = {}
  for row in read_rows(RunDir(run.run_dir).stream_path("eval")):
    score, steps = row.get("dqn_zoo_episode_return"), row.get("env_steps")
    if not is_finite_number(score) or not isinstance(steps, int):
      continue
    iteration = steps // config.eval_every_env_steps
    by_iteration.setdefault(iteration, {
        "environment_name": run.game, "seed": run.seed, "iteration": iteration,
        "frame": iteration * frames_per_iteration, "eval_episode_return": float(score),
        "eval_num_episodes": int(row.get("num_episodes", 0)), **_normalized(run.game, float(score)),
    })
  return [by_iteration[i] for i in sorted(by_iteration)]


def _normalized(game: str, score: float) -> dict:
  if game not in reference_scores():
    return {"normalized_return": None, "capped_normalized_return": None, "human_gap": None}
  normalized = human_normalized_score(game, score)
  capped = min(1.0, normalized)
  return {"normalized_return": normalized, "capped_normalized_return": capped, "human_gap": 1.0 - capped}


def summary(rows: list[dict]) -> Optional[dict]:
  """The run's score as DQN Zoo's tables and plots give it: the last iteration's `eval_episode_return`, and the
  mean over the last SMOOTHING_ITERATIONS iterations (the last point of its smoothed curve)."""
  if not rows:
    return None
  last = rows[-1]
  window = [row["eval_episode_return"] for row in rows[-SMOOTHING_ITERATIONS:]]
  return {"iterations": len(rows), "last_iteration": last["iteration"], "last_frame": last["frame"],
          "eval_episode_return": last["eval_episode_return"], "normalized_return": last["normalized_return"],
          "smoothed_eval_episode_return": float(np.mean(window)), "smoothed_over": len(window)}


def write_csv(tables: dict[str, list[dict]], path: str) -> str:
  """Every run's rows in one results.csv of DQN Zoo's columns (plus the run directory), run after run."""
  with open(path, "w", encoding="utf-8", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=[*COLUMNS, "run_dir"])
    writer.writeheader()
    for run_dir, rows in tables.items():
      for row in rows:
        writer.writerow({**{key: ("" if row[key] is None else row[key]) for key in COLUMNS}, "run_dir": run_dir})
  return path


def section(tables: dict[str, list[dict]], variant_of: dict[str, str], out_dir: str, written: list[str]) -> list[str]:
  """report.md's section on the runs evaluated as DQN Zoo evaluates: a table of their scores, and the CSV."""
  if not tables:
    return []
  written.append(write_csv(tables, os.path.join(out_dir, "dqn_zoo_results.csv")))
  md = ["## DQN Zoo's evaluation", "",
        "Runs evaluated as DQN Zoo evaluates (after every iteration of training frames, iteration 0 before any, "
        "for a budget of frames at the evaluation epsilon): the score of each iteration is DQN Zoo's "
        "`eval_episode_return`, the mean return of the games that ended within the budget. Every iteration's row, "
        "in DQN Zoo's results.csv columns: [dqn_zoo_results.csv](dqn_zoo_results.csv). "
        f"*Smoothed*: the mean over the last {SMOOTHING_ITERATIONS} iterations, the last point of DQN Zoo's "
        "smoothed curves.", "",
        "| run | variant | iterations | last iteration (frame) | eval_episode_return | normalized | smoothed |",
        "|---|---|---|---|---|---|---|"]
  for run_dir, rows in tables.items():
    entry = summary(rows)
    normalized = "n/a" if entry["normalized_return"] is None else f"{entry['normalized_return']:.3f}"
    md.append(f"| {os.path.basename(run_dir)} | {variant_of.get(run_dir, '')} | {entry['iterations']} | "
              f"{entry['last_iteration']} ({entry['last_frame']:,}) | {entry['eval_episode_return']:.2f} | "
              f"{normalized} | {entry['smoothed_eval_episode_return']:.2f} ({entry['smoothed_over']}) |")
  return md + [""]
