"""Processes: this one's exit codes and stop signals, and every child it starts, supervises and stops.

Exit codes of every command: 0 done; EXIT_FAILED (1) something it was asked to do failed (a run of a sweep, a
file it was told to write); EXIT_USAGE (2) a bad flag, value, path or run directory (one `error:` line,
nothing written); EXIT_SERVER_GONE (3) an actor whose job's server went away; EXIT_DIVERGED (4) a training
stopped on a non-finite loss or parameter; EXIT_INTERRUPTED (130) stopped by SIGINT/SIGTERM where that is not
a normal end (a sweep, a bench).

This process: `StopRequest` turns SIGTERM/SIGINT into an event the main loop polls (train.py, actors);
`signals_raise` turns them into `Interrupted` in a tool, so that every `finally` and `with` block runs (SIGTERM's
default action would end the tool without running one); `exit_now` skips the interpreter's slow teardown.

Its children, two kinds, one module:
- a tool's (`bench/*.py`, `sweep.py`: train.py, a replay server): `start`/`running`/`run` and `stop`;
- train.py's (actors, the evaluator, the probe worker): `Supervisor`, which starts (or prestarts) them, restarts
  the ones that die with backoff, and stops them with the same `stop`.
Every child gets its own session, so a Ctrl-C in the terminal reaches only its parent, which stops it in order.
`stop` sends SIGTERM, waits, then SIGKILLs the child's process group.

One rule for a dead parent: **when its parent dies, a child gets SIGTERM** (PR_SET_PDEATHSIG: set by a small
launcher before a tool's child execs its command, not in a preexec_fn, which is unsafe after a fork of a
multithreaded JAX or TensorFlow process; set by `die_with_parent` in train.py's children and in a bench's
worker processes). What the child does with it depends on where its work goes. train.py under a tool saves its
own: it stops in order, as on Ctrl-C, and writes its final checkpoint. A child that called `die_with_parent`
works for its parent alone (its job's server lived in that parent): with its parent gone it exits at once, with
EXIT_SERVER_GONE, since nobody is left to take what it would finish (on the SIGTERM, or, while its main thread
waits in a C call where no signal handler runs, within ORPHAN_WATCH_S).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
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
  """The arguments of a `__main__` that `Supervisor` may start before they are known.

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


PARENT_DEATH_SIGNAL = signal.SIGTERM  # what Linux sends a child when its parent dies (the module's rule)
_PR_SET_PDEATHSIG = 1
_orphan_exit: Optional[tuple[int, int]] = None  # (parent pid, exit code) once die_with_parent was called
ORPHAN_WATCH_S = 0.25

# Runs in the child before the command: SIGTERM when the parent dies. PR_SET_PDEATHSIG survives the exec.
_LAUNCHER = """import ctypes, os, signal, sys
try:
  ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL
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
    if _orphan_exit is not None and os.getppid() != _orphan_exit[0]:  # the parent died: nobody takes our work
      exit_now(_orphan_exit[1])
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
  """For a child that works for its parent alone: Linux sends it SIGTERM when `parent_pid` dies (the module's
  rule), and then it exits at once with `exit_code` instead of in order; exits at once if the parent is already
  gone. A `StopRequest` handler exits at its next bytecode; a watcher thread exits within ORPHAN_WATCH_S while the
  main thread waits in a C call (a gRPC call, an XLA compile), where no Python signal handler runs."""
  global _orphan_exit
  if parent_pid:
    _orphan_exit = (parent_pid, exit_code)
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL)
  except OSError:
    pass
  if parent_pid and os.getppid() != parent_pid:  # the parent died before prctl took effect
    os._exit(exit_code)
  if parent_pid:
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid, exit_code), name="orphan-watch", daemon=True).start()


def _exit_when_orphaned(parent_pid: int, exit_code: int) -> None:
  while os.getppid() == parent_pid:
    time.sleep(ORPHAN_WATCH_S)
  exit_now(exit_code)


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


# -- supervised children -----------------------------------------------------------------------------------------
# train.py's actors, evaluator and probe worker: started (or prestarted), restarted with backoff when they die,
# and stopped together. Call `Supervisor.check()` regularly from the thread that created the supervisor (the
# children ask Linux to kill them when that process dies, so none outlives it). A child can be started before its
# arguments are known (`prestart`): it does its imports (JAX and Reverb's TensorFlow, about 7 s of CPU) while this
# process does its own, and `add` hands it its arguments and environment on stdin (`warm_started`). A restart
# starts afresh.

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
  last_returncode: Optional[int] = None
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
    kill(process)
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
      child.last_returncode = code
      child.consecutive_failures = 1 if lived_s >= HEALTHY_AFTER_S else child.consecutive_failures + 1
      delay_s = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (child.consecutive_failures - 1))
      child.restart_at = now + delay_s
      self._on_event({"event": "died", "process": child.name, "returncode": code, "lived_s": round(lived_s, 1), "restart_in_s": delay_s})

  def consecutive_failures(self, name: str) -> int:
    """How many times in a row child `name` has died without running HEALTHY_AFTER_S first."""
    return self._children[name].consecutive_failures

  def crash_looping(self, failures: int) -> Optional[str]:
    """A line naming the first child that has died `failures` times in a row without running HEALTHY_AFTER_S
    (a restart does not fix what stops it), or None."""
    for child in self._children.values():
      if not child.finished and child.consecutive_failures >= failures:
        return (f"{child.name} died {child.consecutive_failures} times in a row, each within {HEALTHY_AFTER_S:.0f} s "
                f"of its start (last exit code {child.last_returncode}); its own message is above")
    return None

  def all_finished(self) -> bool:
    return all(child.finished for child in self._children.values())

  def pids(self) -> dict[str, int]:
    return {name: child.process.pid for name, child in self._children.items() if child.process and child.process.poll() is None}

  def stop_children(self, names, timeout_s: float = 15.0) -> None:
    """`stop` for the children `names` only, which are not restarted: the others go on (and are supervised)."""
    children = [self._children.pop(name) for name in names if name in self._children]
    stop([child.process for child in children if child.process is not None], timeout_s)

  def stop(self, timeout_s: float = 15.0) -> None:
    """SIGTERM to every child, then SIGKILL to those still running after `timeout_s`: `stop`, as for a tool's."""
    self.stopping = True
    for process in self._waiting.values():  # prestarted, never added: they exit when their stdin closes
      process.stdin.close()
    stop([*(c.process for c in self._children.values() if c.process is not None), *self._waiting.values()], timeout_s)
    self._waiting.clear()
