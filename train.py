"""Train a Double DQN agent on an Atari game: actors, a Reverb server and a learner in one supervised run.

  python train.py --game pong --preset atari100k --seed 0 --run-dir runs/pong-ln --agent.layer-norm
  python train.py --run-dir runs/pong-ln --resume                    # continue from the last checkpoint
  python train.py --role learner --listen 10.0.0.5:8000 --game pong  # multi-host: learner + server here
  python train.py --role actor --server 10.0.0.5:8000                # ... and actors on other hosts

Read top to bottom: parse and validate the config (nothing starts before it is
valid), prepare the run directory, start the Reverb server inside this process,
restore or initialise the learner, publish the job and the weights, start the
actor processes (`python -m training.actor`, the same command a remote host
runs) and, with --probe-every-updates, the probe worker (`python -m
plasticity.worker`), then loop: update on prefetched batches, publish weights,
drain actor reports into metrics, supervise, checkpoint (with the latest
batches as the probes' inputs). Ctrl-C or SIGTERM ends the loop with a final
checkpoint; a finished run waits for the probe worker's last probes; every
child process is stopped on every exit path.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import os
import signal
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common.validation import ConfigError  # noqa: E402
from training.config import (PRESET_NAMES, PRESETS, RunConfig, config_differences, load_config, make_learner,  # noqa: E402
                             save_config)

EXIT_CONFIG_ERROR = 2
HOUSEKEEPING_EVERY_S = 0.25
PUBLISH_AT_LEAST_EVERY_S = 2.0  # also during the replay warm-up, so actors' epsilon follows the job's env steps
PROBE_WORKER = "probe-worker"
PROBE_WORKER_MAX_FAILURES_AT_END = 3
PROBE_WAIT_REPORT_EVERY_S = 30.0


# ----------------------------------------------------------------------------------------------------------------
# Configuration


def parse_config(argv: list[str]) -> RunConfig:
  """The run's config: a preset (or, with --resume, the saved config.json) overridden by flags."""
  import tyro

  pre = argparse.ArgumentParser(add_help=False)
  pre.add_argument("--preset", default="dqn_zoo")
  pre.add_argument("--resume", action="store_true")
  pre.add_argument("--run-dir", "--run_dir", dest="run_dir")
  known, _ = pre.parse_known_args(argv)
  if known.preset not in PRESET_NAMES:
    raise ConfigError(f"preset={known.preset!r} is not one of {', '.join(PRESET_NAMES)}")

  if known.resume and "-h" not in argv and "--help" not in argv:
    if not known.run_dir:
      raise ConfigError("resume=True needs --run-dir of the run to continue")
    saved = load_config(known.run_dir)
    config = tyro.cli(RunConfig, default=dataclasses.replace(saved, resume=True), args=argv, description=__doc__)
    changed = config_differences(saved, config)
    if changed:
      raise ConfigError(
          f"--resume keeps the run's own config; these flags differ from {known.run_dir}/config.json: {', '.join(changed)}"
      )
    return config
  return tyro.cli(RunConfig, default=PRESETS[known.preset], args=argv, description=__doc__)


def check_run_dir(config: RunConfig) -> str:
  """The run directory, checked against --resume; raises ConfigError before anything is written."""
  from common.checkpoints import CheckpointStore

  run_dir = config.resolved_run_dir
  exists = os.path.isdir(run_dir) and bool(os.listdir(run_dir))
  if not config.resume:
    if exists:
      raise ConfigError(f"run directory {run_dir} already exists; pass --resume to continue it, or choose another --run-dir")
    return run_dir
  if not os.path.isdir(run_dir):
    raise ConfigError(f"run directory {run_dir} does not exist: nothing to resume")
  checkpoints = os.path.join(run_dir, "checkpoints")
  if not os.path.isdir(checkpoints) or not CheckpointStore(checkpoints, read_only=True).steps():
    raise ConfigError(f"run directory {run_dir} has no complete checkpoint to resume from")
  return run_dir


# ----------------------------------------------------------------------------------------------------------------
# The learner (with the embedded Reverb server and the local actors)


class Stop:
  """Set by SIGTERM / SIGINT: the main loop finishes its step, checkpoints and stops everything."""

  def __init__(self):
    self.event = threading.Event()
    self.signal_name = None
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, self._handle)

  def _handle(self, signum, _frame):
    if not self.event.is_set():
      self.signal_name = signal.Signals(signum).name
      print(f"\n{self.signal_name}: writing a final checkpoint and stopping (this takes a few seconds)", flush=True)
    self.event.set()


def run_learner(config: RunConfig, run_dir: str, stop: Stop) -> int:
  import jax
  import numpy as np

  from agents.dqn.actor import epsilon_schedule
  from common.checkpoints import CheckpointStore
  from common.metrics import MetricsLog
  from replay.messages import EventReceiver, publish_job
  from replay.params import ParamsPublisher
  from replay.sampler import Sampler, update_priorities
  from replay.server import ReplayServer
  from training.supervisor import Supervisor

  agent = config.agent
  learner, state = make_learner(config, config.seed)
  num_actions = learner.num_actions
  counters = {"env_steps": 0, "updates": 0, "episodes": 0, "train_time_s": 0.0}
  store = CheckpointStore(
      os.path.join(run_dir, "checkpoints"),
      keep_last=config.keep_last_checkpoints,
      # Probed checkpoints are kept, so the probes can be re-run offline on them.
      keep_every_steps=config.keep_checkpoint_every_updates or config.probe_every_updates or None,
  )
  if config.resume:  # before anything is written: a run that cannot be restored stays as it was
    state, saved, step = store.restore(state)
    counters.update({key: saved[key] for key in counters})
    print(f"resumed {run_dir} at update {step:,}, {counters['env_steps']:,} env steps", flush=True)
  os.makedirs(run_dir, exist_ok=True)
  save_config(config, run_dir)
  metrics = MetricsLog(run_dir)

  host, port = config.listen_address()
  replay_dir = os.path.join(run_dir, "replay") if config.checkpoint_replay else None
  server = ReplayServer(config.replay, config.env.obs_shape, port=port, checkpoint_dir=replay_dir)
  address = f"{host}:{server.port}"
  if config.resume:
    print(f"replay restored with {server.size():,} transitions", flush=True)
  client = server.client()
  publish_job(client, {"config": config.to_dict(), "start_env_steps": counters["env_steps"], "num_actions": num_actions})
  events = EventReceiver(server.address)
  publisher = ParamsPublisher(client)
  publisher.publish(jax.device_get(state.params), counters["updates"], counters["env_steps"])

  def on_supervisor_event(event: dict) -> None:
    metrics.write("supervisor", {"env_steps": counters["env_steps"], "time": time.time(), **event})
    print(f"supervisor: {event}", flush=True)

  supervisor = Supervisor(on_supervisor_event, restart_clean_exits=True)  # the job lives as long as this process
  # The probe worker finishes on its own once it has probed the final checkpoint.
  probe_supervisor = Supervisor(on_supervisor_event)
  sampler = None
  finished = crashed = False
  try:
    for actor_id in range(config.resolved_num_actors):
      supervisor.add(f"actor-{actor_id}", ["training.actor", "--server", f"localhost:{server.port}", "--actor-id", str(actor_id)])
    if config.eval_every_env_steps:
      supervisor.add("evaluator", ["training.actor", "--server", f"localhost:{server.port}", "--evaluator"])
    if config.probe_every_updates:
      probe_supervisor.add(PROBE_WORKER, ["plasticity.worker", run_dir])
    if config.role == "learner":
      print(f"learner serving job at {address}; start actors with: python train.py --role actor --server {address}", flush=True)
    print(f"training {config.game} ({config.preset}) in {run_dir}: {config.resolved_num_actors} actors x "
          f"{config.num_envs_per_actor} envs, learner on {jax.default_backend()}, server at {address}", flush=True)

    sampler = Sampler(server.address, config.replay, batch_size=agent.batch_size, updates_per_call=agent.updates_per_call)
    sampler.set_update_step(counters["updates"])
    epsilon = epsilon_schedule(agent)
    progress = Progress(config, counters)
    window = MetricsWindow()
    recent_returns: collections.deque = collections.deque(maxlen=100)
    # The learner's latest batches (device arrays, no copies) become the probe inputs saved with a checkpoint.
    recent_batches: collections.deque = collections.deque(
        maxlen=-(-config.probe.inputs // (agent.batch_size * agent.updates_per_call)))
    actor_rates: dict[int, float] = {}

    def handle_events() -> None:
      for event in events.drain():
        if event["kind"] == "actor":
          counters["env_steps"] += event["env_steps"]
          actor_rates[event["actor"]] = (event["steps_per_s"], event.get("loop_steps_per_s", 0.0), event.get("blocked_fraction", 0.0))
          for episode in event["episodes"]:
            counters["episodes"] += 1
            recent_returns.append(episode["return"])
            metrics.write("episodes", {"env_steps": counters["env_steps"], "actor": event["actor"], **episode})
        elif event["kind"] == "eval":
          returns = np.asarray(event["returns"])
          metrics.write("eval", {
              "env_steps": event["env_steps"], "step": event["step"], "mean_return": float(returns.mean()),
              "median_return": float(np.median(returns)), "min_return": float(returns.min()),
              "max_return": float(returns.max()), "num_episodes": len(returns), "returns": event["returns"],
              "lengths_steps": event["lengths_steps"], "epsilon": event["epsilon"], "eval_wall_s": event["wall_s"],
          })

    def checkpoint(final: bool = False) -> None:
      step = counters["updates"]
      if step == last_saved_step[0] and not final:
        return  # nothing learned since that checkpoint
      last_saved_step[0] = step
      counters["train_time_s"] = progress.train_time_s()
      meta = {**counters, "finished": finished, "replay_size": server.size(), "replay_checkpointed": replay_dir is not None,
              "time": time.time(), "jax_backend": jax.default_backend()}
      # Replaces a checkpoint of the same step: this run's own (the final one after a periodic one),
      # or a damaged one that --resume skipped.
      store.save(step, state, meta, probe_inputs=probe_inputs(recent_batches, config.probe.inputs),
                 replace=step in store.steps())
      if replay_dir is not None:
        server.checkpoint()
      metrics.write("checkpoints", {"env_steps": counters["env_steps"], "step": step, "final": final, "time": time.time()})

    last_saved_step = [counters["updates"] if config.resume else None]
    next_checkpoint = next_checkpoint_step(config, counters["updates"])
    next_publish = counters["updates"] + config.replay.publish_params_every_updates
    last_publish_s = last_housekeeping_s = time.monotonic()
    published_env_steps = counters["env_steps"]
    while not stop.event.is_set():
      batch = sampler.poll(timeout_s=0.02)
      if batch is not None:
        state, update_metrics = learner.update(state, batch.transitions)
        recent_batches.append(batch.transitions)
        counters["updates"] += agent.updates_per_call
        abs_td_error = update_metrics.pop("abs_td_error")
        window.add(update_metrics)
        if config.replay.prioritized:
          update_priorities(client, batch.keys, np.asarray(abs_td_error), config.replay)
          sampler.set_update_step(counters["updates"])
        if counters["updates"] >= next_checkpoint:
          checkpoint()
          next_checkpoint = next_checkpoint_step(config, counters["updates"])

      now = time.monotonic()
      if now - last_housekeeping_s < HOUSEKEEPING_EVERY_S and batch is not None and counters["updates"] < next_publish:
        continue
      if counters["updates"] >= next_publish or (
          now - last_publish_s > PUBLISH_AT_LEAST_EVERY_S and counters["env_steps"] != published_env_steps):
        publisher.publish(jax.device_get(state.params), counters["updates"], counters["env_steps"])
        next_publish = counters["updates"] + config.replay.publish_params_every_updates
        last_publish_s, published_env_steps = now, counters["env_steps"]
      if now - last_housekeeping_s >= HOUSEKEEPING_EVERY_S:
        last_housekeeping_s = now
        handle_events()
        supervisor.check()
        probe_supervisor.check()
        if counters["env_steps"] >= config.total_env_steps:
          finished = True
          break
        if progress.due():
          row = progress.row(server.size(), float(epsilon(counters["env_steps"])), recent_returns, actor_rates)
          row.update(window.take())
          metrics.write("train", row)
          print(progress.line(row), flush=True)
  except BaseException:
    crashed = True
    raise
  finally:
    supervisor.stop()
    try:
      if not crashed:
        time.sleep(0.5)  # the stopped actors' last reports reach the receiver
        handle_events()
        checkpoint(final=True)
        state_word = "finished" if finished else f"stopped by {stop.signal_name}"
        print(f"{state_word} at update {counters['updates']:,}, {counters['env_steps']:,} env steps; "
              f"checkpoints in {run_dir}/checkpoints", flush=True)
        if finished and config.probe_every_updates:
          wait_for_probes(probe_supervisor, stop, run_dir, store, config)
    finally:
      probe_supervisor.stop()
      if sampler is not None:
        sampler.close()
      server.stop()
      store.close()
      metrics.close()
  return 0


def next_checkpoint_step(config: RunConfig, updates: int) -> int:
  """The next update step that is a multiple of the checkpoint period or of the probe period."""
  periods = [config.checkpoint_every_updates] + ([config.probe_every_updates] if config.probe_every_updates else [])
  return min((updates // period + 1) * period for period in periods)


def probe_inputs(recent_batches, size: int) -> dict | None:
  """Up to `size` of the learner's latest transitions as host arrays (leading [K] axes flattened)."""
  import jax
  import numpy as np

  if not recent_batches:
    return None
  fields = ("obs_tm1", "a_tm1", "r_t", "discount_t", "obs_t")
  batches = jax.device_get([{name: getattr(t, name) for name in fields} for t in recent_batches])
  lead = np.ndim(batches[0]["a_tm1"])  # [B], or [K, B] with updates_per_call = K
  return {name: np.concatenate([np.reshape(b[name], (-1, *np.shape(b[name])[lead:])) for b in batches])[-size:]
          for name in fields}


def wait_for_probes(probe_supervisor, stop: Stop, run_dir: str, store, config: RunConfig) -> None:
  """A finished run waits for the probe worker to probe the last checkpoints; Ctrl-C skips the wait.

  Every PROBE_WAIT_REPORT_EVERY_S it says how many checkpoints are left and about how long they will take
  (plasticity.worker.probe_backlog: the mean duration of the probes done so far, else a rough guess).
  """
  import jax

  from plasticity.worker import probe_backlog

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
  each = _duration(backlog.per_probe_s)
  basis = (f"{each} each, the mean of the {backlog.done} done" if backlog.done
           else f"none done yet: a rough guess of {each} each, for a Nature CNN at these sizes on an idle CPU")
  more = f"about {_duration(backlog.remaining_s)} more" if backlog.remaining_s >= 1 else "due now by the estimate"
  return text + f", {more} ({basis})"


class MetricsWindow:
  """Learner metrics accumulated on the device between log rows (no host sync per update)."""

  def __init__(self):
    self._sum = None
    self._count = 0

  def add(self, metrics: dict) -> None:
    self._sum = metrics if self._sum is None else _accumulator()(self._sum, metrics)
    self._count += 1

  def take(self) -> dict:
    import jax

    if self._sum is None:
      return {}
    totals = jax.device_get(self._sum)
    row = {key: float(value) if key == "q_max" else float(value) / self._count for key, value in totals.items()}
    self._sum, self._count = None, 0
    return row


@functools.lru_cache(maxsize=None)
def _accumulator():
  """Jitted running sums (running max for q_max) of the learner's scalar metrics."""
  import jax
  import jax.numpy as jnp

  return jax.jit(lambda total, new: {k: jnp.maximum(total[k], new[k]) if k == "q_max" else total[k] + new[k] for k in total})


class Progress:
  """Rates, ETA and the progress line; one train.jsonl row per `log_every_s`."""

  def __init__(self, config: RunConfig, counters: dict):
    self._config = config
    self._counters = counters
    self._started_s = time.monotonic()
    self._train_time_before_s = counters["train_time_s"]
    self._last_s = self._started_s
    self._last_env_steps = counters["env_steps"]
    self._last_updates = counters["updates"]

  def train_time_s(self) -> float:
    return self._train_time_before_s + time.monotonic() - self._started_s

  def due(self) -> bool:
    return time.monotonic() - self._last_s >= self._config.log_every_s

  def row(self, replay_size: int, epsilon: float, recent_returns, actor_rates: dict) -> dict:
    now = time.monotonic()
    elapsed_s = max(now - self._last_s, 1e-9)
    env_steps, updates = self._counters["env_steps"], self._counters["updates"]
    env_rate = (env_steps - self._last_env_steps) / elapsed_s
    update_rate = (updates - self._last_updates) / elapsed_s
    self._last_s, self._last_env_steps, self._last_updates = now, env_steps, updates
    remaining = max(0, self._config.total_env_steps - env_steps)
    return {
        "env_steps": env_steps,
        "step": updates,
        "episodes": self._counters["episodes"],
        "env_steps_per_s": env_rate,
        "updates_per_s": update_rate,
        "actor_env_steps_per_s": sum(rate for rate, _, _ in actor_rates.values()),
        # Per actor, the speed of its loop when not held back by the rate limiter, and how often it was.
        "actor_loop_steps_per_s": sum(loop for _, loop, _ in actor_rates.values()) / max(1, len(actor_rates)),
        "actor_blocked_fraction": sum(b for _, _, b in actor_rates.values()) / max(1, len(actor_rates)),
        "replay_size": replay_size,
        "epsilon": epsilon,
        "recent_mean_return": float(sum(recent_returns) / len(recent_returns)) if recent_returns else None,
        "recent_episodes": len(recent_returns),
        "train_time_s": self.train_time_s(),
        "eta_s": remaining / env_rate if env_rate > 0 else None,
    }

  def line(self, row: dict) -> str:
    total = self._config.total_env_steps
    ret = "-" if row["recent_mean_return"] is None else f"{row['recent_mean_return']:.1f}"
    eta = "-" if row["eta_s"] is None else _duration(row["eta_s"])
    loss = f" | loss {row['loss']:.4f}" if "loss" in row else ""
    return (f"[{100 * row['env_steps'] / total:5.1f}%] {row['env_steps']:,}/{total:,} env steps | "
            f"{row['env_steps_per_s']:,.0f} steps/s | {row['updates_per_s']:,.1f} upd/s | "
            f"replay {row['replay_size']:,} | return(last {row['recent_episodes']}) {ret} | "
            f"eps {row['epsilon']:.3f}{loss} | ETA {eta}")


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


# ----------------------------------------------------------------------------------------------------------------
# Role actor: this host's actors join a job running elsewhere.


def run_actor_host(config: RunConfig, stop: Stop) -> int:
  import reverb

  from replay.messages import fetch_job
  from training.supervisor import Supervisor

  try:
    job = fetch_job(reverb.Client(config.server), timeout_s=30)
  except Exception as error:
    raise ConfigError(f"no training job answers at {config.server}: {type(error).__name__}: {error}") from None
  num_actors = config.num_actors or RunConfig(role="actor", server=config.server).resolved_num_actors
  game = job["config"]["game"]
  print(f"joining job at {config.server} ({game}): actors {config.first_actor_id}..{config.first_actor_id + num_actors - 1}", flush=True)
  supervisor = Supervisor(lambda event: print(f"supervisor: {event}", flush=True))
  try:
    for i in range(num_actors):
      actor_id = config.first_actor_id + i
      supervisor.add(f"actor-{actor_id}", ["training.actor", "--server", config.server, "--actor-id", str(actor_id)])
    while not stop.event.is_set() and not supervisor.all_finished():
      supervisor.check()
      stop.event.wait(0.5)
  finally:
    supervisor.stop()
  print("the job has ended" if not stop.event.is_set() else "stopped", flush=True)
  return 0


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  stop = Stop()
  try:
    config = parse_config(argv)
    if config.role == "actor":
      return run_actor_host(config, stop)
    run_dir = check_run_dir(config)
    if not config.resume:
      # config.json records what was used: the run dir, the actor count, the optimizer's reference values.
      num_actors = config.num_actors if config.role == "learner" else config.resolved_num_actors
      agent = dataclasses.replace(
          config.agent, learning_rate=config.agent.resolved_learning_rate, optimizer_eps=config.agent.resolved_optimizer_eps)
      config = dataclasses.replace(config, run_dir=run_dir, num_actors=num_actors, agent=agent)
    _, port = config.listen_address()
    if port is not None:
      from replay.server import check_port_free

      check_port_free(port)
  except ConfigError as error:
    print(f"error: {error}", file=sys.stderr)
    return EXIT_CONFIG_ERROR
  from common.checkpoints import NoCheckpointError

  try:
    return run_learner(config, run_dir, stop)
  except NoCheckpointError as error:  # every checkpoint of the run is damaged
    print(f"error: {error}", file=sys.stderr)
    return EXIT_CONFIG_ERROR


if __name__ == "__main__":
  from common.log_filter import filtered_stderr

  with filtered_stderr():  # Reverb's C++ INFO lines and Orbax's restore warning, here and in every child process
    exit_code = main()
  sys.exit(exit_code)
