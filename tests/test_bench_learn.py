"""bench/learn.py's plan and progress lines: the rate a run kept, the time left, from train.jsonl rows on disk."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import learn  # noqa: E402


def write_train_rows(run_dir, rows):
  os.makedirs(os.path.join(run_dir, "metrics"), exist_ok=True)
  with open(os.path.join(run_dir, "metrics", "train.jsonl"), "w", encoding="utf-8") as handle:
    for row in rows:
      handle.write(json.dumps(row) + "\n")


def rows_at(rate, start_env_steps, start_s, count, every_s=60.0):
  return [{"env_steps": int(start_env_steps + rate * every_s * i), "step": 1 + int(rate * every_s * i),
           "train_time_s": start_s + every_s * i} for i in range(count)]


def test_kept_rate_leaves_out_the_warm_up_and_follows_the_window():
  warm_up = [{"env_steps": 1_500, "step": 0, "train_time_s": 12.0}]  # the replay filling: no updates yet
  early = rows_at(20.0, 1_600, 13.0, 11)  # 600 s at 20 steps/s
  late = rows_at(10.0, early[-1]["env_steps"], early[-1]["train_time_s"], 21)[1:]  # then 1,200 s at 10 steps/s
  rows = [row for row in warm_up + early + late if row["step"] > 0]
  whole = (late[-1]["env_steps"] - early[0]["env_steps"]) / (late[-1]["train_time_s"] - early[0]["train_time_s"])
  assert learn.kept_rate(rows) == pytest.approx(whole)
  assert learn.kept_rate(rows, window_s=600.0) == pytest.approx(10.0, rel=0.01)
  assert learn.kept_rate(rows[:1]) is None
  assert learn.kept_rate([]) is None


def test_trained_rows_skip_rows_before_learning(tmp_path):
  run_dir = str(tmp_path / "pong-seed0")
  write_train_rows(run_dir, [{"env_steps": 900, "step": 0, "train_time_s": 8.0}] + rows_at(12.0, 1_600, 10.0, 3))
  assert [row["step"] for row in learn.trained_rows(run_dir)] == [1, 721, 1441]


def test_plan_and_progress_lines_give_the_time_left_at_the_kept_rate(tmp_path):
  first, second = str(tmp_path / "breakout-seed0"), str(tmp_path / "pong-seed0")
  write_train_rows(first, rows_at(12.5, 1_600, 10.0, 11))  # 600 s of training at 12.5 agent steps/s
  args = learn.Args(games=("breakout", "pong"), out_dir=str(tmp_path), total_env_steps=100_000)
  schedule = learn.Schedule(args, [first, second])
  # No checkpoint yet: each run has its whole budget left, planned at the rate the first one kept.
  assert schedule.left == {first: 100_000, second: 100_000}
  assert schedule.rate == pytest.approx(12.5, rel=0.01)
  plan = schedule.plan()
  assert "200,000 agent steps left" in plan and "12.5 agent steps/s" in plan
  assert "4h26m of training" in plan  # 200,000 / 12.5 s
  done = 1_600 + int(12.5 * 600)  # 9,100
  line = schedule.progress(first)
  assert f"{done:,}/100,000 agent steps (9.1%)" in line
  this_s = (100_000 - done) / 12.5
  assert f"ETA {learn.duration(this_s)} (all runs: {learn.duration(this_s + 100_000 / 12.5)})" in line


def test_markdown_table_names_what_the_training_took():
  result = {"game": "breakout", "seed": 0, "env_steps": 100_000, "step": 98_400, "eval_mean_return": 20.25,
            "eval_stderr_return": 1.5, "eval_episodes": 100, "random_score": 1.7, "human_score": 30.5,
            "human_normalized_score": 0.644, "published": {"score": 19.8, "spread": 15.0, "runs": 100},
            "train_time_s": 7_500.0, "agent_steps_per_s_kept": 13.3}
  row = learn.markdown_table([result]).splitlines()[-1]
  assert row == ("| breakout | 0 | 100,000 | 98,400 | 20.2 ± 1.5 (100) | 1.7 | 30.5 | 0.644 | 19.8 ± 15.0 (100 runs) "
                 "| 2h05m | 13.3 |")


def test_report_from_committed_results_needs_no_run_directory(tmp_path, capsys):
  results = []
  for game, score in (("breakout", 20.25), ("pong", -8.0)):
    result = {"game": game, "seed": 0, "run_dir": str(tmp_path / "gone"), "env_steps": 100_000, "step": 98_400,
              "eval_mean_return": score, "eval_stderr_return": 1.0, "eval_episodes": 100, "random_score": 0.0,
              "human_score": 30.0, "human_normalized_score": 0.5, "published": None, "train_time_s": 7_200.0,
              "agent_steps_per_s_kept": 13.0, "machine": "cpu: test (2 cores)",
              "train_episodes": {"env_steps": list(range(1_000, 101_000, 1_000)), "returns": [1.0] * 100}}
    path = tmp_path / f"{game}-seed0.json"
    path.write_text(json.dumps(result))
    results.append(str(path))
  plot_path = tmp_path / "curves.png"
  learn.run(learn.Args(results=tuple(results), plot=str(plot_path)))
  out, err = capsys.readouterr()
  assert [r["game"] for r in json.loads(out)["results"]] == ["breakout", "pong"]
  assert "| pong | 0 | 100,000 | 98,400 | -8.0 ± 1.0 (100) |" in err
  assert plot_path.stat().st_size > 10_000
  # The curve is the committed episodes' running mean over 20: 81 points, all 1.0.
  steps, returns = learn.curve(json.loads((tmp_path / "pong-seed0.json").read_text()))
  assert len(steps) == 81 and steps[0] == 20_000 and np.allclose(returns, 1.0)
