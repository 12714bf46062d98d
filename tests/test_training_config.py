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
