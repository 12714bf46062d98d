"""A bench or sweep that is stopped takes its child processes down: train.py and train.py's own children.

Real processes: the tool is started as a subprocess, the test waits until its train.py child and that
one's actor exist, stops the tool, and checks by pid that every process below it is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT

# A smoke job that would train for far longer than the test: it ends only if the tool stops it.
TRAIN_FLAGS = ["--preset", "smoke", "--num-actors", "1", "--num-envs-per-actor", "2", "--replay.min-replay-size", "400",
               "--log-every-s", "1", "--no-checkpoint-replay", "--total-env-steps", "10000000"]
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 40.0


def cmdline(process: psutil.Process) -> list[str]:
  try:
    return process.cmdline()
  except psutil.Error:
    return []


def is_train_py(process: psutil.Process) -> bool:
  return any(arg.endswith("train.py") for arg in cmdline(process))


def training_with_an_actor(below: list[psutil.Process]) -> bool:
  """train.py runs and has started an actor: it is inside its main loop."""
  try:
    return any(is_train_py(process) and process.children() for process in below)
  except psutil.NoSuchProcess:
    return False


def wait_for(tool: subprocess.Popen, ready, what: str, timeout_s: float = START_TIMEOUT_S) -> list[psutil.Process]:
  """Every process below `tool` once `ready(those processes)` holds."""
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if tool.poll() is not None:
      pytest.fail(f"the tool exited with {tool.returncode} before {what}")
    try:
      below = psutil.Process(tool.pid).children(recursive=True)
    except psutil.NoSuchProcess:
      below = []
    if ready(below):
      return below
    time.sleep(0.25)
  pytest.fail(f"not within {timeout_s} s: {what}")


def describe(process: psutil.Process) -> str:
  return " ".join(cmdline(process))[:200]


def assert_all_stopped(tool: subprocess.Popen, below: list[psutil.Process], expected_code: int) -> None:
  """The tool exits with `expected_code` and every process that was below it ends, all within STOP_TIMEOUT_S."""
  deadline = time.monotonic() + STOP_TIMEOUT_S
  try:
    code = tool.wait(timeout=STOP_TIMEOUT_S)
    _, alive = psutil.wait_procs(below, timeout=max(1.0, deadline - time.monotonic()))
    assert not alive, f"still running after the tool stopped: {[(p.pid, describe(p)) for p in alive]}"
    assert code == expected_code
  finally:  # leave nothing behind, whatever the outcome
    for process in [tool, *below]:
      try:
        process.kill()
      except (ProcessLookupError, psutil.NoSuchProcess):
        pass


def test_a_stopped_e2e_bench_stops_its_training_and_the_trainings_children(tmp_path):
  log = tmp_path / "e2e.log"
  command = [sys.executable, "bench/e2e.py", "--game", "breakout", "--total-env-steps", "10000000",
             f"--train-flags={' '.join(TRAIN_FLAGS)}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  with open(log, "w") as out:
    tool = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
  below = wait_for(tool, training_with_an_actor, "train.py with an actor")
  tool.send_signal(signal.SIGTERM)  # to the bench only, as a job scheduler or `kill` would
  assert_all_stopped(tool, below, expected_code=130)
  text = log.read_text()
  assert "SIGTERM: writing a final checkpoint" in text, text[-3000:]  # train.py's own clean stop
  assert "bench/e2e.py: stopped by SIGTERM" in text


def test_a_sweep_killed_outright_still_takes_its_training_down(tmp_path):
  grid = tmp_path / "grid.toml"
  flags = ", ".join(f'"{flag}"' for flag in TRAIN_FLAGS)
  grid.write_text(f'root = "{tmp_path / "runs"}"\ngames = ["breakout"]\nseeds = [0]\nflags = [{flags}]\n'
                  "[variants]\ndqn = []\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  tool = subprocess.Popen([sys.executable, "sweep.py", str(grid)], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  below = wait_for(tool, training_with_an_actor, "train.py with an actor")
  tool.kill()  # SIGKILL: no handler runs; Linux tells train.py (PR_SET_PDEATHSIG) and it stops in order
  assert_all_stopped(tool, below, expected_code=-signal.SIGKILL)
  assert "SIGTERM: writing a final checkpoint" in (tmp_path / "runs" / "dqn" / "breakout" / "seed0.log").read_text()


def test_a_stopped_replay_bench_stops_its_server_and_writers(tmp_path):
  command = [sys.executable, "bench/replay.py", "--record-steps", "50", "--insert-duration-s", "120"]

  def server_and_writer(below: list[psutil.Process]) -> bool:
    lines = [" ".join(cmdline(process)) for process in below]
    return any("replay.server" in line for line in lines) and any("spawn_main" in line for line in lines)

  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  tool = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  below = wait_for(tool, server_and_writer, "its replay server and a writer process")
  tool.send_signal(signal.SIGTERM)
  assert_all_stopped(tool, below, expected_code=130)
