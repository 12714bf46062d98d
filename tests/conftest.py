"""Shared test settings: small, deterministic, CPU."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import atexit
import dataclasses
import hashlib
import shutil
import subprocess
import sys
import tempfile

# One JAX compilation cache for this session's test process and every process it starts, in a fresh directory
# removed at exit: the many short train.py lives compile the same small programs, and reading them back saves
# about 2 s of a 14 s life. The key covers XLA_FLAGS, so single-threaded and threaded programs stay apart.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _jax_cache_dir = tempfile.mkdtemp(prefix="jax-cache-")
  atexit.register(shutil.rmtree, _jax_cache_dir, ignore_errors=True)
  os.environ.update({"JAX_COMPILATION_CACHE_DIR": _jax_cache_dir, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"})

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A finished real training run (Breakout, smoke preset, 1 actor, real Reverb), made once per test session
# and shared read-only by the tests of eval.py, compare.py and the plasticity probes. Copy it before changing it.
SMOKE_RUN_FLAGS = [
    "--game", "breakout", "--preset", "smoke", "--num-actors", "1", "--num-envs-per-actor", "2",
    "--replay.min-replay-size", "400", "--total-env-steps", "1600", "--checkpoint-every-updates", "100",
    "--keep-last-checkpoints", "10", "--log-every-s", "1", "--env.max-episode-frames", "4000",
    # A one-layer MLP with layer norm in place of the preset's Nature CNN: its probes agree online and offline to
    # 1e-5 (the CNN's differ by ~1e-3: XLA's multi-threaded convolutions there), and the LayerNorm metrics run.
    "--agent.torso", "mlp", "--agent.mlp-hidden-sizes", "64", "--agent.layer-norm",
    # Probes every 100 updates and at the final one, with small settings so each takes seconds.
    "--probe-every-updates", "100", "--probe.inputs", "64", "--probe.num-targets", "2", "--probe.probe-steps", "50",
    "--probe.target-batch-size", "64", "--probe.hessian-examples", "32", "--probe.hessian-iterations", "5",
    "--probe.grad-cov-examples", "32",
]


@dataclasses.dataclass(frozen=True)
class SmokeRun:
  run_dir: str
  stdout: str
  stderr: str


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
  """A finished 1,600-step smoke run with several checkpoints, probed every 100 updates, and what it printed.

  Started as a user starts it (no TF_CPP_MIN_LOG_LEVEL in the environment), so its output is the first command's."""
  run_dir = str(tmp_path_factory.mktemp("smoke") / "run")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  done = subprocess.run([sys.executable, "train.py", *SMOKE_RUN_FLAGS, "--run-dir", run_dir], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
  return SmokeRun(run_dir, done.stdout, done.stderr)


@pytest.fixture(scope="session")
def smoke_run_dir(smoke_run) -> str:
  return smoke_run.run_dir


def tree_digest(path: str) -> str:
  """Hash of every file name and content under `path`: equal digests mean nothing was added, removed or changed.

  The lock files are left out: taking a run's lock (which names its holder) is not a change to the run."""
  from common.run_dir import PROBE_LOCK, TRAIN_LOCK

  digest = hashlib.sha256()
  for folder, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    digest.update(os.path.relpath(folder, path).encode())
    for name in sorted(set(files) - {TRAIN_LOCK, PROBE_LOCK}):
      digest.update(name.encode())
      with open(os.path.join(folder, name), "rb") as handle:
        digest.update(hashlib.sha256(handle.read()).digest())
  return digest.hexdigest()
