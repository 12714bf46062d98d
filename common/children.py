"""Child processes of the command-line tools (`bench/*.py`, `sweep.py`): none outlives the tool that started it.

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
import os
import signal
import subprocess
import sys
import time
from typing import Iterable, Iterator

EXIT_INTERRUPTED = 130

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
