"""Replay throughput and memory: Reverb inserts, sampled batches and bytes per transition, as one JSON object.

Every measurement runs against a real `python -m replay.server` in its own
process, with a rate limiter whose error buffer is so large that it never
holds back an insert or a sample: these are raw pipeline rates.

Data: one Pong trajectory of `num_envs` environments with random actions is
recorded once (the `EnvStep`s, saved to a temporary .npz). Writer processes
(spawned) step `replay.writer.TransitionWriter` through that recording over and
over, resetting at each wrap-around, so the emulator's cost is not counted and
the frames compress like real ones (noise would not compress, zeros would
compress too well).

  insert_per_s_{1_writer,2_writers}  transitions/s written (n-step, frames once) and
                                     confirmed by the server; the sum over writers
  sample_per_s_batch_{B}             transitions/s delivered as device arrays by
                                     `replay.sampler.Sampler`, timed after its first batch,
                                     with the streams the host's cores give (sampler_workers)
  sample_per_s_batch_32_by_workers   the same at batch 32 with 1, 2, 4 and 8 streams (the
                                     JSON's machine.cpu_count says how many cores they shared)
  bytes_per_transition               server RSS growth from start-up (empty tables) to a
                                     full table of `memory_items` (FIFO), per item

  python bench/replay.py > replay.json
  python bench/replay.py --insert-duration-s 3 --sample-duration-s 2 --memory-items 20000

Time: about 90 s on this project's 2-core CPU when it is otherwise idle (recording, 2 x 10 s of
inserts, 6 x 5 s of sampling, filling a 100,000-item table); about 70 s before the streams were timed; 3 min 47 s measured beside other
jobs (load average 10 on the 2 cores).
Ctrl-C or SIGTERM stops its server and writer processes before it exits (code 130); they also die
if the bench is killed outright.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import queue
import select
import subprocess
import sys
import tempfile
import time
from typing import Iterator, NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # before bench/, so that `replay` is the package and not this file

from common.process_setup import setup_process  # noqa: E402
setup_process("tool")  # before JAX, TensorFlow and Reverb load

import jax  # noqa: E402
import numpy as np  # noqa: E402
import portpicker  # noqa: E402
import psutil  # noqa: E402
import reverb  # noqa: E402
import tensorflow as tf  # noqa: E402
import tyro  # noqa: E402

from bench.learner import device_name  # noqa: E402
from common import processes  # noqa: E402
from common.processes import die_with_parent  # noqa: E402
from envs import AtariEnv, EnvStep, Episode  # noqa: E402
from replay.config import ReplayConfig  # noqa: E402
from replay.sampler import Sampler  # noqa: E402
from replay.server import REPLAY_TABLE  # noqa: E402
from replay.writer import TransitionWriter  # noqa: E402

TARGETS = {"bytes_per_transition": "<= 3000", "sample_per_s_batch_32": ">= 10000", "insert_per_s_1_writer": ">= 6000"}
UNBLOCKED_TOLERANCE = 1e12
"""samples_per_insert_tolerance: with min_replay_size 1 and samples_per_insert 1, an error buffer of 1e12 samples."""
WARMUP_STEPS = 20
"""Recorded steps each writer takes before its clock starts (connections, signatures)."""
SERVER_START_TIMEOUT_S = 120.0


@dataclasses.dataclass(frozen=True)
class Args:
  game: str = "pong"
  """Game whose frames are recorded."""
  num_envs: int = 8
  """Environments stepped together, as in one AtariVectorEnv."""
  record_steps: int = 1_000
  """Batched steps recorded (random actions) and replayed into the writers."""
  n_step: int = 3
  discount: float = 0.99
  clip_rewards: bool = True
  insert_duration_s: float = 10.0
  """Time each insert configuration for this long."""
  insert_max_size: int = 1_000_000
  """Table size of the insert and sampling server (large enough that nothing is removed)."""
  sample_duration_s: float = 5.0
  """Time each batch size for this long, after the first batch."""
  batch_sizes: tuple[int, ...] = (32, 256)
  sampler_workers: tuple[int, ...] = (1, 2, 4, 8)
  """Reverb sampling streams (replay.sampler_workers) to time at batch 32, one sample_duration_s each."""
  memory_items: int = 100_000
  """Transitions in the table when its server's memory is read."""
  seed: int = 0


class Recording(NamedTuple):
  first_obs: np.ndarray  # uint8[N, H, W, S], from reset()
  actions: np.ndarray  # int32[T, N]
  env_steps: list[EnvStep]  # T steps


class RunningServer(NamedTuple):
  address: str
  pid: int


# Recording ------------------------------------------------------------------------------------------------------------


def record(args: Args, path: str) -> dict:
  """Plays `record_steps` random batched steps and saves what rebuilds their `EnvStep`s to `path` (.npz)."""
  rng = np.random.default_rng(args.seed)
  with AtariEnv(args.game, args.num_envs, seed=args.seed) as env:
    first_obs = env.reset()
    actions = rng.integers(0, env.num_actions, (args.record_steps, args.num_envs), dtype=np.int32)
    steps = [env.step(a) for a in actions]
    obs_shape = env.obs_shape
  done = np.stack([s.terminated | s.truncated for s in steps])
  episodes = [(t, *episode) for t, s in enumerate(steps) for episode in s.episodes]
  np.savez(
      path,
      first_obs=first_obs,
      actions=actions,
      obs=np.stack([s.obs for s in steps]),
      final_obs_at_done=np.concatenate([s.final_obs[d] for s, d in zip(steps, done)]),  # differs from obs only there
      reward=np.stack([s.reward for s in steps]),
      terminated=np.stack([s.terminated for s in steps]),
      truncated=np.stack([s.truncated for s in steps]),
      life_lost=np.stack([s.life_lost for s in steps]),
      discount=np.stack([s.discount for s in steps]),
      episodes=np.array(episodes, np.float64).reshape(-1, 5),  # (step, env_index, return, length, truncated)
  )
  return {"obs_shape": obs_shape, "episodes_ended": len(episodes)}


def load_recording(path: str) -> Recording:
  data = np.load(path)
  done = data["terminated"] | data["truncated"]
  final_obs_at_done = iter(data["final_obs_at_done"])
  episodes = data["episodes"]
  env_steps = []
  for t, obs in enumerate(data["obs"]):
    final_obs = obs
    if done[t].any():
      final_obs = obs.copy()
      for i in np.flatnonzero(done[t]):
        final_obs[i] = next(final_obs_at_done)
    ended = tuple(Episode(int(e), float(r), int(n), bool(tr)) for _, e, r, n, tr in episodes[episodes[:, 0] == t])
    env_steps.append(EnvStep(
        obs=obs, reward=data["reward"][t], terminated=data["terminated"][t], truncated=data["truncated"][t],
        life_lost=data["life_lost"][t], discount=data["discount"][t], final_obs=final_obs,
        stack_reset=np.zeros(len(obs), bool), episodes=ended,
    ))
  return Recording(data["first_obs"], data["actions"], env_steps)


# Server ---------------------------------------------------------------------------------------------------------------


def unblocked_config(max_size: int) -> ReplayConfig:
  """A uniform FIFO table whose rate limiter never blocks inserts or samples."""
  return ReplayConfig(max_size=max_size, min_replay_size=1, samples_per_insert=1.0, samples_per_insert_tolerance=UNBLOCKED_TOLERANCE)


@contextlib.contextmanager
def replay_server(config: ReplayConfig, obs_shape: tuple[int, int, int]) -> Iterator[RunningServer]:
  """Runs `python -m replay.server` on a free port until the block exits, then stops it with SIGTERM."""
  port = portpicker.pick_unused_port()
  command = [
      sys.executable, "-m", "replay.server", "--port", str(port), "--obs-shape", *map(str, obs_shape),
      "--replay.max-size", str(config.max_size),
      "--replay.min-replay-size", str(config.min_replay_size),
      "--replay.samples-per-insert", str(config.samples_per_insert),
      "--replay.samples-per-insert-tolerance", str(config.samples_per_insert_tolerance),
  ]
  with processes.running(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:  # the same pid once it execs
    wait_until_listening(process)
    yield RunningServer(f"localhost:{port}", process.pid)


def wait_until_listening(process: subprocess.Popen) -> None:
  deadline = time.monotonic() + SERVER_START_TIMEOUT_S
  while (remaining := deadline - time.monotonic()) > 0:
    if not select.select([process.stdout], [], [], remaining)[0]:
      break
    line = process.stdout.readline()
    if not line:
      raise RuntimeError(f"the replay server exited with code {process.wait()} before listening")
    if "replay server listening" in line:
      return
  raise TimeoutError(f"the replay server did not start listening within {SERVER_START_TIMEOUT_S:.0f} s")


def rss_bytes(pid: int) -> int:
  return psutil.Process(pid).memory_info().rss


def table_size(address: str) -> int:
  return reverb.Client(address).server_info()[REPLAY_TABLE].current_size


# Writers --------------------------------------------------------------------------------------------------------------


def write_step(writer: TransitionWriter, recording: Recording, index: int) -> None:
  """Takes recorded step `index` (modulo the recording's length), starting over with a reset at each wrap-around."""
  t = index % len(recording.env_steps)
  if t == 0:
    writer.reset(recording.first_obs)
  writer.step(recording.actions[t], recording.env_steps[t])


def writer_process(address: str, recording_path: str, args: Args, duration_s: float, max_items: float, start, results,
                   parent_pid: int) -> None:
  """Spawned: after warming up and meeting the other writers at `start`, writes for `duration_s` or `max_items`.

  Puts (items written and confirmed, seconds) on `results`. Ended by Linux (SIGTERM) if the bench (`parent_pid`) dies.
  """
  die_with_parent(parent_pid)
  recording = load_recording(recording_path)
  writer = TransitionWriter(
      reverb.Client(address), args.num_envs, n_step=args.n_step, discount=args.discount, clip_rewards=args.clip_rewards
  )
  for index in range(WARMUP_STEPS):
    write_step(writer, recording, index)
  writer.flush()
  start.wait(timeout=SERVER_START_TIMEOUT_S)
  index, first_item, begin = WARMUP_STEPS, writer.items_written, time.perf_counter()
  while writer.items_written - first_item < max_items and time.perf_counter() - begin < duration_s:
    write_step(writer, recording, index)
    index += 1
  writer.flush()
  elapsed = time.perf_counter() - begin
  writer.close()
  results.put((writer.items_written - first_item, elapsed))


def run_writers(address: str, recording_path: str, args: Args, count: int, *, duration_s: float, max_items: float = math.inf) -> list[float]:
  """Runs `count` writer processes at once; returns each one's transitions per second."""
  context = multiprocessing.get_context("spawn")  # TF and Reverb are not fork-safe
  start, results = context.Barrier(count), context.Queue()
  processes = [
      context.Process(target=writer_process,
                      args=(address, recording_path, args, duration_s, max_items, start, results, os.getpid()))
      for _ in range(count)
  ]
  for process in processes:
    process.start()
  failed = True
  try:
    rates = []
    while len(rates) < count:
      try:
        items, elapsed = results.get(timeout=1.0)
      except queue.Empty:
        if any(process.exitcode not in (None, 0) for process in processes):
          raise RuntimeError(f"a writer failed; exit codes {[process.exitcode for process in processes]}") from None
        continue
      rates.append(items / elapsed)
    failed = False
  finally:
    for process in processes:
      process.join(timeout=1 if failed else 30)  # on an error or a signal (processes.Interrupted): at once
      if process.is_alive():
        process.terminate()
        process.join(timeout=10)
        if process.is_alive():
          process.kill()
  return rates


# Sampler --------------------------------------------------------------------------------------------------------------


def sample_rate(address: str, config: ReplayConfig, batch_size: int, duration_s: float) -> float:
  """Transitions per second that `Sampler` delivers as device arrays, timed after the first batch."""
  sampler = Sampler(address, config, batch_size=batch_size)
  try:
    jax.block_until_ready(next(sampler).transitions)
    batches, begin = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - begin) < duration_s:
      jax.block_until_ready(next(sampler).transitions)
      batches += 1
  finally:
    sampler.close()
  return batches * batch_size / elapsed


# Main -----------------------------------------------------------------------------------------------------------------


def progress(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def machine() -> dict:
  return {
      "cpu_count": os.cpu_count(),
      "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
      "python": platform.python_version(),
      "dm-reverb": importlib.metadata.version("dm-reverb"),
      "tensorflow": tf.__version__,
      "jax": jax.__version__,
  }


def measure_throughput(args: Args, recording_path: str, obs_shape: tuple[int, int, int]) -> tuple[dict, int]:
  """Insert rates with 1 and then 2 writers, then sample rates from the table they filled (returned with its size)."""
  results = {}
  config = unblocked_config(args.insert_max_size)
  with replay_server(config, obs_shape) as server:
    for count, key in ((1, "insert_per_s_1_writer"), (2, "insert_per_s_2_writers")):
      rates = run_writers(server.address, recording_path, args, count, duration_s=args.insert_duration_s)
      results[key] = round(sum(rates), 1)
      progress(f"{key}: {results[key]} ({', '.join(f'{r:.0f}' for r in rates)} per writer)")
    sample_table_size = table_size(server.address)
    for batch_size in args.batch_sizes:
      key = f"sample_per_s_batch_{batch_size}"
      results[key] = round(sample_rate(server.address, config, batch_size, args.sample_duration_s), 1)
      progress(f"{key}: {results[key]} (table of {sample_table_size}, {config.resolved_sampler_workers()} streams)")
    results["sample_per_s_batch_32_by_workers"] = {}
    for workers in args.sampler_workers:
      rate = sample_rate(server.address, dataclasses.replace(config, sampler_workers=workers), 32, args.sample_duration_s)
      results["sample_per_s_batch_32_by_workers"][str(workers)] = round(rate, 1)
      progress(f"sample_per_s_batch_32 with {workers} streams: {rate:.1f}")
  return results, sample_table_size


def measure_bytes_per_transition(args: Args, recording_path: str, obs_shape: tuple[int, int, int]) -> float:
  """Server RSS growth from empty tables to a full table of `memory_items` (FIFO), per item."""
  with replay_server(unblocked_config(args.memory_items), obs_shape) as server:
    table_size(server.address)  # connect first, so that the baseline includes a client's connection
    baseline = rss_bytes(server.pid)
    run_writers(server.address, recording_path, args, 1, duration_s=math.inf, max_items=args.memory_items)
    size = table_size(server.address)
    if size != args.memory_items:
      raise RuntimeError(f"the memory table holds {size} items, expected {args.memory_items}")
    growth = rss_bytes(server.pid) - baseline
  progress(f"bytes_per_transition: {growth / size:.1f} (RSS {baseline / 2**20:.0f} MiB empty, +{growth / 2**20:.0f} MiB at {size})")
  return round(growth / size, 1)


def main(args: Args) -> None:
  with tempfile.TemporaryDirectory() as tmp:
    recording_path = os.path.join(tmp, "recording.npz")
    progress(f"recording {args.record_steps} steps of {args.num_envs} {args.game} environments")
    recorded = record(args, recording_path)
    obs_shape = recorded["obs_shape"]
    results, sample_table_size = measure_throughput(args, recording_path, obs_shape)
    results["bytes_per_transition"] = measure_bytes_per_transition(args, recording_path, obs_shape)
  config = unblocked_config(args.insert_max_size)
  print(json.dumps({
      "device": device_name(),
      "machine": machine(),
      **results,
      "targets": TARGETS,
      "settings": {
          **dataclasses.asdict(args),
          "obs_shape": obs_shape,
          "episodes_ended_in_recording": recorded["episodes_ended"],
          "sample_table_size": sample_table_size,
          "rate_limiter": {
              "samples_per_insert": config.samples_per_insert,
              "min_replay_size": config.min_replay_size,
              "error_buffer": config.error_buffer,
          },
      },
  }, indent=1))


if __name__ == "__main__":
  parsed = tyro.cli(Args)
  try:
    with processes.signals_raise():  # SIGTERM too runs the `finally`s that stop the server and the writers
      main(parsed)
  except processes.Interrupted as stopped:
    print(f"bench/replay.py: stopped by {stopped.signal_name}; its server and writers are stopped", file=sys.stderr)
    sys.exit(processes.EXIT_INTERRUPTED)
