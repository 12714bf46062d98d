"""Processes: exit codes, stop signals, dying with the parent, and child processes that never outlive their tool.

Exit codes of every command: 0 done; EXIT_FAILED (1) something it was asked to do failed (a run of a sweep, a
file it was told to write); EXIT_USAGE (2) a bad flag, value, path or run directory (one `error:` line,
nothing written); EXIT_SERVER_GONE (3) an actor whose job's server went away; EXIT_DIVERGED (4) a training
stopped on a non-finite loss or parameter; EXIT_INTERRUPTED (130) stopped by SIGINT/SIGTERM where that is not
a normal end (a sweep, a bench).

`StopRequest` turns SIGTERM/SIGINT into an event the main loop polls (train.py, actors); `die_with_parent`
has Linux kill a child when its parent dies (actors, the probe worker).

Child processes of the command-line tools (`bench/*.py`, `sweep.py`): none outlives the tool that started it.

A tool that starts `train.py` (or a server, or any other command) as a child uses
`start` and `stop`, and runs its main code inside `signals_raise()`:

  with children.signals_raise():                        # SIGTERM / SIGINT -> children.Interrupted
    with children.running([sys.executable, "train.py", ...]) as process:   # stopped when the block exits
      process.wait()

- `start` gives the child its own session, so a Ctrl-C in the terminal reaches only the tool,
  which then stops the child in order (train.py writes its final checkpoint), and has Linux send
  the child SIGTERM if the tool itself dies, even by SIGKILL (PR_SET_PDEATHSIG, set by a small
  launcher that then execs the command, not in a preexec_fn, which is unsafe after a fork of a
  multithreaded JAX or TensorFlow process).
- `stop` sends SIGTERM, waits, then SIGKILLs the child's process group.
- `signals_raise` turns SIGTERM (whose default action would end the tool without running a single
  `finally`) and SIGINT into `Interrupted`, so every `finally` and `with` block runs.

train.py's own children (actors, the probe worker) are handled by `training.supervisor`; they die
with train.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Iterable, Iterator, Optional

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SERVER_GONE = 3
EXIT_DIVERGED = 4
EXIT_INTERRUPTED = 130

ARGS_ON_STDIN = "--args-on-stdin"


def warm_started(argv: list[str], warm_up: Callable[[], None]) -> Optional[list[str]]:
  """The arguments of a `__main__` that training.supervisor may start before they are known.

  Without ARGS_ON_STDIN, `argv` unchanged. With `[ARGS_ON_STDIN, "--parent-pid", PID]`: dies with that
  parent, runs `warm_up()` (the slow imports), then reads one JSON line {"argv": [...], "env": {...}} from
  stdin, sets those environment variables and returns that argv; None if stdin closes first (not needed).
  """
  if not argv or argv[0] != ARGS_ON_STDIN:
    return argv
  die_with_parent(int(argv[argv.index("--parent-pid") + 1]))
  warm_up()
  line = sys.stdin.readline()
  if not line:
    return None
  request = json.loads(line)
  os.environ.update(request["env"])
  return request["argv"]


def exit_now(code: int):
  """Ends the process with `code` at once, after flushing stdout and stderr, for a `__main__` whose work is done
  and saved: the interpreter's own teardown of the TensorFlow (Reverb's), JAX and Orbax modules costs 1.5-2.5 s
  of CPU per process (measured on 2 cores), which a finishing run would wait for at every actor it stops and
  at its own exit. Only after a normal return: an exception still ends the process the usual way."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


# Runs in the child before the command: SIGTERM when the parent dies. PR_SET_PDEATHSIG survives the exec.
_LAUNCHER = """import ctypes, os, signal, sys
try:
  ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except OSError:
  pass
if os.getppid() != int(sys.argv[1]):  # the parent died before prctl took effect
  sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


class StopRequest:
  """SIGTERM / SIGINT set `event` (the main loop finishes its step and stops in order), print `message` the first
  time and `again_message` after, and call each of `on_stop`; `count` says how many arrived. Install from the
  main thread; as a context manager it puts the previous handlers back on exit."""

  def __init__(self, message: str = "", on_stop: Iterable = (), again_message: str = ""):
    self.event = threading.Event()
    self.signal_name = None
    self.count = 0
    self.message, self.again_message = message, again_message
    self.on_stop = list(on_stop)
    self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, _frame) -> None:
    self.count += 1
    name = signal.Signals(signum).name
    if not self.event.is_set():
      self.signal_name = name
      if self.message:
        print(f"\n{name}: {self.message}", flush=True)
    elif self.again_message:
      print(f"\n{name} again: {self.again_message}", flush=True)
    self.event.set()
    for callback in self.on_stop:
      callback()

  def __enter__(self) -> "StopRequest":
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def die_with_parent(parent_pid: int, exit_code: int = EXIT_SERVER_GONE) -> None:
  """Linux: SIGKILL this process when its parent dies (PR_SET_PDEATHSIG), so no child outlives train.py or a bench;
  exits at once with `exit_code` if the parent is already gone."""
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
  except OSError:
    pass
  if parent_pid and os.getppid() != parent_pid:  # the parent died before prctl took effect
    os._exit(exit_code)


class Interrupted(BaseException):
  """SIGTERM or SIGINT reached a tool inside `signals_raise()` (a BaseException, like KeyboardInterrupt)."""

  def __init__(self, signum: int):
    self.signum = signum
    self.signal_name = signal.Signals(signum).name
    super().__init__(self.signal_name)


@contextlib.contextmanager
def signals_raise(signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
  """Inside the block, the first of `signals` raises Interrupted in the main thread (later ones are ignored while
  the children are being stopped); the previous handlers come back afterwards. Main thread only."""
  raised = []

  def handle(signum, _frame):
    if not raised:
      raised.append(signum)
      raise Interrupted(signum)

  previous = {sig: signal.signal(sig, handle) for sig in signals}
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def launch_argv(argv: list[str]) -> list[str]:
  """`argv` run through the launcher: the same command, that gets SIGTERM when this process dies."""
  return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *argv]


def start(argv: list[str], **popen_kwargs) -> subprocess.Popen:
  """Starts `argv` in its own session, to receive SIGTERM if this process dies; Popen keyword arguments pass on."""
  return subprocess.Popen(launch_argv(argv), start_new_session=True, **popen_kwargs)


def stop(processes: Iterable[subprocess.Popen], timeout_s: float = 30.0) -> None:
  """SIGTERM to each running process, then, after `timeout_s` in all, SIGKILL to the process group of any left.

  Safe to call again, or on processes that have exited. SIGTERM goes to the process only (train.py stops its own
  children in order); SIGKILL to its whole group (the children `start` made lead their own)."""
  processes = [process for process in processes if process.poll() is None]
  for process in processes:
    with contextlib.suppress(ProcessLookupError):
      process.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + timeout_s
  try:
    for process in processes:
      try:
        process.wait(timeout=max(0.1, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        kill(process)
  except BaseException:  # interrupted while waiting (a signal, Ctrl-C): no time left to be gentle
    for process in processes:
      if process.poll() is None:
        kill(process)
    raise


def kill(process: subprocess.Popen) -> None:
  """SIGKILL to `process`'s group (its own, if `start` made it) and reap it."""
  with contextlib.suppress(ProcessLookupError, PermissionError):
    group = os.getpgid(process.pid)
    if group != os.getpgrp():  # never this tool's own group
      os.killpg(group, signal.SIGKILL)
  with contextlib.suppress(ProcessLookupError):
    process.kill()
  process.wait()


@contextlib.contextmanager
def running(argv: list[str], *, stop_timeout_s: float = 30.0, **popen_kwargs) -> Iterator[subprocess.Popen]:
  """`start(argv)` for the duration of the block; `stop` it when the block exits, however it exits."""
  process = start(argv, **popen_kwargs)
  try:
    yield process
  finally:
    stop([process], stop_timeout_s)


def run(argv: list[str], *, stop_timeout_s: float = 30.0, **popen_kwargs) -> subprocess.CompletedProcess:
  """Like subprocess.run(argv, check=True, ...) with `running`'s guarantees; stdout is captured when
  popen_kwargs ask for a pipe (stdout=subprocess.PIPE), else goes where they say."""
  with running(argv, stop_timeout_s=stop_timeout_s, **popen_kwargs) as process:
    stdout, stderr = process.communicate()
  if process.returncode:
    raise subprocess.CalledProcessError(process.returncode, argv, stdout, stderr)
  return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
