import glob
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from common.metrics import MetricsLog, read_rows


def test_rows_are_plain_json_flushed_at_once_and_appended_across_restarts(tmp_path):
  log = MetricsLog(str(tmp_path), tensorboard=False)
  log.write("train", {"env_steps": np.int64(400), "step": 100, "loss": jnp.float32(0.25), "q_mean": np.float32(1.5)})
  # Flushed: readable before close (a killed run keeps every finished row).
  assert read_rows(log.path("train")) == [{"env_steps": 400, "step": 100, "loss": 0.25, "q_mean": 1.5}]
  log.close()
  with MetricsLog(str(tmp_path), tensorboard=False) as resumed:
    resumed.write("train", {"env_steps": 800, "step": 200, "loss": 0.125})
    resumed.write("episodes", {"env_steps": 812, "return": -21.0, "length": 764, "actor": 1})
  rows = read_rows(str(tmp_path / "metrics" / "train.jsonl"))
  assert [r["step"] for r in rows] == [100, 200]
  assert read_rows(str(tmp_path / "metrics" / "episodes.jsonl"), keep=["return"]) == [{"return": -21.0}]
  with open(tmp_path / "metrics" / "train.jsonl") as f:
    assert all(isinstance(json.loads(line), dict) for line in f)


def test_a_torn_last_line_is_skipped_but_a_damaged_middle_line_is_an_error(tmp_path):
  path = tmp_path / "eval.jsonl"
  path.write_text('{"env_steps": 1, "return": 3}\n{"env_steps": 2, "ret')
  assert read_rows(str(path)) == [{"env_steps": 1, "return": 3}]
  path.write_text('{"env_steps": 1}\nnot json\n{"env_steps": 3}\n')
  with pytest.raises(ValueError, match="eval.jsonl:2"):
    read_rows(str(path))
  assert read_rows(str(tmp_path / "missing.jsonl")) == []


def test_scalars_reach_tensorboard_at_their_env_step(tmp_path):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  with MetricsLog(str(tmp_path)) as log:
    for env_steps, loss in [(100, 1.0), (200, 0.5)]:
      log.write("train", {"env_steps": env_steps, "loss": loss, "note": "text is not a scalar", "nan": float("nan")})
  (events_dir,) = {os.path.dirname(p) for p in glob.glob(str(tmp_path / "tb" / "**" / "events.*"), recursive=True)}
  accumulator = EventAccumulator(events_dir)
  accumulator.Reload()
  assert set(accumulator.Tags()["scalars"]) == {"train/loss"}
  assert [(e.step, e.value) for e in accumulator.Scalars("train/loss")] == [(100, 1.0), (200, 0.5)]
