"""The learner's updates: its state, what one sampled batch does to it, and the checks on what it became.

One part of the learner process (training/learner_process.py); the job channel (training/job_channel.py) and
the checkpoint schedule (training/checkpoint_schedule.py) are the others. This part alone changes the weights.
It counts its updates in the run's counters (`counters["updates"]`, the one key it writes).

No path of an update reads from the device (tests/test_updates.py holds it to that with JAX's transfer guard):
metrics and the divergence watch accumulate on the device, the remedies take the update count from the
counters, and prioritized replay's priorities go to the server from a background thread.
"""

from __future__ import annotations

import collections
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from agents.dqn import transition
from common import faults
from replay.sampler import PriorityUpdater
from training.config import RunConfig, remedy_probe_steps


class Diverged(Exception):
  """A non-finite loss or parameter: the run stops without writing a checkpoint."""

  def __init__(self, step: int, what: str):
    self.step, self.what = step, what
    super().__init__(f"{what} became non-finite at update {step:,}")


class Updates:
  """The learner and its state, updated one sampled batch at a time (with the periodic remedies due then).

  Metrics stay on the device between progress rows (`take_metrics`); the newest batches are kept as the
  probe inputs a checkpoint stores. `counters` is the run's shared dict of counters.
  """

  def __init__(self, config: RunConfig, learner, state, counters: dict, server):
    self._config = config
    self._learner = learner
    self._state = state
    self._counters = counters
    # Prioritized replay: the sampled items' new priorities go back to the server from a background thread.
    self._priorities = PriorityUpdater(server.client(), config.replay) if config.replay.prioritized else None
    agent = config.agent
    self._batches: collections.deque = collections.deque(
        maxlen=-(-config.probe.inputs // (agent.batch_size * agent.updates_per_call)))
    self._watch = DivergenceWatch()
    self._window = MetricsWindow()

  @property
  def state(self):
    return self._state

  def update(self, batch, checkpoint: Callable[[], None]) -> list:
    """One learner call on `batch`; returns the remedy events it applied (agents/dqn/remedies.py). The caller
    tells the sampler the new update count (prioritized replay's beta follows it).

    With probe_around_remedies, `checkpoint()` is called at the update just before a remedy event, so that the
    state the remedy changes is saved for the probes.
    """
    faults.at("update", {"poison-params": self.poison_params})
    config = self._config
    step_before = self._counters["updates"]
    self._state, update_metrics = self._learner.update(self._state, batch.transitions)
    self._batches.append(batch.transitions)
    self._counters["updates"] += config.agent.updates_per_call
    events = []
    if config.agent.has_remedy_events:
      if config.probe_around_remedies and self._counters["updates"] == remedy_probe_steps(config, step_before)[0]:
        checkpoint()
      # The step as counted here, not read from the device: no host sync per update.
      self._state, events = self._learner.apply_remedies(self._state, batch.transitions, step_before,
                                                         step=self._counters["updates"])
    abs_td_error = update_metrics.pop("abs_td_error")
    self._watch.add(update_metrics["loss"], self._counters["updates"])
    self._window.add(update_metrics)
    if self._priorities is not None:
      self._priorities.put(batch.keys, abs_td_error)
    return events

  def settle(self) -> None:
    """Every update's side effects on the server are done (the priorities sent): before a checkpoint."""
    if self._priorities is not None:
      self._priorities.flush()

  def close(self) -> None:
    if self._priorities is not None:
      self._priorities.close()

  def backend(self) -> str:
    """The JAX backend the learner computes on ("cpu", "gpu", "tpu")."""
    return jax.default_backend()

  @property
  def params(self):
    """The online parameters, on the device (the job channel publishes them)."""
    return self._state.params

  def take_metrics(self) -> dict:
    """The learner metrics since the last call (means, q_max the maximum); {} if there were no updates."""
    return self._window.take()

  def check_loss(self) -> None:
    """Raises Diverged if any update's loss was not finite (one scalar read from the device)."""
    step = self._watch.diverged_at()
    if step is not None:
      raise Diverged(step, "the loss")

  def check_finite(self) -> None:
    """Raises Diverged unless every loss so far and every parameter now is finite: before a checkpoint."""
    self.check_loss()
    if not params_finite(self._state.params):
      raise Diverged(self._counters["updates"], "a parameter")

  def probe_inputs(self) -> dict | None:
    """Up to probe.inputs of the latest transitions as host arrays (leading [K] axes flattened)."""
    if not self._batches:
      return None
    batches = jax.device_get([transition.host_fields(t) for t in self._batches])
    lead = np.ndim(batches[0]["a_tm1"])  # [B], or [K, B] with updates_per_call = K
    return {name: np.concatenate([np.reshape(b[name], (-1, *np.shape(b[name])[lead:])) for b in batches])
            [-self._config.probe.inputs:] for name in transition.STORED_FIELDS}

  def poison_params(self) -> None:
    """Fault injection (tests): one parameter becomes NaN, as a diverging update would leave it."""
    leaves, treedef = jax.tree.flatten(self._state.params)
    leaves[0] = jnp.full_like(leaves[0], jnp.nan)
    self._state = self._state._replace(params=jax.tree.unflatten(treedef, leaves))


class MetricsWindow:
  """Learner metrics accumulated on the device between log rows (no host sync per update)."""

  def __init__(self):
    self._sum = None
    self._count = 0

  def add(self, metrics: dict) -> None:
    self._sum = metrics if self._sum is None else _accumulate(self._sum, metrics)
    self._count += 1

  def take(self) -> dict:
    if self._sum is None:
      return {}
    totals = jax.device_get(self._sum)
    row = {key: float(value) if key == "q_max" else float(value) / self._count for key, value in totals.items()}
    self._sum, self._count = None, 0
    return row


@jax.jit
def _accumulate(total: dict, new: dict) -> dict:
  """Running sums (running max for q_max) of the learner's scalar metrics."""
  return {k: jnp.maximum(total[k], new[k]) if k == "q_max" else total[k] + new[k] for k in total}


class DivergenceWatch:
  """Remembers the first update whose loss was not finite, on the device: no host sync per update.

  `diverged_at()` reads it (one scalar); `params_finite(params)` checks every parameter, before a checkpoint.
  """

  def __init__(self):
    self._first = None

  def add(self, loss, update: int) -> None:
    self._first = _first_nonfinite(-1 if self._first is None else self._first, loss, update)

  def diverged_at(self) -> Optional[int]:
    """The update (counted as train.py counts them) whose loss was the first non-finite one, or None."""
    if self._first is None:
      return None
    first = int(self._first)
    return None if first < 0 else first


def params_finite(params) -> bool:
  return bool(_all_finite(params))


@jax.jit
def _first_nonfinite(first, loss, update):
  return jnp.where((first < 0) & ~jnp.isfinite(loss), update, first)


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))
