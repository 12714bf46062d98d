"""Weights from the learner to actors through the size-1 Reverb table `params`.

The learner publishes (version, env steps, parameter leaves) with `ParamsPublisher`; each
actor runs a `ParamsFetcher`, whose background thread checks the table's insert
count (a cheap `server_info` call) and downloads the weights only when a newer
version was published. `latest()` returns what it has without ever blocking
the environment loop.

Each publication carries an HMAC-SHA256 under the job's secret of its version, env steps and every leaf
(shape, dtype and bytes); a fetcher drops weights whose MAC does not match (`rejected` counts them) and keeps
the ones it has, so no one without the secret can give the actors other weights.
"""

from __future__ import annotations

import hashlib
import hmac
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


class ForgedWeights(ValueError):
  """Published weights whose MAC does not match the job's secret."""


def weights_mac(key: bytes, version: int, env_steps: int, leaves: list) -> np.ndarray:
  """HMAC-SHA256 (32 bytes, as uint8) of a publication: version, env steps, and each leaf's shape, dtype and bytes."""
  digest = hmac.new(key, np.asarray([version, env_steps], np.int64).tobytes(), hashlib.sha256)
  for leaf in leaves:
    leaf = np.ascontiguousarray(leaf)
    digest.update(f"{leaf.dtype.str}{leaf.shape}".encode())
    digest.update(leaf.tobytes())
  return np.frombuffer(digest.digest(), np.uint8)


class ParamsPublisher:
  def __init__(self, client: reverb.Client, key: bytes):
    self._client = client
    self._key = key

  def publish(self, params: Any, version: int, env_steps: int = 0) -> None:
    """Replaces the table's content with `params` (any pytree) tagged with `version` and the job's `env_steps`."""
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(params)]
    with self._client.trajectory_writer(num_keep_alive_refs=1) as writer:
      writer.append({"version": np.int64(version), "env_steps": np.int64(env_steps), "leaves": leaves,
                     "mac": weights_mac(self._key, version, env_steps, leaves)})
      writer.create_item(PARAMS_TABLE, 1.0, tree.map_structure(lambda column: column[-1:], writer.history))


def fetch_params(client: reverb.Client, template: Any, key: bytes) -> Weights:
  """Blocks until weights are published; returns them with params shaped like `template`. ForgedWeights if
  they are not signed with `key` or are not shaped like `template`."""
  sample = next(iter(client.sample(PARAMS_TABLE, num_samples=1, emit_timesteps=False)))
  treedef = jax.tree.structure(template)
  # The client hands the item back flattened, in `tree.flatten` order (sorted keys) of what was appended.
  structure = {"env_steps": 0, "leaves": [0] * treedef.num_leaves, "mac": 0, "version": 0}
  if len(sample.data) != treedef.num_leaves + 3:
    raise ForgedWeights(f"the publication has {len(sample.data)} columns, not {treedef.num_leaves + 3}")
  data = tree.unflatten_as(structure, list(sample.data))
  leaves = [np.asarray(leaf)[0] for leaf in data["leaves"]]  # drop the length-1 time axis
  scalar = lambda x: int(np.asarray(x).reshape(-1)[0])
  version, env_steps = scalar(data["version"]), scalar(data["env_steps"])
  tag = np.asarray(data["mac"]).reshape(-1)
  if not hmac.compare_digest(weights_mac(key, version, env_steps, leaves).tobytes(), tag.astype(np.uint8).tobytes()):
    raise ForgedWeights(f"weights version {version} are not signed with the job secret")
  shapes = [np.shape(leaf) for leaf in jax.tree.leaves(template)]
  if [leaf.shape for leaf in leaves] != shapes:
    raise ForgedWeights(f"weights version {version} do not have the network's shapes")
  return Weights(jax.tree.unflatten(treedef, leaves), version, env_steps)


class ParamsFetcher:
  """Keeps the newest published weights at hand, refreshed in the background."""

  def __init__(self, client: reverb.Client, template: Any, key: bytes, *, poll_interval_s: float = 0.5):
    self._client = client
    self._template = template
    self._key = key
    self.rejected = 0  # publications dropped: not signed with the job's secret
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
          weights = None
          try:
            weights = fetch_params(self._client, self._template, self._key)
          except ForgedWeights:  # kept out; the learner's next publication replaces it in the table
            self.rejected += 1
          self._inserts_seen = inserts
          with self._lock:
            if weights is not None and (self._latest is None or weights.version >= self._latest.version):
              self._latest = weights
        self.error = None
      except Exception as error:  # the server may be restarting; keep the last weights and retry
        self.error = error
      self._stop.wait(self._poll_interval_s)

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=10)
