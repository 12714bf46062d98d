"""The supervisor of train.py's children (common/processes.py): restarts with backoff, clean exits, prestarted
children that warm up first. Real child processes (tests/exiting_child.py, tests/warm_child.py)."""

from __future__ import annotations

import os
import time

from common import processes


def test_supervisor_restarts_a_dying_child_with_growing_backoff(monkeypatch):
  monkeypatch.setattr(processes, "BACKOFF_FIRST_S", 0.05)
  monkeypatch.setenv("EXIT_CODE", "1")
  events = []
  supervisor = processes.Supervisor(events.append)
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
  # What makes train.py stop a run rather than wait for an actor that can never start:
  assert supervisor.crash_looping(len(died) + 1) is None
  line = supervisor.crash_looping(3)
  assert line.startswith(f"crasher died {len(died)} times in a row") and "last exit code 1" in line, line


def test_supervisor_does_not_restart_a_child_that_finished(monkeypatch):
  monkeypatch.setenv("EXIT_CODE", "3")  # EXIT_SERVER_GONE: the job ended
  events = []
  supervisor = processes.Supervisor(events.append)
  supervisor.add("actor-0", ["tests.exiting_child"])
  deadline = time.monotonic() + 60
  while not supervisor.all_finished() and time.monotonic() < deadline:
    supervisor.check()
    time.sleep(0.02)
  supervisor.stop()
  assert supervisor.all_finished() and [e["event"] for e in events] == ["finished"]


def test_a_supervisor_that_owns_the_job_restarts_clean_exits_too(monkeypatch):
  monkeypatch.setattr(processes, "BACKOFF_FIRST_S", 0.05)
  monkeypatch.setenv("EXIT_CODE", "0")  # e.g. someone sent the actor SIGTERM
  events = []
  supervisor = processes.Supervisor(events.append, restart_clean_exits=True)
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
  monkeypatch.setattr(processes, "BACKOFF_FIRST_S", 0.05)
  log = tmp_path / "log"
  monkeypatch.setenv("WARM_LOG", str(log))
  monkeypatch.setenv("EXIT_CODE", "1")
  events = []
  supervisor = processes.Supervisor(events.append, restart_clean_exits=True)
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
  supervisor = processes.Supervisor()
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
