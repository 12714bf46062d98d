"""The learner process of a run (train.py, roles `all` and `learner`): one consistent point in, one out.

`LearnerRun.run()` reads top to bottom: restore the newest consistent checkpoint (learner state, counters and
the replay written with them; common.run_dir.RunCheckpoints) or initialise, and only then write: config.json,
the stream rows a crash left after that checkpoint moved aside, a `resumes` row. Then start the Reverb server's
job, the local actors and the probe worker, and loop: update on prefetched batches, publish weights, drain the
actors' reports into metrics, supervise, checkpoint. It ends in one of four ways:

- finished (the env-step budget) or stopped (SIGTERM / Ctrl-C): a final checkpoint, exit 0;
- diverged (a non-finite loss or parameter): no checkpoint (the newest stays the last finite one),
  status.json says at which update, exit EXIT_DIVERGED;
- the event receiver failed (env steps would stop counting), or an actor or the evaluator died
  CHILD_FAILURES_BEFORE_STOP times in a row at its start (they would stop counting): a final checkpoint, a
  message, exit EXIT_FAILED;
- any other error: no checkpoint, the traceback.

Every child process is stopped on every path.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

from common import faults
from common.metrics import MetricsLog
from common.process_setup import describe_gpu_memory, gpu_memory_env
from common.processes import EXIT_DIVERGED, EXIT_FAILED, Supervisor
from common.provenance import provenance
from common.run_dir import LIVES_STREAM, RESUMES_STREAM, RunDir
from training.checkpoint_schedule import CheckpointSchedule
from training.config import RunConfig, make_learner, save_config
from training.progress import Progress, duration

HOUSEKEEPING_EVERY_S = 0.25
PROBE_WORKER = "probe-worker"
PROBE_WORKER_MAX_FAILURES_AT_END = 3
PROBE_WAIT_REPORT_EVERY_S = 30.0
CHILD_FAILURES_BEFORE_STOP = 5  # an actor or the evaluator dying this often in a row stops the run (its backoff: ~30 s)


class ChildrenFailing(RuntimeError):
  """An actor or the evaluator keeps dying at its start: the job would wait for env steps forever."""


class LearnerRun:
  """One life of the learner process; `run()` returns the exit code.

  It composes three parts, each holding its own state: `updates` (training.updates: the learner state and what
  an update does), `channel` (training.job_channel: the job, weight publishing, the actors' reports) and
  `schedule` (training.checkpoint_schedule: when checkpoints are due and which are kept). `counters` is the run's
  ledger, shared by reference: `updates` writes "updates", `channel` "env_steps" and "episodes", and this class
  "train_time_s" at each checkpoint.
  """

  def __init__(self, config: RunConfig, run_dir: str, stop):
    self.config = config
    self.run_dir = RunDir(run_dir)
    self.stop = stop
    self.counters = {"env_steps": 0, "updates": 0, "episodes": 0, "train_time_s": 0.0}
    self.finished = False
    self.supervisor = Supervisor(self._on_supervisor_event, restart_clean_exits=True)  # actors, evaluator
    self.probe_supervisor = None  # the probe worker: finishes once it has probed the final checkpoint
    self.schedule = self.server = self.metrics = self.updates = self.channel = self.sampler = None
    self.tracker = None  # W&B (training/tracking.py), with --track wandb
    self.progress = self.epsilon = None
    self.out_of_bounds_said = 0  # the sampler's out-of-bounds count at the last warning

  # -- start ----------------------------------------------------------------------------------------------------

  def run(self) -> int:
    self._prestart_children()  # their imports overlap ours, the restore and the server's start
    config = self.config
    learner, state = make_learner(config, config.seed)
    self.schedule = CheckpointSchedule(config, self.run_dir)
    try:
      if config.resume and self._finished_before():
        return 0
      restored, state = self._restore_or_start_server(state)
      self._open_streams(restored)  # the first writes, once the restore has succeeded
      if config.track == "wandb":
        self._start_tracking()
      return self._train(learner, state)
    finally:
      self._close()

  def _start_tracking(self) -> None:
    from training.tracking import TrackerThread  # wandb, optional, loads only with --track wandb

    try:
      self.tracker = TrackerThread(self.config, self.run_dir.path)
    except Exception as error:  # W&B's own failure (its service, the network) is not worth the run
      print(f"warning: --track wandb: W&B did not start ({type(error).__name__}: {error}); the run goes on without "
            "it", flush=True)

  def _finished_before(self) -> bool:
    """A run finished at this budget says so and changes nothing."""
    store = self.schedule.checkpoints.store
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

  def _restore_or_start_server(self, state):
    """(the restore, or None for a new run; the learner state to start from), with the server started."""
    from replay.server import ReplayServer  # imported after the prestart (TensorFlow, Reverb)

    config = self.config
    host, port = config.listen_address()

    def start_server(restore_from):
      replay_root = self.run_dir.replay_incoming_dir if config.checkpoint_replay else None
      return ReplayServer(config.replay, config.env.obs_shape, port=port, checkpoint_dir=replay_root,
                          restore_from=restore_from)

    if not config.resume:
      self.server = start_server(None)
      return None, state
    restored = self.schedule.checkpoints.restore(state, start_server, without_replay=config.resume_without_replay)
    for line in restored.skipped:
      print(f"warning: {line}; trying the one before", flush=True)
    for line in restored.notes:
      print(f"note: {line}", flush=True)
    self.server = restored.server
    self.counters.update({key: restored.metadata[key] for key in self.counters})
    self.schedule.restored(restored.step)
    replay = {"restored": f"replay restored with {self.server.size():,} transitions",
              "restored (legacy)": f"replay restored with {self.server.size():,} transitions (legacy layout)",
              "empty": "replay EMPTY (--resume-without-replay)", "not checkpointed": "the run keeps no replay"}
    print(f"resumed {self.run_dir.path} at update {restored.step:,}, {self.counters['env_steps']:,} env steps; "
          f"{replay[restored.replay]}", flush=True)
    return restored, restored.state

  def _open_streams(self, restored) -> None:
    moved = self.schedule.checkpoints.cut_streams(restored) if restored is not None else {}
    if moved:
      print("moved the rows written after that checkpoint aside: "
            + ", ".join(f"{stream} {rows}" for stream, rows in moved.items()), flush=True)
    save_config(dataclasses.replace(self.config, resume_without_replay=False), self.run_dir.path)
    self.run_dir.clear_status()
    self.metrics = MetricsLog(self.run_dir.path)
    # The code of this life (a resume may run another commit), never cut either.
    self.metrics.write(LIVES_STREAM, {
        "started_update": self.counters["updates"], "started_env_steps": self.counters["env_steps"],
        "resumed": restored is not None, "time": time.time(), **provenance()})
    if restored is not None:
      # A log of the run directory's history, never cut: its fields name restored points, not progress.
      self.metrics.write(RESUMES_STREAM, {
          "restored_update": restored.step, "restored_env_steps": self.counters["env_steps"], "replay": restored.replay,
          "replay_size": self.server.size(), "skipped": restored.skipped, "moved_rows": moved, "time": time.time()})

  # -- training -------------------------------------------------------------------------------------------------

  def _train(self, learner, state) -> int:
    from agents.dqn.actor import epsilon_schedule  # imported after the prestart, as are the three below (JAX)
    from replay.messages import EventsLost
    from training.job_channel import JobChannel
    from training.updates import Diverged, Updates

    config = self.config
    self.updates = Updates(config, learner, state, self.counters, self.server)
    self.channel = JobChannel(config, self.run_dir, self.server, self.counters, self.metrics, learner.num_actions)
    self.channel.publish(self.updates.params, time.monotonic())
    self.supervisor.set_env(self.channel.actors_env())
    self.probe_supervisor = Supervisor(self._on_supervisor_event, env={
        **self.channel.secret_env(), **gpu_memory_env(config.probe_gpu_memory_fraction, preallocate=False)})
    outcome = "crashed"
    try:
      self._start_children()
      self.sampler = self._open_sampler(learner.num_actions)
      self.schedule.start(self.counters["updates"], self.counters["env_steps"])
      self.progress = Progress(config, self.counters)
      self.epsilon = epsilon_schedule(config.agent)
      outcome = self._loop()
    except Diverged as error:
      outcome = self._diverged(error)
    except EventsLost as error:
      outcome = "events lost"
      print(f"error: {error}; stopping with a final checkpoint (its env-step count may lag the actors')",
            file=sys.stderr, flush=True)
    except ChildrenFailing as error:
      outcome = "children failing"
      print(f"error: {error}; stopping with a final checkpoint. Fix what it says, then: train.py --run-dir "
            f"{self.run_dir.path} --resume", file=sys.stderr, flush=True)
    finally:
      if outcome == "finished" and config.eval_every_env_steps:
        self._final_evaluation()
      self.supervisor.stop()
      if outcome != "crashed" and outcome != "diverged":
        try:
          self._final_checkpoint(drain=outcome != "events lost")
        except Diverged as error:
          outcome = self._diverged(error)
      if outcome == "finished" and config.probe_every_updates:
        wait_for_probes(self.probe_supervisor, self.stop, self.run_dir.path, self.schedule.checkpoints.store, config)
      self.probe_supervisor.stop()
    return {"finished": 0, "stopped": 0, "diverged": EXIT_DIVERGED, "events lost": EXIT_FAILED,
            "children failing": EXIT_FAILED}[outcome]

  def _open_sampler(self, num_actions: int):
    from agents.dqn import transition  # imported after the prestart (JAX), as is the sampler (TensorFlow)
    from replay.sampler import Sampler

    config, agent = self.config, self.config.agent
    bounds = transition.bounds(agent.n_step, agent.discount, agent.clip_rewards, agent.max_abs_reward,
                               num_actions)
    sampler = Sampler(self.server.address, config.replay, batch_size=agent.batch_size,
                      updates_per_call=agent.updates_per_call, bounds=bounds)
    sampler.set_update_step(self.counters["updates"])
    return sampler

  def _prestart_children(self) -> None:
    """The local actors and the evaluator, started now to wait for `_start_children` (common.processes.Supervisor)."""
    for actor_id in range(self.config.resolved_num_actors):
      self.supervisor.prestart(f"actor-{actor_id}", "training.actor")
    if self.config.eval_every_env_steps:
      self.supervisor.prestart("evaluator", "training.actor")

  def _start_children(self) -> None:
    from replay.server import reachable_addresses  # imported after the prestart (TensorFlow, Reverb)

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
    backend = self.updates.backend()
    memory = f" ({describe_gpu_memory()})" if backend == "gpu" else ""
    print(f"training {config.game} ({config.preset}) in {self.run_dir.path}: {config.resolved_num_actors} actors x "
          f"{config.num_envs_per_actor} envs, learner on {backend}{memory}, server at {address}", flush=True)
    print(f"port {port} answers on every interface of this host (Reverb 0.14 binds them all): "
          f"{', '.join(reachable_addresses())}; reports and weights need the job secret "
          f"({self.run_dir.secret_path}), replay does not (docs/run_directory.md: who can reach a job)", flush=True)

  def _loop(self) -> str:
    """Updates until the budget is reached ("finished") or a signal arrives ("stopped")."""
    last_housekeeping_s = time.monotonic()
    while not self.stop.event.is_set():
      batch = self.sampler.poll(timeout_s=0.02)
      if batch is not None:
        self._update(batch)
        if self.schedule.periodic_due(self.counters["updates"]):
          self._checkpoint()
      now = time.monotonic()
      if now - last_housekeeping_s < HOUSEKEEPING_EVERY_S and batch is not None and not self.channel.weights_owed():
        continue
      if self.channel.publish_due(now):
        self.channel.publish(self.updates.params, now)  # returns at once: the channel's thread publishes
      if now - last_housekeeping_s >= HOUSEKEEPING_EVERY_S:
        last_housekeeping_s = now
        if self._housekeeping():
          return "finished"
    return "stopped"

  def _update(self, batch) -> None:
    for event in self.updates.update(batch, checkpoint=self._checkpoint):
      self._remedy_event(event)
    if self.config.replay.prioritized:
      self.sampler.set_update_step(self.counters["updates"])

  def _remedy_event(self, event) -> None:
    """A periodic remedy was applied: one row in metrics/remedies.jsonl (and TensorBoard), one line."""
    self.metrics.write("remedies", {"env_steps": self.counters["env_steps"], "time": time.time(), **event.row()})
    touched = ", ".join(f"{layer} {units}" for layer, units in event.units.items()) or ", ".join(event.layers)
    print(f"{event.remedy} at update {event.step:,}: {touched}"
          + (" (optimizer moments reset)" if event.optimizer_reset else ""), flush=True)

  def _housekeeping(self) -> bool:
    """Reports, supervision, the divergence watch and the progress row; True once the budget is reached."""
    self.channel.drain()
    self.channel.guard(time.monotonic())
    self.supervisor.check()
    failing = self.supervisor.crash_looping(CHILD_FAILURES_BEFORE_STOP)
    if failing is not None:
      raise ChildrenFailing(failing)
    self.probe_supervisor.check()
    self.updates.check_loss()
    phase = self.schedule.switch_due(self.counters["env_steps"])
    if phase is not None:  # first: the last switch may come in the same report as the budget's end
      self._checkpoint(task_switch=phase)
    if self.counters["env_steps"] >= self.config.total_env_steps:
      self.finished = True
      return True
    if self.progress.due():
      self._progress_row()
    return False

  def _progress_row(self) -> None:
    epsilon = float(self.epsilon(self.counters["env_steps"]))
    row = self.progress.row(self.server.size(), epsilon, self.channel.recent_returns, self.channel.actor_rates)
    row.update(self.updates.take_metrics())
    row["replay_out_of_bounds"] = self.sampler.out_of_bounds
    if self.sampler.out_of_bounds > self.out_of_bounds_said:
      self.out_of_bounds_said = self.sampler.out_of_bounds
      print(f"warning: {self.out_of_bounds_said:,} sampled transition(s) so far held a return, discount or action no "
            "transition of this job can (inserted by a client without the secret?); clamped into bounds "
            "(docs/run_directory.md: who can reach a job)", flush=True)
    schedule = self.config.task_schedule
    if schedule is not None:  # the task the actors play now (their returns in the row mix the last switch's)
      row["task"] = schedule.game_at(self.counters["env_steps"])
    self.metrics.write("train", row)
    print(self.progress.line(row) + (f" | task {row['task']}" if schedule is not None else ""), flush=True)

  def _on_supervisor_event(self, event: dict) -> None:
    self.metrics.write("supervisor", {"env_steps": self.counters["env_steps"], "time": time.time(), **event})
    print(f"supervisor: {event}", flush=True)

  # -- checkpoints ----------------------------------------------------------------------------------------------

  def _checkpoint(self, final: bool = False, task_switch=None) -> None:
    step = self.counters["updates"]
    if not self.schedule.wanted(step, final=final, task_switch=task_switch):
      return
    faults.at("checkpoint-begin", {"kill-actor": self._kill_actor})
    self.updates.settle()  # the priorities of every update so far are in the replay it saves
    self.updates.check_finite()
    self.counters["train_time_s"] = self.progress.train_time_s()
    meta = {**self.counters, "finished": self.finished, "replay_size": self.server.size(),
            "replay_checkpointed": self.config.checkpoint_replay, "time": time.time(), "jax_backend": self.updates.backend()}
    # Written first, so that the stream lengths the checkpoint records include its own row.
    self.metrics.write("checkpoints", {"env_steps": self.counters["env_steps"], "step": step, "final": final,
                                       "time": time.time()})
    self.schedule.save(step, self.counters["env_steps"], self.updates.state, meta, task_switch=task_switch,
                       probe_inputs=self.updates.probe_inputs(), server=self.server)

  def _final_checkpoint(self, drain: bool) -> None:
    if drain:
      time.sleep(0.5)  # the stopped actors' last reports reach the receiver
      self.channel.drain()
    self._checkpoint(final=True)
    state_word = "finished" if self.finished else f"stopped by {self.stop.signal_name or 'an error'}"
    print(f"{state_word} at update {self.counters['updates']:,}, {self.counters['env_steps']:,} env steps; "
          f"checkpoints in {self.run_dir.checkpoints_dir}", flush=True)

  def _diverged(self, error) -> str:
    steps = self.schedule.checkpoints.steps()
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

  def _final_evaluation(self) -> None:
    """A finished run evaluates its final weights (DQN Zoo's last iteration) unless an evaluation of weights at or
    past the last multiple of eval_every_env_steps came in: the actors stop, the final weights go out, and the
    evaluator's report of them, every task's, is waited for. Ctrl-C, or an evaluator that keeps dying, skips it."""
    config, channel = self.config, self.channel
    due = self.counters["env_steps"] // config.eval_every_env_steps * config.eval_every_env_steps
    tasks = len(config.task_schedule.distinct_games) if config.task_schedule else 1
    if sum(steps >= due for steps in channel.evaluated_env_steps) >= tasks:
      return
    self.supervisor.stop_children([f"actor-{i}" for i in range(config.resolved_num_actors)])
    channel.publish(self.updates.params, time.monotonic())
    print(f"waiting for the evaluation of the final weights ({self.counters['env_steps']:,} env steps; Ctrl-C "
          "skips it)", flush=True)
    while not self.stop.event.is_set() and sum(steps >= due for steps in channel.evaluated_env_steps) < tasks:
      channel.drain()
      self.supervisor.check()
      if self.supervisor.crash_looping(CHILD_FAILURES_BEFORE_STOP):
        print("the evaluator keeps dying (its own message is above): the final weights go unevaluated", flush=True)
        return
      self.stop.event.wait(0.2)

  def _kill_actor(self) -> None:
    """Fault injection (tests): SIGKILL to actor 0, as the OOM killer would send it."""
    pid = self.supervisor.pids().get("actor-0")
    if pid is not None:
      os.kill(pid, signal.SIGKILL)

  def _close(self) -> None:
    self.supervisor.stop()  # (again, or the prestarted children of a run that ended before training)
    if self.tracker is not None:  # after the probe worker: its last rows go too
      self.tracker.stop(finished=self.finished)
    if self.channel is not None:
      self.channel.close()
    if self.updates is not None:
      self.updates.close()
    if self.sampler is not None:
      self.sampler.close()
    if self.server is not None:
      self.server.stop()
    if self.schedule is not None:
      self.schedule.checkpoints.store.close()
    if self.metrics is not None:
      self.metrics.close()


def wait_for_probes(probe_supervisor, stop, run_dir: str, store, config: RunConfig) -> None:
  """A finished run waits for the probe worker to probe the last checkpoints; Ctrl-C skips the wait.

  Every PROBE_WAIT_REPORT_EVERY_S it says how many checkpoints are left and about how long they will take
  (training.probe_worker.probe_backlog: the mean duration of the probes done so far, else a rough guess).
  """
  import jax  # loaded by now (the learner); this module imports without it, so that children start first

  from training.probe_worker import probe_backlog  # imports JAX too

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


