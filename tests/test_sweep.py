"""sweep.py: grid validation before anything starts, --dry-run, and a real 1 game x 2 variants x 1 seed sweep that is
re-run (skips), resumed with a larger budget and interrupted with SIGTERM (final checkpoint); then compare.py reads it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import compare
import sweep
from reports.runs import checkpoint_progress
from tests.conftest import ROOT

# A run of ~20-30 s on 2 cores (as the conftest smoke run, without probes): 1 actor x 2 envs, learning from 400
# transitions, a 1,000-step budget set here (the grid's budget).
BUDGET = 1000
FLAGS = [
    "--preset", "smoke", "--num-actors", "1", "--num-envs-per-actor", "2", "--replay.min-replay-size", "400",
    "--checkpoint-every-updates", "100", "--log-every-s", "1", "--env.max-episode-frames", "4000",
    "--agent.torso", "mlp", "--agent.mlp-hidden-sizes", "32",  # fast: the sweep's orchestration is under test
    "--probe-every-updates", "0", "--total-env-steps", str(BUDGET),
]
# Both variants say their layer norm setting: the preset's own value is not what these tests are about.
VARIANTS = {"dqn": ["--agent.no-layer-norm"], "ln": ["--agent.layer-norm"]}


def write_grid(path, root, *, games=("breakout",), variants=None, flags=FLAGS, extra: str = "") -> str:
  variants = VARIANTS if variants is None else variants
  lines = [f"root = {json.dumps(str(root))}", f"games = {json.dumps(list(games))}", "seeds = [0]",
           f"flags = {json.dumps(list(flags))}", extra, "[variants]"]
  lines += [f"{name} = {json.dumps(list(value))}" for name, value in variants.items()]
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def run_sweep(argv: list[str], capsys) -> tuple[int, str, str]:
  code = sweep.main(argv)
  captured = capsys.readouterr()
  return code, captured.out, captured.err


@pytest.mark.parametrize("content, message", [
    ("root = 'x'\ngames = [\n", "is not valid TOML"),
    ("root = 'x'\ngames = ['breakout']\nseeds = [0]\nbudget = 3\n[variants]\ndqn = []\n", "unknown key(s) budget"),
    ("root = 'x'\ngames = ['breakout']\nseeds = [0]\n", "missing key 'variants'"),
    ("root = 'x'\ngames = ['breakout']\nseeds = [-1]\n[variants]\ndqn = []\n", "seeds must be a list of non-negative"),
    ("root = 'x'\ngames = ['breakout']\nseeds = [0]\n[variants]\ndqn = '--agent.layer-norm'\n", "variants.dqn must be a list"),
    ("root = 'x'\ngames = ['breakot']\nseeds = [0]\n[variants]\ndqn = []\n", "unknown game 'breakot'; did you mean breakout"),
    ("root = 'x'\ngames = ['breakout']\nseeds = [0]\nflags = ['--seed', '3']\n[variants]\ndqn = []\n", "has '--seed'"),
    ("root = 'x'\ngames = ['breakout']\nseeds = [0]\n[variants]\nln = ['--agent.layer-nrm']\n",
     "variant ln (train.py --agent.layer-nrm): Unrecognized options: --agent.layer-nrm"),
    ("root = 'x'\ngames = ['breakout']\nseeds = [0]\n[variants]\nbad = ['--agent.n-step', '0']\n", "n_step=0 is outside"),
])
def test_a_bad_grid_is_one_error_line_and_exit_2_before_anything_starts(tmp_path, capsys, content, message):
  grid = tmp_path / "grid.toml"
  grid.write_text(content.replace("'x'", json.dumps(str(tmp_path / "runs"))))
  code, out, err = run_sweep([str(grid)], capsys)
  assert code == 2 and out == ""
  assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
  assert not os.path.exists(tmp_path / "runs")


def test_a_missing_grid_file_and_bad_parallel_exit_2(tmp_path, capsys):
  code, _, err = run_sweep([str(tmp_path / "none.toml")], capsys)
  assert code == 2 and err.strip() == f"error: {tmp_path / 'none.toml'} does not exist"
  grid = write_grid(tmp_path / "grid.toml", tmp_path / "runs")
  code, _, err = run_sweep([grid, "--parallel", "0"], capsys)
  assert code == 2 and "--parallel=0 must be at least 1" in err


def test_dry_run_lists_the_runs_and_moves_nothing(tmp_path, capsys):
  root = tmp_path / "runs"
  grid = write_grid(tmp_path / "grid.toml", root, games=("breakout", "pong"))
  # A run that failed before its first checkpoint: config.json and metrics, no checkpoints/.
  stale = root / "ln" / "pong" / "seed0"
  (stale / "metrics").mkdir(parents=True)
  (stale / "metrics" / "train.jsonl").write_text('{"env_steps": 10}\n')
  code, out, _ = run_sweep([grid, "--dry-run"], capsys)
  assert code == 0
  assert "2 variants x 2 games x 1 seeds = 4 runs" in out and "0 finished, 0 to resume, 4 to start" in out
  for name in ("dqn/breakout/seed0", "dqn/pong/seed0", "ln/breakout/seed0"):
    assert re.search(rf"^  start +{name}: new$", out, re.M), out
  assert re.search(r"^  restart +ln/pong/seed0: stopped before its first checkpoint; its directory would be moved aside first$",
                   out, re.M), out
  assert f"--total-env-steps {BUDGET} --agent.layer-norm --game pong --seed 0 --run-dir {stale}" in out
  assert sorted(os.listdir(root)) == ["ln"] and os.listdir(stale / "metrics") == ["train.jsonl"]  # nothing moved or made

  moved = sweep.move_aside(str(stale))
  assert re.fullmatch(re.escape(str(stale)) + r"\.stale-\d{8}-\d{6}", moved)
  assert not stale.exists() and open(os.path.join(moved, "metrics", "train.jsonl")).read() == '{"env_steps": 10}\n'


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "examples"))))
def test_every_example_grid_plans_its_runs_and_starts_nothing(name, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a grid's root is relative to the current directory
  code, out, err = run_sweep([os.path.join(ROOT, "examples", name), "--dry-run"], capsys)
  assert code == 0, err
  assert re.search(r"= \d+ runs in ", out) and not os.listdir(tmp_path)
  if name == "sweep_ln.toml":
    assert "2 variants x 2 games x 3 seeds = 12 runs in runs/sweep_ln" in out
    assert f"--preset atari100k --agent.layer-norm --game pong --seed 2 --run-dir {tmp_path}/runs/sweep_ln/ln/pong/seed2" in out
  if name == "sweep_lyle.toml":  # the preset is the variant
    assert "--total-env-steps 2500000 --preset lyle2024 --game pong --seed 2" in out


def checkpoint_state(run_dir: str) -> dict:
  """Steps, finished flag, env steps and file times of a run's checkpoints: what a skipped run must keep."""
  progress = checkpoint_progress(run_dir)
  directory = os.path.join(run_dir, "checkpoints")
  times = {name: os.stat(os.path.join(directory, name)).st_mtime_ns for name in os.listdir(directory)}
  return {"steps": progress.checkpoint_steps, "finished": progress.finished, "env_steps": progress.env_steps, "mtimes": times}


def wait_for_text(path: str, pattern: str, process: subprocess.Popen, timeout_s: float) -> None:
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if os.path.exists(path) and re.search(pattern, open(path, errors="replace").read()):
      return
    if process.poll() is not None:
      pytest.fail(f"the sweep exited ({process.returncode}) before {pattern!r} appeared in {path}:\n{process.stdout.read()}")
    time.sleep(0.5)
  process.kill()
  pytest.fail(f"{pattern!r} did not appear in {path} within {timeout_s} s")


def test_a_real_sweep_runs_in_parallel_skips_when_done_resumes_and_stops_on_sigterm(tmp_path, capsys):
  root = tmp_path / "runs"
  grid_path = tmp_path / "grid.toml"
  grid = write_grid(grid_path, root)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  dqn_dir, ln_dir = str(root / "dqn" / "breakout" / "seed0"), str(root / "ln" / "breakout" / "seed0")

  # 1. Both runs, two at a time.
  done = subprocess.run([sys.executable, "sweep.py", grid, "--parallel", "2"], cwd=ROOT, env=env, text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=400)
  assert done.returncode == 0, done.stdout
  lines = done.stdout.splitlines()
  starts = [i for i, line in enumerate(lines) if line.startswith("[start]")]
  finishes = [i for i, line in enumerate(lines) if line.startswith("[done]")]
  assert len(starts) == 2 and len(finishes) == 2 and max(starts) < min(finishes), done.stdout  # ran side by side
  assert "sweep: 2 runs: 0 already finished (skipped), 0 resumed, 2 started, 0 failed" in done.stdout
  for run_dir in (dqn_dir, ln_dir):
    progress = checkpoint_progress(run_dir)
    assert progress.finished and progress.env_steps >= BUDGET
    log = open(run_dir + ".log").read()  # beside the run directory
    assert "# sweep " in log and f"finished at update" in log
  with open(os.path.join(ln_dir, "config.json")) as handle:
    assert json.load(handle)["agent"]["layer_norm"] is True
  for run_dir in (dqn_dir, ln_dir):  # two runs at once: each has half of the GPU memory one run has alone
    with open(os.path.join(run_dir, "config.json")) as handle:
      saved = json.load(handle)
    assert (saved["gpu_memory_fraction"], saved["probe_gpu_memory_fraction"]) == (0.375, 0.075)
  before = {run_dir: checkpoint_state(run_dir) for run_dir in (dqn_dir, ln_dir)}

  # 2. The same command again: nothing to do, nothing touched.
  code, out, _ = run_sweep([grid, "--parallel", "2"], capsys)
  assert code == 0, out
  assert out.count("[skip]") == 2 and "[start]" not in out and "[resume]" not in out
  assert "sweep: 2 runs: 2 already finished (skipped), 0 resumed, 0 started, 0 failed" in out
  assert {run_dir: checkpoint_state(run_dir) for run_dir in (dqn_dir, ln_dir)} == before

  # 3. A larger budget for ln: it is resumed; SIGTERM to the sweep stops it with a final (unfinished) checkpoint.
  write_grid(grid_path, root, variants={**VARIANTS, "ln": [*VARIANTS["ln"], "--total-env-steps", "20000"]})
  process = subprocess.Popen([sys.executable, "sweep.py", grid], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    wait_for_text(ln_dir + ".log", r"/20,000 env steps", process, timeout_s=180)  # resumed and training
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 130, out
  assert "[skip]     dqn/breakout/seed0" in out and "[resume]   ln/breakout/seed0: finished at" in out
  assert "budget now 20,000" in out and "[stopped]  ln/breakout/seed0" in out
  assert "interrupted: 1 stopped, 0 not started" in out
  assert "stopped by SIGTERM" in open(ln_dir + ".log").read()  # train.py's own clean stop
  stopped = checkpoint_progress(ln_dir)
  assert not stopped.finished and BUDGET <= stopped.env_steps < 20_000
  assert checkpoint_state(dqn_dir) == before[dqn_dir]

  # 4. The same grid again would resume the interrupted run from that checkpoint (step 3 showed a resume training on).
  code, out, _ = run_sweep([grid, "--dry-run"], capsys)
  assert code == 0 and "0 to start" in out
  assert re.search(r"^  skip +dqn/breakout/seed0: finished at", out, re.M), out
  assert re.search(rf"^  resume +ln/breakout/seed0: interrupted at {stopped.env_steps:,} of 20,000 env steps$", out, re.M), out
  assert f"--run-dir {ln_dir} --resume" in out

  # 5. compare.py on the sweep's root: two variants named as the sweep names them, one seed -> no intervals.
  report = tmp_path / "report"
  assert compare.main([str(root), "--out", str(report), "--reps", "200"]) == 0
  with open(report / "summary.json") as handle:
    summary = json.load(handle)
  assert [v["name"] for v in summary["variants"]] == ["dqn", "ln"]
  assert summary["variants"][1]["departures"] == {"agent.layer_norm": True}
  by_variant = {r["variant"]: r for r in summary["runs"]}
  assert by_variant["dqn"]["finished"] and not by_variant["ln"]["finished"]  # the interrupted one: in progress
  assert all(r["score_source"] == "train" and r["score"] is not None for r in summary["runs"])
  assert "**No intervals**" in (report / "report.md").read_text()


def test_a_run_that_exits_with_an_error_is_reported_failed_with_its_error_line(tmp_path, capsys, monkeypatch):
  grid = write_grid(tmp_path / "grid.toml", tmp_path / "runs", variants={"dqn": []})
  failing = [sys.executable, "-c", "import sys; print('training...'); print('error: the emulator broke'); sys.exit(3)"]
  monkeypatch.setattr(sweep.PlannedRun, "command", lambda self: failing)
  code, out, _ = run_sweep([grid], capsys)
  assert code == 1, out
  log = str(tmp_path / "runs" / "dqn" / "breakout" / "seed0.log")
  assert f"[failed]   dqn/breakout/seed0: exit code 3 after" in out and f"error: the emulator broke (log {log})" in out
  assert "sweep: 1 runs: 0 already finished (skipped), 0 resumed, 0 started, 1 failed" in out
  assert "training...\nerror: the emulator broke\n" in open(log).read()


def test_an_existing_run_trained_with_other_settings_is_an_error_before_anything_starts(tmp_path, capsys):
  import numpy as np

  import train
  from common.checkpoints import CheckpointStore
  from training.config import save_config

  root = tmp_path / "runs"
  run_dir = root / "ln" / "breakout" / "seed0"
  run_dir.mkdir(parents=True)
  # The grid's ln run, but trained with 3-step returns (as train.py writes config.json: resolved optimizer values).
  config = train.parse_config([*FLAGS, "--agent.layer-norm", "--agent.n-step", "3", "--game", "breakout", "--run-dir", str(run_dir)])
  save_config(sweep._resolved(config), str(run_dir))
  with CheckpointStore(str(run_dir / "checkpoints")) as store:
    store.save(10, {"w": np.zeros(1)}, {"finished": False, "env_steps": 100})
  grid = write_grid(tmp_path / "grid.toml", root)
  code, out, err = run_sweep([grid], capsys)
  assert code == 2 and out == ""
  assert err.strip() == (f"error: {run_dir} was trained with other settings than the grid's (agent.n_step); "
                         "change the grid back, or move that directory away")
  assert not (root / "dqn").exists()


def test_parallel_runs_divide_the_gpu_memory_one_run_takes_alone():
  """A variant's own share (here 0.5, in both spellings of a flag) or the default, divided by --parallel."""
  import types

  from sweep import gpu_shares

  base = types.SimpleNamespace(gpu_memory_fraction=0.5, probe_gpu_memory_fraction=0.15)
  kept, shares = gpu_shares(["--preset", "smoke", "--gpu-memory-fraction", "0.5", "--agent.layer-norm"], base, 4)
  assert kept == ["--preset", "smoke", "--agent.layer-norm"]
  assert shares == ["--gpu-memory-fraction", "0.125", "--probe-gpu-memory-fraction", "0.0375"]
  kept, shares = gpu_shares(["--gpu-memory-fraction=0.5"], base, 1)
  assert kept == [] and shares == ["--gpu-memory-fraction", "0.5", "--probe-gpu-memory-fraction", "0.15"]
