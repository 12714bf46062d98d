"""Checkpoints of a run: `<run_dir>/checkpoints/<step>/`, written atomically with Orbax.

Each checkpoint holds one pytree (`state`: params, target params, optimizer
state, RNG, counters, ...), one JSON dict (`metadata`) and, optionally, the
plasticity probes' inputs (`probe_inputs`: a dict of numpy arrays, a sample of
replay transitions taken when the checkpoint was written, so that probes run
during training and later offline see the same data). Orbax writes into a
temporary directory and renames it when complete, so a crash mid-save leaves
no `<step>/` behind. The newest `keep_last` checkpoints are kept, plus every
one whose step is a multiple of `keep_every_steps` (or, given `keep_fn`, every step it keeps).

`restore` takes the newest checkpoint that loads. A corrupt newest one (a
truncated or missing file) is skipped with a warning in favour of the one
before it; nothing on disk is deleted or changed by a restore.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)


class NoCheckpointError(FileNotFoundError):
  """The directory holds no checkpoint that can be loaded."""


class CheckpointStore:
  def __init__(self, directory: str, *, keep_last: int = 3, keep_every_steps: Optional[int] = None,
               keep_fn: Optional[Callable[[int], bool]] = None, read_only: bool = False):
    if keep_last < 1:
      raise ValueError(f"keep_last={keep_last} must be at least 1")
    self.directory = os.path.abspath(directory)
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    # Orbax warns that a read-only manager will not save or delete, and that should_keep_fn replaces keep_period:
    # both are the point.
    if read_only or keep_fn is not None:
      absl_logger.setLevel(logging.ERROR)
    try:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=keep_last,
          keep_period=None if keep_fn is not None else keep_every_steps,
          should_keep_fn=keep_fn,  # replaces keep_period when given
          create=not read_only,
          read_only=read_only,
          enable_async_checkpointing=False,
      )
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_names=("state", "metadata", "probe_inputs"))
    finally:
      absl_logger.setLevel(level)

  def save(self, step: int, state: Any, metadata: dict, *, probe_inputs: Optional[dict] = None,
           replace: bool = False) -> str:
    """Writes checkpoint `step` and returns its directory once it is complete on disk.

    `probe_inputs` (name -> numpy array) is stored beside the state in the same atomic save.
    `replace=True` rewrites an existing checkpoint of the same step (same learner state, newer
    counters, e.g. the final one of a run); the older checkpoints stay meanwhile.
    """
    if replace and step in self.steps():
      self._manager.delete(step)
    # Orbax stores arrays only: counters given as Python or numpy scalars become 0-d arrays.
    state = jax.tree.map(lambda x: np.asarray(x) if isinstance(x, (int, float, np.generic)) else x, state)
    items = {"state": ocp.args.StandardSave(state), "metadata": ocp.args.JsonSave(metadata)}
    if probe_inputs is not None:
      items["probe_inputs"] = ocp.args.StandardSave({key: np.asarray(value) for key, value in probe_inputs.items()})
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    self._manager.wait_until_finished()
    return os.path.join(self.directory, str(step))

  def steps(self) -> list[int]:
    """Steps of the complete checkpoints, oldest first."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def restore(self, template: Any, step: Optional[int] = None) -> tuple[Any, dict, int]:
    """(state shaped like `template`, metadata, step): checkpoint `step`, or the newest that loads."""
    steps = self.steps()
    if step is not None:
      if step not in steps:
        raise NoCheckpointError(f"no checkpoint for step {step} in {self.directory} (have: {steps or 'none'})")
      return (*self._load(step, template), step)
    for candidate in reversed(steps):
      try:
        return (*self._load(candidate, template), candidate)
      except Exception as error:  # a damaged checkpoint: fall back to the previous one
        logger.warning("skipping checkpoint %s/%d: it does not load (%s: %s)", self.directory, candidate, type(error).__name__, error)
    raise NoCheckpointError(f"no loadable checkpoint in {self.directory}" + ("" if steps else " (it has none)"))

  def read_metadata(self, step: int) -> dict:
    """The JSON metadata of checkpoint `step`, without loading its arrays."""
    with self._reading(step):
      restored = self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    return dict(restored.metadata)

  def read_probe_inputs(self, step: int) -> dict:
    """The probe inputs saved with checkpoint `step` (name -> numpy array); NoCheckpointError if it has none."""
    with self._reading(step):
      if not os.path.isdir(os.path.join(self.directory, str(step), "probe_inputs")):
        raise NoCheckpointError(f"checkpoint {self.directory}/{step} was saved without probe inputs")
      restored = self._manager.restore(step, args=ocp.args.Composite(probe_inputs=ocp.args.StandardRestore()))
    return {key: np.asarray(value) for key, value in restored.probe_inputs.items()}

  def _load(self, step: int, template: Any) -> tuple[Any, dict]:
    with self._reading(step):
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template), metadata=ocp.args.JsonRestore())
      )
    return restored.state, dict(restored.metadata)

  @contextlib.contextmanager
  def _reading(self, step: int) -> Iterator[None]:
    """A read of checkpoint `step` that fails because the checkpoint went meanwhile (the writing run's retention
    deletes old ones while readers such as the probe CLI read them) raises NoCheckpointError saying so;
    FileNotFoundError inside becomes NoCheckpointError; any other failure is the reader's to name."""
    try:
      yield
    except Exception as error:
      if not os.path.isdir(os.path.join(self.directory, str(step))):
        raise NoCheckpointError(f"checkpoint {step} in {self.directory} was deleted while it was read (the "
                                "training run keeps only its newest checkpoints)") from error
      if isinstance(error, FileNotFoundError) and not isinstance(error, NoCheckpointError):
        raise NoCheckpointError(str(error)) from error
      raise

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "CheckpointStore":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
