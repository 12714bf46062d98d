"""Crash and resume on a real small run: SIGKILL of train.py at chosen moments (before its first checkpoint is
complete, during a checkpoint's replay write, between the replay and the learner state, right after a checkpoint,
at an arbitrary moment, with an actor killed during a checkpoint), then `--resume`, seven lives in all, with the
run directory's invariants checked after each.

The moments are reached deterministically through common.faults (DQN_FAULTS=kill@<point>:<n>).
"""

from __future__ import annotations

import json
import os
import signal

from common.checkpoints import CheckpointStore
from common.metrics import read_rows
from common.run_dir import RunDir
from tests.test_train import alive, descendants, finish, start_train, wait_for

BUDGET_ENV_STEPS = 3_000
REMEDY_PERIOD = 50
TINY = [
    "--game", "breakout", "--preset", "smoke", "--num-actors", "1", "--num-envs-per-actor", "2",
    "--replay.min-replay-size", "200", "--checkpoint-every-updates", "100", "--log-every-s", "0.5",
    "--env.max-episode-frames", "2000", "--probe-every-updates", "0", "--total-env-steps", str(BUDGET_ENV_STEPS),
    "--agent.torso", "mlp", "--agent.mlp-hidden-sizes", "32",  # fast to compile and update: the lives are the test
    # Two periodic remedies, whose schedule must carry across every life (agents/dqn/remedies.py).
    "--agent.reset-period-updates", str(REMEDY_PERIOD), "--agent.redo-period-updates", str(REMEDY_PERIOD),
]
COUNTERS = {"train": ("env_steps", "step", "episodes"), "episodes": ("env_steps",), "checkpoints": ("env_steps", "step"),
            "remedies": ("env_steps", "step")}


def launch(args: list[str], faults: str = ""):
  os.environ["DQN_FAULTS"] = faults
  try:
    return start_train(args)
  finally:
    del os.environ["DQN_FAULTS"]


def killed(process, what: str) -> str:
  """Waits for the process to die of its injected SIGKILL; checks that none of its children is left."""
  children = descendants(process.pid)
  output = finish(process)
  assert process.returncode == -signal.SIGKILL, f"{what}: exit {process.returncode}\n{output[-3000:]}"
  assert "fault injection: kill" in output, output[-3000:]
  wait_for(lambda: not alive(children), 20, f"the children of the killed train.py ({what}) to die")
  return output


def learner_steps(run_dir: str) -> list[int]:
  with CheckpointStore(RunDir(run_dir).checkpoints_dir, read_only=True) as store:
    return store.steps()


def metadata(run_dir: str, step: int) -> dict:
  with CheckpointStore(RunDir(run_dir).checkpoints_dir, read_only=True) as store:
    return store.read_metadata(step)


def replay_record(run_dir: str, step: int) -> dict:
  with open(os.path.join(RunDir(run_dir).replay_checkpoint_dir(step), "run_checkpoint.json")) as handle:
    return json.load(handle)


def assert_streams_monotonic(run_dir: str) -> None:
  for stream, keys in COUNTERS.items():
    rows = read_rows(RunDir(run_dir).stream_path(stream))
    for key in keys:
      values = [row[key] for row in rows if key in row]
      assert values == sorted(values), f"{stream}.jsonl: {key} goes backwards: {values}"


def resumed_at(output: str, run_dir: str) -> tuple[int, int]:
  """(update, replay size) from the resumed line."""
  line = next(line for line in output.splitlines() if line.startswith(f"resumed {run_dir} at update "))
  step = int(line.split(" at update ")[1].split(", ")[0].replace(",", ""))
  size = int(line.split("replay restored with ")[1].split(" ")[0].replace(",", ""))
  return step, size


def resume(run_dir: str, expected_step: int, faults: str = ""):
  """Resumes; checks it restored `expected_step` with that checkpoint's own replay; returns the process."""
  record = replay_record(run_dir, expected_step)
  meta = metadata(run_dir, expected_step)
  process = launch(["--run-dir", run_dir, "--resume", "--log-every-s", "0.5"], faults)
  process.warnings = []
  line = wait_for(lambda: _first_line_starting(process, f"resumed {run_dir} at update "), 120, "the resume", process)
  step, size = resumed_at(line, run_dir)
  assert step == expected_step, line
  assert record["checkpoint_id"] == meta["replay_checkpoint"]
  assert record["size_before"] <= size <= record["size_after"], (line, record)
  process.seen_output = line + "\n"
  return process, meta


def _first_line_starting(process, prefix: str):
  line = process.stdout.readline()
  while line:
    if line.startswith(prefix):
      return line
    if line.startswith("warning:"):
      process.warnings.append(line)
    line = process.stdout.readline()
  return None


def assert_cut_at(run_dir: str, meta: dict) -> None:
  """Since the resume from the checkpoint `meta`: episodes.jsonl holds that checkpoint's episodes (as many as it
  counted, none later), then only episodes of the resumed life."""
  episodes = read_rows(RunDir(run_dir).stream_path("episodes"))
  count = meta["episodes"]
  assert len(episodes) >= count
  assert all(row["env_steps"] <= meta["env_steps"] for row in episodes[:count])
  assert all(row["env_steps"] > meta["env_steps"] for row in episodes[count:])


def test_seven_lives_of_sigkill_and_resume_keep_the_run_consistent(tmp_path):
  run_dir = str(tmp_path / "run")
  run = RunDir(run_dir)

  # 1. Killed inside its first checkpoint's replay write: nothing to resume from, so --resume starts it anew, with
  #    what the attempt left set aside; killed again inside the second checkpoint's replay write.
  killed(launch([*TINY, "--run-dir", run_dir], "kill@replay-written:1"), "first replay write")
  assert learner_steps(run_dir) == [] and os.listdir(run.replay_incoming_dir)
  attempt = read_rows(run.stream_path("train"))
  process = launch(["--run-dir", run_dir, "--resume"], "kill@replay-written:2")
  output = killed(process, "replay write")
  assert f"note: {run_dir} never reached its first checkpoint" in output and "starting it anew" in output, output[-3000:]
  (aside,) = os.listdir(os.path.join(run_dir, "abandoned"))
  assert read_rows(os.path.join(run_dir, "abandoned", aside, "metrics", "train.jsonl")) == attempt  # nothing lost
  assert learner_steps(run_dir) == [100]
  assert os.listdir(run.replay_incoming_dir)  # the interrupted write
  assert_streams_monotonic(run_dir)

  # 2. Resumed at 100; killed between the replay and the learner state of checkpoint 200.
  process, meta = resume(run_dir, 100, "kill@learner-save:1")
  killed(process, "between replay and learner")
  assert learner_steps(run_dir) == [100] and os.path.isdir(run.replay_checkpoint_dir(200))  # an orphan replay
  assert_streams_monotonic(run_dir)
  moved = [name for name in os.listdir(run.metrics_dir) if ".after-100-" in name]
  assert any(name.startswith("train.after-100-") for name in moved), moved  # life 1's rows after 100

  # 3. Resumed at 100 again (the orphan replay of 200 is not used); actor 0 is killed as checkpoint 200 begins
  #    (it is restarted), and train.py right after checkpoint 300 is complete.
  process, meta = resume(run_dir, 100, "kill-actor@checkpoint-begin:1,kill@checkpoint-saved:2")
  output = killed(process, "after a checkpoint")
  assert "fault injection: kill-actor at checkpoint-begin" in output
  assert "'event': 'died', 'process': 'actor-0', 'returncode': -9" in output, output[-3000:]
  # Restarted before checkpoint 300: the learner can only get there on the restarted actor's transitions.
  assert "'event': 'restarted', 'process': 'actor-0'" in output, output[-3000:]
  assert learner_steps(run_dir) == [100, 200, 300]
  assert_streams_monotonic(run_dir)

  # 4. Resumed at 300; a second train.py on the directory is refused; then SIGKILL from outside, mid-run.
  process, meta = resume(run_dir, 300)
  second = start_train(["--run-dir", run_dir, "--resume"])
  second_output = finish(second, 60)
  assert second.returncode == 2 and f"in use by pid {process.pid}" in second_output, second_output[-2000:]
  train_path = run.stream_path("train")
  wait_for(lambda: any(row.get("step", 0) >= 350 for row in read_rows(train_path)), 120, "updates past 350", process)
  children = descendants(process.pid)
  process.kill()
  process.wait()
  wait_for(lambda: not alive(children), 20, "the children of the killed train.py to die")
  assert_streams_monotonic(run_dir)
  assert_cut_at(run_dir, meta)
  newest = learner_steps(run_dir)[-1]
  assert newest >= 300

  # 5. Resumed at the newest; killed right after its next checkpoint is complete.
  process, meta = resume(run_dir, newest, "kill@checkpoint-saved:1")
  killed(process, "right after a checkpoint")
  steps = learner_steps(run_dir)
  assert steps[-1] == newest + 100
  assert_streams_monotonic(run_dir)

  # 6. The newest checkpoint's replay is damaged: one warning line, the one before is restored, the run finishes.
  chunks = os.path.join(run.replay_checkpoint_dir(steps[-1]), "chunks.tfrecord")
  with open(chunks, "r+b") as handle:
    handle.truncate(os.path.getsize(chunks) // 2)
  process, meta = resume(run_dir, steps[-2])
  assert [line for line in process.warnings if str(steps[-1]) in line and "replay" in line], process.warnings
  output = process.seen_output + finish(process)
  assert process.returncode == 0 and "finished at update" in output, output[-3000:]

  final_step = learner_steps(run_dir)[-1]
  final = metadata(run_dir, final_step)
  assert final["finished"] and final["env_steps"] >= BUDGET_ENV_STEPS
  assert_streams_monotonic(run_dir)
  assert_cut_at(run_dir, meta)
  # The exploration schedule carried on across the lives: epsilon never jumped back up.
  epsilons = [row["epsilon"] for row in read_rows(run.stream_path("train"))]
  assert epsilons == sorted(epsilons, reverse=True) and epsilons[-1] < epsilons[0]
  episodes = read_rows(run.stream_path("episodes"))
  assert len(episodes) == final["episodes"]  # every episode the final state counted, and no other
  # Every remedy event of the final history happened once, at its period, whatever the crashes redid.
  events = [(row["step"], row["remedy"]) for row in read_rows(run.stream_path("remedies"))]
  due = range(REMEDY_PERIOD, final_step + 1, REMEDY_PERIOD)
  assert events == [(step, remedy) for step in due for remedy in ("reset", "redo")], events
  resumes = read_rows(run.stream_path("resumes"))
  assert [row["restored_update"] for row in resumes] == [100, 100, 300, newest, steps[-2]]
  assert all(row["replay"] == "restored" for row in resumes)
  # One row per life with the code it ran, the killed lives' too: a resume cuts the streams, never this history.
  lives = read_rows(run.stream_path("lives"))
  assert [(row["resumed"], row["started_update"]) for row in lives] == [(False, 0)] + [
      (True, row["restored_update"]) for row in resumes]
