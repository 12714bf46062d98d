"""Learner-side sampling: Reverb -> `Transition` batches as device arrays, prepared ahead of time.

Reverb's C++ `TrajectoryDataset` streams items (`replay.sampler_workers` streams, by
default by the host's cores) and tf.data batches them; a background thread copies each batch to the device, moves the
stacked frames to channels-last there (a jitted transpose: free on a GPU, and
cheaper than in tf.data on a CPU), and keeps up to `prefetch_batches` batches
queued, so the update never waits on Python when data is available.

With prioritized replay each batch also carries the sampled keys (for
`update_priorities`) and importance weights w_i = (N * P(i))^-beta / max_j w_j
(Schaul et al. 2016, sec. 3.4), beta taken from `ReplayConfig` at the learner
step the sampler was last told about.
"""

from __future__ import annotations

import queue
import threading
from typing import NamedTuple, Optional

import jax
import numpy as np
import reverb
import tensorflow as tf

from agents.dqn import transition
from agents.dqn.transition import Transition
from replay.config import ReplayConfig
from replay.server import REPLAY_TABLE


class SampledBatch(NamedTuple):
  transitions: Transition  # device arrays; leading [K] axis when updates_per_call = K > 1
  keys: np.ndarray  # uint64[(K,) B], Reverb item keys
  probabilities: np.ndarray  # float64[(K,) B], sampling probabilities


def importance_weights(probabilities: np.ndarray, table_size: np.ndarray, beta: float) -> np.ndarray:
  """(N * P(i))^-beta, normalised so the largest weight in each batch is 1."""
  weights = np.power(table_size.astype(np.float64) * probabilities, -beta)
  return (weights / weights.max(axis=-1, keepdims=True)).astype(np.float32)


class Sampler:
  """Iterates over `SampledBatch`es from the `replay` table of the server at `address`."""

  _SENTINEL = object()

  def __init__(
      self,
      address: str,
      config: ReplayConfig,
      *,
      batch_size: int,
      updates_per_call: int = 1,
      device: Optional[jax.Device] = None,
      rate_limiter_timeout_ms: int = 1_000,
      bounds: Optional[transition.Bounds] = None,
  ):
    """`bounds`: what the job's transitions can hold; sampled items outside are clamped into them and counted in
    `out_of_bounds` (agents/dqn/transition.clamp_to_bounds)."""
    self._config = config
    self._bounds = bounds
    self.out_of_bounds = 0  # transitions clamped so far (read by the learner; written by the sampler's thread)
    self._device = device
    self._update_step = 0
    self.workers = config.resolved_sampler_workers()
    dataset = reverb.TrajectoryDataset.from_table_signature(
        server_address=address,
        table=REPLAY_TABLE,
        max_in_flight_samples_per_worker=config.resolved_in_flight_per_worker(batch_size),
        num_workers_per_iterator=self.workers,
        rate_limiter_timeout_ms=rate_limiter_timeout_ms,
    )
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if updates_per_call > 1:
      dataset = dataset.batch(updates_per_call, drop_remainder=True)
    self._dataset = dataset.prefetch(config.sampler_dataset_prefetch)
    self._queue: queue.Queue = queue.Queue(maxsize=config.prefetch_batches)
    self._stop = threading.Event()
    self._error: Optional[BaseException] = None
    self._thread = threading.Thread(target=self._run, name="replay-sampler", daemon=True)
    self._thread.start()

  def set_update_step(self, step: int) -> None:
    """Tells the sampler the learner's step, for the importance-sampling exponent schedule."""
    self._update_step = int(step)

  def __iter__(self) -> "Sampler":
    return self

  def __next__(self) -> SampledBatch:
    while True:
      batch = self.poll(timeout_s=0.1)
      if batch is not None:
        return batch

  def poll(self, timeout_s: float = 0.0) -> Optional[SampledBatch]:
    """The next batch, or None if none is ready within `timeout_s` (the table may be warming up).

    Raises StopIteration once closed, RuntimeError if sampling failed.
    """
    try:
      item = self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
    except queue.Empty:
      if self._error is not None:
        raise RuntimeError("replay sampling failed") from self._error
      if self._stop.is_set():
        raise StopIteration
      return None
    if item is self._SENTINEL:
      if self._error is not None:
        raise RuntimeError("replay sampling failed") from self._error
      raise StopIteration
    return item

  def _run(self) -> None:
    try:
      iterator = iter(self._dataset)
      while not self._stop.is_set():
        try:
          sample = next(iterator)
        except (StopIteration, tf.errors.DeadlineExceededError):
          # Reverb ends the dataset at the first rate-limiter timeout (the table is
          # below min_replay_size, or the learner is ahead of the actors). The timeout
          # only exists so this thread can notice `close()`: reopen and wait again.
          iterator = iter(self._dataset)
          continue
        batch = self._convert(sample)
        while not self._stop.is_set():
          try:
            self._queue.put(batch, timeout=0.1)
            break
          except queue.Full:
            continue
    except (tf.errors.CancelledError, tf.errors.UnavailableError) as error:
      if not self._stop.is_set():
        self._error = error
    except BaseException as error:  # surfaced to the consumer in __next__
      self._error = error
    finally:
      self._put_sentinel()

  def _put_sentinel(self) -> None:
    while True:
      try:
        self._queue.put(self._SENTINEL, timeout=0.1)
        return
      except queue.Full:
        if self._stop.is_set():
          try:
            self._queue.get_nowait()
          except queue.Empty:
            pass

  def _convert(self, sample) -> SampledBatch:
    data = {k: v.numpy() for k, v in sample.data.items()}
    if self._bounds is not None:
      self.out_of_bounds += transition.clamp_to_bounds(data, self._bounds)
    keys = sample.info.key.numpy()
    probabilities = sample.info.probability.numpy()
    weight = None
    if self._config.prioritized:
      beta = self._config.importance_sampling_exponent(self._update_step)
      weight = importance_weights(probabilities, sample.info.table_size.numpy(), beta)
    transitions = jax.device_put(transition.from_stored(data, weight), self._device)
    return SampledBatch(_to_device_layout(transitions), keys, probabilities)

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=10)


_to_device_layout = jax.jit(transition.to_device_layout)  # on the device, after the copy


def update_priorities(client: reverb.Client, keys: np.ndarray, abs_td_error: np.ndarray, config: ReplayConfig) -> None:
  """Sets each sampled item's priority to |TD error| + eps (Reverb applies the exponent alpha)."""
  keys = np.asarray(keys)
  if keys.dtype != np.uint64:  # Reverb keys are uint64; through float64 they would silently change
    raise TypeError(f"item keys must be uint64 as sampled, got {keys.dtype}")
  priorities = np.asarray(abs_td_error, np.float64).ravel() + config.priority_eps
  client.mutate_priorities(REPLAY_TABLE, updates=dict(zip(keys.ravel().tolist(), priorities.tolist())))


class PriorityUpdater:
  """Sends prioritized replay's new priorities from a background thread, off the learner's main loop.

  `put` hands over the sampled keys (host) and the update's |TD errors| (a device array, still being computed)
  and returns at once; the thread reads the errors to the host, which waits for that update on the device, not
  on the main loop, and calls `update_priorities`. At most `max_pending` batches wait: a main loop further
  ahead than that waits for the oldest (the priorities lag the updates by a few batches at most). An error on
  the thread is raised by the next `put` or `flush`.
  """

  def __init__(self, client: reverb.Client, config: ReplayConfig, max_pending: int = 8):
    self._client, self._config = client, config
    self._pending: "queue.Queue" = queue.Queue(maxsize=max_pending)
    self.error: Optional[BaseException] = None
    self._thread = threading.Thread(target=self._run, name="priority-updater", daemon=True)
    self._thread.start()

  def put(self, keys: np.ndarray, abs_td_error) -> None:
    self._raise_if_failed()
    self._pending.put((keys, abs_td_error))

  def flush(self) -> None:
    """Returns once every batch handed over has its priorities on the server (before a replay checkpoint)."""
    self._pending.join()
    self._raise_if_failed()

  def close(self) -> None:
    self._pending.put(None)
    self._thread.join(timeout=10)

  def _run(self) -> None:
    while True:
      item = self._pending.get()
      try:
        if item is None:
          return
        if self.error is None:
          keys, abs_td_error = item
          update_priorities(self._client, keys, np.asarray(abs_td_error), self._config)
      except BaseException as error:  # the server went away, or a bug: the main loop hears of it
        self.error = error
      finally:
        self._pending.task_done()

  def _raise_if_failed(self) -> None:
    if self.error is not None:
      raise RuntimeError(f"the priority updates failed: {type(self.error).__name__}: {self.error}") from self.error
