"""RunConfig, presets and config.json."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from common.validation import ConfigError
from tests.conftest import ROOT
from training.config import PRESETS, RunConfig, config_differences, load_config, parse_address, save_config


def test_config_json_round_trip(tmp_path):
  agent = dataclasses.replace(PRESETS["smoke"].agent, head="two-hot", mlp_hidden_sizes=(64,))
  config = dataclasses.replace(PRESETS["smoke"], game="breakout", agent=agent)
  save_config(config, str(tmp_path))
  loaded = load_config(str(tmp_path))
  assert loaded == config and loaded.agent.head == "two_hot" and loaded.agent.mlp_hidden_sizes == (64,)


def test_load_config_rejects_missing_and_unknown_fields(tmp_path):
  with pytest.raises(ConfigError, match="not a run directory"):
    load_config(str(tmp_path))
  (tmp_path / "config.json").write_text('{"game": "pong", "agent": {"wings": 2}}')
  with pytest.raises(ConfigError, match="wings"):
    load_config(str(tmp_path))


def test_differences_ignore_how_a_run_runs_but_not_what_it_learns():
  base = PRESETS["smoke"]
  assert config_differences(base, dataclasses.replace(base, total_env_steps=10**6, num_actors=7, log_every_s=1.0)) == []
  changed = dataclasses.replace(base, seed=3, replay=dataclasses.replace(base.replay, prioritized=True))
  assert config_differences(base, changed) == ["replay.prioritized", "seed"]
  # The sampler's plumbing and the GPU shares are how a run runs: a resume on a bigger machine may change them.
  moved = dataclasses.replace(base, gpu_memory_fraction=0.5, replay=dataclasses.replace(
      base.replay, sampler_workers=8, sampler_in_flight_per_worker=128, sampler_dataset_prefetch=4, prefetch_batches=8))
  assert config_differences(base, moved) == []


@pytest.mark.parametrize("kwargs, field", [
    ({"game": "pongg"}, "pongg"),
    ({"total_env_steps": 0}, "total_env_steps"),
    ({"role": "actor"}, "server"),
    ({"server": "localhost:8000"}, "server"),
    ({"listen": "localhost:99999"}, "listen"),
    ({"eval_episodes": 0}, "eval_episodes"),
])
def test_invalid_run_configs_name_the_field(kwargs, field):
  with pytest.raises(ConfigError, match=field):
    dataclasses.replace(PRESETS["smoke"], **kwargs)


def test_n_step_is_bounded_by_the_episode_the_replay_and_an_actors_memory():
  """The edges, from the formulas written out here: n <= max_episode_frames / frame_skip; actors x envs x n <=
  replay.max_size; envs x (stack + 2 n + 2) x obs_size^2 bytes <= 1 GiB per actor."""
  base = dataclasses.replace(PRESETS["atari100k"], num_actors=2, num_envs_per_actor=8)
  env = dataclasses.replace(base.env, max_episode_frames=4 * 1_000)  # 1,000 agent steps
  short = dataclasses.replace(base, env=env)
  assert dataclasses.replace(short, agent=dataclasses.replace(base.agent, n_step=1_000)).agent.n_step == 1_000
  with pytest.raises(ConfigError, match=r"agent.n_step=1,001 exceeds the longest episode, 1,000 agent steps"):
    dataclasses.replace(short, agent=dataclasses.replace(base.agent, n_step=1_001))
  # Replay: 2 actors x 8 envs x 625 = 10,000 open transitions.
  small_replay = dataclasses.replace(base, replay=dataclasses.replace(base.replay, max_size=10_000,
                                                                      min_replay_size=1_000))
  assert dataclasses.replace(small_replay, agent=dataclasses.replace(base.agent, n_step=625))
  with pytest.raises(ConfigError, match=r"2 actors x 8 envs x 626 = 10,016 transitions not yet written\) exceed "
                                        r"replay.max_size=10,000"):
    dataclasses.replace(small_replay, agent=dataclasses.replace(base.agent, n_step=626))
  # Memory: 8 x (4 + 2 n + 2) x 84^2 <= 2^30  <=>  n <= (2^30 / (8 x 7056) - 6) / 2 = 9,507.99
  largest = int((2**30 / (8 * 84 * 84) - 6) // 2)
  assert largest == 9_507
  assert dataclasses.replace(base, agent=dataclasses.replace(base.agent, n_step=largest))
  with pytest.raises(ConfigError, match=r"each actor would hold 1.0 GiB of frames"):
    dataclasses.replace(base, agent=dataclasses.replace(base.agent, n_step=largest + 1))
  for preset in PRESETS.values():  # every preset within the bounds
    assert dataclasses.replace(preset, num_actors=16)


@pytest.mark.parametrize("field", ["checkpoint_every_updates", "probe_every_updates", "keep_checkpoint_every_updates"])
def test_a_period_that_fused_updates_would_step_over_is_refused(field):
  """With K = 8 updates per call the learner's update count goes 8, 16, ...: a period of 100 would never come."""
  smoke = PRESETS["smoke"]
  fused = dataclasses.replace(smoke, agent=dataclasses.replace(smoke.agent, updates_per_call=8),
                              checkpoint_every_updates=80, probe_every_updates=0)
  dataclasses.replace(fused, **{field: 160})  # a multiple: accepted
  with pytest.raises(ConfigError, match=rf"{field}=100 must be a multiple of agent.updates_per_call=8"):
    dataclasses.replace(fused, **{field: 100})


def test_the_learner_sets_its_gpu_memory_share_before_jax_starts_a_backend(tmp_path):
  """train.py in a fresh interpreter, its learner replaced by one that reads the environment it would start JAX
  in: --gpu-memory-fraction is there, preallocated, and no JAX backend has started yet."""
  script = f"""
import os, sys
sys.argv = ["train.py"]
import train

class Learner:
  def __init__(self, config, run_dir, stop):
    from jax._src import xla_bridge
    print("fraction", os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"], "preallocate",
          os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"], "backends", len(xla_bridge._backends))
  def run(self):
    return 0

train.LearnerRun = Learner
sys.exit(train.main(["--preset", "smoke", "--run-dir", {str(tmp_path / "run")!r}, "--gpu-memory-fraction", "0.3"]))
"""
  done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env={**os.environ, "XLA_CLIENT_MEM_FRACTION": "0.9"})  # the newer name: replaced
  assert done.returncode == 0, done.stderr[-3000:]
  assert "fraction 0.3 preallocate true backends 0" in done.stdout, done.stdout


def test_gpu_memory_shares_are_checked_and_described():
  from common.process_setup import describe_gpu_memory, gpu_memory_env

  with pytest.raises(ConfigError, match="add up to more than the whole GPU"):
    dataclasses.replace(PRESETS["smoke"], gpu_memory_fraction=0.9, probe_gpu_memory_fraction=0.15)
  with pytest.raises(ConfigError, match="gpu_memory_fraction"):
    dataclasses.replace(PRESETS["smoke"], gpu_memory_fraction=0.0)
  assert describe_gpu_memory(gpu_memory_env(0.15, preallocate=False)) == \
      "15% of a GPU's memory, at most, taken as needed"
  assert describe_gpu_memory({}) == "75% (JAX's default) of a GPU's memory, taken at the start"


def test_parse_address_and_role_defaults():
  assert parse_address("10.0.0.5:8000", "listen") == ("10.0.0.5", 8000)
  assert parse_address("[::1]:9000", "listen") == ("::1", 9000)
  assert RunConfig(role="learner", num_actors=4).resolved_num_actors == 0
  assert RunConfig(role="learner").listen_address() == ("localhost", 8000)
  assert RunConfig().listen_address() == ("localhost", None)  # role all: a free port


def test_a_config_is_built_and_checked_without_importing_jax_or_tensorflow():
  """train.py's flags are parsed and checked (its error messages) before JAX, Flax, Reverb and TensorFlow load:
  about 0.5 s instead of 10 on 2 cores (agents/dqn/__init__.py, networks/options.py)."""
  import subprocess
  import sys

  code = ("import sys, dataclasses; from training.config import PRESETS, RunConfig; "
          "c = dataclasses.replace(PRESETS['smoke'], game='pong'); "
          "c = dataclasses.replace(c, agent=dataclasses.replace(c.agent, layer_norm=True, reset_period_updates=10)); "
          "print(sorted(m for m in ('jax', 'flax', 'reverb', 'tensorflow', 'optax') if m in sys.modules))")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]


@pytest.mark.parametrize("kind", ["actor", "eval"])
def test_actors_and_eval_run_numpys_blas_on_one_thread(kind):
  """The Python game loop's resize (envs/mode_env.py) is a BLAS product: a pool of threads per actor made it 6x
  slower on 2 busy cores. OpenBLAS reads its thread count when numpy loads, after setup_process."""
  script = f"""
import ctypes, glob, os
from common.process_setup import setup_process
setup_process({kind!r})
import numpy
library = glob.glob(os.path.join(os.path.dirname(numpy.__file__), "..", "numpy.libs", "libopenblas*"))[0]
print("threads", ctypes.CDLL(library).openblas_get_num_threads64_())
"""
  environ = {key: value for key, value in os.environ.items() if key != "OPENBLAS_NUM_THREADS"}
  done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env=environ)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "threads 1" in done.stdout, done.stdout
