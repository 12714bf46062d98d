"""Plasticity probes on real checkpoints: the probe worker train.py starts, and the offline CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from common.checkpoints import CheckpointStore
from common.metrics import read_rows
from tests.conftest import ROOT, tree_digest

# The keys issue 5 asks every plasticity.jsonl row to have.
REQUIRED_KEYS = (
    "step", "env_steps", "target_fit_final_loss", "target_fit_baseline", "hessian_max_eigenvalue",
    "grad_cov_mean_offdiag", "grad_cov_frac_negative", "srank", "effective_rank", "dormant_frac_tau_0", "dormant_frac_tau_0025",
    "dormant_frac_tau_0_layer_mean", "dormant_frac_tau_0025_layer_mean", "param_norm",
)


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "plasticity", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)


def test_the_worker_probes_every_probe_checkpoint_during_training(smoke_run_dir):
  rows = read_rows(os.path.join(smoke_run_dir, "metrics", "plasticity.jsonl"))
  store = CheckpointStore(os.path.join(smoke_run_dir, "checkpoints"), read_only=True)
  steps = store.steps()
  final = steps[-1]
  assert store.read_metadata(final)["finished"]
  expected = sorted({s for s in steps if s % 100 == 0} | {final})
  assert [row["step"] for row in rows] == expected  # each once, in order, the final one included
  for row in rows:
    assert all(key in row for key in REQUIRED_KEYS), sorted(set(REQUIRED_KEYS) - set(row))
    assert row["env_steps"] == store.read_metadata(row["step"])["env_steps"]
    assert row["probe_inputs"] == 64
    # The sizes it was probed with, as the run set them (conftest's flags), and where.
    assert row["probe_backend"] == "cpu"
    assert row["probe_sizes"] == {"num_targets": 2, "probe_steps": 50, "target_batch_size": 64, "hessian_examples": 32,
                                  "hessian_iterations": 5, "grad_cov_examples": 32}
    assert row["target_fit_final_loss"] >= 0 and row["target_fit_baseline"] > 0
    assert 0 <= row["dormant_frac_tau_0"] <= row["dormant_frac_tau_0025"] <= 1
    assert 0 <= row["grad_cov_frac_negative"] <= 1 and -1 <= row["grad_cov_mean_offdiag"] <= 1
    assert 1 <= row["srank"] <= 64  # at most the smoke MLP's 64 hidden units
    # Per-layer keys of the smoke MLP: one hidden layer `dense0` with its LayerNorm, and the head.
    layer_norms = {key: value for key, value in row.items() if key.startswith("param_norm/")}
    assert sorted(layer_norms) == ["param_norm/head", "param_norm/torso/dense0", "param_norm/torso/dense0_ln"]
    assert row["param_norm"] == pytest.approx(float(np.sqrt(np.sum(np.square(list(layer_norms.values()))))), rel=1e-6)
    assert "dormant_frac_tau_0/dense0" in row and "srank/dense0" in row
    assert row["effective_lr/torso/dense0"] > 0  # dense0 feeds a LayerNorm
  assert "param_change_norm" not in rows[0] and rows[1]["param_change_norm"] > 0  # the first has no predecessor
  heatmaps = sorted(os.listdir(os.path.join(smoke_run_dir, "plasticity")))
  assert heatmaps == [f"grad_cov_{step}.png" for step in sorted(expected, key=str)]


def test_offline_probing_of_a_checkpoint_agrees_with_the_online_row(smoke_run_dir, tmp_path):
  online = {row["step"]: row for row in read_rows(os.path.join(smoke_run_dir, "metrics", "plasticity.jsonl"))}
  step = sorted(online)[1]  # has a predecessor: the parameter change is compared too
  before = tree_digest(smoke_run_dir), modification_times(smoke_run_dir)
  out = str(tmp_path / "offline.jsonl")
  done = run_cli([smoke_run_dir, "--steps", str(step), "--out", out])
  assert done.returncode == 0, done.stderr[-3000:]
  # With --out, nothing is written into the run: the heatmap goes beside the rows.
  assert (tree_digest(smoke_run_dir), modification_times(smoke_run_dir)) == before
  assert os.listdir(tmp_path / "offline_figures") == [f"grad_cov_{step}.png"]
  (offline,) = read_rows(out)
  for key, value in online[step].items():
    if key == "probe_wall_s":
      continue
    if isinstance(value, str):  # probe_backend
      assert offline[key] == value, key
      continue
    assert offline[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
  assert set(offline) == set(online[step])


def modification_times(path: str) -> dict[str, int]:
  """Each file's mtime: a file written again with the same bytes (a heatmap of the same numbers) changes it."""
  return {os.path.join(folder, name): os.stat(os.path.join(folder, name)).st_mtime_ns
          for folder, _, files in os.walk(path) for name in files if not name.endswith(".lock")}


def test_offline_cli_fills_in_what_the_run_did_not_probe(smoke_run_dir, tmp_path):
  run_dir = str(tmp_path / "run")
  shutil.copytree(smoke_run_dir, run_dir)
  path = os.path.join(run_dir, "metrics", "plasticity.jsonl")
  rows = read_rows(path)
  with open(path, "w") as handle:  # as if the run had been stopped before its last probe
    handle.writelines(json.dumps(row) + "\n" for row in rows[:-1])
  done = run_cli([run_dir])
  assert done.returncode == 0, done.stderr[-3000:]
  assert "probed 1 checkpoint(s)" in done.stdout
  assert [row["step"] for row in read_rows(path)] == [row["step"] for row in rows]
  again = run_cli([run_dir])
  assert again.returncode == 0 and "probed 0 checkpoint(s)" in again.stdout


def test_offline_cli_bad_inputs_give_one_line_and_exit_2(smoke_run_dir, tmp_path, capsys):
  from plasticity.__main__ import main  # in this process: the same code path as `python -m plasticity`, faster

  def run(args: list[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err

  code, err = run([str(tmp_path / "nope")])
  assert code == 2 and err.strip().startswith("error: run directory") and len(err.strip().splitlines()) == 1

  not_a_run = tmp_path / "empty"
  not_a_run.mkdir()
  code, err = run([str(not_a_run)])
  assert code == 2 and "is not a run directory" in err

  no_checkpoints = tmp_path / "fresh"
  no_checkpoints.mkdir()
  shutil.copy(os.path.join(smoke_run_dir, "config.json"), no_checkpoints / "config.json")
  code, err = run([str(no_checkpoints)])
  assert code == 2 and "no checkpoint to probe" in err, err[-2000:]

  before = tree_digest(smoke_run_dir)
  code, err = run([smoke_run_dir, "--steps", "7"])
  assert code == 2 and "no probe checkpoint for step(s) [7]" in err
  assert tree_digest(smoke_run_dir) == before

  edited = tmp_path / "edited"  # config.json edited after training to another network
  shutil.copytree(smoke_run_dir, edited)
  with open(edited / "config.json") as handle:
    config = json.load(handle)
  config["agent"]["layer_norm"] = not config["agent"]["layer_norm"]
  with open(edited / "config.json", "w") as handle:
    json.dump(config, handle)
  code, err = run([str(edited), "--out", str(tmp_path / "rows.jsonl")])
  assert code == 2 and len(err.strip().splitlines()) == 1, err[-3000:]
  assert "does not match the network in" in err and "Was config.json edited after training?" in err


def test_a_checkpoint_deleted_while_the_offline_cli_reads_it_is_skipped_in_one_line(smoke_run_dir, tmp_path, capsys,
                                                                                    monkeypatch):
  """The run's retention deletes checkpoints while it trains: one that goes between the listing and the read is
  skipped with a line that says so, and the others are probed."""
  from plasticity.__main__ import main

  run_dir = str(tmp_path / "run")
  shutil.copytree(smoke_run_dir, run_dir)
  steps = [row["step"] for row in read_rows(os.path.join(run_dir, "metrics", "plasticity.jsonl"))]
  # One goes as Orbax starts to read its state (after its shapes were checked), one between its state and its
  # probe inputs. (The smoke run has 3 to 5 probed checkpoints, as fast as its machine trains.)
  assert len(steps) >= 3, steps
  wanted = steps[:4]
  during_state, during_inputs = steps[1], steps[2]
  load, read_probe_inputs = CheckpointStore._load, CheckpointStore.read_probe_inputs

  def delete_then(read, doomed):
    def read_while_retention_deletes(self, step, *args):
      if step == doomed:
        shutil.rmtree(os.path.join(run_dir, "checkpoints", str(step)))
      return read(self, step, *args)
    return read_while_retention_deletes

  monkeypatch.setattr(CheckpointStore, "_load", delete_then(load, during_state))
  monkeypatch.setattr(CheckpointStore, "read_probe_inputs", delete_then(read_probe_inputs, during_inputs))
  out = str(tmp_path / "rows.jsonl")
  code = main([run_dir, "--steps", *map(str, wanted), "--out", out])
  printed = capsys.readouterr()
  assert code == 0, printed.err[-3000:]
  for doomed in (during_state, during_inputs):
    assert f"skipping step {doomed:,}: checkpoint {doomed} in {run_dir}/checkpoints was deleted while it was read" \
        in printed.out, printed.out
  assert "Traceback" not in printed.err
  assert [row["step"] for row in read_rows(out)] == [step for step in wanted if step not in (during_state, during_inputs)]


def test_every_probe_computes_in_full_float32_precision(monkeypatch):
  """On a GPU, JAX's default matmul precision is TF32; the probes ask for the highest on every backend, so their
  rows are comparable across backends and online with offline."""
  import jax

  from plasticity import probes

  seen = []

  class Stop(Exception):
    pass

  def record_precision(*args, **kwargs):
    seen.append(jax.config.jax_default_matmul_precision)
    raise Stop

  monkeypatch.setattr(probes, "target_fit_probe", record_precision)
  inputs = {"obs_tm1": np.zeros((2, 4)), "a_tm1": np.zeros(2, np.int32), "r_t": np.zeros(2, np.float32),
            "discount_t": np.ones(2, np.float32), "obs_t": np.zeros((2, 4))}
  with pytest.raises(Stop):
    learner = types.SimpleNamespace(network=None, optimizer=None)
    probes.probe_checkpoint(learner, types.SimpleNamespace(params=None), inputs, None, probes.ProbeConfig().resolved("cpu"),
                            step=1)
  assert seen == ["highest"] and jax.config.jax_default_matmul_precision != "highest"  # only inside


class _FinishingSupervisor:
  """Stands in for train.py's probe supervisor: a worker that never fails and finishes after `checks` checks."""

  def __init__(self, checks: int):
    self.checks = checks

  def all_finished(self) -> bool:
    return self.checks <= 0

  def consecutive_failures(self, name: str) -> int:
    return 0

  def check(self) -> None:
    self.checks -= 1


def test_a_finished_run_waiting_for_its_probes_says_how_many_are_left_and_about_how_long(
    smoke_run_dir, tmp_path, capsys, monkeypatch):
  import threading
  import types

  from training import learner_process
  from training.config import load_config
  from training.progress import duration

  run_dir = str(tmp_path / "run")
  shutil.copytree(smoke_run_dir, run_dir)
  path = os.path.join(run_dir, "metrics", "plasticity.jsonl")
  rows = read_rows(path)
  with open(path, "w") as handle:  # the final checkpoint is not probed yet
    handle.writelines(json.dumps(row) + "\n" for row in rows[:-1])
  mean_s = float(np.mean([row["probe_wall_s"] for row in rows[:-1]]))
  monkeypatch.setattr(learner_process, "PROBE_WAIT_REPORT_EVERY_S", 0.0)  # a line at each poll, not every 30 s
  stop = types.SimpleNamespace(event=threading.Event())
  store = CheckpointStore(os.path.join(run_dir, "checkpoints"), read_only=True)
  try:
    learner_process.wait_for_probes(_FinishingSupervisor(checks=2), stop, run_dir, store, load_config(run_dir))
  finally:
    store.close()
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2, lines
  assert lines[0].startswith("waiting for the probe worker: 1 checkpoint left to probe, about ")
  assert f"({duration(mean_s)} each, the mean of the {len(rows) - 1} done) (Ctrl-C skips; " in lines[0]
  assert lines[1].startswith("still waiting for the probe worker: 1 checkpoint left to probe")
