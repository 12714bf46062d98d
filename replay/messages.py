"""Small JSON messages through the Reverb server, so remote actors need nothing but its address.

- `job` (size 1): the job's configuration, published by the learner, read by every actor that joins.
- `events` (a queue): reports from actors and the evaluator (env steps taken, finished episodes,
  evaluation results), drained by the learner, which alone writes the run's metrics.

Each message is one item holding the UTF-8 JSON of an envelope, `{"payload": <JSON text>, "mac": <hex>}`, as a
uint8 vector. The MAC is HMAC-SHA256 of the payload under the job's secret (common.run_dir: job.secret, given to
local actors through DQN_JOB_SECRET and to other hosts through --secret-file), so a client that can reach the
port but lacks the secret can neither report episodes or env steps nor change the job an actor reads. The
weights carry the same kind of MAC (replay/params.py).

Reverb 0.14 itself authenticates no one: such a client can still read every table (replay included) and insert
transitions into `replay`, which the learner samples like any other.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import queue
import threading
import time
from typing import Any

import numpy as np
import reverb
import tensorflow as tf

from common import faults
from common.run_dir import SECRET_BYTES, secret_from_hex
from replay.server import EVENTS_TABLE, JOB_TABLE

FORGED_JOB_PATIENCE_S = 15.0  # the learner replaces a foreign job item within about 1 s (JobChannel.guard)
SERVER_ANSWER_S = 20  # a live server answers `server_info` in milliseconds: past this, the job's server is gone
HOST_ENV = "DQN_ACTOR_HOST"  # the host whose supervisor started an actor; an actor started by hand has none
SECRET_ENV = "DQN_JOB_SECRET"  # hex; how train.py hands the job secret to the processes it starts


class JoinRefused(ValueError):
  """The job's learner refused actor ids that another host (or the learner itself) holds."""


class ForgedMessage(ValueError):
  """A message without a valid MAC under the job's secret."""


class NoSecretError(ValueError):
  """This process was given no job secret."""


def secret_from_env() -> bytes:
  """The job secret a supervisor passed to this process; NoSecretError if there is none."""
  text = os.environ.get(SECRET_ENV, "")
  if not text:
    raise NoSecretError(f"no job secret: {SECRET_ENV} is not set (train.py sets it for the processes it starts)")
  secret = secret_from_hex(text)
  if secret is None:
    raise NoSecretError(f"{SECRET_ENV} is not a job secret ({2 * SECRET_BYTES} hex digits)")
  return secret


def mac(key: bytes, data: bytes) -> str:
  return hmac.new(key, data, hashlib.sha256).hexdigest()


def _encode(message: dict, key: bytes) -> np.ndarray:
  payload = json.dumps(message)
  envelope = {"payload": payload, "mac": mac(key, payload.encode("utf-8"))}
  return np.frombuffer(json.dumps(envelope).encode("utf-8"), np.uint8)


def open_envelope(data: bytes, key: bytes) -> dict:
  """The message inside a signed envelope; ForgedMessage (with the reason) if it is not one under `key`."""
  try:
    envelope = json.loads(data.decode("utf-8"))
    payload, tag = envelope["payload"], envelope["mac"]
  except (ValueError, KeyError, TypeError):
    raise ForgedMessage("not a signed message") from None
  if not isinstance(payload, str) or not isinstance(tag, str) or not hmac.compare_digest(
      mac(key, payload.encode("utf-8")), tag):
    raise ForgedMessage("its MAC does not match the job secret")
  try:
    message = json.loads(payload)
  except ValueError:
    raise ForgedMessage("its payload is not JSON") from None
  if not isinstance(message, dict):
    raise ForgedMessage("its payload is not a JSON object")
  return message


def _decode(sample: Any, key: bytes) -> dict:
  data = sample.data if hasattr(sample, "data") else sample
  return open_envelope(np.asarray(data[0]).reshape(-1).tobytes(), key)


def publish_job(client: reverb.Client, job: dict, key: bytes) -> None:
  """Replaces the job description (a JSON-serialisable dict), signed with `key`."""
  client.insert([_encode(job, key)], priorities={JOB_TABLE: 1.0})


def fetch_job(client: reverb.Client, key: bytes, timeout_s: float = 60.0,
              forged_for_s: float = FORGED_JOB_PATIENCE_S) -> dict:
  """The job description; waits up to `timeout_s` for the learner to publish it.

  An item that is not signed with `key` is never acted on: anyone who reaches the port can insert into `job`,
  and the learner replaces such an item within seconds (training/job_channel.py), so this waits for a signed
  one. Only if the table has held nothing else for `forged_for_s` does it raise ForgedMessage: then the secret
  is the wrong one, or the port serves someone else's job.
  """
  deadline = time.monotonic() + timeout_s
  forged_since, forged = None, None
  while True:
    if _job_items(client) > 0:
      try:
        return _decode(next(iter(client.sample(JOB_TABLE, num_samples=1, emit_timesteps=False))), key)
      except ForgedMessage as error:
        forged_since, forged = forged_since or time.monotonic(), error
        if time.monotonic() - forged_since > forged_for_s:
          raise ForgedMessage(f"{forged} (every job item for {forged_for_s:.0f} s)") from None
    if time.monotonic() > deadline:
      if forged is not None:
        raise ForgedMessage(f"{forged} (every job item for {time.monotonic() - forged_since:.0f} s)")
      raise TimeoutError(f"no job was published on the server within {timeout_s} s")
    time.sleep(0.2)


def _job_items(client: reverb.Client) -> int:
  """Items in `job`; ConnectionError if the server does not answer (Reverb would wait the whole timeout, so an
  actor restarted after its job's server stopped would wait, fail and be restarted again)."""
  try:
    return client.server_info(timeout=SERVER_ANSWER_S)[JOB_TABLE].current_size
  except reverb.errors.DeadlineExceededError:
    raise ConnectionError(f"the server did not answer within {SERVER_ANSWER_S} s") from None


def ask_to_join(client: reverb.Client, key: bytes, host: str, actor_ids: list[int], timeout_s: float) -> dict:
  """Asks the job's learner to let `host` run `actor_ids` (training/event_gate.py: EventGate.join); the job
  description once it has said yes. JoinRefused with its reason if it says no, TimeoutError if it is silent."""
  send_event(client, {"kind": "join", "host": host, "actor_ids": actor_ids}, key)
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    job = fetch_job(client, key, timeout_s=max(1.0, deadline - time.monotonic()))
    answer = job.get("hosts", {}).get(host)
    if answer is not None:
      if not answer["accepted"]:
        raise JoinRefused(answer["reason"])
      return job
    time.sleep(0.2)
  raise TimeoutError(f"the job's learner did not answer the request to join within {timeout_s:.0f} s")


def send_event(client: reverb.Client, event: dict, key: bytes, timeout_s: float = 10.0) -> None:
  """Queues `event`, signed with `key`, for the learner. Raises ConnectionError if the server does not take it in time.

  (Reverb's `Client.insert` would wait forever for a server that has gone away.)
  """
  writer = client.trajectory_writer(num_keep_alive_refs=1)
  try:
    writer.append(_encode(event, key))
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

  def __init__(self, address: str, key: bytes):
    self._queue: "queue.Queue[dict]" = queue.Queue()
    self.error: BaseException | None = None
    self._key = key
    self.rejected: collections.Counter = collections.Counter()  # reason -> items dropped (not signed by the job)
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
          event = open_envelope(sample.data.numpy().tobytes(), self._key)
        except ForgedMessage as error:  # not from a process of this job
          self.rejected[str(error)] += 1
          continue
        self._queue.put(event)
    except BaseException as error:  # the server stopped (the learner is shutting down), or a failure
      self.error = error

  def take_rejected(self) -> dict:
    """{reason: items} dropped since the last call (they failed the MAC check)."""
    taken = dict(self.rejected)
    for reason, count in taken.items():
      self.rejected[reason] -= count
    return {reason: count for reason, count in taken.items() if count}

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
