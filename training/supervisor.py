"""Starts child processes, restarts the ones that die (with backoff), and stops them all.

Call `check()` regularly from the thread that created the supervisor (the
children ask Linux to kill them when that process dies, so none outlives it).

A child can be started before its arguments are known (`prestart`): it does its imports (JAX and
Reverb's TensorFlow, about 7 s of CPU) while this process does its own, and `add` hands it its
arguments and environment on stdin (common.processes.warm_started). A restart starts afresh.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Optional

from common.processes import ARGS_ON_STDIN, EXIT_SERVER_GONE

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0  # a child that ran this long before dying starts its backoff afresh


@dataclasses.dataclass
class _Child:
  name: str
  args: list[str]
  process: Optional[subprocess.Popen] = None
  started_at: float = 0.0
  restarts: int = 0
  consecutive_failures: int = 0
  restart_at: Optional[float] = None
  finished: bool = False  # exited on its own with 0 or EXIT_SERVER_GONE: not restarted


class Supervisor:
  """`restart_clean_exits`: also restart children that exit with 0 or EXIT_SERVER_GONE (right when
  this process owns the server, so the job cannot have ended under them); otherwise those finish."""

  def __init__(self, on_event: Callable[[dict], None] = lambda event: None, *, restart_clean_exits: bool = False,
               env: Optional[dict] = None):
    """`env`: variables added to this process's environment for the children (the job secret)."""
    self.set_env(env)
    self._waiting: dict[str, subprocess.Popen] = {}  # prestarted children, not yet added
    self._children: dict[str, _Child] = {}
    self._on_event = on_event
    self._restart_clean_exits = restart_clean_exits
    self.stopping = False

  def set_env(self, env: Optional[dict]) -> None:
    """The variables added to this process's environment for the children started or handed over from now on."""
    self._added_env = dict(env or {})
    self._env = {**os.environ, **env} if env else None

  def prestart(self, name: str, module: str) -> None:
    """Starts `python -m <module>` for the child `name` that `add` will name, to wait there for its arguments.
    One that is never added exits when `stop` closes its stdin, or with this process."""
    args = [sys.executable, "-m", module, ARGS_ON_STDIN, "--parent-pid", str(os.getpid())]
    self._waiting[name] = subprocess.Popen(args, start_new_session=True, stdin=subprocess.PIPE)

  def add(self, name: str, module_args: list[str]) -> None:
    """Starts `python -m <module_args...>` as child `name` (or hands them to the one prestarted for it)."""
    child = _Child(name, module_args)
    self._children[name] = child
    waiting = self._waiting.pop(name, None)
    if waiting is None or not self._hand_over(waiting, child):
      self._start(child)

  def _child_args(self, child: _Child) -> list[str]:
    return [*child.args[1:], "--incarnation", str(child.restarts), "--parent-pid", str(os.getpid())]

  def _start(self, child: _Child) -> None:
    args = [sys.executable, "-m", child.args[0], *self._child_args(child)]
    # Own process group: a Ctrl-C in the terminal reaches train.py, which stops the children in order.
    child.process = subprocess.Popen(args, start_new_session=True, env=self._env)
    child.started_at = time.monotonic()
    child.restart_at = None

  def _hand_over(self, process: subprocess.Popen, child: _Child) -> bool:
    """Gives a prestarted process the child's arguments; False (and the process is gone) if it is not usable."""
    if process.args[2] == child.args[0] and process.poll() is None:
      try:
        process.stdin.write(json.dumps({"argv": self._child_args(child), "env": self._added_env}).encode() + b"\n")
        process.stdin.close()
        child.process, child.started_at, child.restart_at = process, time.monotonic(), None
        return True
      except (BrokenPipeError, OSError):
        pass
    _signal(process, signal.SIGKILL)
    process.wait()
    return False

  def check(self) -> None:
    """Notices dead children and (re)starts them when their backoff has passed."""
    if self.stopping:
      return
    now = time.monotonic()
    for child in self._children.values():
      if child.finished:
        continue
      if child.restart_at is not None:
        if now >= child.restart_at:
          child.restarts += 1
          self._start(child)
          self._on_event({"event": "restarted", "process": child.name, "restarts": child.restarts})
        continue
      code = child.process.poll()
      if code is None:
        continue
      if code in (0, EXIT_SERVER_GONE) and not self._restart_clean_exits:
        child.finished = True
        self._on_event({"event": "finished", "process": child.name, "returncode": code})
        continue
      lived_s = now - child.started_at
      child.consecutive_failures = 1 if lived_s >= HEALTHY_AFTER_S else child.consecutive_failures + 1
      delay_s = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (child.consecutive_failures - 1))
      child.restart_at = now + delay_s
      self._on_event({"event": "died", "process": child.name, "returncode": code, "lived_s": round(lived_s, 1), "restart_in_s": delay_s})

  def consecutive_failures(self, name: str) -> int:
    """How many times in a row child `name` has died without running HEALTHY_AFTER_S first."""
    return self._children[name].consecutive_failures

  def all_finished(self) -> bool:
    return all(child.finished for child in self._children.values())

  def pids(self) -> dict[str, int]:
    return {name: child.process.pid for name, child in self._children.items() if child.process and child.process.poll() is None}

  def stop(self, timeout_s: float = 15.0) -> None:
    """SIGTERM to every child, then SIGKILL to those still running after `timeout_s`."""
    self.stopping = True
    for process in self._waiting.values():  # prestarted, never added: they exit when their stdin closes
      process.stdin.close()
    running = [c.process for c in self._children.values() if c.process is not None and c.process.poll() is None]
    running += [process for process in self._waiting.values() if process.poll() is None]
    self._waiting.clear()
    for process in running:
      _signal(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in running:
      try:
        process.wait(timeout=max(0.1, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        _signal(process, signal.SIGKILL)
        process.wait()


def _signal(process: subprocess.Popen, sig: int) -> None:
  try:
    process.send_signal(sig)
  except ProcessLookupError:
    pass
