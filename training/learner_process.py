"""The learner process of a run (train.py, roles `all` and `learner`): one consistent point in, one out.

`LearnerRun.run()` reads top to bottom: restore the newest consistent checkpoint (learner state, counters and
the replay written with them; common.run_dir.RunCheckpoints) or initialise, and only then write: config.json,
the stream rows a crash left after that checkpoint moved aside, a `resumes` row. Then start the Reverb server's
job, the local actors and the probe worker, and loop: update on prefetched batches, publish weights, drain the
actors' reports into metrics, supervise, checkpoint. It ends in one of four ways:

- finished (the env-step budget) or stopped (SIGTERM / Ctrl-C): a final checkpoint, exit 0;
- diverged (a non-finite loss or parameter): no checkpoint (the newest stays the last finite one),
  status.json says at which update, exit EXIT_DIVERGED;
- the event receiver failed (env steps would stop counting): a final checkpoint, a message, exit EXIT_FAILED;
- any other error: no checkpoint, the traceback.

Every child process is stopped on every path.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import signal
import sys
import time

from common import faults
from common.processes import EXIT_DIVERGED, EXIT_FAILED
from common.run_dir import RunCheckpoints, RunDir
from training.config import RunConfig, checkpoint_keep_fn, make_learner, remedy_probe_steps, save_config
from training.event_gate import EventGate
from training.progress import DivergenceWatch, MetricsWindow, Progress, duration, params_finite

HOUSEKEEPING_EVERY_S = 0.25
PUBLISH_AT_LEAST_EVERY_S = 2.0  # also during the replay warm-up, so actors' epsilon follows the job's env steps
PROBE_WORKER = "probe-worker"
PROBE_WORKER_MAX_FAILURES_AT_END = 3
PROBE_WAIT_REPORT_EVERY_S = 30.0
REJECTION_PRINT_EVERY_S = 10.0
ACTOR_REPORT_KEYS = ("steps_per_s", "loop_steps_per_s", "blocked_fraction", "params_version", "weights_rejected")


class Diverged(Exception):
  """A non-finite loss or parameter: the run stops without writing a checkpoint."""

  def __init__(self, step: int, what: str):
    self.step, self.what = step, what
    super().__init__(f"{what} became non-finite at update {step:,}")


class LearnerRun:
  """One life of the learner process; `run()` returns the exit code."""

  def __init__(self, config: RunConfig, run_dir: str, stop):
    self.config = config
    self.run_dir = RunDir(run_dir)
    self.stop = stop
    self.counters = {"env_steps": 0, "updates": 0, "episodes": 0, "train_time_s": 0.0}
    self.finished = False
    self.last_saved_step = None
    self.recent_returns: collections.deque = collections.deque(maxlen=100)
    self.last_task = None
    self.actor_rates: dict[int, dict] = {}  # actor id -> its last report's rates and weights
    self.window = MetricsWindow()
    self.last_rejection_print_s = -REJECTION_PRINT_EVERY_S
    self.watch = DivergenceWatch()
    # Checkpoints at task switches, update -> phase: kept and probed (a final checkpoint at the same update keeps it).
    self.switch_phases: dict[int, int] = {}
    self.server = self.metrics = self.sampler = self.events = None
    self.checkpoints = None

  # -- start ----------------------------------------------------------------------------------------------------

  def run(self) -> int:
    from training.supervisor import Supervisor

    self.supervisor = Supervisor(self._on_supervisor_event, restart_clean_exits=True)  # lives with us
    self._prestart_children()  # their imports overlap ours, the restore and the server's start
    import jax

    config = self.config
    self.learner, self.state = make_learner(config, config.seed)
    self.checkpoints = RunCheckpoints(
        self.run_dir, keep_last=config.keep_last_checkpoints, with_replay=config.checkpoint_replay,
        # Probed checkpoints are kept, so the probes can be re-run offline on them.
        keep_every_steps=config.keep_checkpoint_every_updates or config.probe_every_updates or None,
        keep_fn=checkpoint_keep_fn(config, self.switch_phases))
    try:
      if config.resume and self._finished_before():
        return 0
      restored = self._restore_or_start_server()
      self._open_streams(restored)  # the first writes, once the restore has succeeded
      self.batches = collections.deque(maxlen=-(-config.probe.inputs // (config.agent.batch_size
                                                                          * config.agent.updates_per_call)))
      return self._train(jax)
    finally:
      self._close()

  def _finished_before(self) -> bool:
    """A run finished at this budget says so and changes nothing."""
    store = self.checkpoints.store
    for step in reversed(store.steps()):
      try:
        meta = store.read_metadata(step)
      except Exception:  # a damaged one: the restore below deals with it
        continue
      if meta.get("finished") and meta.get("env_steps", 0) >= self.config.total_env_steps:
        print(f"{self.run_dir.path} finished at update {step:,}, {meta['env_steps']:,} env steps (its budget is "
              f"{self.config.total_env_steps:,}); nothing to do. To train on: train.py --run-dir {self.run_dir.path} "
              "--resume --total-env-steps N (N larger)", flush=True)
        return True
      return False
    return False

  def _restore_or_start_server(self):
    from replay.server import ReplayServer

    config = self.config
    host, port = config.listen_address()

    def start_server(restore_from):
      replay_root = self.run_dir.replay_incoming_dir if config.checkpoint_replay else None
      return ReplayServer(config.replay, config.env.obs_shape, port=port, checkpoint_dir=replay_root,
                          restore_from=restore_from)

    if not config.resume:
      self.server = start_server(None)
      return None
    restored = self.checkpoints.restore(self.state, start_server, without_replay=config.resume_without_replay)
    for line in restored.skipped:
      print(f"warning: {line}; trying the one before", flush=True)
    for line in restored.notes:
      print(f"note: {line}", flush=True)
    self.state, self.server = restored.state, restored.server
    self.counters.update({key: restored.metadata[key] for key in self.counters})
    self.last_saved_step = restored.step
    replay = {"restored": f"replay restored with {self.server.size():,} transitions",
              "restored (legacy)": f"replay restored with {self.server.size():,} transitions (legacy layout)",
              "empty": "replay EMPTY (--resume-without-replay)", "not checkpointed": "the run keeps no replay"}
    print(f"resumed {self.run_dir.path} at update {restored.step:,}, {self.counters['env_steps']:,} env steps; "
          f"{replay[restored.replay]}", flush=True)
    return restored

  def _open_streams(self, restored) -> None:
    from common.metrics import MetricsLog

    moved = self.checkpoints.cut_streams(restored) if restored is not None else {}
    if moved:
      print("moved the rows written after that checkpoint aside: "
            + ", ".join(f"{stream} {rows}" for stream, rows in moved.items()), flush=True)
    save_config(dataclasses.replace(self.config, resume_without_replay=False), self.run_dir.path)
    self.run_dir.clear_status()
    self.metrics = MetricsLog(self.run_dir.path)
    if restored is not None:
      # A log of the run directory's history, never cut: its fields name restored points, not progress.
      self.metrics.write("resumes", {
          "restored_update": restored.step, "restored_env_steps": self.counters["env_steps"], "replay": restored.replay,
          "replay_size": self.server.size(), "skipped": restored.skipped, "moved_rows": moved, "time": time.time()})

  # -- training -------------------------------------------------------------------------------------------------

  def _train(self, jax) -> int:
    from agents.dqn.actor import epsilon_schedule
    from replay.messages import SECRET_ENV, EventReceiver, EventsLost, publish_job
    from replay.params import ParamsPublisher
    from replay.sampler import Sampler
    from training.supervisor import Supervisor

    config, counters = self.config, self.counters
    client = self.server.client()
    self.key = self.run_dir.job_secret(create=True)  # kept across resumes: remote hosts keep their copy
    self.job = {"config": config.to_dict(), "start_env_steps": counters["env_steps"],
                "num_actions": self.learner.num_actions, "hosts": {}}
    publish_job(client, self.job, self.key)
    self.events = EventReceiver(self.server.address, self.key)
    self.gate = EventGate(range(config.resolved_num_actors), config.num_envs_per_actor)
    self.publisher = ParamsPublisher(client, self.key)
    self._publish(jax, time.monotonic())
    secret = {SECRET_ENV: self.key.hex()}
    self.supervisor.set_env(secret)
    # Finishes once it has probed the final checkpoint.
    self.probe_supervisor = Supervisor(self._on_supervisor_event, env=secret)
    outcome = "crashed"
    try:
      self._start_children(jax)
      self.sampler = Sampler(self.server.address, config.replay, batch_size=config.agent.batch_size,
                             updates_per_call=config.agent.updates_per_call)
      self.sampler.set_update_step(counters["updates"])
      self._find_switch_checkpoints()
      self.progress = Progress(config, counters)
      self.epsilon = epsilon_schedule(config.agent)
      outcome = self._loop(jax)
    except Diverged as error:
      outcome = self._diverged(error)
    except EventsLost as error:
      outcome = "events lost"
      print(f"error: {error}; stopping with a final checkpoint (its env-step count may lag the actors')",
            file=sys.stderr, flush=True)
    finally:
      self.supervisor.stop()
      if outcome != "crashed" and outcome != "diverged":
        try:
          self._final_checkpoint(drain=outcome != "events lost")
        except Diverged as error:
          outcome = self._diverged(error)
      if outcome == "finished" and config.probe_every_updates:
        wait_for_probes(self.probe_supervisor, self.stop, self.run_dir.path, self.checkpoints.store, config)
      self.probe_supervisor.stop()
    return {"finished": 0, "stopped": 0, "diverged": EXIT_DIVERGED, "events lost": EXIT_FAILED}[outcome]

  def _prestart_children(self) -> None:
    """The local actors and the evaluator, started now to wait for `_start_children` (training.supervisor)."""
    for actor_id in range(self.config.resolved_num_actors):
      self.supervisor.prestart(f"actor-{actor_id}", "training.actor")
    if self.config.eval_every_env_steps:
      self.supervisor.prestart("evaluator", "training.actor")

  def _start_children(self, jax) -> None:
    from replay.server import reachable_addresses

    config, port = self.config, self.server.port
    for actor_id in range(config.resolved_num_actors):
      self.supervisor.add(f"actor-{actor_id}", ["training.actor", "--server", f"localhost:{port}", "--actor-id", str(actor_id)])
    if config.eval_every_env_steps:
      self.supervisor.add("evaluator", ["training.actor", "--server", f"localhost:{port}", "--evaluator"])
    if config.probe_every_updates:
      self.probe_supervisor.add(PROBE_WORKER, ["training.probe_worker", self.run_dir.path])
    host, _ = config.listen_address()
    address = f"{host}:{port}"
    if config.role == "learner":
      print(f"learner serving job at {address}; start actors with: python train.py --role actor --server {address}", flush=True)
    print(f"training {config.game} ({config.preset}) in {self.run_dir.path}: {config.resolved_num_actors} actors x "
          f"{config.num_envs_per_actor} envs, learner on {jax.default_backend()}, server at {address}", flush=True)
    print(f"port {port} answers on every interface of this host (Reverb 0.14 binds them all): "
          f"{', '.join(reachable_addresses())}; reports and weights need the job secret "
          f"({self.run_dir.secret_path}), replay does not (docs/run_directory.md: who can reach a job)", flush=True)

  def _loop(self, jax) -> str:
    """Updates until the budget is reached ("finished") or a signal arrives ("stopped")."""
    config, counters = self.config, self.counters
    next_checkpoint = next_checkpoint_step(config, counters["updates"])
    last_housekeeping_s = time.monotonic()
    while not self.stop.event.is_set():
      batch = self.sampler.poll(timeout_s=0.02)
      if batch is not None:
        self._update(batch)
        if counters["updates"] >= next_checkpoint:
          self._checkpoint()
          next_checkpoint = next_checkpoint_step(config, counters["updates"])
      now = time.monotonic()
      if now - last_housekeeping_s < HOUSEKEEPING_EVERY_S and batch is not None and counters["updates"] < self.next_publish:
        continue
      if counters["updates"] >= self.next_publish or (
          now - self.last_publish_s > PUBLISH_AT_LEAST_EVERY_S and counters["env_steps"] != self.published_env_steps):
        self._publish(jax, now)
      if now - last_housekeeping_s >= HOUSEKEEPING_EVERY_S:
        last_housekeeping_s = now
        if self._housekeeping():
          return "finished"
    return "stopped"

  def _update(self, batch) -> None:
    import numpy as np

    from replay.sampler import update_priorities

    faults.at("update", {"poison-params": self._poison_params})
    step_before = self.counters["updates"]
    self.state, update_metrics = self.learner.update(self.state, batch.transitions)
    self.batches.append(batch.transitions)
    self.counters["updates"] += self.config.agent.updates_per_call
    if self.config.agent.remedy_periods:
      if self.config.probe_around_remedies and self.counters["updates"] == remedy_probe_steps(self.config, step_before)[0]:
        self._checkpoint()  # the state just before the remedy, for the probes
      self.state, events = self.learner.apply_remedies(self.state, batch.transitions, step_before)
      for event in events:
        self._remedy_event(event)
    abs_td_error = update_metrics.pop("abs_td_error")
    self.watch.add(update_metrics["loss"], self.counters["updates"])
    self.window.add(update_metrics)
    if self.config.replay.prioritized:
      update_priorities(self.server.client(), batch.keys, np.asarray(abs_td_error), self.config.replay)
      self.sampler.set_update_step(self.counters["updates"])

  def _remedy_event(self, event) -> None:
    """A periodic remedy was applied: one row in metrics/remedies.jsonl (and TensorBoard), one line."""
    self.metrics.write("remedies", {"env_steps": self.counters["env_steps"], "time": time.time(), **event.row()})
    touched = ", ".join(f"{layer} {units}" for layer, units in event.units.items()) or ", ".join(event.layers)
    print(f"{event.remedy} at update {event.step:,}: {touched}"
          + (" (optimizer moments reset)" if event.optimizer_reset else ""), flush=True)

  def _publish(self, jax, now: float) -> None:
    self.publisher.publish(jax.device_get(self.state.params), self.counters["updates"], self.counters["env_steps"])
    self.next_publish = self.counters["updates"] + self.config.replay.publish_params_every_updates
    self.last_publish_s, self.published_env_steps = now, self.counters["env_steps"]

  def _housekeeping(self) -> bool:
    """Reports, supervision, the divergence watch and the progress row; True once the budget is reached."""
    self._handle_events()
    self.supervisor.check()
    self.probe_supervisor.check()
    step = self.watch.diverged_at()
    if step is not None:
      raise Diverged(step, "the loss")
    self._checkpoint_at_task_switch()  # first: the last switch may come in the same report as the budget's end
    if self.counters["env_steps"] >= self.config.total_env_steps:
      self.finished = True
      return True
    if self.progress.due():
      epsilon = float(self.epsilon(self.counters["env_steps"]))
      row = self.progress.row(self.server.size(), epsilon, self.recent_returns, self.actor_rates)
      row.update(self.window.take())
      schedule = self.config.task_schedule
      if schedule is not None:  # the task the actors play now (their returns in the row mix the last switch's)
        row["task"] = schedule.game_at(self.counters["env_steps"])
      self.metrics.write("train", row)
      print(self.progress.line(row) + (f" | task {row['task']}" if schedule is not None else ""), flush=True)
    return False

  def _find_switch_checkpoints(self) -> None:
    """The task-switch checkpoints already on disk (a resumed run keeps them), and the next switch to mark."""
    schedule = self.config.task_schedule
    self.next_switch = None
    if not self.config.probe_at_task_switches:
      return
    for step in self.checkpoints.store.steps():
      try:
        phase = self.checkpoints.store.read_metadata(step).get("task_switch")
        if phase is not None:
          self.switch_phases[step] = phase
      except Exception:  # a damaged checkpoint: the restore already said so
        continue
    self.next_switch = schedule.next_switch(self.counters["env_steps"])

  def _checkpoint_at_task_switch(self) -> None:
    """With probe_at_task_switches: a kept, probed checkpoint once the job's env steps reach the next switch."""
    if self.next_switch is None or self.counters["env_steps"] < self.next_switch:
      return
    phase = self.config.task_schedule.phase_at(self.next_switch)
    self.switch_phases[self.counters["updates"]] = phase
    self._checkpoint(task_switch=phase)
    self.next_switch = self.config.task_schedule.next_switch(self.counters["env_steps"])

  def _handle_events(self) -> None:
    """The actors' reports into counters and streams; what fails the MAC or the bounds is dropped and logged."""
    import numpy as np

    counters = self.counters
    for event in self.events.drain():
      problem = self.gate.problem(event)
      if problem is not None:
        self._reject(problem, event)
      elif event["kind"] == "join":
        self._answer_join(event)
      elif event["kind"] == "actor":
        counters["env_steps"] += event["env_steps"]
        self.actor_rates[event["actor"]] = {key: event.get(key, 0.0) for key in ACTOR_REPORT_KEYS}
        for episode in event["episodes"]:
          counters["episodes"] += 1
          if episode.get("task") != self.last_task:  # the recent returns are those of one game
            self.recent_returns.clear()
            self.last_task = episode.get("task")
          self.recent_returns.append(episode["return"])
          self.metrics.write("episodes", {"env_steps": counters["env_steps"], "actor": event["actor"], **episode})
      elif event["kind"] == "eval":
        returns = np.asarray(event["returns"])
        self.metrics.write("eval", {
            "env_steps": event["env_steps"], "step": event["step"], "task": event.get("task", self.config.game),
            "mean_return": float(returns.mean()),
            "median_return": float(np.median(returns)), "min_return": float(returns.min()),
            "max_return": float(returns.max()), "num_episodes": len(returns), "returns": event["returns"],
            "lengths_steps": event["lengths_steps"], "epsilon": event["epsilon"], "eval_wall_s": event["wall_s"],
        })
    for reason, count in self.events.take_rejected().items():
      self._reject(f"{reason} ({count} item{'s' if count > 1 else ''})", {})

  def _reject(self, reason: str, event: dict) -> None:
    self.metrics.write("rejected", {"env_steps": self.counters["env_steps"], "time": time.time(), "reason": reason,
                                    "kind": str(event.get("kind"))[:40], "actor": str(event.get("actor"))[:40]})
    now = time.monotonic()
    if now - self.last_rejection_print_s > REJECTION_PRINT_EVERY_S:
      self.last_rejection_print_s = now
      print(f"warning: dropped a message on the job's port: {reason} (every one is in metrics/rejected.jsonl)",
            flush=True)

  def _answer_join(self, event: dict) -> None:
    """An actor host asks to join with its actor ids: accepted unless they overlap another host's (or ours)."""
    from replay.messages import publish_job

    accepted, reason = self.gate.join(event["host"], event["actor_ids"])
    self.job["hosts"][event["host"]] = {"accepted": accepted, "reason": reason}
    publish_job(self.server.client(), self.job, self.key)
    self.metrics.write("supervisor", {"env_steps": self.counters["env_steps"], "time": time.time(), "event": "join",
                                      "host": event["host"], "actor_ids": event["actor_ids"], "accepted": accepted,
                                      "reason": reason})
    print(f"actor host {event['host'][:8]} (actors {event['actor_ids']}): {'joined' if accepted else 'refused'}"
          f"{'' if accepted else ': ' + reason}", flush=True)

  def _on_supervisor_event(self, event: dict) -> None:
    self.metrics.write("supervisor", {"env_steps": self.counters["env_steps"], "time": time.time(), **event})
    print(f"supervisor: {event}", flush=True)

  # -- checkpoints ----------------------------------------------------------------------------------------------

  def _checkpoint(self, final: bool = False, task_switch=None) -> None:
    import jax

    step = self.counters["updates"]
    if step == self.last_saved_step and not final and task_switch is None:
      return  # nothing learned since that checkpoint (a switch rewrites it, so that its metadata says so)
    faults.at("checkpoint-begin", {"kill-actor": self._kill_actor})
    diverged_at = self.watch.diverged_at()
    if diverged_at is not None:
      raise Diverged(diverged_at, "the loss")
    if not params_finite(self.state.params):
      raise Diverged(step, "a parameter")
    self.last_saved_step = step
    self.counters["train_time_s"] = self.progress.train_time_s()
    task_switch = task_switch if task_switch is not None else self.switch_phases.get(step)
    meta = {**self.counters, "finished": self.finished, "replay_size": self.server.size(), "task_switch": task_switch,
            "replay_checkpointed": self.config.checkpoint_replay, "time": time.time(), "jax_backend": jax.default_backend()}
    # Written first, so that the stream lengths the checkpoint records include its own row.
    self.metrics.write("checkpoints", {"env_steps": self.counters["env_steps"], "step": step, "final": final,
                                       "time": time.time()})
    self.checkpoints.save(step, self.state, meta, probe_inputs=probe_inputs(self.batches, self.config.probe.inputs),
                          server=self.server)

  def _final_checkpoint(self, drain: bool) -> None:
    if drain:
      time.sleep(0.5)  # the stopped actors' last reports reach the receiver
      self._handle_events()
    self._checkpoint(final=True)
    state_word = "finished" if self.finished else f"stopped by {self.stop.signal_name or 'an error'}"
    print(f"{state_word} at update {self.counters['updates']:,}, {self.counters['env_steps']:,} env steps; "
          f"checkpoints in {self.run_dir.checkpoints_dir}", flush=True)

  def _diverged(self, error: Diverged) -> str:
    steps = self.checkpoints.steps()
    newest = steps[-1] if steps else None
    self.run_dir.write_status({"state": "diverged", "step": error.step, "what": error.what, "time": time.time(),
                               "env_steps": self.counters["env_steps"], "last_checkpoint": newest})
    self.metrics.write("supervisor", {"event": "diverged", "env_steps": self.counters["env_steps"],
                                      "step": error.step, "what": error.what, "time": time.time()})
    kept = (f"the newest checkpoint, update {newest:,}, is the last finite one" if newest is not None
            else "the run has no checkpoint")
    print(f"error: {error}; stopped without writing a checkpoint: {kept} ({self.run_dir.status_path})",
          file=sys.stderr, flush=True)
    return "diverged"

  def _poison_params(self) -> None:
    """Fault injection (tests): one parameter becomes NaN, as a diverging update would leave it."""
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree.flatten(self.state.params)
    leaves[0] = jnp.full_like(leaves[0], jnp.nan)
    self.state = self.state._replace(params=jax.tree.unflatten(treedef, leaves))

  def _kill_actor(self) -> None:
    pid = self.supervisor.pids().get("actor-0")
    if pid is not None:
      os.kill(pid, signal.SIGKILL)

  def _close(self) -> None:
    self.supervisor.stop()  # (again, or the prestarted children of a run that ended before training)
    if self.sampler is not None:
      self.sampler.close()
    if self.server is not None:
      self.server.stop()
    if self.checkpoints is not None:
      self.checkpoints.store.close()
    if self.metrics is not None:
      self.metrics.close()


def next_checkpoint_step(config: RunConfig, updates: int) -> int:
  """The next update step that is a multiple of the checkpoint period or of the probe period, or (with
  probe_around_remedies) just after a remedy event; the one just before an event is written by `_update`."""
  periods = [config.checkpoint_every_updates] + ([config.probe_every_updates] if config.probe_every_updates else [])
  return min(min((updates // period + 1) * period for period in periods), remedy_probe_steps(config, updates)[1])


def probe_inputs(recent_batches, size: int) -> dict | None:
  """Up to `size` of the learner's latest transitions as host arrays (leading [K] axes flattened)."""
  import jax
  import numpy as np

  from agents.dqn import transition

  if not recent_batches:
    return None
  batches = jax.device_get([transition.host_fields(t) for t in recent_batches])
  lead = np.ndim(batches[0]["a_tm1"])  # [B], or [K, B] with updates_per_call = K
  return {name: np.concatenate([np.reshape(b[name], (-1, *np.shape(b[name])[lead:])) for b in batches])[-size:]
          for name in transition.STORED_FIELDS}


def wait_for_probes(probe_supervisor, stop, run_dir: str, store, config: RunConfig) -> None:
  """A finished run waits for the probe worker to probe the last checkpoints; Ctrl-C skips the wait.

  Every PROBE_WAIT_REPORT_EVERY_S it says how many checkpoints are left and about how long they will take
  (training.probe_worker.probe_backlog: the mean duration of the probes done so far, else a rough guess).
  """
  import jax

  from training.probe_worker import probe_backlog

  backend = "cpu" if config.probe.device == "cpu" else jax.default_backend()  # where the worker computes
  later = f"`python -m plasticity {run_dir}` probes the rest later"
  waiting_since = time.time()
  next_report_s = time.monotonic()
  first = True
  while not stop.event.is_set() and not probe_supervisor.all_finished():
    if probe_supervisor.consecutive_failures(PROBE_WORKER) >= PROBE_WORKER_MAX_FAILURES_AT_END:
      print(f"the probe worker keeps failing (see its output above); not waiting for it: {later}", flush=True)
      return
    if time.monotonic() >= next_report_s:
      next_report_s = time.monotonic() + PROBE_WAIT_REPORT_EVERY_S
      try:
        backlog = probe_backlog(run_dir, store, config, backend, waiting_since=waiting_since)
      except (OSError, ValueError) as error:  # a report is not worth failing the run for
        backlog = None
        print(f"waiting for the probe worker (its backlog cannot be read: {error})", flush=True)
      if backlog is not None:
        print(("waiting for the probe worker: " if first else "still waiting for the probe worker: ")
              + _backlog_text(backlog) + (f" (Ctrl-C skips; {later})" if first else ""), flush=True)
      first = False
    probe_supervisor.check()
    stop.event.wait(0.5)


def _backlog_text(backlog) -> str:
  if not backlog.left:
    return "every checkpoint is probed; the worker is finishing"
  text = f"{backlog.left} checkpoint{'s' if backlog.left > 1 else ''} left to probe"
  if backlog.remaining_s is None:
    return text + ", no estimate of how long until the first probe of this run is done"
  each = duration(backlog.per_probe_s)
  basis = (f"{each} each, the mean of the {backlog.done} done" if backlog.done
           else f"none done yet: a rough guess of {each} each, for a Nature CNN at these sizes on an idle CPU")
  more = f"about {duration(backlog.remaining_s)} more" if backlog.remaining_s >= 1 else "due now by the estimate"
  return text + f", {more} ({basis})"


