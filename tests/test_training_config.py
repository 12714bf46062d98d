"""RunConfig, presets, config.json and the supervisor's restart policy."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

from common.validation import ConfigError
from training import supervisor as supervisor_lib
from training.config import PRESETS, RunConfig, config_differences, load_config, parse_address, save_config


def test_config_json_round_trip(tmp_path):
  agent = dataclasses.replace(PRESETS["smoke"].agent, head="two-hot", mlp_hidden_sizes=(64,))
  config = dataclasses.replace(PRESETS["smoke"], game="breakout", agent=agent)
  save_config(config, str(tmp_path))
  loaded = load_config(str(tmp_path))
  assert loaded == config and loaded.agent.head == "two_hot" and loaded.agent.mlp_hidden_sizes == (64,)


def test_load_config_rejects_missing_and_unknown_fields(tmp_path):
  with pytest.raises(ConfigError, match="not a run directory"):
    load_config(str(tmp_path))
  (tmp_path / "config.json").write_text('{"game": "pong", "agent": {"wings": 2}}')
  with pytest.raises(ConfigError, match="wings"):
    load_config(str(tmp_path))


def test_differences_ignore_how_a_run_runs_but_not_what_it_learns():
  base = PRESETS["smoke"]
  assert config_differences(base, dataclasses.replace(base, total_env_steps=10**6, num_actors=7, log_every_s=1.0)) == []
  changed = dataclasses.replace(base, seed=3, replay=dataclasses.replace(base.replay, prioritized=True))
  assert config_differences(base, changed) == ["replay.prioritized", "seed"]


@pytest.mark.parametrize("kwargs, field", [
    ({"game": "pongg"}, "pongg"),
    ({"total_env_steps": 0}, "total_env_steps"),
    ({"role": "actor"}, "server"),
    ({"server": "localhost:8000"}, "server"),
    ({"listen": "localhost:99999"}, "listen"),
    ({"eval_episodes": 0}, "eval_episodes"),
])
def test_invalid_run_configs_name_the_field(kwargs, field):
  with pytest.raises(ConfigError, match=field):
    dataclasses.replace(PRESETS["smoke"], **kwargs)


def test_parse_address_and_role_defaults():
  assert parse_address("10.0.0.5:8000", "listen") == ("10.0.0.5", 8000)
  assert parse_address("[::1]:9000", "listen") == ("::1", 9000)
  assert RunConfig(role="learner", num_actors=4).resolved_num_actors == 0
  assert RunConfig(role="learner").listen_address() == ("localhost", 8000)
  assert RunConfig().listen_address() == ("localhost", None)  # role all: a free port


def test_supervisor_restarts_a_dying_child_with_growing_backoff(monkeypatch):
  monkeypatch.setattr(supervisor_lib, "BACKOFF_FIRST_S", 0.05)
  monkeypatch.setenv("EXIT_CODE", "1")
  events = []
  supervisor = supervisor_lib.Supervisor(events.append)
  try:
    supervisor.add("crasher", ["tests.exiting_child"])
    deadline = time.monotonic() + 60
    while sum(e["event"] == "died" for e in events) < 3 and time.monotonic() < deadline:
      supervisor.check()
      time.sleep(0.02)
  finally:
    supervisor.stop()
  died = [e for e in events if e["event"] == "died"]
  assert [e["restart_in_s"] for e in died[:3]] == [0.05, 0.1, 0.2]
  assert all(e["returncode"] == 1 for e in died)
  assert [e["restarts"] for e in events if e["event"] == "restarted"][:2] == [1, 2]


def test_supervisor_does_not_restart_a_child_that_finished(monkeypatch):
  monkeypatch.setenv("EXIT_CODE", "3")  # EXIT_SERVER_GONE: the job ended
  events = []
  supervisor = supervisor_lib.Supervisor(events.append)
  supervisor.add("actor-0", ["tests.exiting_child"])
  deadline = time.monotonic() + 60
  while not supervisor.all_finished() and time.monotonic() < deadline:
    supervisor.check()
    time.sleep(0.02)
  supervisor.stop()
  assert supervisor.all_finished() and [e["event"] for e in events] == ["finished"]


def test_a_supervisor_that_owns_the_job_restarts_clean_exits_too(monkeypatch):
  monkeypatch.setattr(supervisor_lib, "BACKOFF_FIRST_S", 0.05)
  monkeypatch.setenv("EXIT_CODE", "0")  # e.g. someone sent the actor SIGTERM
  events = []
  supervisor = supervisor_lib.Supervisor(events.append, restart_clean_exits=True)
  try:
    supervisor.add("actor-0", ["tests.exiting_child"])
    deadline = time.monotonic() + 60
    while not any(e["event"] == "restarted" for e in events) and time.monotonic() < deadline:
      supervisor.check()
      time.sleep(0.02)
  finally:
    supervisor.stop()
  assert events[0]["event"] == "died" and events[0]["returncode"] == 0
  assert any(e["event"] == "restarted" for e in events) and not supervisor.all_finished()


def _log_lines(path) -> list[str]:
  return path.read_text().splitlines() if path.exists() else []


def test_a_prestarted_child_warms_up_first_then_runs_with_the_arguments_and_environment_it_is_handed(
    monkeypatch, tmp_path):
  monkeypatch.setattr(supervisor_lib, "BACKOFF_FIRST_S", 0.05)
  log = tmp_path / "log"
  monkeypatch.setenv("WARM_LOG", str(log))
  monkeypatch.setenv("EXIT_CODE", "1")
  events = []
  supervisor = supervisor_lib.Supervisor(events.append, restart_clean_exits=True)
  try:
    supervisor.prestart("actor-0", "tests.warm_child")
    deadline = time.monotonic() + 60
    while not _log_lines(log) and time.monotonic() < deadline:
      time.sleep(0.02)
    [warmed] = _log_lines(log)  # warmed before it had any arguments, and waits
    pid = int(warmed.split()[1])
    supervisor.set_env({"JOB_VALUE": "secret-1"})
    supervisor.add("actor-0", ["tests.warm_child", "--server", "localhost:1"])
    while not any(e["event"] == "restarted" for e in events) and time.monotonic() < deadline:
      supervisor.check()
      time.sleep(0.02)
    while len(_log_lines(log)) < 3 and time.monotonic() < deadline:
      time.sleep(0.02)
  finally:
    supervisor.stop()
  lines = _log_lines(log)
  # The prestarted process itself ran the child, with the added environment; its restart started afresh.
  assert lines[1] == (f'ran {pid} ["--server", "localhost:1", "--incarnation", "0", "--parent-pid", "{os.getpid()}"] '
                      "secret-1"), lines
  assert lines[2].startswith("ran ") and '"--incarnation", "1"' in lines[2] and lines[2].endswith(" secret-1"), lines
  assert int(lines[2].split()[1]) != pid
  assert events[0]["event"] == "died" and events[0]["returncode"] == 1


def test_a_prestarted_child_that_is_never_added_leaves_at_the_end_of_its_stdin_or_with_stop(monkeypatch, tmp_path):
  log = tmp_path / "log"
  monkeypatch.setenv("WARM_LOG", str(log))
  supervisor = supervisor_lib.Supervisor()
  supervisor.prestart("actor-0", "tests.warm_child")
  supervisor.prestart("evaluator", "tests.warm_child")
  deadline = time.monotonic() + 60
  while len(_log_lines(log)) < 2 and time.monotonic() < deadline:
    time.sleep(0.02)
  first, second = supervisor._waiting["actor-0"], supervisor._waiting["evaluator"]
  first.stdin.close()  # what its parent's death or exit does too
  assert first.wait(timeout=30) == 0 and f"not needed {first.pid}" in _log_lines(log)
  supervisor.stop(timeout_s=10)
  assert second.poll() is not None and not supervisor._waiting
  assert not [line for line in _log_lines(log) if line.startswith("ran ")]


def test_a_config_is_built_and_checked_without_importing_jax_or_tensorflow():
  """train.py's flags are parsed and checked (its error messages) before JAX, Flax, Reverb and TensorFlow load:
  about 0.5 s instead of 10 on 2 cores (agents/dqn/__init__.py, networks/options.py)."""
  import subprocess
  import sys

  code = ("import sys, dataclasses; from training.config import PRESETS, RunConfig; "
          "c = dataclasses.replace(PRESETS['smoke'], game='pong'); "
          "c = dataclasses.replace(c, agent=dataclasses.replace(c.agent, layer_norm=True, reset_period_updates=10)); "
          "print(sorted(m for m in ('jax', 'flax', 'reverb', 'tensorflow', 'optax') if m in sys.modules))")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
