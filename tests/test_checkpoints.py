"""Run checkpoints on disk (Orbax): round trip, retention, damaged and unfinished checkpoints."""

import glob
import logging
import os

import jax
import numpy as np
import pytest

from agents.dqn import DQNConfig, DQNLearner, TrainState, Transition
from common.checkpoints import CheckpointStore, NoCheckpointError


@pytest.fixture(scope="module")
def trained_state():
  learner = DQNLearner(DQNConfig(torso="mlp", mlp_hidden_sizes=(8,), optimizer="adam", weight_decay=1e-3), 3)
  state = learner.init(jax.random.PRNGKey(0), np.zeros((4, 5), np.float32))
  rng = np.random.default_rng(0)
  batch = Transition(rng.normal(size=(4, 5)).astype(np.float32), np.array([0, 1, 2, 0], np.int32),
                     np.ones(4, np.float32), np.full(4, 0.99, np.float32), rng.normal(size=(4, 5)).astype(np.float32))
  for _ in range(3):  # non-trivial optimizer state and step
    state, _ = learner.update(state, batch)
  return state


def assert_same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_restores_the_train_state_exactly(tmp_path, trained_state):
  with CheckpointStore(str(tmp_path / "checkpoints")) as store:
    path = store.save(3, {"train": trained_state, "env_steps": 1200}, {"env_steps": 1200, "note": "x"})
    assert os.path.isdir(path) and path.endswith(os.path.join("checkpoints", "3"))
    template = {"train": trained_state, "env_steps": np.zeros((), np.int64)}
    state, metadata, step = store.restore(template)
  assert step == 3 and metadata == {"env_steps": 1200, "note": "x"}
  assert isinstance(state["train"], TrainState)
  assert_same_tree(state["train"], trained_state)
  assert int(state["env_steps"]) == 1200


def test_replace_rewrites_the_same_step_with_new_metadata_and_keeps_older_ones(tmp_path, trained_state):
  with CheckpointStore(str(tmp_path)) as store:
    store.save(10, trained_state, {"finished": False})
    store.save(20, trained_state, {"finished": False, "env_steps": 5})
    store.save(20, trained_state, {"finished": True, "env_steps": 7}, replace=True)
    assert store.steps() == [10, 20]
    assert store.read_metadata(20) == {"finished": True, "env_steps": 7}
    state, _, step = store.restore(trained_state)
  assert step == 20
  assert_same_tree(state, trained_state)


def test_keeps_the_last_few_plus_every_mth(tmp_path, trained_state):
  with CheckpointStore(str(tmp_path), keep_last=2, keep_every_steps=100) as store:
    for step in (50, 100, 150, 200, 250, 300, 350):
      store.save(step, trained_state, {})
    assert store.steps() == [100, 200, 300, 350]
    assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [100, 200, 300, 350]


def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning_and_left_on_disk(tmp_path, trained_state, caplog):
  with CheckpointStore(str(tmp_path)) as store:
    store.save(10, trained_state, {"at": 10})
    store.save(20, trained_state._replace(step=trained_state.step + 7), {"at": 20})
  for path in glob.glob(str(tmp_path / "20" / "state" / "**" / "*"), recursive=True):
    if os.path.isfile(path) and "/d/" in path:
      with open(path, "wb") as f:
        f.write(b"garbage")
  with caplog.at_level(logging.WARNING), CheckpointStore(str(tmp_path)) as store:
    state, metadata, step = store.restore(trained_state)
    assert store.steps() == [10, 20]  # nothing deleted
  assert step == 10 and metadata == {"at": 10}
  assert_same_tree(state, trained_state)
  assert any("skipping checkpoint" in r.message and "/20" in r.message for r in caplog.records)


def test_an_unfinished_save_is_not_a_checkpoint(tmp_path, trained_state):
  with CheckpointStore(str(tmp_path)) as store:
    store.save(10, trained_state, {"at": 10})
  # What a save killed midway leaves: Orbax's temporary directory, never renamed to `30/`.
  unfinished = tmp_path / "30.orbax-checkpoint-tmp-1763770000000000"
  (unfinished / "state").mkdir(parents=True)
  (unfinished / "state" / "partial").write_bytes(b"\0" * 10)
  with CheckpointStore(str(tmp_path), read_only=True) as store:
    assert store.steps() == [10]
    assert store.restore(trained_state)[2] == 10
    assert store.read_metadata(10) == {"at": 10}


def test_no_checkpoint_and_unknown_step_give_clear_errors(tmp_path, trained_state):
  with CheckpointStore(str(tmp_path / "empty")) as store:
    with pytest.raises(NoCheckpointError, match="no loadable checkpoint in .*empty \\(it has none\\)"):
      store.restore(trained_state)
    store.save(5, trained_state, {})
    with pytest.raises(NoCheckpointError, match="no checkpoint for step 7 .*have: \\[5\\]"):
      store.restore(trained_state, step=7)
