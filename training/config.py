"""The configuration of a training run: one frozen dataclass, its presets, and config.json.

`RunConfig` nests the three component configs (`env`: the Atari protocol,
`agent`: Double DQN, `replay`: Reverb) and adds what the run itself needs
(game, seed, budget, processes, checkpoints, logging, roles). Every field is a
command-line flag of train.py (`--agent.layer-norm`, `--replay.prioritized`, ...).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
from typing import Any, Literal, Optional

from agents.dqn import DQNConfig
from common.files import write_json_atomically
from common.run_dir import CONFIG_FILE, RunDir
from common.validation import ConfigError, check_in, check_int, check_range, check_finite_fields
from envs import PROTOCOLS, AtariEnv, AtariProtocol, check_game, parse_game
from envs.tasks import TaskSchedule
from plasticity.config import ProbeConfig
from replay.config import ReplayConfig

ROLES = ("all", "learner", "actor")
# An actor's replay writer holds the frames of every environment's open n-step window, stack_frames + 2 n_step + 2
# of them (replay/writer.py: TransitionWriter's keep-alive refs); one actor may hold at most this much.
MAX_WINDOW_BYTES_PER_ACTOR = 2**30
PRESET_NAMES = ("dqn_zoo", "lyle2023", "lyle2024", "atari100k", "smoke")
DEFAULT_PORT = 8000


def default_num_actors() -> int:
  """One actor per core, leaving one core to the learner."""
  return max(1, len(os.sched_getaffinity(0)) - 1)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A Double DQN training run on one Atari game: actors, a Reverb server and a learner."""

  game: str = "pong"
  """ALE game, snake_case as in ale-py (pong, breakout, ms_pacman, ...), optionally in an ALE mode and
  difficulty: breakout:m4:d1 (the values a ROM offers are in the error for a wrong one)."""
  tasks: tuple[str, ...] = ()
  """Continual Atari (envs/tasks.py): games played in turn, each for task_switch_every_env_steps job env steps;
  `game` becomes the first. Several games need --env.full-action-space (one head for all); modes and difficulties
  of one game (pong:d0 pong:d1 ...) do not. Empty: `game` only."""
  task_switch_every_env_steps: int = 0
  """Continual Atari: job env steps (all actors together) per task."""
  task_cycle: bool = True
  """Continual Atari: after the last task, start the list again (False: stay on the last task)."""
  preset: Literal["dqn_zoo", "lyle2023", "lyle2024", "atari100k", "smoke"] = "dqn_zoo"
  """Starting point for every other field; flags override it (see training/config.py for sources)."""
  seed: int = 0
  """Seeds the learner's initialisation and RNG, every actor's environments and exploration."""
  run_dir: Optional[str] = None
  """Where checkpoints, metrics and config.json go; default runs/<game>-<preset>-seed<seed>. Never overwritten."""
  resume: bool = False
  """Continue the run in --run-dir from its newest consistent checkpoint: learner state, counters and the replay
  written with them (config.json is reused; the metrics rows written after that checkpoint are moved aside)."""
  resume_without_replay: bool = False
  """With --resume, when no checkpoint has its replay whole: continue from the newest learner state with an empty
  replay (recorded in metrics/resumes.jsonl). Never saved as true in config.json."""
  total_env_steps: int = 50_000_000
  """Budget in agent steps summed over all environments (1 agent step = 4 frames)."""

  num_actors: Optional[int] = None
  """Actor processes on this host (none with role learner); default one per core, minus one for the learner."""
  num_envs_per_actor: int = 8
  """Environments each actor steps together, with one batched jitted policy call per step."""
  params_poll_interval_s: float = 0.5
  """How often actors look for newer weights in the `params` table."""

  checkpoint_every_updates: int = 50_000
  """Learner updates between checkpoints (a final one is written on completion, Ctrl-C or SIGTERM)."""
  keep_last_checkpoints: int = 3
  """Checkpoints kept besides the every-Mth ones."""
  keep_checkpoint_every_updates: Optional[int] = None
  """Also keep every checkpoint whose step is a multiple of this (for plasticity probes over training)."""
  checkpoint_replay: bool = True
  """Checkpoint the replay contents into run_dir/replay with every checkpoint (needed for an exact resume)."""

  eval_every_env_steps: int = 0
  """Evaluate the latest weights with agent.eval_epsilon this often (0: no evaluation during training)."""
  eval_episodes: int = 8
  """Episodes per evaluation, played in parallel (also the final evaluation of bench/learn.py); unused with
  eval_frames."""
  eval_frames: int = 0
  """DQN Zoo's evaluation: each evaluation plays games one after another in one environment for this many
  emulator frames (DQN Zoo: 500,000) instead of eval_episodes whole games; its score is the mean return of the games
  that ended within them (training/evaluation.py). 0: eval_episodes whole games."""
  eval_at_start: bool = False
  """Also evaluate the initial weights, before any update (DQN Zoo's iteration 0); like eval_frames, it shapes the
  periodic evaluation and does nothing without eval_every_env_steps."""
  log_every_s: float = 10.0
  """Seconds between metrics/train.jsonl rows and progress lines."""
  probe_every_updates: int = 0
  """Checkpoint every this many updates and run the plasticity probes on it in a separate worker process (0: off)."""
  probe_at_task_switches: bool = False
  """Continual Atari: also checkpoint, keep and probe the state at each task switch (trained on the tasks before it
  only); needs probe_every_updates > 0 and tasks."""
  probe_around_remedies: bool = False
  """Also checkpoint, keep and probe the state just before each periodic remedy event (its update, before the remedy)
  and just after it (one learner call later); needs probe_every_updates > 0 and a periodic remedy."""

  track: Literal["none", "wandb"] = "none"
  """wandb: log the run to Weights & Biases (training/tracking.py: its config, metrics streams and final scores; the
  W&B run id is made from the run directory's path, so a resumed run continues it). Needs `pip install -e
  ".[wandb]"`."""
  wandb_project: str = "plastic-dqn"
  """The W&B project of --track wandb."""
  wandb_mode: Literal["auto", "online", "offline"] = "auto"
  """auto: online when an API key is set and api.wandb.ai answers, else offline (written under RUN/wandb/, uploaded
  later with `wandb sync`)."""

  gpu_memory_fraction: float = 0.75
  """The learner's share of the GPU's memory, taken when it starts (XLA_PYTHON_CLIENT_MEM_FRACTION, preallocated);
  sweep.py --parallel N divides it among its N runs. Nothing on a CPU."""
  probe_gpu_memory_fraction: float = 0.15
  """The probe worker's share of the GPU's memory at most, allocated as its probes need it (no preallocation);
  sweep.py --parallel N divides it too."""

  role: Literal["all", "learner", "actor"] = "all"
  """all: everything on this host. learner: learner + server only. actor: join the job at --server."""
  listen: Optional[str] = None
  """Address:port the learner's Reverb server serves on (role learner: default localhost:8000; role all: a free port)."""
  server: Optional[str] = None
  """Role actor: address:port of the job's server; the job's configuration is taken from it."""
  first_actor_id: int = 0
  """Role actor: id of this host's first actor (give each host its own range: ids seed the actors; the learner
  refuses a host whose ids another host has)."""
  secret_file: Optional[str] = None
  """Role actor: the job's secret, a copy of RUN_DIR/job.secret from the learner's host (keep it private: with it
  a process can report episodes and publish weights)."""

  env: AtariProtocol = PROTOCOLS["machado2018"]
  agent: DQNConfig = DQNConfig()
  replay: ReplayConfig = ReplayConfig()
  probe: ProbeConfig = ProbeConfig()

  def __post_init__(self):
    check_finite_fields(self)
    self._check_tasks()
    if self.role != "actor":
      check_game(self.game)
    check_in("preset", self.preset, PRESET_NAMES)
    check_in("role", self.role, ROLES)
    check_int("seed", self.seed, low=0)
    check_int("total_env_steps", self.total_env_steps, low=1)
    if self.num_actors is not None:
      check_int("num_actors", self.num_actors, low=1)
    check_int("num_envs_per_actor", self.num_envs_per_actor, low=1)
    check_range("params_poll_interval_s", self.params_poll_interval_s, low=0.0, low_inclusive=False)
    check_int("checkpoint_every_updates", self.checkpoint_every_updates, low=1)
    check_int("keep_last_checkpoints", self.keep_last_checkpoints, low=1)
    if self.keep_checkpoint_every_updates is not None:
      check_int("keep_checkpoint_every_updates", self.keep_checkpoint_every_updates, low=1)
    check_int("eval_every_env_steps", self.eval_every_env_steps, low=0)
    check_int("eval_episodes", self.eval_episodes, low=1)
    check_int("eval_frames", self.eval_frames, low=0)
    if 0 < self.eval_frames <= self.env.frame_skip:
      raise ConfigError(f"eval_frames={self.eval_frames} leaves no agent step: a game's first frame and one step "
                        f"take {self.env.frame_skip + 1} frames")
    check_range("log_every_s", self.log_every_s, low=0.0, low_inclusive=False)
    check_int("probe_every_updates", self.probe_every_updates, low=0)
    check_range("gpu_memory_fraction", self.gpu_memory_fraction, low=0.0, high=1.0, low_inclusive=False)
    check_range("probe_gpu_memory_fraction", self.probe_gpu_memory_fraction, low=0.0, high=1.0, low_inclusive=False)
    if self.gpu_memory_fraction + self.probe_gpu_memory_fraction > 1.0:
      raise ConfigError(f"gpu_memory_fraction={self.gpu_memory_fraction:g} and probe_gpu_memory_fraction="
                        f"{self.probe_gpu_memory_fraction:g} add up to more than the whole GPU")
    self._check_periods_against_updates_per_call()
    if self.probe_at_task_switches and not (self.probe_every_updates and self.tasks):
      raise ConfigError("probe_at_task_switches needs the probe worker (probe_every_updates > 0) and a task schedule "
                        "(--tasks)")
    if self.probe_around_remedies and not (self.probe_every_updates and self.agent.remedy_periods):
      raise ConfigError("probe_around_remedies needs the probe worker (probe_every_updates > 0) and a periodic remedy "
                        "(agent.reset_period_updates, shrink_perturb_period_updates, redo_period_updates or "
                        "optimizer_reset_period_updates)")
    self._check_tracking()
    check_int("first_actor_id", self.first_actor_id, low=0)
    if self.role == "actor" and not self.server:
      raise ConfigError("role=actor needs --server ADDRESS:PORT of a running job")
    if self.role == "actor" and not self.secret_file:
      raise ConfigError("role=actor needs --secret-file: a copy of RUN_DIR/job.secret from the learner's host")
    if self.role != "actor" and self.secret_file:
      raise ConfigError("secret_file is only for role=actor (the learner keeps its secret in the run directory)")
    if self.role != "actor" and self.server:
      raise ConfigError(f"server={self.server!r} is only for role=actor (this host starts its own server)")
    if self.resume_without_replay and not self.resume:
      raise ConfigError("resume_without_replay=True is for --resume")
    if self.role == "actor" and self.resume:
      raise ConfigError("resume=True is for the learner; an actor takes its state from the job it joins")
    for field in ("listen", "server"):
      if getattr(self, field) is not None:
        parse_address(getattr(self, field), field)
    if self.role != "actor" and self.replay.min_replay_size > self.total_env_steps:
      raise ConfigError(
          f"replay.min_replay_size={self.replay.min_replay_size} exceeds total_env_steps={self.total_env_steps}: "
          "the learner would never update"
      )
    if self.role != "actor":  # an actor host takes the job's configuration, checked by its learner
      self._check_n_step_window()

  def _check_tracking(self) -> None:
    check_in("track", self.track, ("none", "wandb"))
    check_in("wandb_mode", self.wandb_mode, ("auto", "online", "offline"))
    if not self.wandb_project or not isinstance(self.wandb_project, str):
      raise ConfigError(f"wandb_project={self.wandb_project!r} must be a project name")
    if self.track == "wandb" and self.role != "actor" and importlib.util.find_spec("wandb") is None:
      raise ConfigError("track=wandb needs the wandb package, which is optional: pip install -e \".[wandb]\"")

  def _check_periods_against_updates_per_call(self) -> None:
    """The learner counts its updates agent.updates_per_call (K) at a time, so a period that K does not divide
    would put its checkpoints at other steps, where the probes (multiples of probe_every_updates) and the kept
    ones (multiples of keep_checkpoint_every_updates) never find them. (The remedy periods are checked the same
    way in agents/dqn/config.py.)"""
    k = self.agent.updates_per_call
    for name in ("checkpoint_every_updates", "probe_every_updates", "keep_checkpoint_every_updates"):
      period = getattr(self, name)
      if period and period % k:
        raise ConfigError(f"{name}={period:,} must be a multiple of agent.updates_per_call={k} (the learner "
                          f"counts its updates {k} at a time: a step that is not a multiple of {k} never comes)")

  def _check_n_step_window(self) -> None:
    """agent.n_step within what an episode, the replay and an actor's memory can hold (docs/design.md: the
    n-step window)."""
    n, env = self.agent.n_step, self.env
    if n > env.max_episode_steps:
      raise ConfigError(f"agent.n_step={n:,} exceeds the longest episode, {env.max_episode_steps:,} agent steps "
                        f"(env.max_episode_frames={env.max_episode_frames:,} / env.frame_skip={env.frame_skip}): "
                        "no return can be that long")
    actors = max(1, self.resolved_num_actors)  # role learner: at least one host's actor will join
    open_transitions = actors * self.num_envs_per_actor * n
    if open_transitions > self.replay.max_size:
      raise ConfigError(f"agent.n_step={n:,}: the actors' open n-step windows ({actors} actors x "
                        f"{self.num_envs_per_actor} envs x {n:,} = {open_transitions:,} transitions not yet written) "
                        f"exceed replay.max_size={self.replay.max_size:,}")
    window_bytes = self.num_envs_per_actor * (env.stack_frames + 2 * n + 2) * env.obs_size ** 2
    if window_bytes > MAX_WINDOW_BYTES_PER_ACTOR:
      raise ConfigError(f"agent.n_step={n:,}: each actor would hold {window_bytes / 2**30:.1f} GiB of frames in its "
                        f"open n-step windows ({self.num_envs_per_actor} envs x (stack {env.stack_frames} + 2 x "
                        f"{n:,} + 2) frames of {env.obs_size}x{env.obs_size}); at most "
                        f"{MAX_WINDOW_BYTES_PER_ACTOR / 2**30:.0f} GiB")

  def _check_tasks(self) -> None:
    object.__setattr__(self, "tasks", tuple(self.tasks))
    if not self.tasks:
      if self.task_switch_every_env_steps:
        raise ConfigError("task_switch_every_env_steps is set but there are no tasks: give --tasks GAME [GAME ...]")
      return
    schedule = TaskSchedule(self.tasks, self.task_switch_every_env_steps, self.task_cycle)  # checks every game
    object.__setattr__(self, "game", self.tasks[0])
    roms = {parse_game(task).game for task in schedule.distinct_games}  # modes of one game share its action set
    if len(roms) > 1 and not self.env.full_action_space:
      raise ConfigError(f"tasks {list(schedule.distinct_games)} are different games: they need the full 18-action "
                        "space (--env.full-action-space), so that one Q head serves them all")

  @property
  def task_schedule(self) -> Optional[TaskSchedule]:
    """The continual-Atari schedule, or None for a run on one game."""
    return TaskSchedule(self.tasks, self.task_switch_every_env_steps, self.task_cycle) if self.tasks else None

  @property
  def resolved_run_dir(self) -> str:
    return self.run_dir or os.path.join("runs", f"{self.game}-{self.preset}-seed{self.seed}")

  @property
  def resolved_num_actors(self) -> int:
    """Actors this host starts: none for role learner (they join from other hosts)."""
    if self.role == "learner":
      return 0
    return self.num_actors if self.num_actors is not None else default_num_actors()

  def listen_address(self) -> tuple[str, Optional[int]]:
    """(host, port) for the server; port None lets Reverb pick a free one."""
    if self.listen is not None:
      return parse_address(self.listen, "listen")
    return ("localhost", DEFAULT_PORT if self.role == "learner" else None)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: dict) -> "RunConfig":
    data = dict(data)
    nested = {"env": AtariProtocol, "agent": DQNConfig, "replay": ReplayConfig, "probe": ProbeConfig}
    for name, kind in nested.items():
      if name in data:
        data[name] = _build(kind, data[name], name)
    return _build(cls, data, "config")


def _build(kind: type, data: dict, where: str) -> Any:
  known = {field.name for field in dataclasses.fields(kind)}
  unknown = sorted(set(data) - known)
  if unknown:
    raise ConfigError(f"{where}: unknown field(s) {unknown}; this config was written by a different version")
  return kind(**data)


def parse_address(address: str, field: str) -> tuple[str, int]:
  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ConfigError(f"{field}={address!r} must be HOST:PORT with a port in 1..65535 (e.g. localhost:8000)")
  return host.strip("[]"), int(port)


# The one commit of each source the presets reproduce: every citation "<source> at <commit>" in the code, the
# tests and the docs names it (tests/test_presets.py checks), and every file:line cited is at that commit.
SOURCE_COMMITS = {
    "github.com/google-deepmind/dqn_zoo": "45061f4bbbcfa87d11bbba3cfc2305a650a41c26",  # master, 2023-12-10
    "github.com/google/dopamine": "5873f5494ee0c2d7c016d0ab2ad530354fec59d0",
}

# Presets. Each is a complete RunConfig; command-line flags override its fields.
PRESETS: dict[str, RunConfig] = {}

# DQN Zoo's Double DQN (Quan & Ostrovski 2020; github.com/google-deepmind/dqn_zoo at 45061f4, file
# dqn_zoo/double_q/run_atari.py unless said), the agent Lyle et al. 2023 build their Atari experiments on.
# Frames are converted to agent steps (x 1/4) and to updates (one every learn_period = 16 frames = 4 steps).
# The values live in DQNConfig's, ReplayConfig's and PROTOCOLS["dqn_zoo"]'s defaults; each is cited where
# it is tested, value by value, in tests/test_presets.py:
#   replay_capacity 1e6 (:62); learning from 0.05 x 1e6 = 50k transitions (:64-66); batch 32 (:67), one
#   batch per 16 frames (:101) = 8 samples per insert; target copy every 1.2e5 frames = 7,500 updates
#   (:85-87); RMSProp lr 2.5e-4, eps 0.01/32^2, decay 0.95, centred (:89-90, :216-221); discount 0.99
#   (:91); rewards clipped to 1 (:92); the TD error's gradient clipped at 1/32 then l2 loss, batch mean
#   (:88; double_q/agent.py:97-110); epsilon 1 -> 0.01 from 200k frames over 4M frames (:73-81,
#   :171-184), 0.01 in evaluation (:82-84); 200 iterations x 1M frames = 50M steps (:94-97). Evaluation:
#   iteration 0 evaluates the initial network before any training, and every iteration ends with one, of 500,000
#   frames (:98-100, :259-273) = after every 250,000 agent steps, one more after the last (training/evaluation.py).
#   Network (:141, networks.py:338-349): Nature CNN with VALID padding (networks.py:99), dense 512, an output
#   layer with one bias shared by all actions (:120-134), every weight and bias U(+-1/sqrt(fan_in)) (:58-79).
#   Environment: no sticky actions, 1-30 raw no-op frames (:125-133), 4 repeats with 2-frame max-pool,
#   life loss zeroes the discount, 108k-frame episodes (:68-72, :144-154); frames greyed and resized as
#   processors.atari does (envs/frames.py).
PRESETS["dqn_zoo"] = RunConfig(
    preset="dqn_zoo",
    total_env_steps=50_000_000,
    env=PROTOCOLS["dqn_zoo"],
    agent=DQNConfig(),
    replay=ReplayConfig(),
    eval_every_env_steps=250_000,
    eval_frames=500_000,
    eval_at_start=True,
    checkpoint_every_updates=250_000,  # one DQN Zoo iteration (1M frames) = 62,500 updates; every 4 iterations
    probe_every_updates=250_000,  # 50 probed checkpoints over the 12.5M updates, as plasticity-over-training curves
)

# Lyle et al. 2023 ("Understanding Plasticity in Neural Networks", ICML 2023, sec. 5 and app. C):
# the same Double DQN with layer normalization before each hidden nonlinearity.
PRESETS["lyle2023"] = dataclasses.replace(
    PRESETS["dqn_zoo"], preset="lyle2023", agent=dataclasses.replace(PRESETS["dqn_zoo"].agent, layer_norm=True)
)

# Lyle et al. 2024 ("Disentangling the Causes of Plasticity Loss in Neural Networks", arXiv 2402.18762; PMLR 274,
# CoLLAs 2024): their abstract's combination, "layer normalization and weight decay", on lyle2023's Double DQN
# (layer norm before each hidden nonlinearity, the paper's pre-activation normalization). The weight decay is the
# paper's "L2", a penalty on the squared norm of the parameter vector (form l2, every parameter), with the
# coefficient of its continual supervised experiments, 1e-5 (swept over 0, 1e-6, 1e-5). The abstract is primary;
# the form and coefficient come from the paper's experimental details as two independent reading notes quote them
# (the appendix itself is not reachable from here). Their own Atari agents (C51, Rainbow) used layer norm alone in
# the main evaluation, the same notes report, weight decay having interfered there: this preset is the remedy
# combination on this project's agent, not their Atari agent.
PRESETS["lyle2024"] = dataclasses.replace(
    PRESETS["lyle2023"], preset="lyle2024",
    agent=dataclasses.replace(PRESETS["lyle2023"].agent, weight_decay=1e-5, weight_decay_form="l2"),
)

# Atari 100k (Kaiser et al. 2020) with DrQ(epsilon) (Kostrikov et al. 2020; Agarwal et al. 2021) exactly as
# Dopamine configures it (github.com/google/dopamine at 5873f54: dopamine/labs/atari_100k/configs/DrQ_eps.gin,
# "gin" below, and the files it binds). Each value is tested against these lines in tests/test_presets.py.
#   Agent (gin:11-20): discount 0.99, 10-step returns, learning after 1,600 steps, one update per step,
#   target = online (period 1), epsilon 1 -> 0.01 over 5,000 steps after the 1,600 (dqn_agent.py:171-192),
#   0.001 in evaluation; Adam lr 1e-4, eps 1.5e-4 (gin:33-34), betas 0.9/0.999 (dqn_agent.py:54-93).
#   Network (gin:22-26, networks.py:546-608 FullRainbowNetwork): Nature CNN convs with Flax's default SAME
#   padding, dense 512, a dueling head, xavier_uniform kernels, zero biases, no noisy nets, one atom.
#   Loss: Huber, delta 1 (full_rainbow_agent.py:169, losses.py:20-21), batch mean, batch 32 (gin:49), uniform
#   replay (gin:28) of capacity 1M (gin:48).
#   Augmentation (gin:30; atari_100k_rainbow_agent.py:80-129, 181-185): edge-pad 4 + random crop, then
#   intensity 1 + 0.05 clip(N(0,1), -2, 2), drawn separately for obs_tm1 and obs_t at every update.
#   Environment: no sticky actions (gin:38), terminal on life loss (gin:39), the agent's frame stack restarted
#   at every life-loss terminal (atari_100k_runner.py:326-331, reset_one), rewards clipped to 1
#   (atari_100k_runner.py:334-336), 0-29 no-op agent steps at every game start (atari_100k_runner.py:60,
#   203-213), episodes ended as a terminal at 100,000 frames (atari_lib.py:134, 311-312: ALE v5's cap comes
#   before gin:43's 27,000 steps; Dopamine counts the no-op frames in it, we do not: at most 116 frames).
#   Protocol: 10 iterations x 10,000 steps = 100k agent steps (gin:40-41), then 100 evaluation episodes
#   (gin:42; atari_100k_runner.py:59).
PRESETS["atari100k"] = RunConfig(
    preset="atari100k",
    total_env_steps=100_000,
    num_actors=1,
    num_envs_per_actor=1,
    checkpoint_every_updates=25_000,
    eval_episodes=100,
    env=PROTOCOLS["atari100k"],
    agent=DQNConfig(
        n_step=10,
        target_update_period_updates=1,
        optimizer="adam",
        learning_rate=1e-4,
        optimizer_eps=1.5e-4,
        loss="huber",
        huber_delta=1.0,
        td_error_grad_clip=None,
        dueling=True,
        head_bias="per_output",
        initializer="xavier_uniform",
        conv_padding="SAME",
        random_shift_pad=4,
        intensity_scale=0.05,
        epsilon_decay_begin_steps=1_600,
        epsilon_decay_steps=5_000,
        eval_epsilon=0.001,
    ),
    replay=ReplayConfig(max_size=1_000_000, min_replay_size=1_600, samples_per_insert=32.0),
)

# Smoke: the README's first set-up command (`--game qbert`) and the base of the tests' short runs: minutes
# on 2 CPU cores, and it learns in that budget (3 seeds: docs/benchmarks.md). Q*bert because
# it pays off at once: random play jumps off the pyramid within ~300 steps (30k steps give ~80
# episodes), and 6 actions. The DQN Zoo protocol, as the published random scores were measured, but
# 42x42 frames, so a Nature CNN (42 -> 9 -> 3 -> 1 VALID) updates 4.5x faster than on 84x84 on a CPU
# (27 vs 6 updates/s, measured here under load) and 7,200 updates fit in the budget.
# A CNN, not an MLP on raw pixels: every unit of such an MLP sees nearly the same frame, so with layer
# norm ~70% of its units are zero on every input, and without it Adam's same-signed steps on all of a
# unit's 28,224 pixel weights kill all of them within ~100 updates (both measured on Breakout).
PRESETS["smoke"] = RunConfig(
    preset="smoke",
    total_env_steps=30_000,
    num_actors=2,
    num_envs_per_actor=4,
    checkpoint_every_updates=2_000,
    log_every_s=5.0,
    # ale_py's frame processing (envs/frames.py), not DQN Zoo's: ~30% faster actors, and its figures were measured so.
    env=dataclasses.replace(PROTOCOLS["dqn_zoo"], obs_size=42, frame_processing="greyscale_area"),
    agent=DQNConfig(
        torso="nature",
        n_step=5,
        optimizer="adam",
        learning_rate=2.5e-4,
        loss="huber",
        huber_delta=1.0,
        td_error_grad_clip=None,
        head_bias="per_output",
        initializer="lecun_normal",
        target_update_period_updates=100,
        epsilon_decay_begin_steps=1_000,
        epsilon_decay_steps=10_000,
    ),
    # 8 samples per insert: one update of 32 per 4 agent steps, DQN's ratio.
    replay=ReplayConfig(max_size=30_000, min_replay_size=1_000, samples_per_insert=8.0, publish_params_every_updates=50),
    probe_every_updates=4_000,  # 2 probed checkpoints: mid-run and the final one
    # Small probes (15-40 s each on a CPU beside the learner): the full-size defaults are for GPU runs.
    probe=ProbeConfig(inputs=128, num_targets=1, probe_steps=100, target_batch_size=64, hessian_examples=64,
                      hessian_iterations=10, grad_cov_examples=64),
)


def save_config(config: RunConfig, run_dir: str) -> str:
  path = RunDir(run_dir).config_path
  write_json_atomically(path, config.to_dict(), sort_keys=True)
  return path


def load_config(run_dir: str) -> RunConfig:
  path = RunDir(run_dir).config_path
  if not os.path.exists(path):
    raise ConfigError(f"{run_dir} has no {CONFIG_FILE}: it is not a run directory")
  try:
    with open(path, encoding="utf-8") as handle:
      data = json.load(handle)
  except (OSError, json.JSONDecodeError) as error:
    raise ConfigError(f"{path} cannot be read: {error}") from None
  return RunConfig.from_dict(data)


def remedy_probe_steps(config: RunConfig, updates: int) -> tuple[int, int]:
  """(the next update just before a remedy event, the next just after one) above `updates`, with
  probe_around_remedies; (inf, inf) without. "After" is one learner call (updates_per_call) past the event."""
  if not config.probe_around_remedies:
    return (math.inf, math.inf)
  k = config.agent.updates_per_call
  periods = config.agent.remedy_periods.values()
  before = min((updates // p + 1) * p for p in periods)
  after = min(max(p, ((updates - k) // p + 1) * p) + k for p in periods)  # no event at update 0
  return before, after


def around_remedy(config: RunConfig, step: int) -> bool:
  """With probe_around_remedies: whether update `step` is just before a remedy event (the event's update) or
  just after one (one learner call later)."""
  if not config.probe_around_remedies:
    return False
  k = config.agent.updates_per_call
  return any(step % p == 0 or (step > k and (step - k) % p == 0) for p in config.agent.remedy_periods.values())


def checkpoint_keep_fn(config: RunConfig, marked=frozenset()):
  """With probe_around_remedies or probe_at_task_switches, the predicate of the checkpoints kept besides the
  newest: multiples of keep_checkpoint_every_updates (default probe_every_updates), the ones around remedy events
  and the steps in `marked` (a collection the learner adds its task-switch checkpoints to); else None."""
  if not (config.probe_around_remedies or config.probe_at_task_switches):
    return None
  every = config.keep_checkpoint_every_updates or config.probe_every_updates
  return lambda step: step % every == 0 or around_remedy(config, step) or step in marked


# Fields that may differ between a run and its resumption: how it runs, not what it learns.
RESUMABLE_FIELDS = (
    "resume", "resume_without_replay", "run_dir", "total_env_steps", "num_actors", "num_envs_per_actor", "params_poll_interval_s",
    "checkpoint_every_updates", "keep_last_checkpoints", "keep_checkpoint_every_updates",
    "eval_every_env_steps", "eval_episodes", "eval_frames", "eval_at_start", "log_every_s", "role", "listen", "server", "first_actor_id", "secret_file",
    "probe_every_updates", "probe_around_remedies", "probe_at_task_switches", "probe",
    "gpu_memory_fraction", "probe_gpu_memory_fraction", "track", "wandb_project", "wandb_mode",
    # How the learner's sampler runs (dotted: the rest of `replay` is what the run learns from).
    "replay.prefetch_batches", "replay.sampler_workers", "replay.sampler_in_flight_per_worker",
    "replay.sampler_dataset_prefetch",
)


def config_differences(saved: RunConfig, given: RunConfig) -> list[str]:
  """Dotted names of the fields that differ, ignoring RESUMABLE_FIELDS."""
  saved_dict, given_dict = saved.to_dict(), given.to_dict()
  differences = []
  for key in sorted(saved_dict):
    if key in RESUMABLE_FIELDS:
      continue
    if isinstance(saved_dict[key], dict):
      differences += [f"{key}.{k}" for k in sorted(saved_dict[key])
                      if saved_dict[key][k] != given_dict[key].get(k) and f"{key}.{k}" not in RESUMABLE_FIELDS]
    elif saved_dict[key] != given_dict[key]:
      differences.append(key)
  return differences


def make_learner(config: RunConfig, seed: int = 0):
  """The run's `DQNLearner` and a fresh `TrainState` from `seed`: train.py's starting point, and the
  template every reader of the run's checkpoints restores into (eval.py, the probes, the benchmarks)."""
  # JAX: this module imports without it, so that train.py checks its flags first
  import jax
  import numpy as np

  from agents.dqn import DQNLearner

  with AtariEnv(config.game, 1, config.env) as env:
    num_actions = env.num_actions
  learner = DQNLearner(config.agent, num_actions)
  return learner, learner.init(jax.random.PRNGKey(seed), np.zeros((1, *config.env.obs_shape), np.uint8))
