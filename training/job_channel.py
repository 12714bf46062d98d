"""The learner's channel to its job, through the Reverb server: the job description, the weights it publishes,
and the reports it hears (actors' steps and episodes, evaluations, hosts asking to join).

One part of the learner process (training/learner_process.py). What it hears passes the event gate
(training/event_gate.py) or is dropped and logged; it counts the job's env steps and episodes in the run's
counters (`counters["env_steps"]`, `counters["episodes"]`, the two keys it writes).
"""

from __future__ import annotations

import collections
import math
import threading
import time

import jax
import numpy as np

from common.metrics import MetricsLog
from common.run_dir import RunDir
from replay.messages import HOST_ENV, SECRET_ENV, EventReceiver, publish_job
from replay.params import ParamsPublisher
from replay.server import JOB_TABLE, PARAMS_TABLE
from training.config import RunConfig
from training.event_gate import FRAMES_EVALUATION_SCORES, EventGate

PUBLISH_AT_LEAST_EVERY_S = 2.0  # also during the replay warm-up, so actors' epsilon follows the job's env steps
REJECTION_PRINT_EVERY_S = 10.0
GUARD_EVERY_S = 1.0  # how often the learner looks for items it did not insert in `job` and `params`
ACTOR_REPORT_KEYS = ("steps_per_s", "loop_steps_per_s", "blocked_fraction", "params_version", "weights_rejected")


class WeightsPublisher:
  """Publishes the learner's weights from a background thread, off the learner's main loop.

  `submit` hands over the weights as they are on the device (arrays a later update does not change: the learner
  donates no buffers) and returns at once. The thread copies the newest submission to the host, which waits for
  the update that computes it there and not on the main loop, signs and inserts it (replay.params.
  ParamsPublisher); a submission overtaken before the thread took it is never published. `taken` counts the
  publications the thread has begun (their inserts have reached the server or are on their way: the guard's
  count of our own), `error` keeps what stopped the thread.
  """

  def __init__(self, publisher: ParamsPublisher):
    self._publisher = publisher
    self._wake = threading.Condition()
    self._waiting = None  # (device params, version, env steps) not yet taken by the thread
    self._busy = False
    self._closed = False
    self.taken = 0
    self.error: BaseException | None = None
    self._thread = threading.Thread(target=self._run, name="weights-publisher", daemon=True)
    self._thread.start()

  def submit(self, params, version: int, env_steps: int) -> None:
    if self.error is not None:
      raise RuntimeError(f"publishing the weights failed: {type(self.error).__name__}: {self.error}") from self.error
    with self._wake:
      self._waiting = (params, version, env_steps)
      self._wake.notify()

  def publications_begun(self) -> int:
    with self._wake:
      return self.taken

  def flush(self, timeout_s: float = 30.0) -> None:
    """Returns once every submission so far has landed (tests, and before the server stops)."""
    deadline = time.monotonic() + timeout_s
    with self._wake:
      while (self._busy or self._waiting is not None) and self.error is None and time.monotonic() < deadline:
        self._wake.wait(0.05)

  def close(self) -> None:
    with self._wake:
      self._closed = True
      self._wake.notify()
    self._thread.join(timeout=10)

  def _run(self) -> None:
    while True:
      with self._wake:
        while self._waiting is None and not self._closed:
          self._wake.wait()
        if self._closed:
          return
        (params, version, env_steps), self._waiting, self._busy = self._waiting, None, True
        self.taken += 1
      try:
        self._publisher.publish(jax.device_get(params), version, env_steps)
      except BaseException as error:  # the server stopped under it, or a bug: the main loop hears of it
        self.error = error
        return
      finally:
        with self._wake:
          self._busy = False
          self._wake.notify_all()


class JobChannel:
  """Publishes the job and the weights; drains the reports into the counters and the metric streams.

  `recent_returns` (the last 100 episodes of the current task) and `actor_rates` (actor id -> its last
  report's ACTOR_REPORT_KEYS) are what the progress row reads; `evaluated_env_steps`, the env steps of the
  weights of every evaluation received (one per task), what a finished run waits on for its final one.
  """

  def __init__(self, config: RunConfig, run_dir: RunDir, server, counters: dict, metrics: MetricsLog,
               num_actions: int):
    self._config = config
    self._client = server.client()
    self._counters = counters
    self._metrics = metrics
    self._key = run_dir.job_secret(create=True)  # kept across resumes: remote hosts keep their copy
    self._job = {"config": config.to_dict(), "start_env_steps": counters["env_steps"], "num_actions": num_actions,
                 "hosts": {}}
    self._last_guard_s = -math.inf
    self._expected_inserts = self._insert_counts()  # each table's insert count if no one else inserts
    self._publish_job()
    self._events = EventReceiver(server.address, self._key)
    self._gate = EventGate(range(config.resolved_num_actors), config.num_envs_per_actor)
    self._weights = WeightsPublisher(ParamsPublisher(self._client, self._key))
    self._publication = None  # (device params, version, env steps) last published, kept to publish again
    # Inserts into `params` that are not this channel's: those before it started (a resume), and those the guard
    # has found since.
    self._params_not_ours = self._expected_inserts[PARAMS_TABLE]
    self._next_publish_update = 0
    self._last_publish_s = -math.inf
    self._published_env_steps = None
    self._last_rejection_print_s = -REJECTION_PRINT_EVERY_S
    self._last_task = None
    self.recent_returns: collections.deque = collections.deque(maxlen=100)
    self.actor_rates: dict[int, dict] = {}
    self.evaluated_env_steps: list[int] = []

  def secret_env(self) -> dict[str, str]:
    """The environment variable that gives a child process the job secret."""
    return {SECRET_ENV: self._key.hex()}

  def actors_env(self) -> dict[str, str]:
    """The environment of the learner's own actors and evaluator: the secret, and the learner as the host that
    started them (an actor started by hand has no host, and asks for its id: training/actor_loop.py)."""
    return {**self.secret_env(), HOST_ENV: "learner"}

  # -- weights --------------------------------------------------------------------------------------------------

  def weights_owed(self) -> bool:
    """publish_params_every_updates updates have passed since the last publication."""
    return self._counters["updates"] >= self._next_publish_update

  def publish_due(self, now_s: float) -> bool:
    """Weights are owed, or PUBLISH_AT_LEAST_EVERY_S has passed and the job's env steps have moved since."""
    return self.weights_owed() or (now_s - self._last_publish_s > PUBLISH_AT_LEAST_EVERY_S
                                   and self._counters["env_steps"] != self._published_env_steps)

  def publish(self, params, now_s: float) -> None:
    """Publishes `params` (the learner's, on its device) with the run's update and env-step counts (the actors'
    epsilon follows those), from the background thread: this returns at once."""
    updates, env_steps = self._counters["updates"], self._counters["env_steps"]
    self._publication = (params, updates, env_steps)
    self._publish_params()
    self._next_publish_update = updates + self._config.replay.publish_params_every_updates
    self._last_publish_s, self._published_env_steps = now_s, env_steps

  # -- items from elsewhere -------------------------------------------------------------------------------------

  def guard(self, now_s: float) -> None:
    """Replaces, within GUARD_EVERY_S, an item that someone else inserted into `job` or `params`.

    Anyone who reaches the port can insert there (Reverb 0.14 authenticates no one). A reader never acts on an
    item it cannot verify (replay.messages.fetch_job, replay.params.ParamsFetcher); it waits for a signed one,
    which this publishes again at once, so a foreign item cannot stall an actor that is starting.
    """
    if now_s - self._last_guard_s < GUARD_EVERY_S:
      return
    self._last_guard_s = now_s
    counts = self._insert_counts()
    begun = self._weights.publications_begun()  # read after the server's counts: our inserts there are among these
    foreign = {JOB_TABLE: counts[JOB_TABLE] - self._expected_inserts[JOB_TABLE],
               PARAMS_TABLE: counts[PARAMS_TABLE] - begun - self._params_not_ours}
    for table, count in foreign.items():
      if count <= 0:
        continue
      self._reject(f"{count} item(s) in table {table} not inserted by the learner (published again)", {"kind": table})
      if table == JOB_TABLE:
        self._expected_inserts[JOB_TABLE] = counts[JOB_TABLE]  # one landing from here on is counted at the next look
        self._publish_job()
      else:
        self._params_not_ours += count
        if self._publication is not None:
          self._publish_params()  # the same weights, version and env steps as before

  def _insert_counts(self) -> dict[str, int]:
    info = self._client.server_info(timeout=5)
    return {table: info[table].rate_limiter_info.insert_stats.completed for table in (JOB_TABLE, PARAMS_TABLE)}

  # The job's inserts (this thread) have returned before the next look at the counts, so they are in the count the
  # server reports then. The weights' inserts (the publisher's thread) are counted when the thread begins them,
  # and that count is read after the server's: it holds every insert of ours the server counted, and perhaps one
  # on its way, which can hide a foreign item until the next look but never makes one up.

  def _publish_params(self) -> None:
    self._weights.submit(*self._publication)

  def flush(self) -> None:
    """Every weights publication so far has landed (tests)."""
    self._weights.flush()

  def close(self) -> None:
    self._weights.close()

  def _publish_job(self) -> None:
    publish_job(self._client, self._job, self._key)
    self._expected_inserts[JOB_TABLE] += 1

  # -- reports --------------------------------------------------------------------------------------------------

  def drain(self) -> None:
    """The reports waiting into counters and streams; what fails the MAC or the bounds is dropped and logged."""
    for event in self._events.drain():
      problem = self._gate.problem(event)
      if problem is not None:
        self._reject(problem, event)
      elif event["kind"] == "join":
        self._answer_join(event)
      elif event["kind"] == "actor":
        self._add_actor_report(event)
      elif event["kind"] == "eval":
        self._add_evaluation(event)
    for reason, count in self._events.take_rejected().items():
      self._reject(f"{reason} ({count} item{'s' if count > 1 else ''})", {})

  def _add_actor_report(self, event: dict) -> None:
    counters = self._counters
    self._gate.heard(event["actor"])
    counters["env_steps"] += event["env_steps"]
    self.actor_rates[event["actor"]] = {key: event.get(key, 0.0) for key in ACTOR_REPORT_KEYS}
    for episode in event["episodes"]:
      counters["episodes"] += 1
      if episode.get("task") != self._last_task:  # the recent returns are those of one game
        self.recent_returns.clear()
        self._last_task = episode.get("task")
      self.recent_returns.append(episode["return"])
      self._metrics.write("episodes", {"env_steps": counters["env_steps"], "actor": event["actor"], **episode})

  def _add_evaluation(self, event: dict) -> None:
    """An eval row; on a budget of frames where no game ended, the statistics are the cut-off game's score so far."""
    returns = np.asarray(event["returns"], float)
    scored = returns if len(returns) else np.asarray([event["cut_off_return"]], float)
    budget = {key: event[key] for key in ("budget_frames", "cut_off_return", "cut_off_steps",
                                          *FRAMES_EVALUATION_SCORES) if key in event}
    self._metrics.write("eval", {
        "env_steps": event["env_steps"], "step": event["step"], "task": event.get("task", self._config.game),
        "mean_return": float(scored.mean()),
        "median_return": float(np.median(scored)), "min_return": float(scored.min()),
        "max_return": float(scored.max()), "num_episodes": len(returns), "returns": event["returns"],
        "lengths_steps": event["lengths_steps"], "epsilon": event["epsilon"], "eval_wall_s": event["wall_s"], **budget,
    })
    self.evaluated_env_steps.append(event["env_steps"])

  def _reject(self, reason: str, event: dict) -> None:
    self._metrics.write("rejected", {"env_steps": self._counters["env_steps"], "time": time.time(), "reason": reason,
                                     "kind": str(event.get("kind"))[:40], "actor": str(event.get("actor"))[:40]})
    now = time.monotonic()
    if now - self._last_rejection_print_s > REJECTION_PRINT_EVERY_S:
      self._last_rejection_print_s = now
      print(f"warning: dropped a message on the job's port: {reason} (every one is in metrics/rejected.jsonl)",
            flush=True)

  def _answer_join(self, event: dict) -> None:
    """An actor host (or an actor started by hand) asks to join with its actor ids: accepted unless they overlap
    another host's that is not silent, or ours."""
    accepted, reason = self._gate.join(event["host"], event["actor_ids"])
    self._job["hosts"][event["host"]] = {"accepted": accepted, "reason": reason}
    self._publish_job()
    self._metrics.write("supervisor", {"env_steps": self._counters["env_steps"], "time": time.time(), "event": "join",
                                       "host": event["host"], "actor_ids": event["actor_ids"], "accepted": accepted,
                                       "reason": reason})
    print(f"actor host {event['host'][:8]} (actors {event['actor_ids']}): {'joined' if accepted else 'refused'}"
          f"{'' if accepted else ': ' + reason}", flush=True)
