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


def send_event(client: reverb.Client, event: dict) -> None:
  client.insert([_encode(event)], priorities={EVENTS_TABLE: 1.0})


def drain_events(client: reverb.Client, max_events: int = 10_000) -> list[dict]:
  """Removes and returns the queued events, oldest first. Never blocks: it takes only what is there.

  Meant for a single consumer (the learner); a queue item is gone once sampled.
  """
  available = min(client.server_info()[EVENTS_TABLE].current_size, max_events)
  if available == 0:
    return []
  return [_decode(sample) for sample in client.sample(EVENTS_TABLE, num_samples=available, emit_timesteps=False)]
