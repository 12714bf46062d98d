"""The configuration of a training run: one frozen dataclass, its presets, and config.json.

`RunConfig` nests the three component configs (`env`: the Atari protocol,
`agent`: Double DQN, `replay`: Reverb) and adds what the run itself needs
(game, seed, budget, processes, checkpoints, logging, roles). Every field is a
command-line flag of train.py (`--agent.layer-norm`, `--replay.prioritized`, ...).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Literal, Optional

from agents.dqn import DQNConfig
from common.validation import ConfigError, check_in, check_int, check_range
from envs import PROTOCOLS, AtariEnv, AtariProtocol, check_game
from plasticity.config import ProbeConfig
from replay.config import ReplayConfig

ROLES = ("all", "learner", "actor")
PRESET_NAMES = ("dqn_zoo", "lyle2023", "atari100k", "smoke")
DEFAULT_PORT = 8000
CONFIG_FILE = "config.json"


def default_num_actors() -> int:
  """One actor per core, leaving one core to the learner."""
  return max(1, len(os.sched_getaffinity(0)) - 1)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A Double DQN training run on one Atari game: actors, a Reverb server and a learner."""

  game: str = "pong"
  """ALE game, snake_case as in ale-py (pong, breakout, ms_pacman, ...)."""
  preset: Literal["dqn_zoo", "lyle2023", "atari100k", "smoke"] = "dqn_zoo"
  """Starting point for every other field; flags override it (see training/config.py for sources)."""
  seed: int = 0
  """Seeds the learner's initialisation and RNG, every actor's environments and exploration."""
  run_dir: Optional[str] = None
  """Where checkpoints, metrics and config.json go; default runs/<game>-<preset>-seed<seed>. Never overwritten."""
  resume: bool = False
  """Continue the run in --run-dir from its newest complete checkpoint (config.json is reused)."""
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
  """Episodes per evaluation, played in parallel."""
  log_every_s: float = 10.0
  """Seconds between metrics/train.jsonl rows and progress lines."""
  probe_every_updates: int = 0
  """Checkpoint every this many updates and run the plasticity probes on it in a separate worker process (0: off)."""

  role: Literal["all", "learner", "actor"] = "all"
  """all: everything on this host. learner: learner + server only. actor: join the job at --server."""
  listen: Optional[str] = None
  """Address:port the learner's Reverb server serves on (role learner: default localhost:8000; role all: a free port)."""
  server: Optional[str] = None
  """Role actor: address:port of the job's server; the job's configuration is taken from it."""
  first_actor_id: int = 0
  """Role actor: id of this host's first actor (give each host its own range: ids seed the actors)."""

  env: AtariProtocol = PROTOCOLS["machado2018"]
  agent: DQNConfig = DQNConfig()
  replay: ReplayConfig = ReplayConfig()
  probe: ProbeConfig = ProbeConfig()

  def __post_init__(self):
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
    check_range("log_every_s", self.log_every_s, low=0.0, low_inclusive=False)
    check_int("probe_every_updates", self.probe_every_updates, low=0)
    check_int("first_actor_id", self.first_actor_id, low=0)
    if self.role == "actor" and not self.server:
      raise ConfigError("role=actor needs --server ADDRESS:PORT of a running job")
    if self.role != "actor" and self.server:
      raise ConfigError(f"server={self.server!r} is only for role=actor (this host starts its own server)")
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


# Presets. Each is a complete RunConfig; command-line flags override its fields.
PRESETS: dict[str, RunConfig] = {}

# DQN Zoo's tuned Double DQN (github.com/google-deepmind/dqn_zoo, dqn_zoo/double_q/run_atari.py;
# Quan & Ostrovski 2020), the agent Lyle et al. 2023 build their Atari experiments on.
# In agent steps: 1M replay, learning starts after 50k transitions, one batch of 32 every
# 4 steps (samples_per_insert 8), target copy every 120k frames (7,500 updates), centred
# RMSProp lr 2.5e-4, epsilon 1 -> 0.01 over 1M steps after the warm-up, evaluation epsilon
# 0.01, 200M frames (50M steps). Environment: no sticky actions, 1-30 no-ops, life loss
# zeroes the discount. These are the DQNConfig/ReplayConfig defaults.
PRESETS["dqn_zoo"] = RunConfig(
    preset="dqn_zoo",
    total_env_steps=50_000_000,
    env=PROTOCOLS["dqn_zoo"],
    agent=DQNConfig(),
    replay=ReplayConfig(),
    checkpoint_every_updates=250_000,  # one DQN Zoo iteration (1M frames) = 62,500 updates; every 4 iterations
    probe_every_updates=250_000,  # 50 probed checkpoints over the 12.5M updates, as plasticity-over-training curves
)

# Lyle et al. 2023 ("Understanding Plasticity in Neural Networks", ICML 2023, sec. 5 and app. C):
# the same Double DQN with layer normalization before each hidden nonlinearity.
PRESETS["lyle2023"] = dataclasses.replace(
    PRESETS["dqn_zoo"], preset="lyle2023", agent=dataclasses.replace(PRESETS["dqn_zoo"].agent, layer_norm=True)
)

# Atari 100k (Kaiser et al. 2020): 100k agent steps. Settings of DrQ(epsilon) as run by Agarwal
# et al. 2021 (github.com/google/dopamine, dopamine/labs/atari_100k/configs/DrQ_eps.gin), a
# data-efficient DQN: 10-step returns, learning after 1,600 steps, one update of batch 32 per
# step (samples_per_insert 32), target = online network (period 1), Adam lr 1e-4 eps 1.5e-4,
# epsilon 1 -> 0.01 over 5,000 steps, evaluation epsilon 0.001, one environment.
# Not reproduced: DrQ's image augmentation and dueling head (this is the plain Double DQN).
PRESETS["atari100k"] = RunConfig(
    preset="atari100k",
    total_env_steps=100_000,
    num_actors=1,
    num_envs_per_actor=1,
    checkpoint_every_updates=25_000,
    env=PROTOCOLS["atari100k"],
    agent=DQNConfig(
        n_step=10,
        target_update_period_updates=1,
        optimizer="adam",
        learning_rate=1e-4,
        optimizer_eps=1.5e-4,
        huber_delta=1.0,
        epsilon_decay_begin_steps=1_600,
        epsilon_decay_steps=5_000,
        eval_epsilon=0.001,
    ),
    replay=ReplayConfig(max_size=100_000, min_replay_size=1_600, samples_per_insert=32.0),
)

# Smoke: a small MLP and a 30k-step budget that finishes in a few minutes on 2 CPU cores,
# for tests and the README's first command. It exercises every part (actors, Reverb,
# learner, checkpoints, metrics, probes); its curves show the loss and Q-values moving, not skill.
# Layer norm is on: without it, Adam's same-signed steps on all 28,224 pixel weights of a unit
# shift its pre-activation by tens within ~100 updates, and the probes find every one of the
# 64 units dead (srank 0, tau-0 dormant fraction 1.0, measured on Breakout).
PRESETS["smoke"] = RunConfig(
    preset="smoke",
    total_env_steps=30_000,
    num_actors=2,
    num_envs_per_actor=4,
    checkpoint_every_updates=1_000,
    log_every_s=5.0,
    env=PROTOCOLS["machado2018"],
    agent=DQNConfig(
        torso="mlp",
        mlp_hidden_sizes=(64,),
        layer_norm=True,
        n_step=3,
        optimizer="adam",
        learning_rate=3e-4,
        huber_delta=1.0,
        target_update_period_updates=500,
        epsilon_decay_begin_steps=1_000,
        epsilon_decay_steps=15_000,
    ),
    replay=ReplayConfig(max_size=30_000, min_replay_size=1_000, samples_per_insert=4.0, publish_params_every_updates=50),
    probe_every_updates=1_250,  # 3 probed checkpoints, the last one the final
    # Small probes (seconds each on a CPU for this MLP): the full-size defaults are for GPU runs.
    probe=ProbeConfig(inputs=128, num_targets=2, probe_steps=200, target_batch_size=128, hessian_examples=64,
                      hessian_iterations=10, grad_cov_examples=64),
)


def save_config(config: RunConfig, run_dir: str) -> str:
  path = os.path.join(run_dir, CONFIG_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as handle:
    json.dump(config.to_dict(), handle, indent=2, sort_keys=True)
    handle.write("\n")
  os.replace(tmp, path)
  return path


def load_config(run_dir: str) -> RunConfig:
  path = os.path.join(run_dir, CONFIG_FILE)
  if not os.path.exists(path):
    raise ConfigError(f"{run_dir} has no {CONFIG_FILE}: it is not a run directory")
  try:
    with open(path, encoding="utf-8") as handle:
      data = json.load(handle)
  except (OSError, json.JSONDecodeError) as error:
    raise ConfigError(f"{path} cannot be read: {error}") from None
  return RunConfig.from_dict(data)


# Fields that may differ between a run and its resumption: how it runs, not what it learns.
RESUMABLE_FIELDS = (
    "resume", "run_dir", "total_env_steps", "num_actors", "num_envs_per_actor", "params_poll_interval_s",
    "checkpoint_every_updates", "keep_last_checkpoints", "keep_checkpoint_every_updates",
    "eval_every_env_steps", "eval_episodes", "log_every_s", "role", "listen", "server", "first_actor_id",
    "probe_every_updates", "probe",
)


def config_differences(saved: RunConfig, given: RunConfig) -> list[str]:
  """Dotted names of the fields that differ, ignoring RESUMABLE_FIELDS."""
  saved_dict, given_dict = saved.to_dict(), given.to_dict()
  differences = []
  for key in sorted(saved_dict):
    if key in RESUMABLE_FIELDS:
      continue
    if isinstance(saved_dict[key], dict):
      differences += [f"{key}.{k}" for k in sorted(saved_dict[key]) if saved_dict[key][k] != given_dict[key].get(k)]
    elif saved_dict[key] != given_dict[key]:
      differences.append(key)
  return differences


def make_learner(config: RunConfig, seed: int = 0):
  """The run's `DQNLearner` and a fresh `TrainState` from `seed`: train.py's starting point, and the
  template every reader of the run's checkpoints restores into (eval.py, the probes, the benchmarks)."""
  import jax
  import numpy as np

  from agents.dqn import DQNLearner

  with AtariEnv(config.game, 1, config.env) as env:
    num_actions = env.num_actions
  learner = DQNLearner(config.agent, num_actions)
  return learner, learner.init(jax.random.PRNGKey(seed), np.zeros((1, *config.env.obs_shape), np.uint8))
