"""Run a grid of training runs, variants x games x seeds, N at a time on this machine; re-running picks up where it stopped.

  python sweep.py examples/sweep_ln.toml --parallel 2
  python sweep.py examples/sweep_ln.toml --dry-run       # what would run, and why; starts and moves nothing
  python compare.py runs/sweep_ln --out report/          # then compare the variants

The grid is a TOML file:

  root = "runs/sweep_ln"                  # run dirs: ROOT/<variant>/<game>/seed<seed>, logs beside them (.log)
  games = ["breakout", "pong"]
  seeds = [0, 1, 2]
  flags = ["--preset", "atari100k"]       # train.py flags shared by every run (optional)
  [variants]                              # name -> train.py flags of that variant
  dqn = []
  ln = ["--agent.layer-norm"]

Every run is an ordinary `train.py` run directory. Before anything starts, every run's
config is built the way train.py builds it (a bad flag, an unknown game or key is one
error line, exit 2). A run whose newest checkpoint is finished (at the grid's budget)
is skipped; one with a checkpoint is resumed (`train.py ... --resume`, with the grid's
flags, so a raised budget carries over); one that stopped before its first checkpoint
is moved aside to `<run_dir>.stale-<time>` and started again. With --parallel N each run
takes 1/N of the GPU memory one run takes alone (--gpu-memory-fraction and
--probe-gpu-memory-fraction, the variant's or the default, divided by N). Ctrl-C (or SIGTERM)
sends SIGTERM to the running trainings, which write a final checkpoint; a second one, or
two minutes without them stopping, kills them (and if the sweep itself dies, Linux sends them
SIGTERM: see common/processes.py). Exit code: 0, 1 if a run failed, 2 for a bad grid, 130 if interrupted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib

from common.process_setup import setup_process  # noqa: E402

setup_process("tool")  # before JAX, TensorFlow and Reverb load

from common import processes  # noqa: E402
from common.processes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, StopRequest  # noqa: E402
from common.run_dir import SWEEP_LOCK, RunDir, hold_lock, sweep_run_dir  # noqa: E402
from common.validation import ConfigError  # noqa: E402
from envs import check_game  # noqa: E402
from reports.runs import checkpoint_progress  # noqa: E402
from training.config import config_differences, load_config  # noqa: E402

import train  # noqa: E402  (its flags are the runs' flags)

ROOT = os.path.dirname(os.path.abspath(__file__))
NOT_RUN = ("skip", "busy", "failed")  # plan actions that start no training
GRID_KEYS = ("root", "games", "seeds", "flags", "variants")
# Set by the sweep for each run; role/listen/server would make parallel runs collide on one address.
RESERVED_FLAGS = ("--game", "--seed", "--run-dir", "--resume", "--role", "--listen", "--server")
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")
POLL_S = 0.5
STOP_TIMEOUT_S = 120.0  # a training stopped by SIGTERM writes its final checkpoint (replay included) in this time


# ----------------------------------------------------------------------------------------------------------------
# The grid


@dataclasses.dataclass(frozen=True)
class Grid:
  root: str
  """Directory of the run directories (relative paths are relative to the current directory)."""
  games: tuple[str, ...]
  seeds: tuple[int, ...]
  variants: dict[str, tuple[str, ...]]
  """Variant name -> its train.py flags, in file order."""
  flags: tuple[str, ...] = ()
  """train.py flags shared by every run (preset, budget, ...)."""


def load_grid(path: str) -> Grid:
  """Reads and checks a grid TOML file; raises ConfigError naming the key at fault."""
  try:
    with open(path, "rb") as handle:
      data = tomllib.load(handle)
  except FileNotFoundError:
    raise ConfigError(f"{path} does not exist") from None
  except (OSError, tomllib.TOMLDecodeError) as error:
    raise ConfigError(f"{path} is not valid TOML: {error}") from None
  unknown = sorted(set(data) - set(GRID_KEYS))
  if unknown:
    raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; a grid has {', '.join(GRID_KEYS)}")
  for key in ("root", "games", "seeds", "variants"):
    if key not in data:
      raise ConfigError(f"{path}: missing key {key!r}")
  if not isinstance(data["root"], str) or not data["root"]:
    raise ConfigError(f"{path}: root must be a directory path (a string)")

  def string_list(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
      raise ConfigError(f"{path}: {where} must be a list of strings, got {value!r}")
    return tuple(value)

  games = string_list(data["games"], "games")
  seeds = data["seeds"]
  if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
    raise ConfigError(f"{path}: seeds must be a list of non-negative integers, got {seeds!r}")
  if not isinstance(data["variants"], dict):
    raise ConfigError(f"{path}: variants must be a table, e.g. [variants] with dqn = [] and ln = [\"--agent.layer-norm\"]")
  variants = {name: string_list(flags, f"variants.{name}") for name, flags in data["variants"].items()}
  flags = string_list(data.get("flags", []), "flags")
  for what, values in (("games", games), ("seeds", seeds), ("variants", list(variants))):
    if not values:
      raise ConfigError(f"{path}: {what} is empty")
    if len(set(values)) != len(values):
      raise ConfigError(f"{path}: {what} has duplicates: {values!r}")
  for name in variants:
    if not VARIANT_NAME.match(name):
      raise ConfigError(f"{path}: variant name {name!r} must be letters, digits and _ . = + - (it names a directory)")
  for where, values in (("flags", flags), *((f"variants.{n}", v) for n, v in variants.items())):
    for flag in values:
      name = flag.split("=", 1)[0].replace("_", "-")
      if name in RESERVED_FLAGS:
        raise ConfigError(f"{path}: {where} has {flag!r}; the sweep sets {', '.join(RESERVED_FLAGS[:4])} itself "
                          "and runs each training on its own host (no --role/--listen/--server)")
  return Grid(data["root"], games, tuple(seeds), variants, flags)


# ----------------------------------------------------------------------------------------------------------------
# The plan: what each run needs, decided before anything starts


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  variant: str
  game: str
  seed: int
  run_dir: str
  """As shown to the user (under the grid's root); train.py gets its absolute path."""
  flags: tuple[str, ...]
  """train.py flags: shared + variant + game/seed/run dir (plus --resume when resuming)."""
  action: str
  """skip (finished), resume, start, or restart (a stale directory without checkpoint is moved aside first)."""
  reason: str
  total_env_steps: int

  @property
  def name(self) -> str:
    return f"{self.variant}/{self.game}/seed{self.seed}"

  @property
  def log_path(self) -> str:
    return self.run_dir.rstrip(os.sep) + ".log"

  def command(self) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "train.py"), *self.flags]


def _parse_train_flags(argv: list[str]):
  """train.parse_config(argv), with tyro's error box (it exits) turned into a ConfigError of one line."""
  captured = io.StringIO()
  try:
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
      return train.parse_config(argv)
  except SystemExit:
    lines = []
    for line in captured.getvalue().splitlines():
      line = line.strip(" │╭╮╰╯─|\t")
      if line.strip("-") and not line.startswith("For full helptext"):
        lines.append(re.sub(r"\s+", " ", line))
    lines = [line for i, line in enumerate(lines) if not (i + 1 < len(lines) and lines[i + 1].startswith(line))]
    message = ""
    for line in lines[:4]:  # tyro's title, the problem, a suggestion
      message += (" " if message.endswith(":") else "; " if message else "") + line
    raise ConfigError(message or "train.py rejected the flags") from None


def _resolved(config):
  """The config as train.py writes it to config.json for a new run (reference optimizer values filled in)."""
  agent = dataclasses.replace(config.agent, learning_rate=config.agent.resolved_learning_rate,
                              optimizer_eps=config.agent.resolved_optimizer_eps)
  return dataclasses.replace(config, agent=agent)


GPU_SHARE_FLAGS = {"--gpu-memory-fraction": "gpu_memory_fraction",
                   "--probe-gpu-memory-fraction": "probe_gpu_memory_fraction"}


def gpu_shares(flags: list[str], base, parallel: int) -> tuple[list[str], list[str]]:
  """(`flags` without the GPU memory shares, the shares' flags with each share (the variant's own, or the default)
  divided among `parallel` runs): N learners on one GPU cannot each take the 75% that one takes alone."""
  kept, skip = [], False
  for flag in flags:
    if skip:
      skip = False
    elif flag in GPU_SHARE_FLAGS:
      skip = True
    elif flag.split("=", 1)[0] not in GPU_SHARE_FLAGS:
      kept.append(flag)
  shares = [part for flag, field in GPU_SHARE_FLAGS.items() for part in (flag, f"{getattr(base, field) / parallel:.4g}")]
  return kept, shares


def plan(grid: Grid, parallel: int = 1) -> list[PlannedRun]:
  """Every run of the grid with what it needs, `parallel` at a time; raises ConfigError (starting and moving
  nothing) if any is invalid."""
  for game in grid.games:
    check_game(game)
  plans = []
  for variant, variant_flags in grid.variants.items():
    base_flags = [*grid.flags, *variant_flags]
    first_dir = os.path.abspath(sweep_run_dir(grid.root, variant, grid.games[0], grid.seeds[0]))
    try:
      base = _parse_train_flags([*base_flags, "--game", grid.games[0], "--seed", str(grid.seeds[0]), "--run-dir", first_dir])
    except ConfigError as error:
      raise ConfigError(f"variant {variant} (train.py {shlex.join(base_flags)}): {error}") from None
    base_flags, shares = gpu_shares(base_flags, base, parallel)
    for game in grid.games:
      for seed in grid.seeds:
        run_dir = sweep_run_dir(grid.root, variant, game, seed)
        flags = [*base_flags, "--game", game, "--seed", str(seed), "--run-dir", os.path.abspath(run_dir)]
        config = _resolved(dataclasses.replace(base, game=game, seed=seed, run_dir=os.path.abspath(run_dir)))
        action, reason = "start", "new"
        if os.path.isdir(run_dir) and os.listdir(run_dir):
          action, reason = existing_run_action(run_dir, config)
          if action == "resume":
            flags.append("--resume")
        elif os.path.exists(run_dir) and not os.path.isdir(run_dir):
          raise ConfigError(f"{run_dir} exists and is not a directory")
        plans.append(PlannedRun(variant, game, seed, run_dir, tuple(flags + shares), action, reason,
                                config.total_env_steps))
  return plans


def existing_run_action(run_dir: str, config) -> tuple[str, str]:
  """(action, reason) for a grid run whose directory holds something: skip, resume, restart, busy or failed."""
  run = RunDir(run_dir)
  holder = run.holder_pid()
  if holder is not None:
    return "busy", f"in use by pid {holder} (a training this sweep did not start); left alone"
  status = run.read_status()
  if status.get("state") == "diverged":
    return "failed", (f"diverged at update {status.get('step', '?'):,} before ({run.status_path}); not resumed: "
                      "fix the settings, or resume it by hand with train.py --resume")
  progress = checkpoint_progress(run_dir)
  if not progress.checkpoint_steps:
    return "restart", "stopped before its first checkpoint"
  try:
    changed = config_differences(load_config(run_dir), config)
  except ConfigError as error:
    raise ConfigError(f"{run_dir}: {error}") from None
  if changed:
    raise ConfigError(f"{run_dir} was trained with other settings than the grid's ({', '.join(changed)}); "
                      "change the grid back, or move that directory away")
  steps = "?" if progress.env_steps is None else f"{progress.env_steps:,}"
  if progress.finished and progress.env_steps is not None and progress.env_steps >= config.total_env_steps:
    return "skip", f"finished at {steps} env steps"
  return "resume", (f"finished at {steps} env steps, budget now {config.total_env_steps:,}" if progress.finished
                    else f"interrupted at {steps} of {config.total_env_steps:,} env steps")


def move_aside(run_dir: str) -> str:
  """Renames a stale run directory to `<run_dir>.stale-<YYYYmmdd-HHMMSS>[-k]` (nothing is deleted); returns the new path."""
  stamp = time.strftime("%Y%m%d-%H%M%S")
  target, k = f"{run_dir.rstrip(os.sep)}.stale-{stamp}", 1
  while os.path.exists(target):
    k += 1
    target = f"{run_dir.rstrip(os.sep)}.stale-{stamp}-{k}"
  os.rename(run_dir, target)
  return target


# ----------------------------------------------------------------------------------------------------------------
# Running


@contextlib.contextmanager
def _terminate_on_error(running: dict):
  """If the sweep itself fails, its trainings still stop cleanly (SIGTERM, a final checkpoint), killed if they take
  longer than STOP_TIMEOUT_S."""
  try:
    yield
  except BaseException:
    processes.stop(list(running), STOP_TIMEOUT_S)
    raise


def _last_line(path: str) -> str:
  try:
    with open(path, encoding="utf-8", errors="replace") as handle:
      lines = [line.strip() for line in handle.read().splitlines()[-40:] if line.strip()]
  except OSError:
    return ""
  errors = [line for line in lines if line.startswith("error:")]
  return (errors or lines or [""])[-1][:300]


def execute(plans: list[PlannedRun], parallel: int) -> collections.Counter:
  """Runs the plans' trainings, `parallel` at a time; returns counts of finished/resumed/started/failed/interrupted/not_started."""
  counts: collections.Counter = collections.Counter(finished=sum(p.action == "skip" for p in plans),
                                                    failed=sum(p.action == "failed" for p in plans),
                                                    busy=sum(p.action == "busy" for p in plans))
  for p in plans:
    if p.action in NOT_RUN:
      print(f"{'[' + p.action + ']':<10} {p.name}: {p.reason}", flush=True)
  pending = collections.deque(p for p in plans if p.action not in NOT_RUN)
  running: dict[subprocess.Popen, tuple[PlannedRun, float, object]] = {}
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  signalled, signalled_at = 0, 0.0
  with StopRequest("stopping the running trainings (SIGTERM; each writes a final checkpoint); again to kill them",
                   again_message="killing the running trainings") as signals, _terminate_on_error(running):
    while running or (pending and not signals.count):
      while pending and not signals.count and len(running) < parallel:
        p = pending.popleft()
        if p.action == "restart":
          moved = move_aside(p.run_dir)
          print(f"[moved]    {p.name}: {p.reason}; its directory was moved aside to {moved}", flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(p.log_path)), exist_ok=True)
        log = open(p.log_path, "a", encoding="utf-8")
        log.write(f"\n# sweep {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(p.command())}\n")
        log.flush()
        # Own session (a Ctrl-C in the terminal reaches the sweep only, which stops the trainings in order), and
        # SIGTERM when the sweep dies (train.py then writes a final checkpoint): no training outlives the sweep unseen.
        process = processes.start(p.command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        running[process] = (p, time.monotonic(), log)
        verb = "[resume]" if p.action == "resume" else "[start]"
        print(f"{verb:<10} {p.name}: {p.reason}; log {p.log_path}", flush=True)

      if signals.count == 1 and signalled == 1 and time.monotonic() - signalled_at > STOP_TIMEOUT_S:
        print(f"the trainings did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM: killing them", flush=True)
        signals.count = 2
      if signals.count > signalled:  # forward: first SIGTERM (final checkpoint), then SIGKILL
        sig = signal.SIGTERM if signals.count == 1 else signal.SIGKILL
        for process in running:
          with contextlib.suppress(ProcessLookupError):
            if sig == signal.SIGKILL:
              processes.kill(process)  # train.py's group; its actors and probe worker die with it (PDEATHSIG)
            else:
              process.send_signal(sig)
        signalled, signalled_at = signals.count, time.monotonic()

      for process in [proc for proc in running if proc.poll() is not None]:
        p, started_s, log = running.pop(process)
        log.close()
        wall_s = time.monotonic() - started_s
        progress = checkpoint_progress(p.run_dir)
        kind = "resumed" if p.action == "resume" else "started"
        if process.returncode == 0 and progress.finished:
          counts[kind] += 1
          print(f"[done]     {p.name}: finished at {progress.env_steps:,} env steps in {wall_s:.0f} s", flush=True)
        elif signals.count:
          counts["interrupted"] += 1
          at = "no checkpoint" if progress.env_steps is None else f"checkpoint at {progress.env_steps:,} env steps"
          print(f"[stopped]  {p.name}: {at}; run the sweep again to resume it", flush=True)
        else:
          counts["failed"] += 1
          why = f"exit code {process.returncode}" if process.returncode else "exited without finishing"
          print(f"[failed]   {p.name}: {why} after {wall_s:.0f} s: {_last_line(p.log_path)} (log {p.log_path})", flush=True)
      if running or (pending and not signals.count):
        time.sleep(POLL_S)
    counts["not_started"] = len(pending)
    counts["interrupted_by_signal"] = signals.count
  return counts


def summary_line(plans: list[PlannedRun], counts: collections.Counter) -> str:
  line = (f"sweep: {len(plans)} runs: {counts['finished']} already finished (skipped), {counts['resumed']} resumed, "
          f"{counts['started']} started, {counts['failed']} failed")
  if counts["busy"]:
    line += f", {counts['busy']} left alone (in use by another process)"
  if counts["interrupted"] or counts["not_started"]:
    line += f"; interrupted: {counts['interrupted']} stopped, {counts['not_started']} not started"
  return line


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("grid", metavar="GRID.toml", help="the grid: root, games, seeds, flags, [variants]")
  parser.add_argument("--parallel", type=int, default=1, help="trainings run at a time (default: 1)")
  parser.add_argument("--dry-run", action="store_true", help="list the runs and what each needs; start and move nothing")
  args = parser.parse_args(argv)
  try:
    if args.parallel < 1:
      raise ConfigError(f"--parallel={args.parallel} must be at least 1")
    grid = load_grid(args.grid)
    plans = plan(grid, args.parallel)  # a bad grid fails here, before anything is written
    if args.dry_run:
      return dry_run(args.grid, grid, plans)
    os.makedirs(grid.root, exist_ok=True)
    # One sweep at a time over a root: a second one would start every unfinished run a second time.
    with hold_lock(os.path.join(grid.root, SWEEP_LOCK), "sweep.py", what=f"sweep root {grid.root}"):
      # Planned again: now no other sweep can move runs.
      return run_sweep(args.grid, grid, plan(grid, args.parallel), args.parallel)
  except ConfigError as error:
    print(f"error: {error}", file=sys.stderr)
    return EXIT_USAGE


def _plan_line(grid_path: str, grid, plans: list[PlannedRun]) -> str:
  todo = collections.Counter(p.action for p in plans)
  return (f"sweep {grid_path}: {len(grid.variants)} variants x {len(grid.games)} games x {len(grid.seeds)} seeds = "
          f"{len(plans)} runs in {grid.root}: {todo['skip']} finished, {todo['resume']} to resume, "
          f"{todo['start'] + todo['restart']} to start")


def dry_run(grid_path: str, grid, plans: list[PlannedRun]) -> int:
  print(_plan_line(grid_path, grid, plans))
  for p in plans:
    extra = "; its directory would be moved aside first" if p.action == "restart" else ""
    print(f"  {p.action:<8} {p.name}: {p.reason}{extra}")
    if p.action != "skip":
      print(f"           {shlex.join(['python', 'train.py', *p.flags])}")
  return 0


def run_sweep(grid_path: str, grid, plans: list[PlannedRun], parallel: int) -> int:
  print(_plan_line(grid_path, grid, plans), flush=True)
  counts = execute(plans, parallel)
  print(summary_line(plans, counts), flush=True)
  if counts["failed"]:
    return EXIT_FAILED
  if counts["interrupted_by_signal"]:
    return EXIT_INTERRUPTED
  return 0


if __name__ == "__main__":
  sys.exit(main())
