"""Continual Atari (envs/tasks.py): the schedule, its validation, the actor's game switches on real ALE, and a
real run whose episodes and evaluations follow the schedule across a resume."""

import dataclasses
import glob
import importlib.metadata
import json
import os
import subprocess

import numpy as np
import pytest

from common.metrics import read_rows
from common.run_dir import RunDir
from common.validation import ConfigError
from envs import UnknownGameError
from envs.tasks import TaskSchedule
from tests.test_train import FAST, finish, start_train
from training.actor_loop import ActorGames
from training.config import PRESETS


def leveldb_log_records(path: str) -> list[bytes]:
  """The records of a LevelDB-format log (W&B's transaction log: a 7-byte file header, then 32 KiB blocks of
  records, each a 7-byte header (crc32, length, type FULL 1 / FIRST 2 / MIDDLE 3 / LAST 4) and its data; a block's
  tail shorter than a header is zero padding)."""
  with open(path, "rb") as handle:
    data = handle.read()
  assert data[:4] == b":W&B", data[:7]
  records, index, pending = [], 7, b""
  while index + 7 <= len(data):
    if 32768 - index % 32768 < 7:  # padding to the next block
      index += 32768 - index % 32768
      continue
    length, kind = int.from_bytes(data[index + 4:index + 6], "little"), data[index + 6]
    chunk = data[index + 7:index + 7 + length]
    index += 7 + length
    if kind == 1:
      records.append(chunk)
    elif kind == 2:
      pending = chunk
    elif kind == 3:
      pending += chunk
    elif kind == 4:
      records.append(pending + chunk)
  return records


def wandb_records(offline_run_dir: str) -> dict:
  """What an offline W&B run wrote: its config, its history rows (key -> value) and its summary, read from its
  transaction log (the file `wandb sync` uploads)."""
  from wandb.proto import wandb_internal_pb2  # wandb is optional: only this test's W&B part needs it

  [log] = glob.glob(os.path.join(offline_run_dir, "*.wandb"))
  out = {"config": {}, "history": [], "summary": {}}
  for data in leveldb_log_records(log):
    record = wandb_internal_pb2.Record()
    record.ParseFromString(data)
    kind = record.WhichOneof("record_type")
    if kind == "history":
      out["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    elif kind == "run":  # the run's start, its config inside
      out["config"].update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    elif kind == "summary":
      out["summary"].update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.summary.update})
  return out


def test_schedule_cycles_or_stays_on_the_last_task():
  cycling = TaskSchedule(("breakout", "pong", "boxing"), 100)
  assert [cycling.game_at(t) for t in (0, 99, 100, 250, 300, 399, 400)] == [
      "breakout", "breakout", "pong", "boxing", "breakout", "breakout", "pong"]
  assert cycling.next_switch(0) == 100 and cycling.next_switch(100) == 200 and cycling.phase_at(350) == 3
  once = TaskSchedule(("breakout", "pong"), 100, cycle=False)
  assert [once.game_at(t) for t in (0, 150, 200, 10_000)] == ["breakout", "pong", "pong", "pong"]
  assert once.next_switch(50) == 100 and once.next_switch(150) is None and once.phase_at(10_000) == 1
  assert TaskSchedule(("pong", "breakout", "pong"), 10).distinct_games == ("pong", "breakout")


def test_a_schedule_is_checked_before_anything_starts():
  smoke = PRESETS["smoke"]
  full = dataclasses.replace(smoke.env, full_action_space=True)
  with pytest.raises(UnknownGameError, match="unknown game 'pongg'; did you mean pong"):
    dataclasses.replace(smoke, tasks=("breakout", "pongg"), task_switch_every_env_steps=100, env=full)
  with pytest.raises(ConfigError, match="full 18-action space"):
    dataclasses.replace(smoke, tasks=("breakout", "pong"), task_switch_every_env_steps=100)
  with pytest.raises(ConfigError, match="task_switch_every_env_steps=0"):
    dataclasses.replace(smoke, tasks=("breakout", "pong"), env=full)
  with pytest.raises(ConfigError, match="no tasks"):
    dataclasses.replace(smoke, task_switch_every_env_steps=100)
  config = dataclasses.replace(smoke, game="qbert", tasks=["pong", "breakout"], task_switch_every_env_steps=100, env=full)
  assert config.game == "pong" and config.tasks == ("pong", "breakout")  # the first task is the run's game
  assert dataclasses.replace(smoke, tasks=("pong",), task_switch_every_env_steps=5).task_schedule.games == ("pong",)


def test_train_py_refuses_an_unknown_game_in_a_schedule_before_creating_anything(tmp_path):
  run_dir = str(tmp_path / "run")
  process = start_train([*FAST, "--run-dir", run_dir, "--tasks", "breakout", "ponk",
                         "--task-switch-every-env-steps", "500", "--env.full-action-space"])
  output = finish(process, 60)
  assert process.returncode == 2 and "unknown game 'ponk'" in output, output[-2000:]
  assert not os.path.exists(run_dir)


def test_actor_games_switch_on_the_job_env_steps_on_real_ale():
  env = dataclasses.replace(PRESETS["smoke"].env, full_action_space=True)
  config = dataclasses.replace(PRESETS["smoke"], tasks=("breakout", "pong"), task_switch_every_env_steps=1000,
                               num_envs_per_actor=2, env=env)
  games = ActorGames(config, seed=3, job_env_steps=1500)  # an actor joining mid-run starts on the current task
  try:
    assert games.game == "pong" and games.env.num_actions == 18
    assert games.switch_if_due(1999) is None
    obs = games.switch_if_due(2000)
    assert games.game == "breakout" and obs.shape == (2, 42, 42, 4)
    step = games.env.step(np.zeros(2, np.int32))
    assert step.obs.shape == obs.shape
    assert games.switch_if_due(2500) is None and games.switch_if_due(3000) is not None and games.game == "pong"
  finally:
    games.close()


def _tasks_in_order(rows: list[dict]) -> list[str]:
  order = []
  for row in rows:
    if not order or order[-1] != row["task"]:
      order.append(row["task"])
  return order


def test_a_continual_run_logs_episodes_and_evaluations_by_task_and_resumes_on_schedule(tmp_path):
  run_dir = str(tmp_path / "run")
  switch = 700
  flags = [*FAST, "--run-dir", run_dir, "--num-actors", "1", "--tasks", "breakout", "pong",
           "--task-switch-every-env-steps", str(switch), "--env.full-action-space",
           "--eval-every-env-steps", str(switch // 2), "--eval-episodes", "1",
           "--env.max-episode-frames", "600",  # 150-step episodes: several of each game finish in every phase
           "--track", "wandb"]  # offline here (no network): training/tracking.py
  # Each life ends half-way into a phase: an actor switches up to a report or two late (below), so a phase that
  # ended the run could be over before one of its 150-step episodes finished.
  process = start_train([*flags, "--total-env-steps", str(2 * switch + switch // 2)])
  output = finish(process, 240)
  assert process.returncode == 0, output[-3000:]
  run = RunDir(run_dir)
  first_life = read_rows(run.stream_path("episodes"))
  process = start_train(["--run-dir", run_dir, "--resume", "--total-env-steps", str(4 * switch + switch // 2)])
  output = finish(process, 240)
  assert process.returncode == 0 and "task breakout" in output, output[-3000:]

  episodes = read_rows(run.stream_path("episodes"))
  second_life = episodes[len(first_life):]
  assert episodes[:len(first_life)] == first_life and all(row["task"] in ("breakout", "pong") for row in episodes)
  # The resumed life counts on from the first one's env steps (so it plays the schedule where the first left off).
  assert second_life and min(row["env_steps"] for row in second_life) >= max(row["env_steps"] for row in first_life)
  # Each life plays the full phases inside it in turn: Breakout then Pong in the first, Pong (2100-2800) in the
  # second. The half phases at the ends of the lives (1400-1750 and 1750-2100, Breakout; 2800-3150, Breakout) may
  # go unseen: an actor switches up to a report or two late (below), a report can be 400 steps on a fast machine,
  # and the first life may overshoot its budget by as much before it stops.
  alternation = ["breakout", "pong"] * 3
  first_order, second_order = _tasks_in_order(first_life), _tasks_in_order(second_life)
  assert first_order[:2] == ["breakout", "pong"] and first_order == alternation[:len(first_order)], first_order
  assert "pong" in second_order and any(second_order == alternation[i:i + len(second_order)] for i in (0, 1)), (
      second_order)
  schedule = TaskSchedule(("breakout", "pong"), switch)
  # An actor switches when its count of the job's env steps (those published with the weights plus its own since)
  # crosses the boundary: each episode was played on the task of that count (its actor_env_steps), exactly. The
  # count never goes back (so no task flips back at a boundary) and never runs ahead of the learner's (the row's
  # env_steps, taken when the report arrives), in either life.
  for row in episodes:
    assert row["task"] == schedule.game_at(row["actor_env_steps"]), row
    assert row["actor_env_steps"] <= row["env_steps"], row
  views = [row["actor_env_steps"] for row in episodes]
  assert views == sorted(views), views
  # Real scores of the right game: Breakout's never negative (and some bricks); Pong's include lost points, a
  # negative return Breakout cannot give (a short Pong episode can also win a point: seen, +1).
  pong = [row["return"] for row in episodes if row["task"] == "pong"]
  breakout = [row["return"] for row in episodes if row["task"] == "breakout"]
  assert min(pong) < 0 and min(breakout) >= 0 < max(breakout), (pong, breakout)
  # Every evaluation point scored both tasks.
  evals = read_rows(run.stream_path("eval"))
  by_point: dict[int, set] = {}
  for row in evals:
    by_point.setdefault(row["env_steps"], set()).add(row["task"])
  assert by_point and all(tasks == {"breakout", "pong"} for tasks in by_point.values()), by_point
  assert all(row["task"] in ("breakout", "pong") for row in read_rows(run.stream_path("train")) if "task" in row)

  # compare.py: a learning curve per task, and each task's score after each switch.
  import compare

  out = str(tmp_path / "report")
  assert compare.main([run_dir, "--out", out, "--reps", "100"]) == 0
  with open(os.path.join(out, "summary.json")) as handle:
    summary = json.load(handle)
  assert set(summary["curves"]) == {"breakout", "pong"}
  continual = summary["continual"]
  assert continual["tasks"] == ["breakout", "pong"] and set(continual["curves"]["pong"])  # Pong's evaluations drawn
  [entry] = continual["variants"].values()
  played = {row["phase"]: row["played"] for row in entry["phases"]}
  # (Evaluations of both games take a few seconds; a loaded machine can skip a 700-step phase's.)
  assert len(played) >= 2 and all(game == schedule.games[phase % 2] for phase, game in played.items()), played
  for row in entry["phases"]:
    assert set(row["scores"]) == {"breakout", "pong"}
    assert row["scores"]["pong"] is None or row["scores"]["pong"] <= 0  # Pong is scored as Pong
  with open(os.path.join(out, "report.md")) as handle:
    report = handle.read()
  assert "## Continual tasks" in report and "task sequence breakout → pong → breakout → pong" in report  # (and on)

  # The code each life ran (metrics/lives.jsonl, a history the resume does not cut), named by the report.
  checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  head = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True,
                        check=True).stdout.strip()
  life_rows = read_rows(run.stream_path("lives"))
  assert [row["resumed"] for row in life_rows] == [False, True], life_rows
  assert life_rows[0]["started_env_steps"] == 0 < life_rows[1]["started_env_steps"]
  assert all(row["commit"] == head and row["packages"]["flax"] == importlib.metadata.version("flax")
             for row in life_rows)
  assert summary["runs"][0]["code"] == [head[:7] + ("+dirty" if life_rows[0]["dirty"] else "")]
  assert f"| {head[:7]}" in report

  # W&B: both lives are one W&B run (its id made from the run directory's path), every stream's rows logged once
  # counted, the config at the start and the final score at the end.
  from training.tracking import STATE_FILE, run_id

  with open(os.path.join(run_dir, STATE_FILE)) as handle:
    state = json.load(handle)
  assert state["run_id"] == run_id(run_dir) and "W&B run " + run_id(run_dir) in output
  for stream in ("train", "episodes", "eval"):
    assert state["rows_logged"][stream] == len(read_rows(run.stream_path(stream))) > 0, stream
  lives = sorted(glob.glob(os.path.join(run_dir, "wandb", "offline-run-*")))
  assert len(lives) == 2 and all(life.endswith("-" + run_id(run_dir)) for life in lives), lives
  logged = [wandb_records(life) for life in lives]
  keys = set().union(*(set(row) for life in logged for row in life["history"]))
  assert {"eval/mean_return", "eval/task", "episodes/return", "episodes/env_steps", "train/loss"} <= keys, keys
  returns = [row["episodes/return"] for life in logged for row in life["history"] if "episodes/return" in row]
  assert len(returns) == len(episodes) and returns == [row["return"] for row in episodes]  # each episode once
  assert logged[0]["config"]["game"] == "breakout" and logged[1]["summary"]["final/score_source"] == "eval"


def test_probes_around_resets_and_at_task_switches_are_checkpointed_kept_and_probed(tmp_path):
  import jax

  from common.checkpoints import CheckpointStore
  from training.config import load_config, make_learner

  run_dir = str(tmp_path / "run")
  switch = 500
  # The tasks are two ALE variants of one game (envs/mode_env.py plays the second): its 4 minimal actions.
  process = start_train([*FAST, "--run-dir", run_dir, "--num-actors", "1", "--tasks", "breakout", "breakout:m4:d1",
                         "--task-switch-every-env-steps", str(switch),
                         "--env.max-episode-frames", "600", "--total-env-steps", str(3 * switch + 100),
                         "--checkpoint-every-updates", "100000", "--keep-last-checkpoints", "1",
                         "--agent.reset-period-updates", "100", "--agent.reset-layers", "head",
                         "--probe-every-updates", "100000", "--probe-around-remedies", "--probe-at-task-switches",
                         "--probe.inputs", "64", "--probe.num-targets", "2", "--probe.probe-steps", "5",
                         "--probe.hessian-iterations", "2", "--probe.hessian-examples", "8",
                         "--probe.grad-cov-examples", "8", "--probe.no-heatmaps", "--probe.no-fresh-reference"])
  output = finish(process, 300)
  assert process.returncode == 0, output[-3000:]
  assert "reset at update 100: head 4 (optimizer moments reset)" in output  # Breakout's minimal action set
  assert "WARNING" not in output, output[-3000:]
  run = RunDir(run_dir)
  assert {row["task"] for row in read_rows(run.stream_path("episodes"))} == {"breakout", "breakout:m4:d1"}
  with CheckpointStore(run.checkpoints_dir, read_only=True) as store:
    steps = store.steps()
    meta = {step: store.read_metadata(step) for step in steps}
    final = steps[-1]
    learner, template = make_learner(load_config(run_dir))
    before, _, _ = store.restore(template, step=100)
    after, _, _ = store.restore(template, step=101)
  resets = [row["step"] for row in read_rows(run.stream_path("remedies"))]
  assert resets == list(range(100, final + 1, 100)) and resets
  switches = {step: m["task_switch"] for step, m in meta.items() if m.get("task_switch") is not None}
  # Kept: one checkpoint per switch (phases 1, 2, 3), taken once the job's env steps passed it; the states just
  # before and after every reset; the final one. Nothing else (keep_last 1, no periodic checkpoint due).
  assert sorted(switches.values()) == [1, 2, 3], meta
  for step, phase in switches.items():
    assert phase * switch <= meta[step]["env_steps"] < phase * switch + 600, meta[step]
  around = {s for e in resets for s in (e, e + 1) if s <= final}
  assert set(steps) == around | set(switches) | {final}, steps
  # Between 100 and 101: a reset of the head (a jump) and one ordinary update of the torso (a small step).
  head = lambda s: np.concatenate([np.ravel(x) for x in jax.tree.leaves(s.params["params"]["head"])])
  torso = lambda s: np.concatenate([np.ravel(x) for x in jax.tree.leaves(s.params["params"]["torso"])])
  head_jump = np.linalg.norm(head(after) - head(before)) / np.linalg.norm(head(before))
  torso_step = np.linalg.norm(torso(after) - torso(before)) / np.linalg.norm(torso(before))
  assert head_jump > 0.3 and torso_step < 0.05, (head_jump, torso_step)
  probed = {row["step"] for row in read_rows(run.stream_path("plasticity"))}
  assert set(steps) <= probed, (steps, probed)
