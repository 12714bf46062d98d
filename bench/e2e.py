"""End-to-end throughput of train.py, printed as one JSON object.

Three measurements on this machine, at the same settings:
1. bare environments: `AtariEnv` (ale-py's AtariVectorEnv) with random actions, `num_envs_per_actor`
   environments on one thread, as an actor steps them;
2. learner only: jitted updates on a batch already on the device (bench/learner.py's `measure`);
3. the real job: `python train.py` for a fixed budget (actors, Reverb, learner), from its
   metrics/train.jsonl rows once the learner is updating.

  pipeline_efficiency = end-to-end updates/s / learner-only updates/s   (target >= 0.9 when learner-bound)
  actor_efficiency    = actor loop env steps/s (inference + replay writes, time blocked by the rate
                        limiter left out) / bare env steps/s at the same num_envs   (target >= 0.8)

For context it also times the same actor loop alone (its own process, one XLA thread, a
server whose rate limiter never blocks, no learner beside it): `actor_efficiency_alone`, with
the share of the loop's time spent in the policy, the emulator and the replay writes.

  python bench/e2e.py                                  # Nature CNN Double DQN, learner-bound
  python bench/e2e.py --train-flags="--preset smoke"   # another configuration (note the =)
  python bench/e2e.py --train-flags="... --probe-every-updates 500"   # cost of the probe worker (CPU-sized probes on a CPU)

The job runs without plasticity probes and without evaluations (`--probe-every-updates 0
--eval-every-env-steps 0` come before --train-flags, which can turn them back on): the dqn_zoo preset probes its
final checkpoint and evaluates for 500,000 frames after every 250,000 steps, and a finished run waits for both. Time: the default command takes about 4 minutes on this project's 2-core CPU when it is
otherwise idle (the job about 3: 2,434 updates at the 15-19 updates/s of docs/benchmarks.md, plus start-up; then
10 s each of bare environments, actor loop alone and learner alone, plus their start-up and
compilation). Measured with other jobs on the machine (load average 10 on 2 cores): 9.5 minutes,
the job 8.3 of them at 5.7 updates/s. Ctrl-C or SIGTERM stops the job (train.py writes its final
checkpoint) and any other child before the bench exits (code 130).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common.process_setup import setup_process  # noqa: E402

# The actor-loop child times one actor's loop as train.py's actors run it.
setup_process("actor" if sys.argv[1:2] == ["--actor-loop-child"] else "tool")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

from agents.dqn import init_actor_state, make_select_action  # noqa: E402
from bench import learner as learner_bench  # noqa: E402
from common import processes  # noqa: E402
from common.metrics import read_rows  # noqa: E402
from common.run_dir import PROBE_STREAM, RunDir  # noqa: E402
from envs import AtariEnv  # noqa: E402
from training.config import RunConfig, load_config  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args:
  game: str = "breakout"
  total_env_steps: int = 12_000
  """Budget of the end-to-end run (agent steps)."""
  train_flags: str = "--preset dqn_zoo --num-actors 1 --num-envs-per-actor 8 --replay.min-replay-size 2000 --log-every-s 5"
  """train.py flags of the measured job (besides game, budget, run dir, `--probe-every-updates 0` and
  `--eval-every-env-steps 0`, which these can override), as one string."""
  warmup_rows: int = 2
  """Progress rows skipped after the learner starts updating (compilation, prefetch fill)."""
  env_seconds: float = 10.0
  learner_seconds: float = 10.0


def bare_env_steps_per_s(game: str, config, seconds: float) -> float:
  rng = np.random.default_rng(0)
  with AtariEnv(game, config.num_envs_per_actor, config.env, seed=0, num_threads=1) as env:
    env.reset()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
      env.step(rng.integers(0, env.num_actions, env.num_envs))
      steps += env.num_envs
    return steps / (time.perf_counter() - started)


def actor_loop_alone(config_json: str, game: str, seconds: float) -> dict:
  """The actor's loop without the rest of the job. Runs in a child process set up like an actor."""
  # Reverb, TensorFlow: only this child needs them
  from replay.server import ReplayServer
  from replay.writer import TransitionWriter

  config = RunConfig.from_dict(json.loads(config_json))
  agent = config.agent
  replay = dataclasses.replace(config.replay, min_replay_size=1, samples_per_insert=1e-3, samples_per_insert_tolerance=1e9,
                               max_size=200_000)
  with AtariEnv(game, config.num_envs_per_actor, config.env, seed=0, num_threads=1) as env, \
       ReplayServer(replay, env.obs_shape) as server:
    network = agent.make_network(env.num_actions)
    obs = env.reset()
    params = jax.device_put(network.init(jax.random.PRNGKey(0), obs[:1]))
    select_action = make_select_action(network, agent)
    actor_state = init_actor_state(jax.random.PRNGKey(0))
    writer = TransitionWriter(server.client(), env.num_envs, n_step=agent.n_step, discount=agent.discount,
                              clip_rewards=agent.clip_rewards, stack_frames=config.env.stack_frames)
    writer.reset(obs)
    select_action(params, obs, actor_state)  # compile
    spent = {"policy": 0.0, "env": 0.0, "replay_write": 0.0}
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
      t0 = time.perf_counter()
      actions, actor_state = select_action(params, obs, actor_state)
      actions = np.asarray(actions)
      t1 = time.perf_counter()
      step = env.step(actions)
      t2 = time.perf_counter()
      writer.step(actions, step)
      t3 = time.perf_counter()
      obs = step.obs
      spent["policy"] += t1 - t0
      spent["env"] += t2 - t1
      spent["replay_write"] += t3 - t2
      steps += env.num_envs
    elapsed = time.perf_counter() - started
    writer.close()
  return {"env_steps_per_s": steps / elapsed, "time_share": {k: round(v / elapsed, 3) for k, v in spent.items()}}


def main(args: Args) -> None:
  with tempfile.TemporaryDirectory() as tmp:
    run_dir = os.path.join(tmp, "run")
    command = [sys.executable, "train.py", "--game", args.game, "--total-env-steps", str(args.total_env_steps),
               "--run-dir", run_dir, "--probe-every-updates", "0", "--eval-every-env-steps", "0",
               *shlex.split(args.train_flags)]
    started = time.monotonic()
    processes.run(command, cwd=ROOT, stdout=sys.stderr, stop_timeout_s=60)  # a stopped bench stops it first
    wall_s = time.monotonic() - started
    config = load_config(run_dir)
    rows = [row for row in read_rows(RunDir(run_dir).stream_path("train")) if row.get("step", 0) > 0]
    steady = rows[args.warmup_rows:] or rows
    # With --probe-every-updates: how much probing ran beside the learner (its updates/s are the cost).
    probes = read_rows(RunDir(run_dir).stream_path(PROBE_STREAM))
  if not steady:
    raise SystemExit("the run logged no rows with learner updates; raise --total-env-steps")

  mean = lambda key: float(np.mean([row[key] for row in steady]))
  env_steps_per_s, updates_per_s = mean("env_steps_per_s"), mean("updates_per_s")
  actor_loop = mean("actor_loop_steps_per_s")
  bare = bare_env_steps_per_s(args.game, config, args.env_seconds)
  child = processes.run(
      [sys.executable, __file__, "--actor-loop-child", json.dumps(config.to_dict()), args.game, str(args.env_seconds)],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
  )
  alone = json.loads(child.stdout.strip().splitlines()[-1])
  agent = config.agent
  learner_only = learner_bench.measure(
      learner_bench.Args(torso=agent.torso, min_duration_s=args.learner_seconds),
      agent.head, agent.layer_norm, agent.batch_size, agent.updates_per_call,
  )["updates_per_s"]
  print(json.dumps({
      "device": learner_bench.device_name(),
      "command": " ".join(command[1:]).replace(run_dir, "RUN_DIR"),
      "wall_s": round(wall_s, 1),
      "rows_measured": len(steady),
      "env_steps_per_s": round(env_steps_per_s, 1),
      "updates_per_s": round(updates_per_s, 2),
      "learner_only_updates_per_s": learner_only,
      "pipeline_efficiency": round(updates_per_s / learner_only, 3),
      "actor_loop_env_steps_per_s": round(actor_loop, 1),
      "actor_blocked_fraction": round(mean("actor_blocked_fraction"), 3),
      "bare_env_steps_per_s": round(bare, 1),
      "num_envs_per_actor": config.num_envs_per_actor,
      "actor_efficiency": round(actor_loop / bare, 3),
      "actor_loop_alone_env_steps_per_s": round(alone["env_steps_per_s"], 1),
      "actor_efficiency_alone": round(alone["env_steps_per_s"] / bare, 3),
      "actor_loop_alone_time_share": alone["time_share"],
      "probe_every_updates": config.probe_every_updates,
      "checkpoints_probed": len(probes),
      "probe_wall_s_mean": round(float(np.mean([row["probe_wall_s"] for row in probes])), 1) if probes else None,
  }, indent=1))


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == "--actor-loop-child":
    print(json.dumps(actor_loop_alone(sys.argv[2], sys.argv[3], float(sys.argv[4]))))
  else:
    parsed = tyro.cli(Args)
    try:
      with processes.signals_raise():
        main(parsed)
    except processes.Interrupted as stopped:
      print(f"bench/e2e.py: stopped by {stopped.signal_name}; its child processes are stopped", file=sys.stderr)
      sys.exit(processes.EXIT_INTERRUPTED)
