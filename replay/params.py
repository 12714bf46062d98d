"""Weights from the learner to actors through the size-1 Reverb table `params`.

The learner publishes (version, parameter leaves) with `ParamsPublisher`; each
actor runs a `ParamsFetcher`, whose background thread checks the table's insert
count (a cheap `server_info` call) and downloads the weights only when a newer
version was published. `latest()` returns what it has without ever blocking
the environment loop.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

import jax
import numpy as np
import reverb
import tree

from replay.server import PARAMS_TABLE


class ParamsPublisher:
  def __init__(self, client: reverb.Client):
    self._client = client

  def publish(self, params: Any, version: int) -> None:
    """Replaces the table's content with `params` (any pytree) tagged with `version` (the learner step)."""
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(params)]
    with self._client.trajectory_writer(num_keep_alive_refs=1) as writer:
      writer.append({"version": np.int64(version), "leaves": leaves})
      writer.create_item(PARAMS_TABLE, 1.0, tree.map_structure(lambda column: column[-1:], writer.history))


def fetch_params(client: reverb.Client, template: Any) -> tuple[Any, int]:
  """Blocks until weights are published; returns (params shaped like `template`, version)."""
  sample = next(iter(client.sample(PARAMS_TABLE, num_samples=1, emit_timesteps=False)))
  treedef = jax.tree.structure(template)
  # The client hands the item back flattened, in `tree.flatten` order of what was appended.
  structure = {"version": 0, "leaves": [0] * treedef.num_leaves}
  data = tree.unflatten_as(structure, list(sample.data))
  leaves = [np.asarray(leaf)[0] for leaf in data["leaves"]]  # drop the length-1 time axis
  return jax.tree.unflatten(treedef, leaves), int(np.asarray(data["version"]).reshape(-1)[0])


class ParamsFetcher:
  """Keeps the newest published weights at hand, refreshed in the background."""

  def __init__(self, client: reverb.Client, template: Any, *, poll_interval_s: float = 0.5):
    self._client = client
    self._template = template
    self._poll_interval_s = poll_interval_s
    self._lock = threading.Lock()
    self._latest: Optional[tuple[Any, int]] = None
    self._inserts_seen = 0
    self._stop = threading.Event()
    self.error: Optional[BaseException] = None
    self._thread = threading.Thread(target=self._run, name="params-fetcher", daemon=True)
    self._thread.start()

  def latest(self) -> Optional[tuple[Any, int]]:
    """(params, version) of the newest weights fetched so far, or None before the first."""
    with self._lock:
      return self._latest

  def wait(self, min_version: int = 0, timeout_s: float = 60.0) -> tuple[Any, int]:
    """Blocks until weights with version >= min_version have arrived (for start-up and tests).

    Raises at once if the latest poll failed (no server answering), rather than waiting out the timeout.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      latest = self.latest()
      if latest is not None and latest[1] >= min_version:
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
          params, version = fetch_params(self._client, self._template)
          self._inserts_seen = inserts
          with self._lock:
            if self._latest is None or version >= self._latest[1]:
              self._latest = (params, version)
        self.error = None
      except Exception as error:  # the server may be restarting; keep the last weights and retry
        self.error = error
      self._stop.wait(self._poll_interval_s)

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=10)
