"""Small JSON messages through the Reverb server, so remote actors need nothing but its address.

- `job` (size 1): the job's configuration, published by the learner, read by every actor that joins.
- `events` (a queue): reports from actors and the evaluator (env steps taken, finished episodes,
  evaluation results), drained by the learner, which alone writes the run's metrics.

Each message is one item holding its UTF-8 JSON bytes as a uint8 vector.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import reverb

from common import faults

from replay.server import EVENTS_TABLE, JOB_TABLE


def _encode(message: dict) -> np.ndarray:
  return np.frombuffer(json.dumps(message).encode("utf-8"), np.uint8)


def _decode(sample: Any) -> dict:
  data = sample.data if hasattr(sample, "data") else sample
  return json.loads(np.asarray(data[0]).reshape(-1).tobytes().decode("utf-8"))


def publish_job(client: reverb.Client, job: dict) -> None:
  """Replaces the job description (a JSON-serialisable dict)."""
  client.insert([_encode(job)], priorities={JOB_TABLE: 1.0})


def fetch_job(client: reverb.Client, timeout_s: float = 60.0) -> dict:
  """The job description; waits up to `timeout_s` for the learner to publish it."""
  deadline = time.monotonic() + timeout_s
  while True:
    if client.server_info(timeout=max(1, int(timeout_s)))[JOB_TABLE].current_size > 0:
      return _decode(next(iter(client.sample(JOB_TABLE, num_samples=1, emit_timesteps=False))))
    if time.monotonic() > deadline:
      raise TimeoutError(f"no job was published on the server within {timeout_s} s")
    time.sleep(0.2)


def send_event(client: reverb.Client, event: dict, timeout_s: float = 10.0) -> None:
  """Queues `event` for the learner. Raises ConnectionError if the server does not take it in time.

  (Reverb's `Client.insert` would wait forever for a server that has gone away.)
  """
  writer = client.trajectory_writer(num_keep_alive_refs=1)
  try:
    writer.append(_encode(event))
    writer.create_item(EVENTS_TABLE, 1.0, writer.history[-1:])
    writer.flush(timeout_ms=int(timeout_s * 1000))
  except reverb.errors.DeadlineExceededError as error:
    raise ConnectionError(f"the server did not take an event within {timeout_s} s") from error
  finally:
    try:
      writer.close(block=False)
    except TypeError:  # older signature without `block`
      pass


class EventsLost(RuntimeError):
  """The event receiver's thread has died."""


class EventReceiver:
  """Receives `events` on a background thread; `drain()` hands over what has arrived, never blocking.

  One long-lived Reverb dataset rather than a `client.sample` call per drain: Reverb logs a
  line for every sampler it opens in the server's own process. For a single consumer (the
  learner): a queue item is gone once received.
  """

  def __init__(self, address: str):
    import queue
    import threading

    import tensorflow as tf

    self._queue: "queue.Queue[dict]" = queue.Queue()
    self.error: BaseException | None = None
    self.dropped = 0  # items that were not a JSON message
    self._dataset = reverb.TimestepDataset(
        server_address=address, table=EVENTS_TABLE, dtypes=tf.uint8, shapes=tf.TensorShape([None]),
        max_in_flight_samples_per_worker=1, num_workers_per_iterator=1, rate_limiter_timeout_ms=-1,
    )
    # A daemon thread: it ends with the server (or the process); it holds no state worth a join.
    self._thread = threading.Thread(target=self._run, name="events-receiver", daemon=True)
    self._thread.start()

  def _run(self) -> None:
    try:
      for sample in self._dataset:
        faults.at("event-received")
        try:
          event = json.loads(sample.data.numpy().tobytes().decode("utf-8"))
        except ValueError:  # not a JSON message: not from an actor of this job
          self.dropped += 1
          continue
        self._queue.put(event)
    except BaseException as error:  # the server stopped (the learner is shutting down), or a failure
      self.error = error

  def drain(self, max_events: int = 100_000) -> list[dict]:
    """What has arrived. Raises EventsLost once the receiving thread has died and its last events are handed
    over: env steps would stop counting and the run would never reach its budget."""
    if not self._thread.is_alive() and self._queue.empty():
      error = self.error
      raise EventsLost(f"the learner stopped receiving the actors' reports ({type(error).__name__}: "
                       f"{(str(error).splitlines() or [''])[0][:200]})" if error is not None
                       else "the learner stopped receiving the actors' reports")
    events = []
    while len(events) < max_events:
      try:
        events.append(self._queue.get_nowait())
      except Exception:  # queue.Empty
        break
    return events
