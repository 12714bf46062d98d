"""Weights from the learner to actors through the size-1 Reverb table `params`.

The learner publishes (version, env steps, parameter leaves) with `ParamsPublisher`; each
actor runs a `ParamsFetcher`, whose background thread checks the table's insert
count (a cheap `server_info` call) and downloads the weights only when a newer
version was published. `latest()` returns what it has without ever blocking
the environment loop.
"""

from __future__ import annotations

import threading
import time
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
import reverb
import tree

from replay.server import PARAMS_TABLE


class Weights(NamedTuple):
  params: Any
  version: int  # the learner step that produced them
  env_steps: int  # the job's agent steps (all actors) when they were published; drives actors' epsilon


class ParamsPublisher:
  def __init__(self, client: reverb.Client):
    self._client = client

  def publish(self, params: Any, version: int, env_steps: int = 0) -> None:
    """Replaces the table's content with `params` (any pytree) tagged with `version` and the job's `env_steps`."""
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(params)]
    with self._client.trajectory_writer(num_keep_alive_refs=1) as writer:
      writer.append({"version": np.int64(version), "env_steps": np.int64(env_steps), "leaves": leaves})
      writer.create_item(PARAMS_TABLE, 1.0, tree.map_structure(lambda column: column[-1:], writer.history))


def fetch_params(client: reverb.Client, template: Any) -> Weights:
  """Blocks until weights are published; returns them with params shaped like `template`."""
  sample = next(iter(client.sample(PARAMS_TABLE, num_samples=1, emit_timesteps=False)))
  treedef = jax.tree.structure(template)
  # The client hands the item back flattened, in `tree.flatten` order (sorted keys) of what was appended.
  structure = {"version": 0, "env_steps": 0, "leaves": [0] * treedef.num_leaves}
  data = tree.unflatten_as(structure, list(sample.data))
  leaves = [np.asarray(leaf)[0] for leaf in data["leaves"]]  # drop the length-1 time axis
  scalar = lambda x: int(np.asarray(x).reshape(-1)[0])
  return Weights(jax.tree.unflatten(treedef, leaves), scalar(data["version"]), scalar(data["env_steps"]))


class ParamsFetcher:
  """Keeps the newest published weights at hand, refreshed in the background."""

  def __init__(self, client: reverb.Client, template: Any, *, poll_interval_s: float = 0.5):
    self._client = client
    self._template = template
    self._poll_interval_s = poll_interval_s
    self._lock = threading.Lock()
    self._latest: Optional[Weights] = None
    self._inserts_seen = 0
    self._stop = threading.Event()
    self.error: Optional[BaseException] = None
    self._thread = threading.Thread(target=self._run, name="params-fetcher", daemon=True)
    self._thread.start()

  def latest(self) -> Optional[Weights]:
    """The newest weights fetched so far, or None before the first."""
    with self._lock:
      return self._latest

  def wait(self, min_version: int = 0, timeout_s: float = 60.0) -> Weights:
    """Blocks until weights with version >= min_version have arrived (for start-up and tests).

    Raises at once if the latest poll failed (no server answering), rather than waiting out the timeout.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      latest = self.latest()
      if latest is not None and latest.version >= min_version:
        return latest
      if self.error is not None:
        raise RuntimeError("fetching weights failed") from self.error
      time.sleep(0.01)
    raise TimeoutError(f"no weights with version >= {min_version} within {timeout_s} s")

  def _run(self) -> None:
    while not self._stop.is_set():
      try:
        inserts = self._client.server_info(timeout=5)[PARAMS_TABLE].rate_limiter_info.insert_stats.completed
        if inserts > self._inserts_seen:
          weights = fetch_params(self._client, self._template)
          self._inserts_seen = inserts
          with self._lock:
            if self._latest is None or weights.version >= self._latest.version:
              self._latest = weights
        self.error = None
      except Exception as error:  # the server may be restarting; keep the last weights and retry
        self.error = error
      self._stop.wait(self._poll_interval_s)

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=10)
