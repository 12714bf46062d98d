"""The actor and the evaluator of a job: they join it through its Reverb server and nothing else.

Started by `python -m training.actor` (training/actor.py), which sets the process up first (one XLA thread on
the CPU: common/process_setup.py) and then imports this module, so JAX, Reverb and the emulator load here at
module level. An actor steps its games with one batched jitted epsilon-greedy call per step, writes n-step
transitions to `replay`, refreshes its weights from `params` in the background, and every REPORT_EVERY_S
reports its agent steps and finished episodes (real, unclipped scores) to `events`. The evaluator plays
`eval_episodes` games each time the published weights pass another `eval_every_env_steps`.
"""

from __future__ import annotations

import os
import time
import uuid

import jax
import numpy as np
import reverb

from agents.dqn import init_actor_state, make_select_action
from common.processes import EXIT_SERVER_GONE, StopRequest
from envs import AtariEnv
from replay.messages import HOST_ENV, ask_to_join, fetch_job, secret_from_env, send_event
from replay.params import ParamsFetcher
from replay.writer import TransitionWriter, WriterStopped
from training.config import RunConfig
from training.evaluation import evaluate, evaluate_for_frames

REPORT_EVERY_S = 1.0
SERVER_LOST_AFTER_S = 20.0


def actor_seed(seed: int, actor_id: int, start_env_steps: int, incarnation: int) -> int:
  """Environment and exploration seed of one actor life: distinct per actor, per resume and per restart."""
  state = np.random.SeedSequence([seed, actor_id, start_env_steps, incarnation]).generate_state(1)[0]
  return int(state) % (2**31 - 2**16)  # room for the + env index of AtariEnv's per-env seeds


def _join_job(address: str, timeout_s: float, actor_id: int | None = None):
  """(client, job, config, key): the job at `address`, checked against the secret this process was given.

  An actor that no host's supervisor started (started by hand: no HOST_ENV) first asks the learner for its id as
  a host of one actor, so that it cannot run beside the job's own actor of that id (JoinRefused)."""
  key = secret_from_env()
  client = reverb.Client(address)
  job = fetch_job(client, key, timeout_s=timeout_s)
  if actor_id is not None and not os.environ.get(HOST_ENV):
    job = ask_to_join(client, key, uuid.uuid4().hex, [actor_id], timeout_s)
  return client, job, RunConfig.from_dict(job["config"]), key


def _server_gone_at_join(who: str, address: str, error: ConnectionError) -> int:
  """An actor (re)started after its job's server stopped: the job has ended, so it ends too, at once."""
  print(f"{who}: the job's server at {address} does not answer ({error}); stopping", flush=True)
  return EXIT_SERVER_GONE


class ActorGames:
  """The actor's environments: one `AtariEnv` on the game of the run, or on the task schedule's current game.

  At a task switch (the job's env steps enter the next task) the old game's environments close and the new
  game's start from a reset; the episodes in progress end unreported and unfinished n-step windows are dropped
  (the replay writer starts afresh), so no transition or score mixes two games.
  """

  def __init__(self, config, seed: int, job_env_steps: int):
    self.config, self.seed = config, seed
    self.schedule = config.task_schedule
    self.env = None
    self.phase = self.schedule.phase_at(job_env_steps) if self.schedule else 0
    self._open(self.schedule.game_at(job_env_steps) if self.schedule else config.game)

  def _open(self, game: str) -> None:
    seed = (self.seed + 7919 * self.phase) % (2**31 - 2**16)  # a new draw of starts for every phase
    self.env = AtariEnv(game, self.config.num_envs_per_actor, self.config.env, seed=seed, num_threads=1)
    self.game = game

  def switch_if_due(self, job_env_steps: int):
    """The new game's first observations if the task changed at `job_env_steps`, else None."""
    if self.schedule is None or self.schedule.phase_at(job_env_steps) == self.phase:
      return None
    self.phase = self.schedule.phase_at(job_env_steps)
    self.env.close()
    self._open(self.schedule.game_at(job_env_steps))
    return self.env.reset()

  def close(self) -> None:
    self.env.close()


def run_actor(address: str, actor_id: int, incarnation: int = 0, join_timeout_s: float = 120.0) -> int:
  """One actor life on the job at `address`; its exit code (0: stopped, EXIT_SERVER_GONE: the job ended)."""
  stop = StopRequest()
  try:
    loop = ActorLoop(address, actor_id, incarnation, join_timeout_s, stop)
  except ConnectionError as error:
    return _server_gone_at_join(f"actor {actor_id}", address, error)
  return loop.run()


class ActorLoop:
  """An actor joined to a job: it steps its games, writes their transitions and reports until stopped.

  Epsilon and the task follow the job's env steps: those published with the weights plus the actor's own since,
  never back (new weights can count fewer of its steps than it has taken since the last ones), so no task flips back.
  """

  def __init__(self, address: str, actor_id: int, incarnation: int, join_timeout_s: float, stop: StopRequest):
    # Bound once here: the loop's methods run at every step.
    self._device_put, self._send_event = jax.device_put, send_event
    self.address, self.actor_id, self.join_timeout_s, self.stop = address, actor_id, join_timeout_s, stop
    self.client, job, config, self.key = _join_job(address, join_timeout_s, actor_id)
    agent = config.agent
    seed = actor_seed(config.seed, actor_id, job["start_env_steps"], incarnation)
    self.games = ActorGames(config, seed, job["start_env_steps"])
    self.env = self.games.env
    network = agent.make_network(self.env.num_actions)
    self.obs = self.env.reset()
    template = jax.device_get(network.init(jax.random.PRNGKey(0), self.obs[:1]))
    self.fetcher = ParamsFetcher(self.client, template, self.key, poll_interval_s=config.params_poll_interval_s)
    self.writer = TransitionWriter(
        self.client, self.env.num_envs, n_step=agent.n_step, discount=agent.discount,
        clip_rewards=agent.clip_rewards, max_abs_reward=agent.max_abs_reward, stack_frames=config.env.stack_frames,
        priority=config.replay.initial_priority,
    )
    stop.on_stop.append(self.writer.stop)
    self.select_action = make_select_action(network, agent)
    self.actor_state = init_actor_state(jax.random.PRNGKey(seed))
    print(f"actor {actor_id}: joined {address} ({self.games.game}, {self.env.num_envs} envs, seed {seed})", flush=True)

    self.params = None
    self.steps_unreported, self.episodes_unreported = 0, []
    self.steps_this_life = 0
    self.weights_version, self.weights_env_steps, self.steps_since_weights = -1, -1, 0
    self.job_env_steps = job["start_env_steps"]
    self.started = self.last_report = self.last_contact = time.monotonic()

  def run(self) -> int:
    exit_code = 0
    try:
      self.fetcher.wait(timeout_s=self.join_timeout_s)
      self.writer.reset(self.obs)
      self.started = self.last_report = self.last_contact = time.monotonic()  # rates count from the first step
      while not self.stop.event.is_set():
        self._take_new_weights()
        self._step()
        self._report_if_due()
    except WriterStopped:
      pass  # stopped while an insert waited on the rate limiter
    except (ConnectionError, reverb.errors.DeadlineExceededError) as error:
      print(f"actor {self.actor_id}: the job's server went away ({error}); stopping", flush=True)
      exit_code = EXIT_SERVER_GONE
    except Exception as error:
      if not _server_gone(error):
        raise
      print(f"actor {self.actor_id}: the job's server went away; stopping", flush=True)
      exit_code = EXIT_SERVER_GONE
    finally:
      self.fetcher.close()
      self.games.close()
    if exit_code == 0 and (self.steps_unreported or self.episodes_unreported):
      self._send_final_report()
    return exit_code

  def _take_new_weights(self) -> None:
    weights = self.fetcher.latest()
    if weights.version != self.weights_version or weights.env_steps != self.weights_env_steps:
      self.params = self._device_put(weights.params)  # onto the device once per new version, not at every call
      self.weights_version, self.weights_env_steps, self.steps_since_weights = weights.version, weights.env_steps, 0
    self.job_env_steps = max(self.job_env_steps, self.weights_env_steps + self.steps_since_weights)

  def _step(self) -> None:
    """One step of every env (on the task due at the job's env steps), written to replay."""
    switched = self.games.switch_if_due(self.job_env_steps)
    if switched is not None:
      self.env, self.obs = self.games.env, switched
      self.writer.reset(self.obs)
    self.actor_state = self.actor_state._replace(env_steps=np.int32(self.job_env_steps))
    actions, self.actor_state = self.select_action(self.params, self.obs, self.actor_state)
    actions = np.asarray(actions)
    step = self.env.step(actions)
    self.writer.step(actions, step)
    self.obs = step.obs
    num_envs = self.env.num_envs
    self.steps_unreported += num_envs
    self.steps_this_life += num_envs
    self.steps_since_weights += num_envs
    for episode in step.episodes:
      # actor_env_steps: the job's env steps as this actor counted them at the episode's last step, the count its
      # epsilon and task followed (the row's env_steps is the learner's count when the report arrives).
      self.episodes_unreported.append({"return": episode.episode_return, "length_steps": episode.length_steps,
                                       "truncated": episode.truncated, "task": self.games.game,
                                       "actor_env_steps": int(self.job_env_steps)})

  def _report_if_due(self) -> None:
    """Every REPORT_EVERY_S, the steps and episodes since the last report; raises ConnectionError when the server
    has not answered for SERVER_LOST_AFTER_S."""
    now = time.monotonic()
    if now - self.last_report >= REPORT_EVERY_S:
      elapsed_s, blocked_s = now - self.started, self.writer.blocked_s
      self._send_report(now, {
          # The loop's own speed: time blocked on replay back-pressure (the learner's pace) left out.
          "loop_steps_per_s": self.steps_this_life / max(1e-9, elapsed_s - blocked_s),
          "blocked_fraction": blocked_s / elapsed_s,
      })
      self.steps_unreported, self.episodes_unreported, self.last_report = 0, [], now
    if self.fetcher.error is None:
      self.last_contact = now
    elif now - self.last_contact > SERVER_LOST_AFTER_S:
      raise ConnectionError(f"no answer from the server at {self.address} for {SERVER_LOST_AFTER_S:.0f} s")

  def _send_report(self, now: float, speeds: dict) -> None:
    """The steps and episodes since the last report, with this life's rate and `speeds`, to the events queue."""
    self._send_event(self.client, {
        "kind": "actor", "actor": self.actor_id, "env_steps": self.steps_unreported,
        "episodes": self.episodes_unreported, "steps_per_s": self.steps_this_life / (now - self.started), **speeds,
        "params_version": self.weights_version, "weights_rejected": self.fetcher.rejected,
    }, self.key)

  def _send_final_report(self) -> None:
    try:
      self._send_report(time.monotonic(), {})
    except Exception:
      pass  # the job is ending; what could not be sent is lost with it


def _server_gone(error: BaseException) -> bool:
  text = f"{type(error).__name__}: {error}"
  return any(marker in text for marker in ("Unavailable", "UNAVAILABLE", "Socket closed", "Connection refused", "Cancelled"))


def _evaluation(config: RunConfig, params, game: str, seed: int) -> dict:
  """One evaluation of `params` on `game` as the run asks for it (eval_frames or eval_episodes): the eval event's
  fields besides its weights' and its task."""
  started = time.monotonic()
  if not config.eval_frames:
    episodes = evaluate(config.agent, params, game, config.env, num_episodes=config.eval_episodes, seed=seed)
    fields = {}
  else:
    played = evaluate_for_frames(config.agent, params, game, config.env, budget_frames=config.eval_frames, seed=seed)
    episodes = played.episodes
    fields = {"budget_frames": played.budget_frames, "cut_off_return": played.cut_off_return,
              "cut_off_steps": played.cut_off_steps, "dqn_zoo_episode_return": played.dqn_zoo_episode_return}
  return {"returns": [e.episode_return for e in episodes], "lengths_steps": [e.length_steps for e in episodes],
          "epsilon": config.agent.eval_epsilon, "wall_s": time.monotonic() - started, **fields}


def run_evaluator(address: str, join_timeout_s: float = 120.0) -> int:
  stop = StopRequest()
  try:
    client, job, config, key = _join_job(address, join_timeout_s)
  except ConnectionError as error:
    return _server_gone_at_join("evaluator", address, error)
  every = config.eval_every_env_steps
  with AtariEnv(config.game, 1, config.env) as probe_env:
    network = config.agent.make_network(probe_env.num_actions)
    template = jax.device_get(network.init(jax.random.PRNGKey(0), probe_env.reset()))
  fetcher = ParamsFetcher(client, template, key, poll_interval_s=config.params_poll_interval_s)
  at_start = config.eval_at_start and job["start_env_steps"] == 0  # DQN Zoo's iteration 0: the initial weights
  next_eval = 0 if at_start else (job["start_env_steps"] // every + 1) * every
  try:
    while not stop.event.is_set():
      weights = fetcher.latest()
      if weights is None or weights.env_steps < next_eval:
        stop.event.wait(config.params_poll_interval_s)
        continue
      seed = actor_seed(config.seed, 10**6, weights.env_steps, 0)
      # Continual Atari: every task of the schedule, each time (what a switch did to the others is the point).
      for game in (config.task_schedule.distinct_games if config.task_schedule else (config.game,)):
        send_event(client, {"kind": "eval", "env_steps": weights.env_steps, "step": weights.version, "task": game,
                            **_evaluation(config, weights.params, game, seed)}, key)
      next_eval = (weights.env_steps // every + 1) * every
  except Exception as error:
    if _server_gone(error):
      return EXIT_SERVER_GONE
    raise
  finally:
    fetcher.close()
  return 0
