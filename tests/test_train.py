"""train.py end to end: real ALE games, a real Reverb server, real actor processes, real checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from common.checkpoints import CheckpointStore
from common.metrics import read_rows
from tests.conftest import ROOT, tree_digest


# A small, fast job on Breakout (random episodes last ~200 steps, so episodes finish early).
SMALL = [
    "--game", "breakout", "--preset", "smoke", "--num-envs-per-actor", "2",
    "--replay.min-replay-size", "400", "--checkpoint-every-updates", "100", "--log-every-s", "1",
    "--env.max-episode-frames", "4000", "--probe-every-updates", "0",
]


# The same with a small MLP in place of the Nature CNN: what these tests check is the orchestration, and the MLP
# compiles and updates several times faster.
FAST = [*SMALL, "--agent.torso", "mlp", "--agent.mlp-hidden-sizes", "32"]


def start_train(args: list[str]) -> subprocess.Popen:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout_s: float = 240) -> str:
  try:
    output, _ = process.communicate(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    process.kill()
    output, _ = process.communicate()
    pytest.fail(f"train.py did not finish in {timeout_s} s:\n{output[-4000:]}")
  return output


def descendants(pid: int) -> set[int]:
  """Live processes below `pid` (children of children included), from /proc."""
  parents = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as handle:
          fields = handle.read().rsplit(")", 1)[1].split()
        if fields[0] != "Z":
          parents[int(entry)] = int(fields[1])
      except OSError:
        continue
  found, frontier = set(), {pid}
  while frontier:
    frontier = {child for child, parent in parents.items() if parent in frontier} - found
    found |= frontier
  return found


def alive(pids: set[int]) -> set[int]:
  live = set()
  for pid in pids:
    try:
      with open(f"/proc/{pid}/stat") as handle:
        if handle.read().rsplit(")", 1)[1].split()[0] != "Z":
          live.add(pid)
    except OSError:
      pass
  return live


def wait_for(predicate, timeout_s: float, what: str, process: subprocess.Popen | None = None):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    value = predicate()
    if value:
      return value
    if process is not None and process.poll() is not None:
      pytest.fail(f"train.py exited ({process.returncode}) while waiting for {what}:\n{process.stdout.read()[-4000:]}")
    time.sleep(0.2)
  pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("localhost", 0))
    return probe.getsockname()[1]


def last_checkpoint(run_dir: str) -> tuple[int, dict]:
  store = CheckpointStore(os.path.join(run_dir, "checkpoints"), read_only=True)
  steps = store.steps()
  assert steps, "no checkpoint written"
  return steps[-1], store.read_metadata(steps[-1])


def test_smoke_run_with_two_actors_writes_checkpoints_config_and_sensible_metrics(tmp_path):
  run_dir = str(tmp_path / "run")
  process = start_train([*SMALL, "--run-dir", run_dir, "--num-actors", "2", "--total-env-steps", "3000",
                         "--eval-every-env-steps", "1500", "--eval-frames", "2001", "--eval-at-start"])
  output = finish(process)
  assert process.returncode == 0, output[-4000:]
  assert not alive(descendants(process.pid))

  config = json.load(open(os.path.join(run_dir, "config.json")))
  assert config["game"] == "breakout" and config["num_actors"] == 2 and config["agent"]["torso"] == "nature"
  assert config["run_dir"] == run_dir and config["replay"]["min_replay_size"] == 400

  step, meta = last_checkpoint(run_dir)
  assert meta["finished"] and meta["env_steps"] >= 3000 and meta["updates"] == step > 0
  assert os.listdir(os.path.join(run_dir, "replay"))  # the replay checkpoint beside it

  train = read_rows(os.path.join(run_dir, "metrics", "train.jsonl"))
  assert train, output[-3000:]
  updating = [row for row in train if "loss" in row]
  assert updating and all(row["loss"] >= 0 and row["updates_per_s"] >= 0 for row in updating)
  env_steps = [row["env_steps"] for row in train]
  assert env_steps == sorted(env_steps) and env_steps[-1] <= meta["env_steps"]
  assert all(0.0 <= row["epsilon"] <= 1.0 for row in train)
  assert train[-1]["epsilon"] < 1.0  # the schedule moved with the job's env steps

  episodes = read_rows(os.path.join(run_dir, "metrics", "episodes.jsonl"))
  assert len(episodes) >= 4
  assert {row["actor"] for row in episodes} == {0, 1}
  for row in episodes:
    assert row["return"] >= 0 and float(row["return"]).is_integer()  # Breakout scores: whole bricks, unclipped
    assert 0 < row["length_steps"] <= 1000
  assert max(row["return"] for row in episodes) >= 1

  # DQN Zoo's evaluation schedule: iteration 0 (the first weights, before 1,500 steps), one after each 1,500 steps,
  # and the final weights; each on a budget of 2,001 frames: each game 1 + 4 per step, the one cut off not counted.
  evals = read_rows(os.path.join(run_dir, "metrics", "eval.jsonl"))
  iterations = [row["env_steps"] // 1500 for row in evals]
  assert iterations[0] == 0 and 1 in iterations and evals[-1]["env_steps"] >= 3000, evals
  assert evals[-1]["step"] == step  # the final weights: those of the final checkpoint
  assert "waiting for the evaluation of the final weights" in output or max(iterations[:-1]) >= 2
  for row in evals:
    assert row["budget_frames"] == 2001 and row["epsilon"] == config["agent"]["eval_epsilon"]
    cut_off = 1 + 4 * row["cut_off_steps"] if row["cut_off_steps"] else 0  # 0 steps: it may not have started
    assert 2001 - 4 <= sum(1 + 4 * length for length in row["lengths_steps"]) + cut_off <= 2001  # no step more fit
    assert row["num_episodes"] == len(row["returns"]) and math.isfinite(row["dqn_zoo_episode_return"])
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(run_dir, "tb")))


def attack(port: int) -> None:
  """What a client on the same machine without the job secret tries: a fake episode, a report that would end
  the run, forged weights with a huge version (and the same signed with a wrong key)."""
  import reverb

  from replay.messages import send_event
  from replay.server import EVENTS_TABLE

  client = reverb.Client(f"localhost:{port}")
  fake_episode = {"kind": "actor", "actor": 0, "env_steps": 1, "steps_per_s": 1.0,
                  "episodes": [{"return": 123456.0, "length_steps": 10, "truncated": False}]}
  finish_run = {"kind": "actor", "actor": 0, "env_steps": 1_000_000, "steps_per_s": 1.0, "episodes": []}
  for event in (fake_episode, finish_run):
    raw = np.frombuffer(json.dumps(event).encode(), np.uint8)  # unsigned, as before the job had a secret
    client.insert([raw], priorities={EVENTS_TABLE: 1.0})
    send_event(client, event, b"a guessed key")
  attack_weights(port, publications=40)  # for 2 s, so that the actor's fetcher (polling every 0.5 s) finds one


def attack_weights(port: int, publications: int) -> None:
  """Well-formed weights with a huge version, signed with a wrong key, every 0.05 s."""
  import jax
  import reverb

  from replay.params import ParamsPublisher

  template = jax.device_get(make_params())
  forged = jax.tree.map(lambda x: np.full_like(x, 7.0), template)
  publisher = ParamsPublisher(reverb.Client(f"localhost:{port}"), b"a guessed key")
  for _ in range(publications):
    publisher.publish(forged, 10**9, env_steps=10**9)
    time.sleep(0.05)


def insert_unsigned_job(port: int) -> None:
  """One item in `job` from a client without the secret, in place of the job description."""
  import reverb

  from replay.server import JOB_TABLE

  reverb.Client(f"localhost:{port}").insert([np.frombuffer(b"garbage", np.uint8)], priorities={JOB_TABLE: 1.0})


def start_actor_by_hand(port: int, secret_file: str, actor_id: int) -> subprocess.Popen:
  """`python -m training.actor` as a user starts it, with the job's secret and no host behind it."""
  from replay.messages import SECRET_ENV

  with open(secret_file) as handle:
    secret_hex = handle.read().strip()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", SECRET_ENV: secret_hex}
  return subprocess.Popen([sys.executable, "-m", "training.actor", "--server", f"localhost:{port}", "--actor-id",
                           str(actor_id)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _cmdline(pid: int) -> str:
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
      return handle.read().replace(b"\0", b" ").decode()
  except OSError:
    return ""


RESTART_STALL_BOUND_S = 45  # an actor's restart (backoff 1 s, imports, join) beside a learner, on 2 loaded cores


def make_params():
  from training.config import PRESETS, make_learner

  smoke = PRESETS["smoke"]
  config = dataclasses.replace(smoke, game="breakout",
                               agent=dataclasses.replace(smoke.agent, torso="mlp", mlp_hidden_sizes=(32,)))
  return make_learner(config)[1].params  # shaped as the job's own: the forgery is a well-formed publication


def test_learner_and_actor_roles_train_together_and_no_one_without_the_secret_changes_the_job(tmp_path):
  run_dir = str(tmp_path / "run")
  port = free_port()
  learner = start_train([*FAST, "--run-dir", run_dir, "--role", "learner", "--listen", f"localhost:{port}",
                         "--total-env-steps", "200000"])
  secret = os.path.join(run_dir, "job.secret")
  wait_for(lambda: os.path.exists(secret), 60, "the learner to start", learner)
  assert oct(os.stat(secret).st_mode & 0o777) == "0o600"
  wrong = tmp_path / "wrong.secret"
  wrong.write_text("00" * 32 + "\n")
  refused = start_train(["--role", "actor", "--server", f"localhost:{port}", "--secret-file", str(wrong)])
  assert finish(refused, 60) and refused.returncode == 2
  # The actor host's own game flag is ignored: it takes the job's configuration from the server.
  actors = start_train(["--role", "actor", "--server", f"localhost:{port}", "--num-actors", "1", "--game", "pong",
                        "--secret-file", secret])
  wait_for(lambda: any(r.get("step", 0) > 0 for r in read_rows(os.path.join(run_dir, "metrics", "train.jsonl"))),
           120, "learner updates", learner)
  attack(port)
  insert_unsigned_job(port)  # a second host starting now reads the job through it
  overlapping = start_train(["--role", "actor", "--server", f"localhost:{port}", "--secret-file", secret])
  # Actors started by hand, with the secret: one with the id the host's actor has, one with a free id.
  duplicate, own = (start_actor_by_hand(port, secret, actor_id) for actor_id in (0, 1))
  overlap_output = finish(overlapping, 60)
  assert overlapping.returncode == 2 and "refused this host: actor ids [0] are taken by host" in overlap_output
  duplicate_output = finish(duplicate, 60)
  assert duplicate.returncode == 2 and duplicate_output.strip().splitlines()[-1].startswith(
      f"error: actor 0: the job at localhost:{port} refused it: actor ids [0] are taken by host"), duplicate_output
  wait_for(lambda: any(row.get("event") == "join" and row["actor_ids"] == [1] and row["accepted"]
                       for row in read_rows(os.path.join(run_dir, "metrics", "supervisor.jsonl"))),
           60, "the hand-started actor 1 to be let in", learner)
  wait_for(lambda: any(row["actor"] == 1 for row in read_rows(os.path.join(run_dir, "metrics", "episodes.jsonl"))),
           60, "an episode of the hand-started actor 1", learner)
  own.send_signal(signal.SIGTERM)
  assert "actor 1: joined" in finish(own, 60) and own.returncode == 0
  wait_for(lambda: sum(1 for _ in read_rows(os.path.join(run_dir, "metrics", "train.jsonl"))) >= 8, 60,
           "a few more progress rows after the attack", learner)
  # An actor that restarts after a crash meets a foreign job item and one forged weights item: the job goes on.
  (actor,) = [pid for pid in descendants(actors.pid) if "training.actor" in _cmdline(pid)]
  env_steps_before = read_rows(os.path.join(run_dir, "metrics", "train.jsonl"))[-1]["env_steps"]
  os.kill(actor, signal.SIGKILL)
  insert_unsigned_job(port)
  attack_weights(port, publications=1)
  crashed_s = time.monotonic()
  wait_for(lambda: read_rows(os.path.join(run_dir, "metrics", "train.jsonl"))[-1]["env_steps"] > env_steps_before + 500,
           RESTART_STALL_BOUND_S, "env steps to rise again after the restart", learner)
  print(f"env steps rose again {time.monotonic() - crashed_s:.1f} s after the actor's crash and the forged items")
  children = descendants(learner.pid)
  learner.send_signal(signal.SIGTERM)
  learner_output = finish(learner)
  assert "stopped by SIGTERM at update" in learner_output and not alive(children)  # a final checkpoint, in order
  actors_output = finish(actors, timeout_s=90)
  assert learner.returncode == 0, learner_output[-4000:]
  assert f"port {port} answers on every interface of this host" in learner_output and "127.0.0.1" in learner_output
  assert actors.returncode == 0 and "joined job at localhost" in actors_output and "(breakout)" in actors_output, \
      actors_output[-3000:]
  assert "the job has ended" in actors_output, actors_output[-3000:]
  step, meta = last_checkpoint(run_dir)
  assert not meta["finished"] and 0 < meta["env_steps"] < 50_000 and step > 0, (step, meta)  # not the forged 1e6, (step, meta, learner_output[-3000:])
  episodes = read_rows(os.path.join(run_dir, "metrics", "episodes.jsonl"))
  assert {row["actor"] for row in episodes} == {0, 1} and max(row["return"] for row in episodes) < 1000
  assert len(episodes) == meta["episodes"]
  rejected = read_rows(os.path.join(run_dir, "metrics", "rejected.jsonl"))
  assert sum("not a signed message" in row["reason"] for row in rejected) >= 1
  assert sum("MAC does not match" in row["reason"] for row in rejected) >= 1
  for table in ("job", "params"):  # the learner saw the foreign items and published its own again
    assert any(f"in table {table} not inserted by the learner" in row["reason"] for row in rejected), table
  train_rows = read_rows(os.path.join(run_dir, "metrics", "train.jsonl"))
  assert max(row["actor_params_version"] or 0 for row in train_rows) < 10**9
  assert max(row["actor_weights_rejected"] for row in train_rows) >= 1  # the actor saw the forgery and dropped it


# Bad input: one clear message, exit code 2, nothing written or changed.


def run_main(argv: list[str], capsys) -> tuple[int, str]:
  import train

  code = train.main(argv)
  return code, capsys.readouterr().err


def test_unknown_game_fails_before_anything_starts(tmp_path, capsys):
  code, err = run_main(["--game", "pongg", "--run-dir", str(tmp_path / "x")], capsys)
  assert code == 2 and "pongg" in err and "pong" in err and err.count("\n") == 1
  assert not (tmp_path / "x").exists()


def test_impossible_values_fail_with_the_field_named(tmp_path, capsys):
  for flags, field in (
      (["--agent.discount", "1.5"], "discount"),
      (["--total-env-steps", "100", "--preset", "smoke"], "min_replay_size"),
      (["--num-envs-per-actor", "0"], "num_envs_per_actor"),
      (["--listen", "localhost"], "listen"),
      (["--preset", "rainbow"], "preset"),
  ):
    code, err = run_main([*flags, "--run-dir", str(tmp_path / "x")], capsys)
    assert code == 2 and field in err, (flags, err)
  assert not (tmp_path / "x").exists()


def test_a_layer_the_network_lacks_is_one_line_and_leaves_the_run_dir_to_the_corrected_command(tmp_path, capsys):
  """spectral_norm_layers can only be checked against the network once it is built, under the run's lock: the
  error is still one line, exit 2, and the lock left behind does not make the directory 'already exist'."""
  import train

  run_dir = str(tmp_path / "run")
  code, err = run_main(["--preset", "smoke", "--agent.spectral-norm-layers", "dense9", "--run-dir", run_dir], capsys)
  assert code == 2 and "Traceback" not in err, err
  assert err.strip().splitlines()[-1].startswith("error: spectral_norm_layers names ['dense9'], which this nature "
                                                 "torso does not have; its layers are conv0, conv1, conv2, dense0")
  assert set(os.listdir(run_dir)) <= {"train.lock"}
  assert train.check_run_dir(train.parse_config(["--preset", "smoke", "--run-dir", run_dir]))[1]  # free to start


def test_existing_run_dir_without_resume_is_left_untouched(tmp_path, capsys):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "config.json").write_text('{"game": "pong"}\n')
  (run_dir / "notes.txt").write_text("precious\n")
  before = tree_digest(str(run_dir))
  code, err = run_main(["--game", "pong", "--run-dir", str(run_dir)], capsys)
  assert code == 2 and "already exists" in err and "--resume" in err
  assert tree_digest(str(run_dir)) == before


def test_resume_of_no_run_or_with_changed_flags_fails(tmp_path, capsys):
  code, err = run_main(["--run-dir", str(tmp_path / "missing"), "--resume"], capsys)
  assert code == 2 and "not a run directory" in err

  from training.config import PRESETS, save_config

  run_dir = tmp_path / "run"
  run_dir.mkdir()
  save_config(PRESETS["smoke"], str(run_dir))
  before = tree_digest(str(run_dir))
  # (Without a checkpoint and unchanged, --resume starts the run anew: tests/test_crash_resume.py, life 1.)
  code, err = run_main(["--run-dir", str(run_dir), "--resume", "--agent.layer-norm"], capsys)
  assert code == 2 and "agent.layer_norm" in err
  assert tree_digest(str(run_dir)) == before


def test_resume_when_every_checkpoint_is_damaged_fails_and_changes_nothing(tmp_path, capsys):
  import numpy as np

  from training.config import PRESETS, save_config

  run_dir = tmp_path / "run"
  run_dir.mkdir()
  save_config(dataclasses.replace(PRESETS["smoke"], game="breakout", run_dir=str(run_dir)), str(run_dir))
  with CheckpointStore(str(run_dir / "checkpoints")) as store:
    store.save(100, {"not_a_train_state": np.zeros(3)}, {"env_steps": 1})  # loads into nothing train.py expects
  before = tree_digest(str(run_dir))
  code, err = run_main(["--run-dir", str(run_dir), "--resume"], capsys)
  assert code == 2 and "no checkpoint of" in err and "loads" in err and len(err.strip().splitlines()) == 1
  assert tree_digest(str(run_dir)) == before


@pytest.mark.parametrize("damage", ["empty", "one byte", "not hex", "a directory"])
def test_resume_with_a_damaged_job_secret_fails_at_once_and_changes_nothing(tmp_path, capsys, damage):
  import numpy as np

  from training.config import PRESETS, save_config

  run_dir = tmp_path / "run"
  run_dir.mkdir()
  save_config(dataclasses.replace(PRESETS["smoke"], game="breakout", run_dir=str(run_dir)), str(run_dir))
  with CheckpointStore(str(run_dir / "checkpoints")) as store:
    store.save(100, {"not_a_train_state": np.zeros(3)}, {"env_steps": 1})
  secret = run_dir / "job.secret"
  if damage == "a directory":
    secret.mkdir()
  else:
    secret.write_text({"empty": "", "one byte": "ab\n", "not hex": "zz" * 32 + "\n"}[damage])
  before = tree_digest(str(run_dir))
  code, err = run_main(["--run-dir", str(run_dir), "--resume"], capsys)
  assert code == 2 and f"the job secret {secret}" in err and "delete it and resume" in err, err
  assert len(err.strip().splitlines()) == 1 and tree_digest(str(run_dir)) == before  # no resumes row, nothing


def test_a_port_in_use_fails_before_the_run_dir_is_created(tmp_path, capsys):
  with socket.socket() as taken:
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    port = taken.getsockname()[1]
    code, err = run_main(["--role", "learner", "--listen", f"localhost:{port}", "--run-dir", str(tmp_path / "x")], capsys)
  assert code == 2 and f"port {port} is in use" in err
  assert not (tmp_path / "x").exists()


def test_help_documents_every_field(capsys):
  import train

  with pytest.raises(SystemExit) as exit_info:
    train.main(["--help"])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  for flag in ("--agent.layer-norm", "--agent.weight-decay", "--agent.head", "--agent.torso", "--agent.n-step",
               "--replay.prioritized", "--agent.optimizer", "--total-env-steps", "--num-actors", "--num-envs-per-actor",
               "--eval-every-env-steps", "--role", "--listen", "--server", "--resume", "--env.sticky-action-prob",
               "--agent.reset-period-updates", "--agent.shrink-perturb-period-updates", "--agent.soft-shrink-perturb",
               "--agent.redo-period-updates", "--agent.l2-init", "--agent.activation", "--agent.spectral-norm-layers",
               "--agent.optimizer-reset-period-updates", "--probe-around-remedies", "--tasks",
               "--task-switch-every-env-steps", "--task-cycle", "--probe-at-task-switches"):
    assert flag in text, flag
