"""When the learner writes checkpoints, and which it keeps: the checkpoint and probe periods, the updates around
remedy events, the task switches of a continual run.

One part of the learner process (training/learner_process.py). The writing itself is
common.run_dir.RunCheckpoints (the learner state, its counters and the replay, consistent with the streams).
"""

from __future__ import annotations

from common.run_dir import RunCheckpoints, RunDir
from training.config import RunConfig, checkpoint_keep_fn, remedy_probe_steps


def next_checkpoint_step(config: RunConfig, updates: int) -> int:
  """The next update step that is a multiple of the checkpoint period or of the probe period, or (with
  probe_around_remedies) just after a remedy event; the one just before an event is written by
  training.updates.Updates.update."""
  periods = [config.checkpoint_every_updates] + ([config.probe_every_updates] if config.probe_every_updates else [])
  return min(min((updates // period + 1) * period for period in periods), remedy_probe_steps(config, updates)[1])


class CheckpointSchedule:
  """The run's checkpoints (`checkpoints`, a RunCheckpoints) and when the next ones are due.

  Task-switch checkpoints (probe_at_task_switches) are kept and probed; their update -> phase map is the one
  the keep predicate reads, so a checkpoint marked here is never pruned.
  """

  def __init__(self, config: RunConfig, run_dir: RunDir):
    self._config = config
    self._switch_phases: dict[int, int] = {}  # update -> phase of the task-switch checkpoints
    self.checkpoints = RunCheckpoints(
        run_dir, keep_last=config.keep_last_checkpoints, with_replay=config.checkpoint_replay,
        # Probed checkpoints are kept, so the probes can be re-run offline on them.
        keep_every_steps=config.keep_checkpoint_every_updates or config.probe_every_updates or None,
        keep_fn=checkpoint_keep_fn(config, self._switch_phases))
    self._last_saved_step = None
    self._next_step = None
    self._next_switch = None

  def restored(self, step: int) -> None:
    """The run resumed from the checkpoint at `step`: nothing new to save there."""
    self._last_saved_step = step

  def start(self, updates: int, env_steps: int) -> None:
    """Before the first update of this life: the next periodic step, the task-switch checkpoints already on
    disk (a resumed run keeps them) and the next switch to mark."""
    self._next_step = next_checkpoint_step(self._config, updates)
    if not self._config.probe_at_task_switches:
      return
    store = self.checkpoints.store
    for step in store.steps():
      try:
        phase = store.read_metadata(step).get("task_switch")
        if phase is not None:
          self._switch_phases[step] = phase
      except Exception:  # a damaged checkpoint: the restore already said so
        continue
    self._next_switch = self._config.task_schedule.next_switch(env_steps)

  def periodic_due(self, updates: int) -> bool:
    return updates >= self._next_step

  def switch_due(self, env_steps: int) -> int | None:
    """With probe_at_task_switches, once the job's env steps reach the next switch: its phase, else None."""
    if self._next_switch is None or env_steps < self._next_switch:
      return None
    return self._config.task_schedule.phase_at(self._next_switch)

  def wanted(self, updates: int, *, final: bool, task_switch: int | None) -> bool:
    """False for a periodic checkpoint at the update already saved (nothing learned since); a final one or a
    switch rewrites it, so that its metadata says so."""
    return updates != self._last_saved_step or final or task_switch is not None

  def save(self, updates: int, env_steps: int, state, metadata: dict, *, task_switch: int | None,
           probe_inputs, server) -> None:
    """Saves the checkpoint at `updates` (metadata gains its task_switch) and schedules the next ones."""
    self._last_saved_step = updates
    if task_switch is not None:
      self._switch_phases[updates] = task_switch
      self._next_switch = self._config.task_schedule.next_switch(env_steps)
    else:
      task_switch = self._switch_phases.get(updates)
    self.checkpoints.save(updates, state, {**metadata, "task_switch": task_switch}, probe_inputs=probe_inputs,
                          server=server)
    self._next_step = next_checkpoint_step(self._config, updates)
