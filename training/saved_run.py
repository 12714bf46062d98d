"""A saved run opened for reading: its `config.json`, the learner that config describes, and its checkpoints.

Every reader of a run's checkpoints opens it here: `eval.py`, the probe worker and the offline probe CLI
(`training/probe_worker.py`), and `bench/learn.py`. Restoring checks the checkpoint's saved shapes against the
network config.json describes before it reads any array, so a config.json edited after training is named in one
line (`ConfigError`) instead of failing inside Orbax.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from common.checkpoints import CheckpointStore, NoCheckpointError
from common.run_dir import RunDir
from common.validation import ConfigError
from training.config import RunConfig, load_config, make_learner


class SavedRun:
  """The run directory `run_dir`, read-only. `host_template`: restore into numpy arrays, so that a checkpoint
  saved from a GPU restores on any machine (eval.py); otherwise into arrays on JAX's default device."""

  def __init__(self, run_dir: str, *, host_template: bool = False):
    self.run_dir = run_dir
    self.run = RunDir(run_dir)
    self.config: RunConfig = load_config(run_dir)
    if not os.path.isdir(self.run.checkpoints_dir):
      raise ConfigError(f"run directory {run_dir} has no checkpoints ({self.run.checkpoints_dir} does not exist)")
    self.store = CheckpointStore(self.run.checkpoints_dir, read_only=True)
    self._host_template = host_template

  @functools.cached_property
  def _learner_and_template(self) -> tuple[Any, Any]:
    learner, template = make_learner(self.config)
    return learner, (jax.device_get(template) if self._host_template else template)

  @property
  def learner(self):
    """The run's `DQNLearner` (built on first use: it steps an emulator once and initialises a network)."""
    return self._learner_and_template[0]

  @property
  def template(self):
    """A fresh `TrainState` of the run's agent, the shape every checkpoint restores into."""
    return self._learner_and_template[1]

  def steps(self, wanted: Optional[int] = None) -> list[int]:
    """The complete checkpoints' steps, oldest first; ConfigError if there are none or `wanted` is not one."""
    steps = self.store.steps()
    if not steps:
      raise ConfigError(f"run directory {self.run_dir} has no checkpoints ({self.store.directory} holds no complete one)")
    if wanted is not None and wanted not in steps:
      raise ConfigError(f"no checkpoint for step {wanted} in {self.store.directory}; steps there: {', '.join(map(str, steps))}")
    return steps

  def restore(self, step: Optional[int] = None) -> tuple[Any, dict, int]:
    """(state, metadata, step) of checkpoint `step`, or of the newest that loads. ConfigError when the checkpoint
    does not match config.json's agent or does not load; NoCheckpointError when `step` is not (or no longer) there."""
    candidate = step if step is not None else self.steps()[-1]
    # Checked first, from metadata: a config.json edited to another network makes every checkpoint fail to load,
    # and this names the difference instead of skipping them all one by one.
    saved = _saved_state_metadata(os.path.join(self.store.directory, str(candidate)))
    if saved is not None and state_differences(saved, self.template):
      raise self._mismatch_error(candidate, state_differences(saved, self.template))
    try:
      state, metadata, restored_step = self.store.restore(self.template, step)
    except (NoCheckpointError, FileNotFoundError):
      raise  # deleted or being replaced meanwhile: the caller decides (skip it, try again, or say so)
    except Exception as error:  # Orbax's own errors for a damaged checkpoint
      first_line = (str(error).splitlines() or [""])[0][:300]
      raise ConfigError(f"checkpoint {candidate} in {self.store.directory} does not load "
                        f"({type(error).__name__}: {first_line})") from None
    differences = state_differences(state, self.template)
    if differences:  # Orbax restores a numpy template's leaves with their saved shapes, so check them
      raise self._mismatch_error(restored_step, differences)
    return state, metadata, restored_step

  def _mismatch_error(self, step: int, differences: list[str]) -> ConfigError:
    agent = self.config.agent
    network = f"torso={agent.torso}, layer_norm={agent.layer_norm}, head={agent.head}"
    if agent.torso == "mlp":
      network += f", mlp_hidden_sizes={tuple(agent.mlp_hidden_sizes)}"
    what = "network" if differences[0].startswith("params/") else f"agent (optimizer={agent.optimizer})"
    return ConfigError(f"checkpoint {step} does not match the {what} in {self.run.config_path} ({network}): "
                       f"{'; '.join(differences)}. Was config.json edited after training?")

  def close(self) -> None:
    self.store.close()

  def __enter__(self) -> "SavedRun":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def open_run(run_dir: str, *, host_template: bool = False) -> SavedRun:
  """`SavedRun(run_dir)`: config, learner and checkpoints of a run directory; ConfigError if it has none."""
  return SavedRun(run_dir, host_template=host_template)


def state_differences(saved: Any, expected: Any, limit: int = 3) -> list[str]:
  """How the state tree `saved` differs from `expected` (missing, extra, reshaped leaves), at most `limit` lines.

  Only the network's params are named when they differ (the optimizer state then differs the same way).
  """
  saved_shapes, expected_shapes = _leaf_shapes(saved), _leaf_shapes(expected)
  differences = [(key, f"{key} is missing from the checkpoint") for key in set(expected_shapes) - set(saved_shapes)]
  differences += [(key, f"{key} is in the checkpoint but not in config.json's agent")
                  for key in set(saved_shapes) - set(expected_shapes)]
  differences += [(key, f"{key} has shape {saved_shapes[key]} in the checkpoint, {expected_shapes[key]} from config.json")
                  for key in set(saved_shapes) & set(expected_shapes) if saved_shapes[key] != expected_shapes[key]]
  in_params = [item for item in differences if item[0].startswith("params/")]
  lines = [line for _, line in sorted(in_params or differences)]
  return lines[:limit] + ([f"and {len(lines) - limit} more"] if len(lines) > limit else [])


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """'params/torso/dense0/kernel' -> shape, for every leaf (arrays, or Orbax's array metadata)."""

  def name(path) -> str:
    return "/".join(str(next(getattr(key, attr) for attr in ("key", "name", "idx") if hasattr(key, attr))) for key in path)

  return {name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _saved_state_metadata(checkpoint_dir: str) -> Optional[Any]:
  """The tree of array shapes saved in `checkpoint_dir`, from Orbax's metadata (no arrays read); None if unreadable."""
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      return dict(checkpointer.metadata(os.path.join(checkpoint_dir, "state")))
  except Exception:  # a damaged checkpoint: the restore says so
    return None
