"""The run directory's owner (common/run_dir.py): its OS locks, the stream cut of a resume, the replay check,
bad numbers, divergence, a finished run, a failing event receiver. Real processes, files and runs."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from common.checkpoints import CheckpointStore
from common.metrics import read_rows
from common.run_dir import PROBE_LOCK, SWEEP_LOCK, TRAIN_LOCK, RunCheckpoints, RunDir, RunLockedError
from common.validation import ConfigError
from tests.conftest import ROOT, tree_digest
from tests.test_train import FAST, finish, start_train

HOLD = """
import sys, time
from common.run_dir import hold_lock
with hold_lock(sys.argv[1], sys.argv[2], what="x"):
  print("held", flush=True)
  time.sleep(600)
"""


def hold_in_child(path: str, role: str = "holder") -> subprocess.Popen:
  """A real process that holds the lock at `path` until it is killed."""
  child = subprocess.Popen([sys.executable, "-c", HOLD, path, role], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert child.stdout.readline().strip() == "held"
  return child


# ------------------------------------------------------------------------------------------------------------------
# Locks


def test_a_held_lock_is_refused_naming_the_pid_and_dies_with_its_process(tmp_path):
  run = RunDir(str(tmp_path / "run"))
  os.makedirs(run.path)
  holder = hold_in_child(os.path.join(run.path, TRAIN_LOCK), "train.py, role all")
  try:
    with pytest.raises(RunLockedError, match=f"in use by pid {holder.pid} \\(train.py, role all"):
      with run.lock("second"):
        pass
    assert run.holder_pid() == holder.pid
  finally:
    holder.send_signal(signal.SIGKILL)  # no handler, no cleanup: the kernel drops the lock
    holder.wait()
  assert run.holder_pid() is None
  with run.lock("after"):  # free again, though the lock file is still there
    pass
  with run.lock("and again"):  # and released by the block before
    pass


def test_resuming_a_run_that_trains_towards_its_first_checkpoint_names_the_process(tmp_path, capsys):
  import train
  from training.config import PRESETS, save_config

  run = RunDir(str(tmp_path / "run"))
  os.makedirs(run.path)
  save_config(PRESETS["smoke"], run.path)  # config.json, no checkpoint yet: as in a run's first minutes
  holder = hold_in_child(os.path.join(run.path, TRAIN_LOCK), "train.py, role all")
  try:
    code = train.main(["--run-dir", run.path, "--resume"])
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  err = capsys.readouterr().err
  assert code == 2 and f"in use by pid {holder.pid}" in err and "checkpoint" not in err, err


def test_the_probe_lock_is_separate_and_the_offline_probe_cli_is_refused_while_it_is_held(smoke_run_dir, tmp_path):
  run_copy = shutil.copytree(smoke_run_dir, str(tmp_path / "run"))
  before = tree_digest(run_copy)
  holder = hold_in_child(os.path.join(run_copy, PROBE_LOCK), "probe worker")
  try:
    with RunDir(run_copy).lock("train"):  # the train lock is another lock
      pass
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "plasticity", run_copy], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env=env)
    worker = subprocess.run([sys.executable, "-m", "training.probe_worker", run_copy], cwd=ROOT, capture_output=True,
                            text=True, timeout=240, env=env)  # a second probe worker, as train.py starts one
  finally:
    holder.kill()
    holder.wait()
  assert done.returncode == 2 and f"in use by pid {holder.pid} (probe worker" in done.stderr, done.stderr[-2000:]
  assert len(done.stderr.strip().splitlines()) == 1
  assert worker.returncode == 2 and f"in use by pid {holder.pid}" in worker.stderr.strip().splitlines()[-1]
  assert "Traceback" not in worker.stderr, worker.stderr[-2000:]
  assert tree_digest(run_copy) == before


def test_a_sweep_over_a_running_sweep_is_refused_at_once(tmp_path, capsys):
  import sweep

  root = tmp_path / "runs"
  root.mkdir()
  grid = tmp_path / "grid.toml"
  grid.write_text(f"root = {json.dumps(str(root))}\ngames = ['breakout']\nseeds = [0]\nflags = ['--preset', 'smoke']\n"
                  "[variants]\ndqn = []\n")
  holder = hold_in_child(str(root / SWEEP_LOCK), "sweep.py")
  try:
    started = time.monotonic()
    code = sweep.main([str(grid)])
  finally:
    holder.kill()
    holder.wait()
  err = capsys.readouterr().err
  assert code == 2 and f"sweep root {root} is in use by pid {holder.pid}" in err, err
  assert time.monotonic() - started < 30 and os.listdir(root) == [SWEEP_LOCK]  # nothing started


def test_a_sweep_leaves_a_run_that_another_process_trains_alone(tmp_path):
  from sweep import existing_run_action

  run = RunDir(str(tmp_path / "run"))
  os.makedirs(run.path)
  (tmp_path / "run" / "config.json").write_text("{}")
  holder = hold_in_child(os.path.join(run.path, TRAIN_LOCK), "train.py")
  try:
    action, reason = existing_run_action(run.path, config=None)
  finally:
    holder.kill()
    holder.wait()
  assert action == "busy" and f"pid {holder.pid}" in reason


# ------------------------------------------------------------------------------------------------------------------
# The stream cut and the replay check (pure file logic on a real directory)


def write_rows(path: str, rows: list[dict]) -> None:
  with open(path, "a") as handle:
    for row in rows:
      handle.write(json.dumps(row) + "\n")


def test_a_resume_moves_the_rows_after_its_checkpoint_aside_and_leaves_the_rest(tmp_path):
  run = RunDir(str(tmp_path / "run"))
  os.makedirs(run.metrics_dir)
  write_rows(run.stream_path("episodes"), [{"env_steps": 10, "return": 1.0}, {"env_steps": 20, "return": 2.0}])
  write_rows(run.stream_path("plasticity"), [{"step": 100, "srank": 3}])
  checkpoints = RunCheckpoints(run, with_replay=False)
  sizes = checkpoints._stream_sizes()
  assert sizes == {"episodes": os.path.getsize(run.stream_path("episodes"))}  # probe rows are keyed by step instead
  # What the process that then died wrote after the checkpoint of update 100:
  write_rows(run.stream_path("episodes"), [{"env_steps": 30, "return": 3.0}])
  write_rows(run.stream_path("train"), [{"env_steps": 25, "step": 120}])  # a stream the checkpoint did not know
  write_rows(run.stream_path("plasticity"), [{"step": 200, "srank": 4}])
  write_rows(run.stream_path("resumes"), [{"restored_update": 100}])
  with open(run.stream_path("episodes"), "a") as handle:
    handle.write('{"env_steps": 40, "ret')  # torn by the kill

  class Point:  # the restored checkpoint
    step, metadata = 100, {"metrics_bytes": sizes}

  moved = checkpoints.cut_streams(Point)
  assert moved == {"episodes": 2, "train": 1, "plasticity": 1}
  assert read_rows(run.stream_path("episodes")) == [{"env_steps": 10, "return": 1.0}, {"env_steps": 20, "return": 2.0}]
  assert read_rows(run.stream_path("train")) == []
  assert read_rows(run.stream_path("plasticity")) == [{"step": 100, "srank": 3}]
  assert read_rows(run.stream_path("resumes")) == [{"restored_update": 100}]  # the log of resumes is kept whole
  aside = open(os.path.join(run.metrics_dir, "episodes.after-100-1.jsonl")).read()
  assert aside.startswith('{"env_steps": 30') and aside.endswith('"ret')
  assert read_rows(os.path.join(run.metrics_dir, "plasticity.after-100-1.jsonl")) == [{"step": 200, "srank": 4}]
  # A second resume from the same checkpoint moves nothing more and names its files apart.
  write_rows(run.stream_path("episodes"), [{"env_steps": 33, "return": 0.0}])
  assert checkpoints.cut_streams(Point) == {"episodes": 1}
  assert read_rows(os.path.join(run.metrics_dir, "episodes.after-100-2.jsonl")) == [{"env_steps": 33, "return": 0.0}]


def test_a_replay_that_is_not_the_checkpoints_own_or_not_whole_is_named(tmp_path):
  run = RunDir(str(tmp_path / "run"))
  checkpoints = RunCheckpoints(run)
  path = run.replay_checkpoint_dir(100)
  os.makedirs(path)
  with open(os.path.join(path, "chunks.tfrecord"), "wb") as handle:
    handle.write(b"x" * 50)
  with open(os.path.join(path, "run_checkpoint.json"), "w") as handle:
    json.dump({"step": 100, "checkpoint_id": "abc", "files": {"chunks.tfrecord": 50}}, handle)
  assert checkpoints.replay_problem(100, {"replay_checkpoint": "abc"}) is None
  assert "replay of another checkpoint" in checkpoints.replay_problem(100, {"replay_checkpoint": "def"})
  assert "saved without a replay" in checkpoints.replay_problem(100, {"replay_checkpoint": None})
  assert "missing" in checkpoints.replay_problem(200, {"replay_checkpoint": "abc"})
  with open(os.path.join(path, "chunks.tfrecord"), "r+b") as handle:
    handle.truncate(20)
  assert "chunks.tfrecord is missing or has another size" in checkpoints.replay_problem(100, {"replay_checkpoint": "abc"})
  checkpoints.store.close()


# ------------------------------------------------------------------------------------------------------------------
# Bad numbers


def float_fields(config, prefix: str = ""):
  """(flag, dotted field) of every float field of a config and its nested configs."""
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if dataclasses.is_dataclass(value):
      yield from float_fields(value, f"{prefix}{field.name}.")
    elif isinstance(value, float) or (value is None and "float" in str(field.type)):
      yield f"--{prefix}{field.name}".replace("_", "-"), f"{prefix}{field.name}"


def test_nan_and_inf_in_every_float_field_are_one_line_naming_it_exit_2_and_nothing_written(tmp_path, capsys):
  import train
  from training.config import PRESETS

  fields = list(float_fields(PRESETS["dqn_zoo"]))
  assert len(fields) >= 25 and ("--agent.learning-rate", "agent.learning_rate") in fields
  run_dir = tmp_path / "run"
  for flag, dotted in fields:
    for bad in ("nan", "inf", "-inf"):
      code = train.main(["--game", "breakout", "--run-dir", str(run_dir), flag, bad])
      err = capsys.readouterr().err
      name = dotted.rsplit(".", 1)[-1]
      assert code == 2 and err.startswith(f"error: {name}={float(bad)!r} must be a finite number"), (flag, bad, err)
      assert len(err.strip().splitlines()) == 1
  assert not run_dir.exists()


def test_a_range_check_rejects_nan_itself():
  from common.validation import check_range

  for bad in (float("nan"), float("inf")):
    with pytest.raises(ConfigError, match="finite"):
      check_range("x", bad, low=0.0)


# ------------------------------------------------------------------------------------------------------------------
# Real runs: divergence, a finished run, a failing event receiver

TINY = [*FAST, "--num-actors", "1", "--replay.min-replay-size", "200", "--total-env-steps", "100000"]


def start_with_faults(args: list[str], faults: str):
  os.environ["DQN_FAULTS"] = faults
  try:
    return start_train(args)
  finally:
    del os.environ["DQN_FAULTS"]


def test_a_run_that_diverges_then_loses_its_event_receiver_then_its_newest_checkpoint(tmp_path):
  """One real run, three faults: divergence, a dying event receiver, a damaged checkpoint with a missing replay."""
  import jax

  from sweep import existing_run_action
  from training.config import load_config, make_learner

  run_dir = str(tmp_path / "run")
  # One parameter becomes NaN just before update 251: the loss of that update is the first non-finite one.
  process = start_with_faults([*TINY, "--run-dir", run_dir], "poison-params@update:251")
  output = finish(process)
  assert process.returncode == 4, output[-3000:]
  assert "error: the loss became non-finite at update 251; stopped without writing a checkpoint: the newest " \
         "checkpoint, update 200, is the last finite one" in output, output[-3000:]
  with CheckpointStore(RunDir(run_dir).checkpoints_dir, read_only=True) as store:
    assert store.steps() == [100, 200]
    config = load_config(run_dir)
    state, _, _ = store.restore(jax.device_get(make_learner(config)[1]), step=200)
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state.params))
  status = RunDir(run_dir).read_status()
  assert status["state"] == "diverged" and status["step"] == 251 and status["last_checkpoint"] == 200
  assert any(row.get("event") == "diverged" for row in read_rows(RunDir(run_dir).stream_path("supervisor")))
  action, reason = existing_run_action(run_dir, config)
  assert action == "failed" and "diverged at update 251" in reason
  events_fail_after_a_resume_by_hand(run_dir)
  actors_that_cannot_start_stop_the_run(run_dir)
  resume_past_damage_without_replay(run_dir)


@pytest.fixture
def small_device(tmp_path):
  """A 64 MiB file system of its own (tmpfs), to be filled; skipped where this process may not mount one."""
  mount_point = tmp_path / "device"
  mount_point.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)],
                           capture_output=True, text=True)
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
  try:
    yield str(mount_point)
  finally:
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(device: str, leave_bytes: int) -> str:
  filler = os.path.join(device, "filler")
  free_bytes = shutil.disk_usage(device).free
  with open(filler, "wb") as handle:
    os.posix_fallocate(handle.fileno(), 0, max(1, free_bytes - leave_bytes))
  return filler


def test_a_full_disk_ends_the_run_in_one_line_naming_the_path_and_a_resume_after_freeing_space_is_consistent(
    small_device):
  """ENOSPC in the middle of a checkpoint's write (Reverb's replay or Orbax's state, or a metrics row): one line
  that names the path, the free space and what a checkpoint takes; no traceback; the checkpoint before it stays
  whole, and once space is freed the run resumes from it with every stream consistent."""
  run_dir = os.path.join(small_device, "run")
  process = start_train([*TINY, "--run-dir", run_dir])
  first = os.path.join(run_dir, "checkpoints", "100")  # Orbax renames a checkpoint into place once it is whole
  deadline = time.monotonic() + 120
  while not os.path.isdir(first) and time.monotonic() < deadline and process.poll() is None:
    time.sleep(0.2)
  filler = fill(small_device, leave_bytes=200_000)  # rows fit; the next checkpoint's replay does not
  output = finish(process, 120)
  assert process.returncode == 1, output[-3000:]
  last = output.strip().splitlines()[-1]
  assert last.startswith(f"error: no space left on the device of {run_dir} (writing {run_dir}/") and \
      "MiB free, a checkpoint of this run (weights and replay) takes" in last and \
      f"free space, then train.py --run-dir {run_dir} --resume" in last, output[-3000:]
  assert "Traceback" not in output, output[-5000:]
  with CheckpointStore(RunDir(run_dir).checkpoints_dir, read_only=True) as store:
    kept = store.steps()[-1]
    meta = store.read_metadata(kept)
  os.remove(filler)
  resumed = start_train(["--run-dir", run_dir, "--resume", "--total-env-steps", str(meta["env_steps"] + 600)])
  resumed_output = finish(resumed)
  assert resumed.returncode == 0 and f"resumed {run_dir} at update {kept:,}," in resumed_output, resumed_output[-3000:]
  with CheckpointStore(RunDir(run_dir).checkpoints_dir, read_only=True) as store:
    final = store.read_metadata(store.steps()[-1])
  assert final["finished"] and final["updates"] > kept
  train_rows = read_rows(RunDir(run_dir).stream_path("train"))
  assert all(a["env_steps"] <= b["env_steps"] and a["step"] <= b["step"] for a, b in zip(train_rows, train_rows[1:]))
  assert len(read_rows(RunDir(run_dir).stream_path("episodes"))) == final["episodes"]


def events_fail_after_a_resume_by_hand(run_dir: str) -> None:
  """(On the diverged run.) Resumed by hand, from its last finite checkpoint, the run's event receiver dies of an
  error at its 8th event: env steps would stop counting; the run stops with a message and a final checkpoint."""
  process = start_with_faults(["--run-dir", run_dir, "--resume"], "raise@event-received:8")
  output = finish(process)
  assert process.returncode == 1, output[-3000:]
  assert f"resumed {run_dir} at update 200," in output
  assert "error: the learner stopped receiving the actors' reports (FaultInjected: raise@event-received:8)" in output
  assert RunDir(run_dir).read_status() == {}  # the divergence was the previous life's
  with CheckpointStore(RunDir(run_dir).checkpoints_dir, read_only=True) as store:
    meta = store.read_metadata(store.steps()[-1])
  assert not meta["finished"] and meta["updates"] >= 200


def actors_that_cannot_start_stop_the_run(run_dir: str) -> None:
  """Resumed with actors that die at every start (each actor process raises at its first pass): after the 5th
  death in a row the run stops with one error line naming the actor, a final checkpoint, exit 1, instead of
  waiting for env steps forever; its counters do not go back."""
  with CheckpointStore(RunDir(run_dir).checkpoints_dir, read_only=True) as store:
    before = store.read_metadata(store.steps()[-1])
  process = start_with_faults(["--run-dir", run_dir, "--resume"], "raise@actor-start:1")
  output = finish(process, 240)
  assert process.returncode == 1, output[-3000:]
  errors = [line for line in output.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "actor-0 died 5 times in a row" in errors[0] and "last exit code 1" in errors[0], errors
  assert f"--run-dir {run_dir} --resume" in errors[0]
  with CheckpointStore(RunDir(run_dir).checkpoints_dir, read_only=True) as store:
    after = store.read_metadata(store.steps()[-1])
  assert not after["finished"] and all(after[key] >= before[key] for key in ("updates", "env_steps", "episodes"))
  assert sum(row.get("event") == "died" for row in read_rows(RunDir(run_dir).stream_path("supervisor"))) >= 5


def resume_past_damage_without_replay(run_dir: str) -> None:
  """The newest learner state is damaged and the replays of the ones before are gone: one error line naming
  --resume-without-replay, nothing changed; with it, the run goes on from the one before with an empty replay
  (after one warning line for the damaged one), and says so in resumes.jsonl."""
  import glob

  run = RunDir(run_dir)
  with CheckpointStore(run.checkpoints_dir, read_only=True) as store:
    newest, previous = store.steps()[-2:][::-1]
  for path in glob.glob(os.path.join(run.checkpoints_dir, str(newest), "state", "**", "*"), recursive=True):
    if os.path.isfile(path) and "/d/" in path:
      with open(path, "wb") as handle:
        handle.write(b"garbage")
  with CheckpointStore(run.checkpoints_dir, read_only=True) as store:
    for step in store.steps()[:-1]:  # every checkpoint the newest could fall back to loses its replay
      shutil.rmtree(run.replay_checkpoint_dir(step))
  before = tree_digest(run_dir)
  process = start_train(["--run-dir", run_dir, "--resume"])
  output = finish(process, 120)
  assert process.returncode == 2, output[-3000:]
  lines = [line for line in output.splitlines() if line.strip()]
  assert lines[-1].startswith("error: no checkpoint of ") and "--resume --resume-without-replay" in lines[-1]
  assert f"checkpoint {newest}: its learner state does not load" in lines[-1]
  assert f"checkpoint {previous}: its replay" in lines[-1] and "is missing" in lines[-1]
  assert "Traceback" not in output and len(output.splitlines()) < 30, output[-3000:]
  assert tree_digest(run_dir) == before

  process = start_train(["--run-dir", run_dir, "--resume", "--resume-without-replay"])
  line = process.stdout.readline()
  warnings = []
  while line and not line.startswith("resumed "):
    warnings += [line] if line.startswith("warning:") else []
    line = process.stdout.readline()
  assert line.startswith(f"resumed {run_dir} at update {previous:,},") and "replay EMPTY (--resume-without-replay)" in line
  assert [w for w in warnings if f"checkpoint {newest}: its learner state does not load" in w], warnings
  process.send_signal(signal.SIGTERM)
  output = finish(process, 120)
  assert process.returncode == 0 and "Traceback" not in output, output[-3000:]
  assert read_rows(run.stream_path("resumes"))[-1]["replay"] == "empty"
  assert load_config_json(run_dir)["resume_without_replay"] is False  # never saved as true


def load_config_json(run_dir: str) -> dict:
  with open(RunDir(run_dir).config_path) as handle:
    return json.load(handle)


def test_resuming_a_finished_run_says_so_and_changes_nothing(smoke_run_dir, tmp_path):
  run_copy = shutil.copytree(smoke_run_dir, str(tmp_path / "run"))
  before = tree_digest(run_copy)
  process = start_train(["--run-dir", run_copy, "--resume"])
  output = finish(process, 120)
  assert process.returncode == 0, output[-3000:]
  assert f"{run_copy} finished at update" in output and "nothing to do" in output
  assert f"train.py --run-dir {run_copy} --resume --total-env-steps N" in output
  assert tree_digest(run_copy) == before


def test_the_event_receiver_hands_over_what_it_got_then_reports_its_death(monkeypatch):
  from replay.config import ReplayConfig
  from replay.messages import EventReceiver, EventsLost, send_event
  from replay.server import ReplayServer

  monkeypatch.setenv("DQN_FAULTS", "raise@event-received:2")  # its thread dies of an error at the second event
  with ReplayServer(ReplayConfig(max_size=100, min_replay_size=1), (8, 8, 1)) as server:
    receiver = EventReceiver(server.address, b"k" * 32)
    for env_steps in (5, 6):
      send_event(server.client(), {"kind": "actor", "env_steps": env_steps}, b"k" * 32)
    receiver._thread.join(timeout=30)
    assert not receiver._thread.is_alive()
    assert receiver.drain() == [{"kind": "actor", "env_steps": 5}]
    with pytest.raises(EventsLost, match=r"stopped receiving the actors' reports \(FaultInjected"):
      receiver.drain()


# ------------------------------------------------------------------------------------------------------------------
# What a signed report may claim (training/event_gate.py)


def test_the_gate_bounds_what_one_signed_report_may_claim():
  from training.event_gate import MAX_ENV_STEPS_PER_REPORT_PER_ENV, EventGate

  gate = EventGate(local_actor_ids=range(2), num_envs_per_actor=4)
  good = {"kind": "actor", "actor": 1, "env_steps": 40, "steps_per_s": 40.0,
          "episodes": [{"return": -21.0, "length_steps": 812, "truncated": False}]}
  assert gate.problem(good) is None
  limit = 4 * MAX_ENV_STEPS_PER_REPORT_PER_ENV
  assert gate.problem({**good, "env_steps": limit}) is None
  # An evaluation on a budget of frames in which no game ended (returns []) has its budget and finite scores.
  on_budget = {"kind": "eval", "returns": [], "budget_frames": 2001, "cut_off_return": 3.0, "cut_off_steps": 500,
               "dqn_zoo_episode_return": 3.0}
  assert gate.problem(on_budget) is None
  for bad, why in [
      ({**good, "env_steps": limit + 1}, "env steps"), ({**good, "env_steps": -1}, "env steps"),
      ({**good, "env_steps": 1.5}, "env steps"), ({**good, "env_steps": True}, "env steps"),
      ({**good, "actor": 2}, "unknown actor id 2"), ({**good, "actor": "0"}, "unknown actor id"),
      ({**good, "episodes": [{"return": float("nan"), "length_steps": 3}]}, "finite return"),
      ({**good, "episodes": [{"return": float("inf"), "length_steps": 3}]}, "finite return"),
      ({**good, "episodes": [{"return": 1.0, "length_steps": 0}]}, "positive length"),
      ({**good, "episodes": "many"}, "episodes"),
      ({"kind": "eval", "returns": [1.0, float("nan")]}, "finite returns"), ({"kind": "eval", "returns": []}, "finite"),
      ({"kind": "weights"}, "unknown event kind"), ({"kind": "join", "host": "h", "actor_ids": []}, "list of actor ids"),
      ({**on_budget, "dqn_zoo_episode_return": float("nan")}, "budget of frames"),
      ({**on_budget, "cut_off_return": None}, "budget of frames"), ({**on_budget, "budget_frames": 0}, "budget"),
      ({**on_budget, "cut_off_steps": -1}, "budget of frames"),
  ]:
    problem = gate.problem(bad)
    assert problem is not None and why in problem, (bad, problem)
  # Hosts: ids may not overlap the learner host's or another host's; a host may join again with its own ids.
  assert gate.join("a", [2, 3]) == (True, "joined")
  assert gate.problem({**good, "actor": 3}) is None
  assert gate.join("a", [2, 3]) == (True, "joined again")
  accepted, reason = gate.join("b", [3, 4])
  assert not accepted and "actor ids [3] are taken by host a" in reason
  accepted, reason = gate.join("c", [1])
  assert not accepted and "the learner host's own" in reason
  assert gate.problem({**good, "actor": 4}) is not None  # b was refused
  assert gate.join("b", [4, 5]) == (True, "joined")


def test_a_host_keeps_its_actor_ids_while_its_actors_report_and_frees_them_once_silent():
  """A host that crashed (or an actor started by hand that was stopped) leaves no ids locked forever; one whose
  actors report is never displaced."""
  from training.event_gate import HOST_SILENT_S, EventGate

  now_s = [1000.0]
  gate = EventGate(local_actor_ids=range(2), num_envs_per_actor=1, clock=lambda: now_s[0])
  assert gate.join("a", [2, 3]) == (True, "joined")
  for _ in range(5):  # a's actor 3 reports each half-minute: a is alive however long it has been
    now_s[0] += HOST_SILENT_S / 2
    gate.heard(3)
    accepted, reason = gate.join("b", [3])
    assert not accepted and "taken by host a" in reason and "last heard 0 s ago" in reason, reason
  now_s[0] += HOST_SILENT_S - 1
  assert not gate.join("b", [3])[0]  # 59 s of silence: still a's
  now_s[0] += 1
  assert gate.join("b", [3]) == (True, "joined (in place of silent host a)")
  assert not gate.known(2)  # a's ids all went with it: its actor 2 would mix with no one, but a is gone
  assert not gate.join("a", [2, 3])[0]  # and a back from the dead is a newcomer refused b's id 3
  now_s[0] += 10 * HOST_SILENT_S
  assert not gate.join("c", [0])[0]  # the learner's own ids are never freed


def test_a_run_directory_from_before_the_record_resumes_with_its_newest_replay_and_says_so(tmp_path):
  """The layout before replay/<update>: Reverb's own checkpoint directly in replay/, metadata without an id."""
  from replay.config import ReplayConfig
  from replay.server import ReplayServer
  from tests.replay_helpers import OBS_SHAPE
  from tests.test_replay import write_script

  run = RunDir(str(tmp_path / "run"))
  config = ReplayConfig(max_size=1_000, min_replay_size=1, samples_per_insert_tolerance=1e6)  # nobody samples
  with CheckpointStore(run.checkpoints_dir) as store:
    store.save(7, {"w": np.arange(3.0)}, {"env_steps": 40, "replay_checkpointed": True})
  with ReplayServer(config, OBS_SHAPE, checkpoint_dir=run.replay_dir) as server:  # as the old train.py did
    write_script(server.client(), 1)
    size = server.size()
    server.checkpoint()
  assert size > 0

  checkpoints = RunCheckpoints(run)
  factory = lambda path: ReplayServer(config, OBS_SHAPE, checkpoint_dir=run.replay_incoming_dir, restore_from=path)
  restored = checkpoints.restore({"w": np.zeros(3)}, factory)
  try:
    assert restored.step == 7 and restored.replay == "restored (legacy)" and restored.server.size() == size
    assert restored.skipped == [] and "written before replay/<update> records existed" in restored.notes[0]
    np.testing.assert_array_equal(restored.state["w"], np.arange(3.0))
  finally:
    restored.server.stop()
    checkpoints.store.close()


def test_the_code_version_is_the_checkouts_own_commit_and_none_elsewhere(tmp_path, monkeypatch):
  from common import provenance

  head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                        check=True).stdout.strip()
  changed = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, check=True).stdout.strip()
  assert provenance.code_version() == {"commit": head, "dirty": bool(changed)}
  # The package installed below a directory of some repository (site-packages in a venv inside a checkout): that
  # repository's commit is not the code's.
  monkeypatch.setattr(provenance, "PROJECT_ROOT", os.path.join(ROOT, "tests"))
  assert provenance.code_version() == {"commit": None, "dirty": None}
  monkeypatch.setattr(provenance, "PROJECT_ROOT", str(tmp_path))  # no repository at all
  assert provenance.code_version() == {"commit": None, "dirty": None}
